#!/usr/bin/env bash
# A real single-node SLURM cluster (slurmctld + slurmd + slurmdbd/MariaDB accounting + munge)
# for the SLURM executor's tests, run as root on a Debian machine without systemd.
#
#   tests/infra/slurm_cluster.sh start    install if missing, (re)configure, start what is down
#   tests/infra/slurm_cluster.sh stop     stop exactly the daemons this script started
#   tests/infra/slurm_cluster.sh status   which daemons run; sinfo
#   tests/infra/slurm_cluster.sh stop-dbd stop only slurmdbd (tests sacct being unavailable)
#   tests/infra/slurm_cluster.sh env      print `export SLURM_CONF=...` for a shell
#
# Everything lives under $RUNNER_SLURM_DIR (default /var/lib/runner-slurm): config, state,
# spool, logs, pid files, the MariaDB datadir and a munge key of its own, so nothing of the
# system's own slurm/munge/mariadb setup is touched. The one exception: when
# /etc/slurm/slurm.conf does not exist, it becomes a symlink to ours so that plain `sbatch`
# and `squeue` in any shell find the cluster (removed again by `stop`).
#
# Settings (environment):
#   RUNNER_SLURM_DIR              state dir                     [/var/lib/runner-slurm]
#   RUNNER_SLURM_MAX_ARRAY_SIZE   MaxArraySize                  [1001]
#   RUNNER_SLURM_DB_PORT          MariaDB port on 127.0.0.1     [3307]
#   RUNNER_SLURM_WAIT_S           how long start waits for the node to be idle [90]
set -euo pipefail

DIR=${RUNNER_SLURM_DIR:-/var/lib/runner-slurm}
MAX_ARRAY_SIZE=${RUNNER_SLURM_MAX_ARRAY_SIZE:-1001}
DB_PORT=${RUNNER_SLURM_DB_PORT:-3307}
WAIT_S=${RUNNER_SLURM_WAIT_S:-90}
ETC=$DIR/etc
RUN=$DIR/run
LOG=$DIR/log
CONF=$ETC/slurm.conf
MUNGE_SOCKET=$RUN/munge/munge.socket.2
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server-core mariadb-client-core)
export SLURM_CONF=$CONF

log() { echo "slurm_cluster: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# --- processes, by pid file only ---------------------------------------------------------

# The pid in $1 if it is alive, not a zombie (PID 1 here reaps slowly) and runs program $2.
live_pid() {
    local file=$1 prog=$2 pid state
    [[ -s $file ]] || return 1
    # The daemon may remove its own pid file meanwhile: that is "not running", not an error.
    pid=$({ tr -dc 0-9 <"$file"; } 2>/dev/null) || return 1
    [[ -n $pid && -d /proc/$pid ]] || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $state != Z ]] || return 1
    # comm is truncated to 15 characters; the program names here are shorter.
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$prog" ]] || return 1
    echo "$pid"
}

stop_one() {
    local file=$1 prog=$2 pid i
    if pid=$(live_pid "$file" "$prog"); then
        log "stopping $prog ($pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 300; i++)); do
            live_pid "$file" "$prog" >/dev/null || break
            sleep 0.1
        done
        if live_pid "$file" "$prog" >/dev/null; then
            log "$prog ($pid) ignored SIGTERM for 30 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
        fi
    fi
    rm -f "$file"
}

