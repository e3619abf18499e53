# The quick start: `make search` runs the default search, `make test` runs the tests.
# Each sets up what it needs: a virtual environment in .venv/, the Fashion-MNIST proxy data and
# Debian's PostgreSQL server (the tests start a throw-away one; no cluster is created or started).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FASHION_MNIST := /usr/share/datasets/fashion-mnist
SEARCH_ARGS ?= --budget-flops 1.3G
# jemalloc makes CPU training up to 2x faster (docs/proxy.md, "Speed on a CPU"); used when installed.
# proxy/allocator.py is the home of its path and settings; it prints them for the commands below.
RUN_ENV = env $$($(PY) proxy/allocator.py)

.PHONY: search test lint test-slow bench study data venv

search: venv data
	$(RUN_ENV) $(PY) run_search.py $(SEARCH_ARGS)

test: lint data
	$(PY) -m pytest

# ruff and mypy, first in `make test`: pyproject.toml holds their rules and paths (docs/contributing.md).
lint: venv
	$(VENV)/bin/ruff check .
	$(PY) -m mypy

test-slow: venv data
	$(RUN_ENV) $(PY) -m pytest -m slow

# The benchmarks in turn, each saving under bench/results/ (`make bench BENCHMARKS=bench_inference`: one).
BENCHMARKS ?= bench_cost bench_inference bench_backbones bench_proxy_training bench_storage bench_cluster bench_proposals
bench: venv data
	$(foreach name,$(BENCHMARKS),$(RUN_ENV) $(PY) -m bench.$(name) &&) true

# A study that produces shipped data (hours): `make study STUDY=protocol_study ARGS="--only rotations"`.
study: venv data
	$(RUN_ENV) $(PY) -m studies.$(STUDY) $(ARGS)

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# NNI 3.0 is archived and pins old dependencies: installed where it resolves beside ours (its test runs),
	@# else without it (its round-trip test says why it is skipped).
	$(PY) -m pip install --quiet -e '.[dev,nni]' || { echo "NNI 3.0 does not resolve beside the project's \
	dependencies here: installing without it"; $(PY) -m pip install --quiet -e '.[dev]'; }
	touch $@

data:
	@bash scripts/ensure_data.sh $(FASHION_MNIST)
	@bash scripts/ensure_postgres.sh
