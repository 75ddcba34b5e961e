# Set-up and everyday commands. Everything lives in a project-local virtual environment (.venv).
# torch is installed first, pinned to a build that exists on this kind of machine (CPU); on a
# machine that already has a (CUDA) torch >= 2.10 in the venv, it is left alone.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install serve lint test test-fast examples bench fuzz clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[server,dev]"
	touch $(STAMP)

install: $(STAMP)

## Run the service in embedded mode (SQLite + local worker processes, data under ./gif-data).
serve: $(STAMP)
	$(VENV)/bin/gif-service serve --host $(HOST) --port $(PORT)

## Lint, format and type checks (also the first step of `make test`).
LINTED := gif jobs service workers gif_client
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy $(LINTED)

## Run the whole test suite (after the lint gate), one file per worker process at a time: most of
## the suite waits on real servers and subprocesses, so two workers finish it in about a third of
## the time on 2 cores (TEST_WORKERS=0 runs it in this process).
TEST_WORKERS ?= 2
test: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

## Everything except tests marked slow.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

## The paper's two protocols on scikit-learn digits (tables + plots under examples/output/).
examples: $(STAMP)
	$(PY) examples/class_removal.py
	$(PY) examples/backdoor_relabel.py

bench: $(STAMP)
	$(PY) bench/hvp_cost.py
	$(PY) bench/solvers.py
	$(PY) bench/time_to_solution.py
	$(PY) bench/memory.py
	$(PY) bench/cache.py

## Contract fuzzing against a real server with a large budget (not in CI; ~15-30 min on 2 cores).
## FUZZ_ARGS, e.g. "--mode distributed" or "--max-examples 50 --scenarios 20"; see bench/fuzz.py.
fuzz: $(STAMP)
	$(PY) bench/fuzz.py $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