# Run a daemon with no file descriptor of ours but stdio on its log: an inherited pipe or
# lock would keep whoever started us (pytest's subprocess.run, our flock) waiting on it.
spawn() {
    local out=$1
    shift
    (
        for fd in /proc/$BASHPID/fd/*; do
            fd=${fd##*/}
            ((fd > 2)) && eval "exec $fd>&-" 2>/dev/null || true
        done
        exec setsid "$@" </dev/null >>"$out" 2>&1
    ) &
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2 i
    shift 2
    for ((i = 0; i < limit * 10; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "$what did not come up within ${limit}s (logs in $LOG)"
}

# --- install -------------------------------------------------------------------------------

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} by hand"
    log "installing ${missing[*]}"
    # Lock::Timeout waits for another apt/dpkg run instead of failing at once.
    local apt=(apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends \
        "${missing[@]}" >"$LOG/apt.log" 2>&1; then
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" update >>"$LOG/apt.log" 2>&1 || true
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends \
            "${missing[@]}" >>"$LOG/apt.log" 2>&1 || die "apt-get failed; see $LOG/apt.log"
    fi
}

# --- configuration ---------------------------------------------------------------------------

write_if_changed() { # write_if_changed FILE MODE < content; status 0 when it changed
    local file=$1 mode=$2 tmp
    tmp=$(mktemp "$file.XXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        return 1
    fi
    mv -f "$tmp" "$file"
    return 0
}

CONF_CHANGED=0
configure() {
    local host cpus mem_mb
    host=$(hostname -s)
    # More CPUs than the machine has (config_overrides lets slurmd accept it): the suite's
    # workers submit at once, and most test jobs sleep or wait; with only the real cores,
    # SLURM would queue one worker's jobs behind another's and the tests would wait on
    # each other rather than on the behaviour they check.
    cpus=${RUNNER_SLURM_CPUS:-$(($(nproc) * 4))}
    # Memory to schedule by: 4 GiB (DefMemPerCPU) for each of the CPUs above, more than the
    # machine has (config_overrides again): test jobs use far less than their limit, and
    # jobs must not queue for memory more than for CPUs.
    mem_mb=$((cpus * 4096))
    mkdir -p "$ETC" "$RUN/munge" "$LOG" "$DIR/state" "$DIR/spool" "$DIR/dev" "$DIR/munge"
    chmod 700 "$DIR/munge"
    chmod 755 "$RUN/munge" # clients (every job) need to reach the socket

    # Fake GPUs: gres/gpu wants character devices; clones of /dev/null will do.
    local i
    for i in 0 1; do
        [[ -c $DIR/dev/gpu$i ]] || mknod -m 666 "$DIR/dev/gpu$i" c 1 3
    done

    if [[ ! -s $DIR/munge/munge.key ]]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
        chmod 400 "$DIR/munge/munge.key"
    fi

    local auth="socket=$MUNGE_SOCKET" worker_partitions="" w
    for ((w = 0; w < 16; w++)); do
        worker_partitions+="PartitionName=gw$w Nodes=$host MaxTime=INFINITE State=UP "
        worker_partitions+="PriorityTier=1 PreemptMode=OFF"$'\n'
    done
    if write_if_changed "$CONF" 644 <<EOF; then CONF_CHANGED=1; fi
# Written by tests/infra/slurm_cluster.sh; edits are overwritten on start.
ClusterName=runner
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job is held before it may start again: the
# shortest SLURM accepts, so that requeue tests wait as little as possible.
AuthInfo=$auth,cred_expire=5
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# Each job in cgroups (v1 here), its memory limited to what it asked for (cgroup.conf:
# ConstrainRAMSpace): a job past its --mem is killed by the kernel and ends OUT_OF_MEMORY, as
# on a production cluster (the out-of-memory tests rely on it).
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=10
MinJobAge=300
InactiveLimit=0
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
# Scheduling passes every 5 s (defaults: 60 s and 30 s): a requeued job starts soon after its
# hold ends. Time limits and --signal warnings are checked on slurmctld's fixed 30 s tick,
# which no parameter changes: where a job starts in that tick's phase decides when in
# [limit - 45 s, limit - 15 s] its warning comes; the tests that meet it say so.
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# Without a default each job takes the whole node's memory and jobs run one at a time. With
# memory enforced, the default is each job's limit: 4 GiB per CPU, over what any test job
# but the out-of-memory one (--mem 1G) uses.
DefMemPerCPU=4096
MaxArraySize=$MAX_ARRAY_SIZE
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
# For slurmdbd this is the munge socket to use, not a password (default: the system's).
AccountingStoragePass=$MUNGE_SOCKET
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
# "token": one count-only resource, held by the preemption test's cell and asked for by its
# urgent job, so that the urgent job preempts exactly that cell whatever else runs.
GresTypes=gpu,token
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:2,token:1 State=UNKNOWN
# Preemption by partition priority, for the preemption test only: a job in "urgent"
# requeues running jobs of "preemptible" (SIGTERM at once, SIGKILL and REQUEUE after
# GraceTime). "debug" (the default) and gw0..gw15 (one per pytest-xdist worker, so that a
# worker cleans up only its own jobs) are never preempted.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=OFF
$worker_partitions
PartitionName=preemptible Nodes=$host MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=15
PartitionName=urgent Nodes=$host MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF

    if write_if_changed "$ETC/cgroup.conf" 644 <<EOF; then CONF_CHANGED=1; fi
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
ConstrainRAMSpace=yes
EOF

    if write_if_changed "$ETC/gres.conf" 644 <<EOF; then CONF_CHANGED=1; fi
Name=gpu File=$DIR/dev/gpu[0-1]
Name=token Count=1
EOF

    # slurmdbd refuses a config readable by others (it holds the DB password).
    write_if_changed "$ETC/slurmdbd.conf" 600 <<EOF || true
AuthType=auth/munge
AuthInfo=$auth
DbdAddr=127.0.0.1
DbdHost=$host
DbdPort=6819
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF

    if [[ ! -e /etc/slurm/slurm.conf ]]; then
        mkdir -p /etc/slurm
        ln -s "$CONF" /etc/slurm/slurm.conf
    fi
}

# --- daemons ---------------------------------------------------------------------------------

start_munge() {
    live_pid "$RUN/munged.pid" munged >/dev/null && return 0
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    spawn "$LOG/munged.out" munged --force --socket="$MUNGE_SOCKET" \
        --key-file="$DIR/munge/munge.key" --pid-file="$RUN/munged.pid" \
        --log-file="$LOG/munged.log" --seed-file="$DIR/munge/munged.seed"
    wait_for 20 munged live_pid "$RUN/munged.pid" munged
    wait_for 20 "munge socket" munge --socket="$MUNGE_SOCKET" -n
}

SQL=(mariadb --no-defaults --protocol=socket --socket="$RUN/mysqld.sock" -uroot)
start_mariadb() {
    live_pid "$RUN/mysqld.pid" mariadbd >/dev/null && return 0
    if [[ ! -d $DIR/mysql/mysql ]]; then
        log "initialising MariaDB in $DIR/mysql"
        mkdir -p "$DIR/mysql"
        mariadb-install-db --no-defaults --user=root --datadir="$DIR/mysql" \
            --auth-root-authentication-method=socket >"$LOG/mariadb-install.log" 2>&1 ||
            die "mariadb-install-db failed; see $LOG/mariadb-install.log"
    fi
    spawn "$LOG/mariadbd.out" mariadbd --no-defaults --user=root --datadir="$DIR/mysql" \
        --bind-address=127.0.0.1 --port="$DB_PORT" --socket="$RUN/mysqld.sock" \
        --pid-file="$RUN/mysqld.pid" --log-error="$LOG/mariadbd.log" --skip-name-resolve \
        --innodb-buffer-pool-size=64M
    wait_for 60 MariaDB "${SQL[@]}" -e "SELECT 1"
    # slurmdbd creates its tables itself; it only needs a user that may.
    "${SQL[@]}" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
}

start_slurmdbd() {
    live_pid "$RUN/slurmdbd.pid" slurmdbd >/dev/null && return 0
    spawn "$LOG/slurmdbd.out" slurmdbd
    wait_for 30 slurmdbd live_pid "$RUN/slurmdbd.pid" slurmdbd
    # slurmctld registers the cluster on connect, but only once slurmdbd listens.
    wait_for 30 "slurmdbd port" bash -c "exec 3<>/dev/tcp/127.0.0.1/6819"
}

start_slurmctld() {
    if ((CONF_CHANGED)) && live_pid "$RUN/slurmctld.pid" slurmctld >/dev/null; then
        # A restart, not `scontrol reconfigure`: MaxArraySize and the node line only
        # take effect at start. Jobs survive in StateSaveLocation.
        log "configuration changed: restarting slurmctld and slurmd"
        stop_one "$RUN/slurmd.pid" slurmd
        stop_one "$RUN/slurmctld.pid" slurmctld
    fi
    live_pid "$RUN/slurmctld.pid" slurmctld >/dev/null && return 0
    spawn "$LOG/slurmctld.out" slurmctld
    wait_for 30 slurmctld live_pid "$RUN/slurmctld.pid" slurmctld
    wait_for 30 "slurmctld answering" scontrol ping
}

start_slurmd() {
    live_pid "$RUN/slurmd.pid" slurmd >/dev/null && return 0
    spawn "$LOG/slurmd.out" slurmd
    wait_for 30 slurmd live_pid "$RUN/slurmd.pid" slurmd
}

node_idle() {
    local state
    state=$(sinfo -h -N -o "%T" 2>/dev/null | head -n1)
    case $state in
        idle | mixed | allocated) return 0 ;;
        drain* | down* | inval*)
            # A node drained by an earlier run (e.g. killed mid-job) would never come back.
            scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true
            return 1
            ;;
        *) return 1 ;;
    esac
}

