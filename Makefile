# cauce — run `make help` for the list of targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ROWS ?= 100000
PORT ?= 8080
PIPELINES_DIR ?= build/pipelines
# PyPI's Linux torch wheel is the CUDA build (several GB of nvidia-* wheels); the CPU
# build of the same version comes from PyTorch's index (offline, pip's find-links).
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
TORCH_VERSION := $(shell sed -n 's/^torch==//p' requirements/lock.txt)

.DEFAULT_GOAL := help

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/.installed: pyproject.toml requirements/lock.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24"
	$(BIN)/pip install --quiet --no-deps --index-url $(TORCH_INDEX_URL) "torch==$(TORCH_VERSION)"
	# The lock file pins every package of the local lifecycle + tests (GUIDE §1 versions).
	$(BIN)/pip install --quiet -r requirements/lock.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

setup: $(BIN)/.installed ## Create .venv with cauce and everything the local lifecycle and tests need

run: setup ## Run the whole lifecycle locally: train, deploy on :$(PORT), send traffic, monitor (ROWS=100000)
	$(BIN)/cauce demo --rows $(ROWS) --port $(PORT)

test: setup lint ## Lint and run the test suite (what CI runs)
	$(BIN)/pytest

lint: setup ## ruff on the code, hadolint on every Dockerfile
	$(BIN)/ruff check .
	$(BIN)/hadolint containers/*.Dockerfile

compile: setup ## Compile every pipeline to $(PIPELINES_DIR)/<name>.yaml and validate it
	$(BIN)/cauce compile -o $(PIPELINES_DIR)

export: setup ## Regenerate components/*/component.yaml and docs/components.md (the catalogue)
	$(BIN)/cauce export

images: setup ## List the image families and check their estimated sizes against the budgets
	$(BIN)/cauce images --sizes

image: ## Build one image with a local Docker engine: make image FAMILY=base
	docker build --file containers/$(FAMILY).Dockerfile --tag cauce-$(FAMILY):dev .

bench: setup ## Time the training pipeline per phase at 100k and 1M rows
	$(BIN)/python bench/bench_training.py --rows 100000 1000000

stop: setup ## Stop the local serving process
	$(BIN)/cauce stop

lock: ## Re-pin requirements/lock.txt from the current .venv
	# torch==X+cpu -> torch==X: matches the CPU wheel, and CI installs that build first.
	$(BIN)/pip freeze --exclude-editable | grep -v '^cauce' | sed 's/^\(torch==[^+]*\)+cpu$$/\1/' > requirements/lock.txt

clean: ## Remove build outputs (keeps .venv and ~/.cauce)
	rm -rf build .pytest_cache .ruff_cache

.PHONY: help setup run test lint compile export images image bench stop lock clean
