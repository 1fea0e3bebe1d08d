# One entry point for users and CI. Everything installs itself, idempotently.
#   make sweep [MATRIX=matrix/demo.yaml] [EXECUTOR=local]   run a matrix (default: the demo,
#                                           local, CPU ok); EXECUTOR= runs it elsewhere
#   make plan | status | report [MATRIX=...]  look at a matrix, its cells, its results
#   make ui                                 the MLflow UI (127.0.0.1:5000)
#   make test                               the whole suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MATRIX ?= matrix/demo.yaml
UI_PORT ?= 5000
STAMP := $(VENV)/.installed

.PHONY: install sweep plan status report ui test test-deps test-fast lint bench demo-data system-deps clean \
	slurm-up slurm-down image docker-up docker-down

# Debian's python3 needs python3-venv for `python3 -m venv`; install it when missing (root).
system-deps:
	@if ! $(PYTHON) -c "import ensurepip, venv" 2>/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-dev; \
	  else echo "need python3-venv: apt-get install python3-venv (as root)"; exit 1; fi; \
	fi

$(STAMP): pyproject.toml constraints.txt
	@$(MAKE) --no-print-directory system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

data/demo/dataset.json: | $(STAMP)
	$(BIN)/python -m recipes.components.data.demo_data --out data/demo

demo-data: data/demo/dataset.json

sweep: install demo-data
	$(BIN)/runner sweep $(MATRIX) $(if $(EXECUTOR),--executor $(EXECUTOR))

plan: install
	$(BIN)/runner plan $(MATRIX)

status: install
	$(BIN)/runner status $(MATRIX)

report: install
	$(BIN)/runner report $(MATRIX)

# The MLflow UI over the default sqlite store, on loopback only. First the link to each swept
# matrix's saved view (its runs grouped over seeds, sorted by best val Dice), written if missing.
ui: install
	-$(BIN)/python -m runner.report.mlflow_view --store sqlite:///$(CURDIR)/mlruns.db \
	  --sweep-dir sweeps --ui http://127.0.0.1:$(UI_PORT)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns.db --host 127.0.0.1 --port $(UI_PORT)

lint: install
	$(BIN)/ruff check runner recipes tests bench
	$(BIN)/ruff format --check runner recipes tests bench

# What the tests need from Debian, installed once as root: the SLURM cluster's packages, real
# NIfTI volumes (insighttoolkit5-examples) and a headless browser for the MLflow UI test
# (chromium). Elsewhere those tests skip and say why.
test-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  tests/infra/slurm_cluster.sh install && \
	  { dpkg -s insighttoolkit5-examples chromium >/dev/null 2>&1 || \
	    { apt-get -o DPkg::Lock::Timeout=600 update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
	      insighttoolkit5-examples chromium; }; }; \
	fi

# The suite on TEST_WORKERS pytest-xdist workers (tests/conftest.py groups and orders them;
# the SLURM cluster and the Docker Engine start once for all of them). TEST_WORKERS=0: one
# process.
TEST_WORKERS ?= 3
TEST_PARALLEL = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup)

test: install lint test-deps
	$(BIN)/python -m pytest $(TEST_PARALLEL)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(TEST_PARALLEL)

bench: install
	$(BIN)/python -m bench

# A real single-node SLURM cluster (slurmctld, slurmd, munge, slurmdbd + MariaDB) for the
# tests and for trying the slurm executor; the test suite starts and stops it by itself.
slurm-up:
	tests/infra/slurm_cluster.sh start

slurm-down:
	tests/infra/slurm_cluster.sh stop

