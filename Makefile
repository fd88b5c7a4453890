# FluxForge: two commands.  `make run` = install + whole DAG; `make test` = install + test suite.
# `make run PROFILE=cyber-dap` runs a profile as a DVC experiment in a temporary copy (params.yaml untouched).
PY       ?= python3.11
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
# Quiet, offline-friendly defaults for every tool the DAG touches.
export DVC_NO_ANALYTICS          := 1
export GX_ANALYTICS_ENABLED      := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export RAY_USAGE_STATS_ENABLED   := 0
export DS_ACCELERATOR            ?= cpu
export TOKENIZERS_PARALLELISM    := false
export HF_HUB_OFFLINE            := 1
export MLFLOW_DISABLE_TELEMETRY  := true
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false
export PATH                      := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install postgres-server run repro test test-fast bench report clean help

help:            ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# Python caches bytecode as it imports, under every command make starts: where PYTHONDONTWRITEBYTECODE is set (many CI
# images and containers) it never would, and every stage process compiled transformers, mlflow and the rest from source,
# most of a tiny stage (BENCHMARKS.md "Stage start-up"). Caching on import compiles only the modules a run uses (about
# 4,300 of the venv's 32,000; compiling them all at install took 33 s). .dvcignore keeps __pycache__ out of the stages'
# code dependencies.
unexport PYTHONDONTWRITEBYTECODE

# torch first, with pip: pip finds the CPU wheel a machine provides (its find-links / index settings); a resolver
# that does not look there would fetch a multi-GB CUDA build. Everything else comes from the lock through uv
# (seconds instead of minutes), or through pip when uv cannot be had.
UV_VERSION := 0.13.9
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	if $(BIN)/python -m pip install -q uv==$(UV_VERSION); then \
	  $(BIN)/uv pip install --python $(BIN)/python -q -c requirements.lock -e '.[dev]'; \
	else \
	  echo "uv unavailable: installing with pip (slower)"; $(BIN)/python -m pip install -q -c requirements.lock -e '.[dev]'; \
	fi
	touch $@

install: $(STAMP) ## create .venv with the pinned environment

run: install     ## install, then run the whole DAG (dvc repro); PROFILE=NAME: profiles/NAME.yaml as a DVC experiment
ifdef PROFILE
	$(BIN)/fluxforge run --profile $(PROFILE)
else
	$(BIN)/fluxforge check-params
	$(BIN)/fluxforge warm $(BIN)/dvc repro
	@$(BIN)/fluxforge summary
endif

repro: install   ## install, check params, then `dvc repro` (STAGE=NAME: that stage and what it needs), no venv activation needed
	$(BIN)/fluxforge check-params
	$(BIN)/fluxforge warm $(BIN)/dvc repro $(STAGE)

# The shared-registry tests start a real PostgreSQL server (tests/test_postgres_tracking.py): Debian's server
# binaries, the same major version infra/ pins. Installed once (as root, through apt) when no server binary is there;
# when one is, this costs one `ls`. Debian's package would also create and start a cluster of its own on port 5432:
# createcluster.conf says not to, since the tests start theirs in a temporary folder.
postgres-server: ## the PostgreSQL server binaries the tests start (Debian's postgresql package)
	@if ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v postgres >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing PostgreSQL (apt-get install postgresql) for the shared-registry tests"; \
	  mkdir -p /etc/postgresql-common && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else echo "PostgreSQL's server is missing: sudo apt-get install postgresql (or set PG_BIN)"; exit 1; fi

# One pytest-xdist worker per usable core (nproc honours CPU affinity); a module's tests stay on one worker, so
# its module-scoped servers start once. TEST_WORKERS=0 runs everything in this process (for debugging).
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
PYTEST = $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope

test: install postgres-server ## install, then run the whole test suite (slow e2e included), on every core
	$(PYTEST)

test-fast: install ## unit tests only (skips the slow end-to-end tests)
	$(PYTEST) -m "not slow"

bench: run   ## run the benchmarks after the DAG (writes BENCHMARKS.md)
	$(BIN)/python benchmarks/run.py

clean:           ## remove generated data, models and caches (keeps .venv)
	rm -rf data models metrics plots reports mlflow.db mlartifacts
