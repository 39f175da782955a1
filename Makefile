# Every workflow a person runs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo

.PHONY: help build test run bench profile lint fmt clippy infra-up infra-down clean screenshots

help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}'

build: ## Build every crate (debug)
	$(CARGO) build --workspace --all-targets --locked

test: ## Run every test against real PostgreSQL and RabbitMQ (started if needed)
	scripts/test.sh

screenshots: ## Run the console's browser test and write its screenshots to docs/screenshots/ (for the README)
	env_file="$$(scripts/infra.sh up test)" && . "$$env_file" && \
	  STOCKMESH_UPDATE_SCREENSHOTS=1 cargo test -p stockmesh-e2e --test console

run: ## Run the whole system locally in the foreground (Ctrl-C stops it)
	scripts/run.sh

bench: ## Benchmark the order flow against the pgbench ceiling (release build; not part of test)
	scripts/bench.sh

profile: ## `make bench` plus a perf profile of every process at the peak (bench/results/<date>-profile.txt)
	BENCH_PROFILE=1 scripts/bench.sh

lint: ## Formatting check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(MAKE) --no-print-directory clippy

clippy: ## Clippy on every crate and target, warnings as errors
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

infra-up: ## Start (or find) PostgreSQL and RabbitMQ for tests; prints the env file
	scripts/infra.sh up test

infra-down: ## Stop the test PostgreSQL/RabbitMQ started by infra-up
	scripts/infra.sh down test

clean: ## Remove build output
	$(CARGO) clean

# ---------------------------------------------------------------------------
# Containers and Kubernetes (charts/, k8s/, skaffold.yaml; see k8s/README.md)

IMAGE_REPO ?= stockmesh
IMAGE_TAG ?= dev
BINARIES := user product inventory order notification web stockmesh-operator loadgen
KIND_CLUSTER ?= stockmesh
INGRESS_NGINX_MANIFEST ?= https://raw.githubusercontent.com/kubernetes/ingress-nginx/controller-v1.12.1/deploy/static/provider/kind/deploy.yaml
SKAFFOLD_PROFILES ?= kind

.PHONY: images kind-up kind-down dev deploy e2e-k8s k8s-check k8s-tools

images: ## Build the eight images with docker (IMAGE_REPO/<bin>:IMAGE_TAG; loadgen runs helm test and load Jobs)
	@for bin in $(BINARIES); do \
		echo "==> $(IMAGE_REPO)/$$bin:$(IMAGE_TAG)"; \
		DOCKER_BUILDKIT=1 docker build --build-arg BIN=$$bin \
			--build-arg VERSION=$(IMAGE_TAG) \
			--build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) \
			--build-arg CREATED=$$(date -u +%Y-%m-%dT%H:%M:%SZ) \
			-t $(IMAGE_REPO)/$$bin:$(IMAGE_TAG) . || exit 1; \
	done

kind-up: ## Create the kind cluster (k8s/kind-config.yaml) with ingress-nginx
	kind get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)' || \
		kind create cluster --name $(KIND_CLUSTER) --config k8s/kind-config.yaml
	kubectl --context kind-$(KIND_CLUSTER) apply -f $(INGRESS_NGINX_MANIFEST)
	kubectl --context kind-$(KIND_CLUSTER) -n ingress-nginx wait deployment/ingress-nginx-controller \
		--for=condition=Available --timeout=300s
	@echo "kind cluster $(KIND_CLUSTER) is up; the Ingress answers on http://localhost:8080"

kind-down: ## Delete the kind cluster
	kind delete cluster --name $(KIND_CLUSTER)

dev: ## skaffold dev loop (SKAFFOLD_PROFILES=kind; helm,kind for the chart without operator)
	skaffold dev -p $(SKAFFOLD_PROFILES)

deploy: ## Build and deploy once with skaffold (operator + example InventorySystem + Jaeger)
	skaffold run -p $(SKAFFOLD_PROFILES)

e2e-k8s: ## End-to-end on the cluster: Ready, login, order, notification, trace in Jaeger
	scripts/e2e-k8s.sh

k8s-tools: ## Install helm 4, kubernetes-validate, check-jsonschema, hadolint, yamllint, shellcheck
	@scripts/tools.sh

k8s-check: ## Lint, render and validate charts, k8s/, skaffold.yaml, Dockerfile, scripts (no cluster)
	scripts/k8s-check.sh

.PHONY: crd
crd: ## Regenerate k8s/crd/inventorysystem.yaml from the Rust types
	$(CARGO) run -q -p stockmesh-operator --bin crdgen > k8s/crd/inventorysystem.yaml.tmp
	mv k8s/crd/inventorysystem.yaml.tmp k8s/crd/inventorysystem.yaml
