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
	@echo "make image          build the image (local Debian base; BASE_IMAGE=python:3.11-slim for a public one)"
	@echo "make push           push it to REGISTRY (default a local one on 127.0.0.1:5000)"
	@echo "make e2e            build the image and test it against the real apiserver (needs root for apt)"
	@echo "make bench          the controller against a kopf and a 2018-design peer, side by side (ARGS=--smoke: quick)"

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

# The suite mostly waits (on apiservers, processes, fault timelines), so it runs on more
# workers than cores; each worker starts its own session apiserver. loadgroup hands out
# one test at a time as workers come free, those marked long first (tests/conftest.py).
TEST_WORKERS ?= 4

test: lint
	$(WITH_K8S) $(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup

demo: $(STAMP)
	$(WITH_K8S) $(BIN)/python -m tests.ground.demo

run: $(STAMP)
	$(BIN)/python -m controller $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# The image. Without BASE_IMAGE it is built on the local base that containers.sh
# makes (no registry needs to be reachable); `make image BASE_IMAGE=python:3.11-slim`
# builds on a public one. `docker build .` works too.
IMAGE    ?= gke-ingress-timeout:latest
REGISTRY ?= 127.0.0.1:5000
PODMAN   := podman --storage-driver vfs
WITH_PODMAN = conf=$$(bash tests/ground/containers.sh) && export "$$conf" &&
LOCAL_REGISTRY = $(filter 127.0.0.1:% localhost:%,$(REGISTRY))

.PHONY: image push e2e

image:
	$(WITH_PODMAN) $(PODMAN) build --layers=false --isolation chroot --network host \
	  --build-arg BASE_IMAGE=$(or $(BASE_IMAGE),localhost/gke-ingress-timeout-base:py) \
	  --tag $(IMAGE) .

# The default REGISTRY is one on this machine:
#   docker-registry serve ~/.cache/gke-ingress-timeout/containers/registry.yml
push: image
	$(WITH_PODMAN) $(PODMAN) push $(if $(LOCAL_REGISTRY),--tls-verify=false) \
	  $(IMAGE) $(REGISTRY)/$(IMAGE)

e2e: $(STAMP)
	bash tests/ground/containers.sh >/dev/null
	$(WITH_K8S) $(BIN)/pytest tests/e2e

# The controller, a kopf peer and the 2018 design through the same scenarios: one table,
# figures in bench/results.json; asserts nothing. ARGS=--smoke, ARGS="--size 10000", ...
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

.PHONY: bench
bench: $(BENCH_STAMP)
	$(WITH_K8S) $(BIN)/python -m bench $(ARGS)
