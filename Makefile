# The quickstart:  make search  (default search)   |   make test  (the test suite)
# Each target sets up .venv first on a fresh machine (PyTorch comes from the local pip cache/disk).
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: setup search smoke test lint bench mlflow-ui

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

search: setup            ## the default search; pass flags with ARGS="--dataset fashion-mnist ..."
	$(PY) tune/search.py $(ARGS)

smoke: setup
	$(PY) tune/search.py --smoke $(ARGS)

test: setup              ## the whole test suite (real Ray, real MLflow, tiny budgets)
	$(PY) -m pytest -q $(ARGS)

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: setup             ## benchmarks; appends to bench/RESULTS.md
	$(PY) bench/bench_core.py $(ARGS)
