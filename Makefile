# kube-fim: build, test, demo and benchmark from a fresh clone. Every target installs what it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CACHE_DIR ?= $(HOME)/.cache/kube-fim
export CARGO_TARGET_DIR ?= $(CACHE_DIR)/target
CARGO ?= cargo
AGENT := $(CARGO_TARGET_DIR)/release/fim-agent

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

.PHONY: tools
tools: ## Install the system packages the tests and benchmarks use (AIDE, the reference)
	@hack/ensure-tools.sh

.PHONY: build
build: ## Build release binaries
	$(CARGO) build --release --workspace

.PHONY: test
test: tools ## All tests: formatting, lints, unit, integration and AIDE differential tests
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace

.PHONY: crds
crds: ## Regenerate config/crd/ from the Rust types
	$(CARGO) run -q -p kube-fim-crds --bin crdgen -- config/crd

.PHONY: demo
demo: build ## Baseline a sample node tree, tamper with it, and show what fim-agent reports
	@demo/run.sh "$(AGENT)"

.PHONY: bench
bench: tools ## Side-by-side benchmark against AIDE on BENCH_ROOT (default /usr)
	@bench/run.sh

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt --all
