# Two commands do all the set-up on a fresh machine:
#   make book   build the book into _build/html (creates .venv, installs, executes every chapter
#               whose code or inputs changed since the last build: on a fresh clone, all of them)
#   make test   run every check: unit tests, nbval on every chapter, the book build
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Notebooks run on the kernel installed inside .venv, whatever else the machine has.
export JUPYTER_PATH := $(CURDIR)/$(VENV)/share/jupyter
# pip's notices about unused local package folders on some machines are noise.
PIPQUIET := { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: venv mathjax book test unit nbval notebooks stamp lab clean

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

# Executed chapters are kept in jupyter-cache (_config.yml: execute_notebooks: cache), which
# matches a chapter by its code cells alone; tools/book_inputs.py sums up the rest they run on
# (the package, the installed versions, Python, _config.yml). When that sum changes, the cache
# and Sphinx's saved state are emptied, so every chapter runs again. A fresh clone has neither.
JCACHE := _build/.jupyter_cache

book: venv
	@$(MAKE) --no-print-directory mathjax
	@sum=$$($(BIN)/python tools/book_inputs.py); \
	if [ "$$(cat $(JCACHE)/inputs.sha256 2>/dev/null)" != "$$sum" ]; then \
	  if [ -d $(JCACHE) ]; then echo "the chapters' inputs changed: emptying $(JCACHE), every chapter runs again"; fi; \
	  rm -rf $(JCACHE) _build/.doctrees && mkdir -p $(JCACHE) && echo "$$sum" > $(JCACHE)/inputs.sha256; \
	fi
	$(BIN)/jupyter-book build . --builder html -W -n --keep-going

test: book
	$(BIN)/python -m pytest tests notebooks --nbval-lax -p no:cacheprovider --durations=15

unit: venv
	$(BIN)/python -m pytest tests -m "not slow"

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
