# kube-fim: build, test, demo and benchmark from a fresh clone. Every target installs what it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CACHE_DIR ?= $(HOME)/.cache/kube-fim
export CARGO_TARGET_DIR ?= $(CACHE_DIR)/target
CARGO ?= cargo

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

.PHONY: tools
tools: ## Install the system packages the tests and benchmarks use (AIDE, Prometheus)
	@hack/ensure-tools.sh
	@e2e/scripts/ensure-prometheus.sh >/dev/null

.PHONY: build
build: ## Build the release binaries (the product crates only, not the test helpers)
	$(CARGO) build --release -p kube-fim-agent

.PHONY: test
test: tools ## All tests: fmt, clippy, unit, integration, AIDE differential, and e2e on the local cluster
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace --exclude kube-fim-e2e
	$(MAKE) --no-print-directory e2e

.PHONY: e2e
e2e: e2e-binaries cluster-up ## The end-to-end suites against the local cluster, which is stopped afterwards
	@status=0; $(CARGO) test -p kube-fim-e2e || status=$$?; \
	  e2e/scripts/cluster-down.sh; exit $$status

# Binaries the e2e suites run as processes, built before the cluster starts so a failed build
# leaves nothing running.
.PHONY: e2e-binaries
e2e-binaries:
	$(CARGO) build -p kube-fim-operator -p kube-fim-agent

.PHONY: cluster-components
cluster-components: ## Build the test cluster's components once (control plane, etcd, kwok, MinIO) into ~/.cache/kube-fim/bin
	@e2e/scripts/build-components.sh

.PHONY: cluster-up
cluster-up: cluster-components ## Start the local test cluster and MinIO on 127.0.0.1 (NODES=3 kwok nodes); writes e2e/.cluster/{kubeconfig,env}
	@e2e/scripts/cluster-up.sh

.PHONY: cluster-down
cluster-down: ## Stop the local test cluster and drop its data (logs stay in e2e/.cluster/logs)
	@e2e/scripts/cluster-down.sh

.PHONY: crds
crds: ## Regenerate config/crd/ from the Rust types
	$(CARGO) run -q -p kube-fim-crds --bin crdgen -- config/crd

# Installing kube-fim into the cluster of the current kubeconfig (KUBECONFIG, KUBECTL overridable).
KUBECTL ?= kubectl
DEPLOY_CONFIG ?= config/default
# PROMETHEUS=1 also applies config/prometheus (needs the Prometheus operator's CRDs).
PROMETHEUS ?=
# DRY_RUN=server (or client) only shows what deploy/undeploy would do.
DRY_RUN ?=
KUBECTL_DRY_RUN := $(if $(DRY_RUN),--dry-run=$(DRY_RUN))

.PHONY: deploy
deploy: ## Install kube-fim (config/default: CRDs, namespace kube-fim, RBAC, admission policy, operator) with server-side apply; PROMETHEUS=1 adds the alert rule
	$(KUBECTL) apply --server-side --force-conflicts --field-manager=kube-fim-deploy $(KUBECTL_DRY_RUN) -k $(DEPLOY_CONFIG)
	$(if $(PROMETHEUS),$(KUBECTL) apply --server-side --force-conflicts --field-manager=kube-fim-deploy $(KUBECTL_DRY_RUN) -k config/prometheus)

.PHONY: undeploy
undeploy: ## Remove what deploy installed, CRDs included (so every FileIntegrity and report goes too)
	$(if $(PROMETHEUS),$(KUBECTL) delete --ignore-not-found $(KUBECTL_DRY_RUN) -k config/prometheus)
	$(KUBECTL) delete --ignore-not-found $(KUBECTL_DRY_RUN) -k $(DEPLOY_CONFIG)

.PHONY: demo
demo: ## Local cluster, operator, an agent per kwok node; tamper with a node, see status, event, report, metric, alert; re-init (KEEP=1 keeps it up)
	@demo/run.sh

.PHONY: bench
bench: tools ## Side-by-side benchmark against AIDE on BENCH_ROOT (default /usr)
	@bench/run.sh

.PHONY: bench-operator
bench-operator: cluster-components ## Operator scale run on a separate cluster: one FileIntegrity over NODES (1000) kwok nodes
	$(CARGO) build -p kube-fim-operator -p kube-fim-agent
	@bench/operator-scale.sh

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt --all
