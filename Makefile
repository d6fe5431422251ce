# dialsum: `make demo` runs the main job on the embedded default, `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Nothing here reaches a model hub; tiny models are built from scratch.
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast export clean-nbs check-sync lab help

help:
	@echo "make demo       train, score and submit the embedded demo experiment (runs/demo_*)"
	@echo "make test       nbdev_test (slow cells included) + pytest"
	@echo "make test-fast  the same without slow cells and slow pytest cases"
	@echo "make export     notebooks -> dialsum/ and README.md (nbs/index.ipynb); clean notebooks"
	@echo "make check-sync fail if nbdev_export or nbdev_clean would change tracked files"

# The virtual environment is made once and refreshed when the packaging changes.
# torch is pinned here: a bare `torch` requirement could pull a multi-GB CUDA build.
$(STAMP): setup.py settings.ini
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/dialsum run configs/experiments/demo.yaml

test: $(STAMP)
	$(BIN)/nbdev_test --flags slow --n_workers 2
	$(BIN)/pytest -q -rs tests

test-fast: $(STAMP)
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

lab: $(STAMP)
	$(BIN)/pip install -q jupyterlab
	$(BIN)/jupyter lab --no-browser
