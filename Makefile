# cauce — run `make help` for the list of targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ROWS ?= 100000
PORT ?= 8080
PIPELINES_DIR ?= build/pipelines
# PyPI's Linux torch wheel is the CUDA build (several GB of nvidia-* wheels); the CPU
# build of the same version comes from PyTorch's index.
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
TORCH_VERSION := $(shell sed -n 's/^torch==//p' requirements/lock.txt)
FAMILY ?= base

.DEFAULT_GOAL := help

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# The venv holds exactly requirements/lock.txt: build tools first (requirements/build.txt),
# torch's CPU build, then every pin with --no-deps (nothing unpinned can get in), and
# `pip check` proves the lock is closed. A changed lock rebuilds the venv from scratch.
# --retries 0: where PyTorch's index is out of reach, pip at once takes the same CPU
# wheel from the locations it is configured to find wheels in, if any.
$(BIN)/.installed: pyproject.toml requirements/lock.txt requirements/build.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-deps -r requirements/build.txt
	$(BIN)/pip install --quiet --no-deps --retries 0 --index-url $(TORCH_INDEX_URL) "torch==$(TORCH_VERSION)" 2>&1 \
		| { grep -v -e 'Retrying' -e 'NameResolutionError' -e 'Could not fetch URL' || true; }
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -r requirements/lock.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $@

setup: $(BIN)/.installed ## Create .venv with cauce and everything the local lifecycle and tests need

run: setup ## Run the whole lifecycle locally: train, deploy on :$(PORT), send traffic, monitor (ROWS=100000)
	$(BIN)/cauce demo --rows $(ROWS) --port $(PORT)

test: setup lint ## Lint, build the images when a Docker engine can run, and run the whole test suite (what CI runs)
	@if containers/local/engine.sh; then $(MAKE) --no-print-directory images; \
	elif [ -n "$$CI" ]; then echo "error: CI runs the container tests and needs a Docker engine" >&2; exit 1; \
	else echo "no Docker engine here: the container tests will be skipped"; fi
	$(BIN)/pytest

lint: setup ## ruff on the code, hadolint on every Dockerfile
	$(BIN)/ruff check .
	$(BIN)/hadolint containers/*.Dockerfile

compile: setup ## Compile every pipeline to $(PIPELINES_DIR)/<name>.yaml and validate it
	$(BIN)/cauce compile -o $(PIPELINES_DIR)

export: setup ## Regenerate components/*/component.yaml and docs/components.md (the catalogue)
	$(BIN)/cauce export

engine: ## Start a Docker engine (installs Debian's docker.io if none answers) and the local Python base image
	containers/local/engine.sh
	containers/local/python-standin.sh

images: setup ## Build all five image families here; each must pass its smoke import, run non-root, fit its budget
	containers/local/build-images.sh  # starts the engine and prepares the stand-ins itself

image: setup ## Build and check one image family: make image FAMILY=base
	containers/local/build-images.sh $(FAMILY)

sizes: setup ## Estimate each image's size from this venv and compare with the budgets (no engine needed)
	$(BIN)/cauce images --sizes

run-docker: images ## The whole lifecycle with every step in its image and the model served in a container
	$(BIN)/cauce demo --runner docker --rows $(ROWS) --port $(PORT)

release-rehearsal: images ## Run the release build's steps here against a local registry (push, digests, compile, run)
	$(BIN)/pytest -q tests/test_release_rehearsal.py

bench: setup ## Time the training pipeline per phase at 100k and 1M rows
	$(BIN)/python bench/bench_training.py --rows 100000 1000000

stop: setup ## Stop the local serving process
	$(BIN)/cauce stop

lock: ## Re-pin requirements/lock.txt and requirements/image-*.txt from the current .venv
	# torch==X+cpu -> torch==X: matches the CPU wheel, which the venv and images install first.
	{ sed -n '1,/^[^#]/{/^#/p}' requirements/lock.txt; \
	  $(BIN)/pip freeze --all --exclude-editable | grep -v '^cauce' | sed 's/^\(torch==[^+]*\)+cpu$$/\1/'; \
	} > requirements/lock.txt.new && mv requirements/lock.txt.new requirements/lock.txt
	$(BIN)/python -m cauce.families lock
	$(BIN)/python -m cauce.components.register.mlflow_schema  # a new MLflow's schema for new local databases
	touch $(BIN)/.installed

clean: ## Remove build outputs (keeps .venv and ~/.cauce)
	rm -rf build .pytest_cache .ruff_cache

.PHONY: help setup run test lint compile export engine images image sizes run-docker release-rehearsal bench stop lock clean
