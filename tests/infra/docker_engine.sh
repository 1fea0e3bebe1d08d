#!/usr/bin/env bash
# A Docker Engine of our own for the docker executor's tests, run as root on Debian without
# systemd, next to (never instead of) any engine the machine already has.
#
#   tests/infra/docker_engine.sh start       install docker.io if missing, start dockerd
#   tests/infra/docker_engine.sh stop        stop exactly the dockerd this script started
#   tests/infra/docker_engine.sh base-image  build the local python3.11 bookworm base image
#   tests/infra/docker_engine.sh status      exit 0 when our dockerd runs and answers
#   tests/infra/docker_engine.sh env         print `export DOCKER_HOST=...` for a shell
#
# Everything lives under $RUNNER_DOCKER_DIR (default /var/lib/runner-docker): data-root,
# exec-root, pid file, log, the cached debootstrap rootfs tarball. The socket is
# $RUNNER_DOCKER_SOCK (default /run/runner-docker.sock). No image registry is reachable from
# these machines, so the base image is built with debootstrap from apt's own mirror.
#
# Settings (environment):
#   RUNNER_DOCKER_DIR       state dir                       [/var/lib/runner-docker]
#   RUNNER_DOCKER_SOCK      unix socket                     [/run/runner-docker.sock]
#   RUNNER_DOCKER_BASE      tag of the local base image     [runner-base:bookworm]
#   RUNNER_DOCKER_WAIT_S    how long start waits for dockerd [60]
set -euo pipefail

DIR=${RUNNER_DOCKER_DIR:-/var/lib/runner-docker}
SOCK=${RUNNER_DOCKER_SOCK:-/run/runner-docker.sock}
BASE=${RUNNER_DOCKER_BASE:-runner-base:bookworm}
WAIT_S=${RUNNER_DOCKER_WAIT_S:-60}
PIDFILE=$DIR/dockerd.pid
LOG=$DIR/dockerd.log
# The package's CLI: /usr/local/bin/docker may be another one (notes: real-docker-on-one-machine).
DOCKER=(/usr/bin/docker -H "unix://$SOCK")

log() { echo "docker_engine: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

apt_install() { # apt_install PKG...; waits for another apt run instead of failing
    command -v apt-get >/dev/null || die "apt-get not found; install $* by hand"
    log "installing $*"
    local apt=(apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "$@" \
        >"$DIR/apt.log" 2>&1; then
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" update >>"$DIR/apt.log" 2>&1 || true
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "$@" \
            >>"$DIR/apt.log" 2>&1 || die "apt-get failed; see $DIR/apt.log"
    fi
}

# The pid in the pid file if it is alive, not a zombie, and is dockerd.
live_pid() {
    local pid state
    [[ -s $PIDFILE ]] || return 1
    pid=$({ tr -dc 0-9 <"$PIDFILE"; } 2>/dev/null) || return 1
    [[ -n $pid && -d /proc/$pid ]] || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $state != Z ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == dockerd ]] || return 1
    echo "$pid"
}

answers() { "${DOCKER[@]}" version --format '{{.Server.APIVersion}}' >/dev/null 2>&1; }

start() {
    mkdir -p "$DIR"
    [[ -x /usr/sbin/dockerd && -x /usr/bin/docker ]] || apt_install docker.io
    if live_pid >/dev/null && answers; then
        log "dockerd already running ($(live_pid))"
    else
        # No fd of ours but stdio on the log: an inherited pipe would keep pytest waiting.
        # dockerd starts its own containerd under its exec-root. live-restore stays off
        # (Docker's default): stopping dockerd stops its containers, which the restart test
        # in tests/test_docker.py relies on.
        setsid /usr/sbin/dockerd --pidfile "$PIDFILE" --data-root "$DIR/data" \
            --exec-root "$DIR/exec" -H "unix://$SOCK" </dev/null >>"$LOG" 2>&1 &
        local spawned=$! i
        for ((i = 0; i < WAIT_S * 10; i++)); do
            answers && break
            # Gone already (bad flag, port in use): say so now, not after WAIT_S.
            kill -0 "$spawned" 2>/dev/null || die "dockerd exited at start; see $LOG"
            sleep 0.1
        done
        answers || die "dockerd did not answer on $SOCK within ${WAIT_S}s; see $LOG"
        log "dockerd up ($(live_pid || echo '?')) on $SOCK"
    fi
    echo "export DOCKER_HOST=unix://$SOCK"
}

stop() {
    local pid i
    if pid=$(live_pid); then
        log "stopping dockerd ($pid)"
        kill -TERM "$pid" 2>/dev/null || true
        # dockerd gives running containers ~10 s, then stops its containerd itself.
        for ((i = 0; i < 400; i++)); do
            live_pid >/dev/null || break
            sleep 0.1
        done
        if live_pid >/dev/null; then
            log "dockerd ($pid) ignored SIGTERM for 40 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$PIDFILE"
}

# The Debian mirror apt uses (deb822 or one-line sources), never a hard-coded host.
mirror() {
    local m
    m=$(grep -hs -E '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' |
        grep -v -- '-security' | grep -m1 '/debian/\?$' || true)
    [[ -n $m ]] || m=$(grep -hs -E '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
        awk '{for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' |
        grep -v -- '-security' | head -n1 || true)
    [[ -n $m ]] || die "no Debian mirror found in apt's sources"
    echo "$m"
}

base_image() {
    mkdir -p "$DIR"
    answers || die "dockerd is not running on $SOCK (run: $0 start)"
    if "${DOCKER[@]}" image inspect "$BASE" >/dev/null 2>&1; then
        log "$BASE present"
        return
    fi
    local tarball=$DIR/rootfs-bookworm.tar
    if [[ ! -s $tarball ]]; then
        command -v debootstrap >/dev/null || apt_install debootstrap
        local root=$DIR/rootfs.tmp m
        m=$(mirror)
        rm -rf "$root"
        log "debootstrap bookworm from $m (about a minute)"
        debootstrap --variant=minbase --include=python3,python-is-python3 bookworm "$root" "$m" \
            >"$DIR/debootstrap.log" 2>&1 || die "debootstrap failed; see $DIR/debootstrap.log"
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
        mv -f "$tarball.tmp" "$tarball"
        rm -rf "$root"
    fi
    "${DOCKER[@]}" import "$tarball" "$BASE" >/dev/null
    log "imported $BASE"
}

case ${1:-} in
start) start ;;
stop) stop ;;
base-image) base_image ;;
status) live_pid >/dev/null && answers ;;
env) echo "export DOCKER_HOST=unix://$SOCK" ;;
*)
    echo "usage: $0 {start|stop|base-image|status|env}" >&2
    exit 2
    ;;
esac
