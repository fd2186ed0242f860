# The Makefile is the interface: `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CORPUS ?= corpora/python-stdlib.txt
DEMO_TIME ?= 3m30s
TINY_URL := https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
BENCH_ARGS ?=
GPU_CHECK_ARGS ?=
SCALE_ARGS ?=
TORCH_VERSION := 2.13.0

.DEFAULT_GOAL := help
.PHONY: help install install-torch install-extras test lint bench bench-scale gpu-check demo stress clean

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

install-extras: install  ## add the optional extras whose tests run on a CPU (tune, MPI, plot, serve)
	$(PY) -m pip install -q -e '.[dev,tune,mpi,plot,serve]'

.PHONY: install-mpi
install-mpi: install  ## add MPI (mpi4py and an MPICH wheel) for mpiexec -n N charrnn train, and its tests
	$(PY) -m pip install -q -e '.[mpi]'

test: install  ## run the test suite (PyTorch parity and MPI tests run when torch / the mpi extra are installed)
	$(PY) -m pytest -q
	@echo "GPU tests against the NumPy stand-in for CuPy (the logic and host/device discipline, not CuPy):"
	PYTHONPATH=tests/cupy_standin $(PY) -m pytest -q -p no:cacheprovider tests/test_gpu.py

lint: install  ## ruff check and format check
	$(VENV)/bin/ruff check charrnn tests benchmarks
	$(VENV)/bin/ruff format --check charrnn tests benchmarks

bench: install  ## speed table vs PyTorch CPU: make bench CORPUS=path/to/text.txt
	$(PY) benchmarks/bench.py --corpus $(CORPUS) $(BENCH_ARGS)

bench-scale: install  ## start-up, speed, validation share and memory at 10 MB, 100 MB and 1 GB (about 40 minutes)
	$(PY) benchmarks/scale.py --corpus $(CORPUS) $(SCALE_ARGS)

# no install step: the GPU machine has CuPy, PyTorch and the rest, and no network
gpu-check:  ## on an NVIDIA GPU with CuPy and PyTorch: GPU tests, then a table against cuDNN (5 minutes)
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

corpora/python-stdlib.txt corpora/python-heldout.txt: corpora/build_stdlib.py
	$(PYTHON) corpora/build_stdlib.py corpora/python-stdlib.txt corpora/python-heldout.txt

corpora/tinyshakespeare.txt:  ## download the standard 1.1 MB benchmark corpus
	@$(PYTHON) -c "import sys, urllib.request; \
	  data = urllib.request.urlopen('$(TINY_URL)', timeout=30).read(); open('$@', 'wb').write(data)" \
	  || { echo "Could not download $(TINY_URL) (offline?). Copy input.txt from karpathy/char-rnn to $@ instead."; exit 1; }

demo: install corpora/python-stdlib.txt  ## train on Python's own source for a few minutes, then sample and score (about 5 minutes)
	$(VENV)/bin/charrnn train corpora/python-stdlib.txt -o checkpoints/demo --max-time $(DEMO_TIME) \
	  --eval-every 200 --save-every 200
	@echo; echo "=== charrnn sample -c checkpoints/demo -n 700 -t 0.7 --seed 1 --prime 'def ' --dry-multiplier 0.8"
	$(VENV)/bin/charrnn sample -c checkpoints/demo -n 700 -t 0.7 --seed 1 --prime "def " --dry-multiplier 0.8
	@echo; echo "=== charrnn score: held-out Python (never trained on) vs this README (English prose)"
	$(VENV)/bin/charrnn score -c checkpoints/demo corpora/python-heldout.txt README.md --unknown skip
	@echo; echo "Checkpoints are in checkpoints/demo/ (best.npz, last.npz, metrics.jsonl)."

stress: install  ## long fault-injection storms (kill -9, SIGINT, SIGTERM, disk full, fuzz); about 20 minutes
	@$(PY) -c "import atheris" 2>/dev/null || $(PY) -m pip install -q atheris \
	  || echo "note: atheris does not install here; the loader is fuzzed with hypothesis instead"
	$(PY) -m pytest -q -s -m stress tests

clean:  ## remove the venv, caches and generated corpora (checkpoints are kept)
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info build dist corpora/.build
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
