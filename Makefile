# Mercato developer entry points. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
# uv is installed from PyPI into a project-local tool folder when the machine lacks it.
UV_HOME := $(CURDIR)/.state/tools/uv
UV := $(shell command -v uv 2>/dev/null || echo $(UV_HOME)/bin/uv)
RUN := $(UV) run --frozen

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(UV_HOME)/bin/uv:
	python3 -m pip install --quiet --disable-pip-version-check --target $(UV_HOME)/lib uv==$(UV_VERSION)
	mkdir -p $(UV_HOME)/bin && ln -sf $(UV_HOME)/lib/bin/uv $(UV_HOME)/bin/uv

.PHONY: uv
uv: $(if $(filter $(UV_HOME)/bin/uv,$(UV)),$(UV_HOME)/bin/uv)

.PHONY: sync
# Bytecode compiled at install, as in the images: with PYTHONDONTWRITEBYTECODE set (as on some
# machines) every start would compile every module again: slower, and about 15 MiB more RSS.
sync: uv ## install the Python workspace (locked) into .venv, bytecode compiled as in the images
	$(UV) sync --frozen --all-packages --compile-bytecode

.PHONY: protos
protos: sync ## regenerate from protos/: the Python stubs in libs/contracts, the gateway's GraphQL schema, the chart's gRPC method list
	$(RUN) python tools/protos.py generate
	$(RUN) python tools/graphql_schema.py write
	$(RUN) python tools/helm.py methods

