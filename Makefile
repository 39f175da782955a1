# Every workflow a person runs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo

.PHONY: help build test run lint fmt clippy infra-up infra-down clean

help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}'

build: ## Build every crate (debug)
	$(CARGO) build --workspace --all-targets --locked

test: ## Run every test against real PostgreSQL and RabbitMQ (started if needed)
	scripts/test.sh

run: ## Run the whole system locally in the foreground (Ctrl-C stops it)
	scripts/run.sh

lint: ## Formatting check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

infra-up: ## Start (or find) PostgreSQL and RabbitMQ for tests; prints the env file
	scripts/infra.sh up test

infra-down: ## Stop the test PostgreSQL/RabbitMQ started by infra-up
	scripts/infra.sh down test

clean: ## Remove build output
	$(CARGO) clean
