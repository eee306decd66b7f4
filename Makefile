# The two commands a fresh machine needs: `make demo` (set up, then edit a toy scene) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow lint format bench clean

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements/constraints.txt -e ".[app,bnb,data,dev,text]"
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install ip2p with pinned dependencies

demo: setup  ## edit a toy-world scene; pictures in outputs/demo/
	$(VENV)/bin/ip2p demo --output outputs/demo

test: setup  ## the default test suite (offline, CPU, under 5 minutes)
	$(PY) -m pytest -q -m "not slow"

test-slow: setup  ## long tests excluded from the default suite
	$(PY) -m pytest -q -m slow

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: setup
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

bench: setup  ## side-by-side timing of our pipeline vs diffusers'
	$(PY) benchmarks/bench_edit.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