cmd_start() {
    [[ $EUID -eq 0 ]] || die "must run as root"
    mkdir -p "$DIR" "$LOG"
    exec 9>"$DIR/lock"
    flock -w 900 9 || die "another start/stop holds $DIR/lock"
    install_packages
    configure
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurmctld
    start_slurmd
    wait_for "$WAIT_S" "an idle node in sinfo" node_idle
    log "up: $(sinfo -h -N -o '%N %T %c cpus %m MB %G') MaxArraySize=$MAX_ARRAY_SIZE"
    echo "export SLURM_CONF=$CONF"
}

cmd_stop() {
    mkdir -p "$DIR"
    exec 9>"$DIR/lock"
    flock -w 900 9 || die "another start/stop holds $DIR/lock"
    stop_one "$RUN/slurmd.pid" slurmd
    stop_one "$RUN/slurmctld.pid" slurmctld
    stop_one "$RUN/slurmdbd.pid" slurmdbd
    stop_one "$RUN/mysqld.pid" mariadbd
    stop_one "$RUN/munged.pid" munged
    if [[ -L /etc/slurm/slurm.conf && $(readlink /etc/slurm/slurm.conf) == "$CONF" ]]; then
        rm -f /etc/slurm/slurm.conf
    fi
}

cmd_stop_dbd() {
    exec 9>"$DIR/lock"
    flock -w 900 9 || die "another start/stop holds $DIR/lock"
    stop_one "$RUN/slurmdbd.pid" slurmdbd
}

cmd_status() {
    local rc=0 spec file prog pid
    for spec in munged:munged mysqld:mariadbd slurmdbd:slurmdbd slurmctld:slurmctld \
        slurmd:slurmd; do
        file=$RUN/${spec%%:*}.pid prog=${spec##*:}
        if pid=$(live_pid "$file" "$prog"); then
            echo "$prog running ($pid)"
        else
            echo "$prog stopped"
            rc=3
        fi
    done
    sinfo -N 2>/dev/null || true
    return $rc
}

case ${1:-} in
    install) mkdir -p "$LOG" && install_packages ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    stop-dbd) cmd_stop_dbd ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *)
        echo "usage: $0 {start|stop|status|stop-dbd|env}" >&2
        exit 2
        ;;
esac
