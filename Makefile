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
export DS_ACCELERATOR            ?= cpu
export TOKENIZERS_PARALLELISM    := false
export HF_HUB_OFFLINE            := 1
export MLFLOW_DISABLE_TELEMETRY  := true
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false
export PATH                      := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install run test test-fast bench report clean help

help:            ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[dev]'
	touch $@

install: $(STAMP) ## create .venv with the pinned environment

run: install     ## install, then run the whole DAG (dvc repro); PROFILE=NAME: profiles/NAME.yaml as a DVC experiment
ifdef PROFILE
	$(BIN)/fluxforge run --profile $(PROFILE)
else
	$(BIN)/fluxforge check-params
	$(BIN)/dvc repro
	@$(BIN)/fluxforge summary
endif

test: install    ## install, then run the whole test suite (slow e2e included)
	$(BIN)/python -m pytest

test-fast: install ## unit tests only (skips the slow end-to-end tests)
	$(BIN)/python -m pytest -m "not slow"

bench: run   ## run the benchmarks after the DAG (writes BENCHMARKS.md)
	$(BIN)/python benchmarks/run.py

clean:           ## remove generated data, models and caches (keeps .venv)
	rm -rf data models metrics plots reports mlflow.db mlartifacts
