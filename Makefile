# The two commands a new user runs: `make demo` and `make test`.
# Both create .venv if it is missing and install the project into it.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck unit bench fuzz services install clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "unbundled needs Python 3.11+ (set PYTHON=python3.11)"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

## make demo: run the log demo on a fresh SQLite file and print what it proved.
demo: $(STAMP)
	$(VENV)/bin/unbundled demo

## make test: check (and start) the servers, then lint, type-check and run every test.
test: $(STAMP) services lint typecheck
	$(PY) -m pytest -q -n 2

services: $(STAMP)
	$(PY) scripts/services.py ensure

lint: $(STAMP)
	$(PY) -m ruff check src tests bench scripts
	$(PY) -m ruff format --check src tests bench scripts
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(PY) -m mypy

unit: $(STAMP)
	$(PY) -m pytest -q -n 2 -m 'not slow'

## make bench: the benchmarks, side by side with their baselines (writes bench/results/).
bench: $(STAMP)
	$(PY) bench/run.py

## make fuzz: damage a small file every way the fuzzer knows, check every read (bench/results/fuzz.md).
fuzz: $(STAMP)
	$(PY) bench/run.py --only fuzz

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache
