# dialsum: `make demo` runs the main job on the embedded default, `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Nothing here reaches a model hub; tiny models are built from scratch.
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo lint test test-fast export clean-nbs check-sync lab docs browser postgres bench help

help:
	@echo "make demo       train, score and submit the embedded demo experiment (runs/demo_*)"
	@echo "make lint       ruff on dialsum/ (ruff.toml) and the import layering (.importlinter)"
	@echo "make test       make lint, then nbdev_test (slow cells included) + pytest"
	@echo "make test-fast  the same without slow cells and slow pytest cases"
	@echo "make export     notebooks -> dialsum/ and README.md (nbs/index.ipynb); clean notebooks"
	@echo "make check-sync fail if nbdev_export or nbdev_clean would change tracked files"
	@echo "make docs       the docs site into _docs/ (nbdev_docs with quarto, else nbdev's processing + mkdocs)"
	@echo "make lab        JupyterLab on the project, with dialsum importable"
	@echo "make bench      speed against the old baseline's recipe -> bench/RESULTS.md (ARGS=--quick: smoke check)"

# The virtual environment is made once and refreshed when the packaging changes.
# torch is pinned here: a bare `torch` requirement could pull a multi-GB CUDA build. This workplace's pip
# finds the CPU wheel on disk; elsewhere `make install TORCH_INDEX=https://download.pytorch.org/whl/cpu`.
TORCH_INDEX ?=
$(STAMP): setup.py settings.ini
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/dialsum run configs/experiments/demo.yaml

# The exported package: ruff's rules (ruff.toml); the notebooks' code cells: line length; then the layering: each module imports only from those below it
# (.importlinter; where a module goes: nbs/index.ipynb, "Where things live"). A finding is fixed in the notebook.
lint: $(STAMP)
	$(BIN)/ruff check dialsum
	$(BIN)/ruff check --select E501,W nbs
	$(BIN)/lint-imports

test: lint
	$(BIN)/nbdev_test --flags slow --n_workers 2
	$(BIN)/pytest -q -rs --durations=30 tests

test-fast: lint
	$(BIN)/nbdev_test --n_workers 2
	$(BIN)/pytest -q -rs -m "not slow" tests

export: $(STAMP)
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean
	$(BIN)/python tools/readme.py

check-sync: $(STAMP)
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean
	$(BIN)/python tools/readme.py
	@git diff --exit-code --stat -- dialsum nbs README.md || { echo "nbdev_export/nbdev_clean changed tracked files: run 'make export' and commit"; exit 1; }
	@test -z "$$(git status --porcelain --untracked-files=all -- dialsum)" || { git status --porcelain -- dialsum; echo "nbdev_export made untracked files in dialsum/"; exit 1; }

# JupyterLab is a dev requirement; its python3 kernel is the venv's, so dialsum imports (tests/test_lab.py).
lab: $(STAMP)
	$(BIN)/jupyter lab --no-browser --notebook-dir=. $(if $(filter 0,$(shell id -u)),--allow-root)

# nbdev_docs needs quarto; without it tools/docs.py runs nbdev's processors and builds the site with mkdocs.
docs: $(STAMP)
	$(BIN)/nbdev_export
	@if command -v quarto >/dev/null; then $(BIN)/nbdev_docs; else $(BIN)/python tools/docs.py --strict; fi

# Debian's Chromium and ChromeDriver for tests/test_docs_browser.py, which runs this when they are missing.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }

# Debian's PostgreSQL server (initdb, pg_ctl in /usr/lib/postgresql/<ver>/bin) for tests/test_tune_postgres.py, which
# runs this when they are missing and starts a throwaway server of its own (nothing here starts or configures one).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; }

# Speed against the old baseline's recipe, side by side (bench/README.md); needs ../shared. ARGS=--quick: a smoke check.
bench: $(STAMP)
	$(BIN)/python bench/bench.py $(ARGS)
