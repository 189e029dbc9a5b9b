# kube-fim: build, test, demo and benchmark from a fresh clone. Every target installs what it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help
# Serial even under -j: `test` must run lint, unit and e2e in that order, and cargo builds one at a
# time anyway (it holds a lock on the target directory).
.NOTPARALLEL:

CACHE_DIR ?= $(HOME)/.cache/kube-fim
export CARGO_TARGET_DIR ?= $(CACHE_DIR)/target
CARGO ?= cargo

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

.PHONY: demo
demo: ## Local cluster, operator, an agent per kwok node; tamper with a node, see status, event, report, metric, alert; re-init (KEEP=1 keeps it up)
	@demo/run.sh

.PHONY: test
test: lint unit e2e ## Everything: lint, unit (incl. integration and AIDE differential), e2e on the local cluster

.PHONY: lint
lint: tools ## Fast: shellcheck, hadolint, promtool (hack/lint.sh), then cargo fmt --check and clippy -D warnings
	@hack/lint.sh
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: unit
unit: tools ## Fast: every test that needs no cluster (unit, integration, AIDE differential, linters)
	$(CARGO) test --no-fail-fast --workspace --exclude kube-fim-e2e

.PHONY: tools
tools: ## Install what the tests, linters and benchmarks use (AIDE, Prometheus/promtool, shellcheck, hadolint)
	@hack/prune-cache.sh
	@hack/ensure-tools.sh
	@e2e/scripts/ensure-prometheus.sh >/dev/null

.PHONY: build
build: ## Build both release binaries, fim-agent and fim-operator (not the test helpers)
	$(CARGO) build --release -p kube-fim-agent -p kube-fim-operator

# SUITE=agent runs one suite (e2e/tests/agent.rs) instead of all of them.
SUITE ?=

.PHONY: e2e
e2e: e2e-binaries cluster-up ## The end-to-end suites against the local cluster, which is stopped afterwards (SUITE=agent: one suite)
	@status=0; $(CARGO) test --no-fail-fast -p kube-fim-e2e $(if $(SUITE),--test $(SUITE)) || status=$$?; \
	  e2e/scripts/cluster-down.sh; exit $$status

# Binaries the e2e suites run as processes, built before the cluster starts so a failed build
# leaves nothing running.
.PHONY: e2e-binaries
e2e-binaries:
	$(CARGO) build -p kube-fim-operator -p kube-fim-agent -p kube-fim-crds

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

# OLM (docs/olm.md). The test components opm, olm-operator, catalog-operator and bundle-validate
# are built once from e2e/olm/go.mod into ~/.cache/kube-fim/bin.
.PHONY: bundle
bundle: ## Regenerate the OLM bundle bundle/ (CSV, CRDs, metadata, bundle.Dockerfile) from config/
	$(CARGO) run -q -p kube-fim-crds --bin bundlegen

.PHONY: olm-components
olm-components: ## Build opm, olm-operator, catalog-operator and bundle-validate once (pinned in e2e/olm/go.mod)
	@e2e/scripts/build-components.sh opm olm catalog bundle-validate

.PHONY: bundle-validate
bundle-validate: olm-components ## Check bundle/ with operator-framework/api's validators (default + operatorframework suite)
	@source e2e/scripts/lib.sh && "$$(component_bin bundle-validate)" bundle

.PHONY: catalog
catalog: bundle olm-components ## Render the file-based catalog catalog/ from bundle/ and check it with `opm validate`
	@hack/catalog.sh

.PHONY: catalog-deploy
catalog-deploy: olm-components ## Install kube-fim through OLM from catalog/ into the current cluster (NAMESPACE=kube-fim; starts OLM there if absent, see docs/olm.md)
	@hack/catalog-deploy.sh

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

.PHONY: bench
bench: tools ## Side-by-side benchmark against AIDE on BENCH_ROOT (default /usr)
	@bench/run.sh

.PHONY: bench-operator
bench-operator: cluster-components ## Operator scale run on a separate cluster: one FileIntegrity over NODES (1000) kwok nodes
	$(CARGO) build -p kube-fim-operator -p kube-fim-agent
	@bench/operator-scale.sh

# The agent under a flood of new files (issue 10 item 10): e2e/tests/attacks.rs's flood test with
# FLOOD files (CI runs it with 50,000) against a cluster of its own making, peak RSS printed.
FLOOD ?= 1000000

.PHONY: bench-flood
bench-flood: e2e-binaries cluster-components ## The agent daemon when FLOOD (1,000,000) files are added at once: Failed with all counted, peak RSS
	@REAL_NODE=0 e2e/scripts/cluster-up.sh
	@status=0; KUBE_FIM_FLOOD_FILES=$(FLOOD) $(CARGO) test -p kube-fim-e2e --test attacks \
	  a_flood_of_new_files_hides_no_change_and_memory_stays_bounded -- --nocapture || status=$$?; \
	  e2e/scripts/cluster-down.sh; exit $$status

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt --all