.PHONY: lint
lint: sync ## ruff, mypy, import contracts, dependency floors, buf lint/breaking, stub, dashboard and chart README checks, GraphQL schema drift and breaking changes, yamllint + ansible-lint
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy libs/common/src libs/devstack/src $(wildcard services/*/src)
	$(RUN) lint-imports
	$(RUN) python tools/check_dependencies.py
	$(RUN) python tools/protos.py lint
	$(RUN) python tools/protos.py check
	$(RUN) python tools/dashboards.py --check
	$(RUN) python tools/chart_readme.py --check
	$(RUN) python tools/graphql_schema.py check
	$(RUN) python tools/graphql_schema.py breaking
	cd deploy/ansible && LC_ALL=C.UTF-8 $(RUN) yamllint --strict .
	cd deploy/ansible && LC_ALL=C.UTF-8 $(RUN) ansible-lint

.PHONY: fmt
fmt: sync ## format and autofix
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

# The suites that need services print their slowest tests, so that a CI log says where the time
# of `make test` goes.
SLOWEST ?= --durations=10

.PHONY: test-unit
test-unit: sync ## unit tests (no services needed)
	$(RUN) pytest -q -m "not integration" libs services tests/tools

.PHONY: stack-up
stack-up: sync ## start PostgreSQL, Kafka, FerretDB and Redis as local processes
	$(RUN) python -m mercato_devstack up

.PHONY: stack-down
stack-down: sync ## stop the local stack (state is kept)
	$(RUN) python -m mercato_devstack down

.PHONY: stack-status
stack-status: sync ## show the local stack's components and their health
	$(RUN) python -m mercato_devstack status

.PHONY: test-integration
test-integration: stack-up ## integration tests against the real local stack
	$(RUN) pytest -q $(SLOWEST) -m integration tests/integration libs services

.PHONY: bench
bench: sync ## the whole suite benchmarked in one run: bench/results/<UTC date>.json and .md
	$(RUN) python bench/suite_bench.py

.PHONY: profile
profile: sync ## make bench, plus py-spy profiles of every service under the order load (bench/profiles/)
	$(RUN) python bench/suite_bench.py --profile

.PHONY: bench-services
bench-services: stack-up ## per-service micro-benchmarks (in-process servers): bench/results/<name>.json
	mkdir -p bench/results
	for script in $(wildcard bench/bench_*.py); do $(RUN) python "$$script"; done

.PHONY: test-deploy
# Rendering is helm's own CPU work in a subprocess per render: two pytest workers keep both
# cores busy. The pinned helm and promtool are built first, one after the other (minutes each
# from a cold Go build cache): built inside the tests, both at once, they ran into the tests'
# 300 s timeout on a slow machine.
test-deploy: sync ## Helm chart, manifests and images: render, lint, validate, scan (offline)
	$(RUN) python tools/helm.py path >/dev/null
	$(RUN) python tools/promtool.py path >/dev/null
	$(RUN) pytest -q $(SLOWEST) -n 2 tests/deploy

.PHONY: observe-tools
observe-tools: sync ## build Prometheus and Jaeger from their Go modules (once; `make observe` and test-e2e use them)
	$(RUN) python -m mercato_devstack observe-tools

.PHONY: test-e2e
test-e2e: stack-up observe-tools ## end-to-end journeys, fault tests and the observability proof against private copies of the suite
	$(RUN) pytest -q $(SLOWEST) -m e2e tests/e2e

# The Kubernetes version of the local control plane (tools/k8s.py); another one is built and
# run the same way, e.g. `make k8s-up K8S_VERSION=1.34.2`.
K8S_VERSION ?= 1.37.2
export K8S_VERSION

# The nodes: `fake` (kwok's four, no container runs) or `real`, which also joins a real node
# (tools/node.py: containerd, runc, CNI, kubelet, kube-proxy, CoreDNS; root, a few minutes cold).
NODE ?= fake

.PHONY: k8s-up
k8s-up: sync ## a local Kubernetes control plane (etcd, apiserver, controller-manager, scheduler, kwok nodes); NODE=real adds a real node
	$(RUN) python tools/k8s.py up
	@if [ "$(NODE)" = real ]; then $(RUN) python tools/node.py up; fi

.PHONY: k8s-down
k8s-down: sync ## stop the local Kubernetes control plane (and a real node), leave no process behind (state is kept)
	$(RUN) python tools/node.py down
	$(RUN) python tools/k8s.py down

.PHONY: k8s-status
k8s-status: sync ## each process of the local Kubernetes control plane (and a real node) with pid, port and health
	$(RUN) python tools/k8s.py status
	@if [ "$(NODE)" = real ]; then $(RUN) python tools/node.py status; fi

.PHONY: test-k8s
test-k8s: sync ## the Helm chart installed, upgraded, rolled back, uninstalled on the local control plane
	$(RUN) python tools/k8s.py build
	$(RUN) pytest -q $(SLOWEST) -s -m k8s tests/k8s --ignore=tests/k8s/ansible

.PHONY: test-iac
test-iac: sync ## the Ansible playbooks (deploy/ansible) on the local control plane: site, idempotence, drift, rotate, teardown
	$(RUN) python tools/k8s.py build
	$(RUN) pytest -q $(SLOWEST) -s -m k8s tests/k8s/ansible

.PHONY: test-pods
test-pods: sync ## opt-in: the suite in real pods on a real node (images, chart, helm test, e2e journeys, a pod kill)
	$(RUN) python tools/k8s.py build
	$(RUN) python tools/node.py build
	$(RUN) pytest -q $(SLOWEST) -s -m pods tests/pods

# Service images without Docker (tools/images.py, docs/images.md): runc, BuildKit, the registry
# and crane built from pinned Go modules; the registry (127.0.0.1:5000) and buildkitd keep running
# afterwards (`make images-down` stops them).
.PHONY: base-image
base-image: sync ## the Debian base image (mmdebstrap: python3, ca-certificates), pushed to the local registry
	$(RUN) python tools/images.py base

.PHONY: images
images: sync ## every service image with BuildKit: OCI archives in .state/images/oci, pushed to the local registry
	$(RUN) python tools/images.py build

.PHONY: images-smoke
images-smoke: stack-up ## image checks: numeric non-root user, no build tools, sizes, each started read-only under runc
	$(RUN) pytest -q $(SLOWEST) -s -m images tests/images

.PHONY: images-down
images-down: sync ## stop the local registry and buildkitd
	$(RUN) python tools/images.py down

LOAD_HOST ?= http://127.0.0.1:8080
LOAD_USERS ?= 20
LOAD_RATE ?= 5
LOAD_TIME ?= 30s

.PHONY: load
load: sync ## Locust load (headless) against a running `make run`
	$(RUN) locust -f loadtest/locustfile.py --headless -u $(LOAD_USERS) -r $(LOAD_RATE) -t $(LOAD_TIME) --host $(LOAD_HOST)

.PHONY: test
test: lint test-unit test-deploy test-k8s test-iac images-smoke test-integration test-e2e ## everything CI runs

.PHONY: run
run: sync ## the whole suite locally: stack + services + gateway, until Ctrl-C
	$(RUN) python -m mercato_devstack run

.PHONY: observe
observe: sync ## `make run` plus Prometheus (the chart's rules) and Jaeger, printing their URLs
	$(RUN) python -m mercato_devstack run --observe

.PHONY: observe-snapshot
observe-snapshot: sync ## every dashboard panel from `make observe`'s Prometheus into docs/observe-snapshot.html
	$(RUN) python tools/observe_snapshot.py

.PHONY: stop
stop: sync ## stop what `make run` started
	$(RUN) python -m mercato_devstack shutdown