# The trainer image for `executor: {kind: docker}` (containers/README.md):
#   make image                                  online: the CUDA runtime base from a registry, deps
#                                               from PyPI (torch==2.13.0 as its CUDA build)
#   make image BASE_IMAGE=runner-base:bookworm  offline base (`make docker-up` builds it); deps from
#                                               PyPI, but the wheels in WHEELS first (default: the
#                                               dirs in $PIP_FIND_LINKS: here torch-2.13.0+cpu)
# WHEELS= builds without a wheelhouse; CA_CERTS: extra CAs for the build's downloads only (default:
# the host's /usr/local/share/ca-certificates/*.crt); DOCKER: the CLI. The context is sent as a tar
# of exactly IMAGE_CONTEXT, whatever builder runs (the legacy one ignores Dockerfile.dockerignore).
IMAGE ?= runner-trainer:latest
BASE_IMAGE ?= nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
DOCKER ?= docker
WHEELS ?= $(PIP_FIND_LINKS)
CA_CERTS ?= $(wildcard /usr/local/share/ca-certificates/*.crt)
IMAGE_CONTEXT := pyproject.toml constraints.txt README.md runner recipes \
	containers/Dockerfile containers/wheels containers/certs
# No DOCKER_HOST and no /var/run/docker.sock: the engine of `make docker-up`, if it runs.
image: export DOCKER_HOST := $(or $(DOCKER_HOST),$(if $(wildcard /var/run/docker.sock),,$(if \
	$(wildcard /run/runner-docker.sock),unix:///run/runner-docker.sock)))
image:
	@rm -f containers/wheels/*.whl containers/certs/*.crt
	@shopt -s nullglob; for d in $(WHEELS); do d=$${d#file://}; \
	  for w in "$$d"/*.whl; do cp -pl "$$w" containers/wheels/ 2>/dev/null || \
	    cp -p "$$w" containers/wheels/; echo "wheelhouse: $$w"; done; done
	@for c in $(CA_CERTS); do cp "$$c" containers/certs/; echo "build CA: $$c"; done
	set -o pipefail; tar -c --exclude=__pycache__ --exclude='*.pyc' $(IMAGE_CONTEXT) | $(DOCKER) build \
	  -f containers/Dockerfile --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(IMAGE) -

# A Docker Engine of the project's own (its own socket, /run/runner-docker.sock) and the local
# Debian base image; the test suite does the same by itself.
docker-up:
	tests/infra/docker_engine.sh start && tests/infra/docker_engine.sh base-image

docker-down:
	tests/infra/docker_engine.sh stop

clean:
	rm -rf sweeps mlruns mlruns.db mlartifacts outputs multirun

# The GPU check (bench/gpu; README "GPU figures"): every GPU figure measured by one script
# within 8 minutes, written to gpu-check.json and gpu-check.md. `make gpu-wheels` (where a
# registry is reachable) downloads the wheels it imports beyond a bare torch image into .whl/
# (git-ignored; sizes printed). `make gpu-check` runs it with the project's venv when there is
# one; else, where $(PYTHON) has torch (a lent GPU machine: no registry, no venv), it installs
# .whl/ into .gpu-site/ with pip --no-index and runs it from there. GPU_OUT: where the two
# files go (default: the repository root); GPU_ARGS: more arguments (e.g. --budget-s 300).
GPU_OUT ?=
GPU_ARGS ?=
GPU_CHECK = -m bench.gpu $(if $(GPU_OUT),--out $(GPU_OUT)) $(GPU_ARGS)
.PHONY: gpu-wheels gpu-check

gpu-wheels: install
	$(BIN)/python -m bench.gpu.wheels download

gpu-check:
	@if [ -x $(BIN)/python ] && $(BIN)/python -c "import monai, hydra" 2>/dev/null; then \
	  echo "gpu-check: with $(BIN)/python"; \
	  $(BIN)/python $(GPU_CHECK); \
	elif $(PYTHON) -c "import torch" 2>/dev/null; then \
	  echo "gpu-check: with $(PYTHON) and the wheels of .whl/ in .gpu-site/"; \
	  $(PYTHON) -m bench.gpu.wheels install && \
	  PYTHONPATH=$(CURDIR)/.gpu-site:$(CURDIR) $(PYTHON) $(GPU_CHECK); \
	else \
	  $(MAKE) --no-print-directory install && $(BIN)/python $(GPU_CHECK); \
	fi
