# The Makefile is the interface: `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CORPUS ?= corpora/python-stdlib.txt
BENCH_ARGS ?=
TORCH_VERSION := 2.13.0

.DEFAULT_GOAL := help
.PHONY: help install install-torch test lint bench demo stress clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_./-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-22s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

install: $(VENV)/.installed  ## create .venv and install charrnn with the dev tools

install-torch: install  ## add the optional PyTorch CPU oracle (tests and benchmark baseline)
	$(PY) -m pip install -q torch==$(TORCH_VERSION)

test: install  ## run the test suite (PyTorch parity tests run when torch is installed)
	$(PY) -m pytest -q

lint: install  ## ruff check and format check
	$(VENV)/bin/ruff check charrnn tests benchmarks
	$(VENV)/bin/ruff format --check charrnn tests benchmarks

bench: install  ## speed table vs PyTorch CPU: make bench CORPUS=path/to/text.txt
	$(PY) benchmarks/bench.py --corpus $(CORPUS) $(BENCH_ARGS)

stress: install  ## long fault-injection storms (kill -9, SIGINT, SIGTERM, disk full, fuzz)
	$(PY) -m pytest -q -m stress tests

clean:  ## remove the venv, caches and generated corpora (checkpoints are kept)
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info build dist corpora/.build
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
