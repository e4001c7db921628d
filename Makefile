# The user's verbs. Each target installs what it needs: a virtualenv in .venv
# and, for the tests and the demo, a real kube-apiserver, etcd and kubectl
# built from source into a cache outside git (minutes the first time only).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
WITH_K8S = assets=$$(bash tests/ground/build-control-plane.sh) && KUBEBUILDER_ASSETS=$$assets

.PHONY: help demo test lint unit control-plane run clean

help:
	@echo "make demo           see the controller change a backend timeout (local apiserver + Compute fake)"
	@echo "make test           lint, type-check and run every test against the real apiserver"
	@echo "make run ARGS=...   run the controller with your kubeconfig"
	@echo "make control-plane  build/find kube-apiserver, etcd and kubectl; prints their folder"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

control-plane:
	@bash tests/ground/build-control-plane.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

test: lint
	$(WITH_K8S) $(BIN)/pytest

demo: $(STAMP)
	$(WITH_K8S) $(BIN)/python -m tests.ground.demo

run: $(STAMP)
	$(BIN)/python -m controller $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# Prints figures (informer memory, sync time, reconcile throughput, plan cost); asserts nothing.
.PHONY: bench
bench: $(STAMP)
	$(WITH_K8S) $(BIN)/python -m bench
