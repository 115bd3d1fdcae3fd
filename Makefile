# Two commands do all the set-up on a fresh machine:
#   make book   build the book into _build/html (creates .venv, installs; the chapters are
#               rendered as saved: `make notebooks` executes them)
#   make test   run every check: the book build, the unit tests, every chapter under nbval in a
#               Colab-like environment (tests/test_colab.py), the graded student notebooks
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Notebooks run on the kernel installed inside .venv, whatever else the machine has.
export JUPYTER_PATH := $(CURDIR)/$(VENV)/share/jupyter
# pip's notices about unused local package folders on some machines are noise.
PIPQUIET := { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: venv mathjax book test test-long unit nbval notebooks stamp lab clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | $(PIPQUIET)
	$(BIN)/python -m pip install -q -e ".[dev,nbgrader]" 2>&1 | $(PIPQUIET)
	$(BIN)/python -c "import mae_from_scratch, torch, transformers, nbval; print('installed torch', torch.__version__)"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3"
	touch $@

venv: $(VENV)/.installed

# MathJax served from the book itself (npm package mathjax@3), so math renders offline.
MATHJAX := book/_static/mathjax/tex-mml-chtml.js
$(MATHJAX):
	@if command -v npm >/dev/null; then \
	  npm install --silent --no-save --no-audit --no-fund --prefix .cache/npm mathjax@3 && \
	  rm -rf book/_static/mathjax && mkdir -p book/_static && \
	  cp -r .cache/npm/node_modules/mathjax/es5 book/_static/mathjax; \
	else echo "npm not found: the book will load MathJax from its CDN (math needs a network to render)"; fi

mathjax: $(MATHJAX)

# The book renders the chapters as they were saved (execute_notebooks: off in _config.yml):
# `make notebooks` executes them, and `make test` runs them again in a Colab-like environment.
book: venv
	@$(MAKE) --no-print-directory mathjax
	$(BIN)/jupyter-book build . --builder html -W -n --keep-going

# `make test` runs in two parts on the machine's two workers (pytest-xdist, WORKERS): first
# everything but the notebooks, one test per worker with torch on one thread each; then the
# tests that run whole notebooks (marked `notebooks`), one test at a time, since each of them
# runs its kernels two at a time itself.  `make unit` is the first part without the slow tests.
# `make test-long` runs the few tests marked `long`: minutes each, for what a faster test in
# `make test` checks too, more fully (the recorded model's kNN on the whole of CIFAR-10).
WORKERS ?= 2
test: book
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests -m "not notebooks and not long" -n $(WORKERS) --dist loadgroup --durations=15
	$(BIN)/python -m pytest tests -m "notebooks and not long" --durations=15

test-long: venv
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests -m long -n $(WORKERS) --dist loadgroup --durations=15

unit: venv
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests -m "not slow" -n $(WORKERS) --dist loadgroup

# nbval on the chapters in place, on .venv's kernel (make test runs them in a Colab-like one).
nbval: venv
	$(BIN)/python -m pytest notebooks --nbval-lax

# Re-execute the chapters in place (their saved outputs are what nbval compares against).
notebooks: venv
	$(BIN)/python tools/stamp_setup_cell.py
	$(BIN)/python tools/run_notebooks.py

stamp: venv
	$(BIN)/python tools/stamp_setup_cell.py

lab: venv
	$(BIN)/python -m pip install -q jupyterlab 2>&1 | $(PIPQUIET)
	$(BIN)/jupyter lab notebooks

clean:
	rm -rf _build
