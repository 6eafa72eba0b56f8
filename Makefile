# taskservice: every everyday command. `make run` serves on the embedded SQLite default;
# `make test` runs the whole suite. uv is bootstrapped from PyPI when missing; no Python
# interpreter is ever downloaded (the system's Python 3.11+ is used).

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_BOOTSTRAP := .cache/uv-bootstrap
UV ?= $(shell command -v uv 2>/dev/null || echo $(UV_BOOTSTRAP)/bin/uv)
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON ?= $(PYTHON)

PROTO_DIR := protos
PROTO_FILES := $(wildcard $(PROTO_DIR)/taskservice/v1/*.proto)
BUF := node_modules/.bin/buf
# Oldest Kubernetes the manifests must validate against (native gRPC probes need 1.27+).
KUBERNETES_VERSION ?= 1.30.0

.PHONY: help
help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(UV_BOOTSTRAP)/bin/uv:
	@echo "uv not found: installing it from PyPI into $(UV_BOOTSTRAP)"
	$(PYTHON) -m venv $(UV_BOOTSTRAP) && $(UV_BOOTSTRAP)/bin/pip install --quiet uv

.PHONY: install
install: $(UV) ## Install the locked dependencies into .venv.
	$(UV) sync --locked

.PHONY: run
run: install ## Apply migrations and serve on GRPC_PORT (default 50051).
	$(UV) run --locked taskservice migrate
	$(UV) run --locked taskservice serve

.PHONY: migrate
migrate: install ## Apply database migrations.
	$(UV) run --locked taskservice migrate

# Suites that drive whole processes or run long (the benchmark harness against h2load, every
# command in the documents, real PostgreSQL standbys failing over, the CLI's servers and
# workers, a headless browser, tracing to a real OTLP receiver, the randomized fuzz, the shared
# lists' role matrix of every RPC on both edges) run in
# `make test-slow`, so `make test` stays under ten minutes on two cores; CI runs both.
SLOW_SUITES := tests/test_bench.py tests/test_docs.py tests/test_failover.py tests/test_cli.py \
	tests/test_browser.py tests/test_tracing.py tests/test_fuzz.py tests/test_shared_lists_roles.py

.PHONY: test
test: install web ## Run the test suite (SQLite and PostgreSQL), all but the slow suites.
	$(UV) run --locked pytest $(addprefix --ignore=,$(SLOW_SUITES)) $(PYTEST_ARGS)

.PHONY: test-slow
test-slow: install web ## The slow suites: bench, docs' commands, failover, CLI, browser, tracing, fuzz, role matrix.
	$(UV) run --locked pytest $(SLOW_SUITES) $(PYTEST_ARGS)

# A random seed unless FUZZ_SEED is given; the seed is printed so a failing run can be repeated.
FUZZ_EXAMPLES ?= 2000
.PHONY: fuzz
fuzz: install ## Fuzz every RPC long (FUZZ_EXAMPLES=2000 per database); repeat with FUZZ_SEED=<seed>.
	@seed="$(FUZZ_SEED)"; [ -n "$$seed" ] || seed=$$(od -An -N4 -tu4 /dev/urandom | tr -d ' '); \
	echo "fuzz seed: $$seed (repeat with: make fuzz FUZZ_SEED=$$seed)"; \
	FUZZ_SEED=$$seed FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) \
		$(UV) run --locked pytest tests/test_fuzz.py -s $(PYTEST_ARGS)

.PHONY: bench
bench: install ## Load-test with h2load: server CPU per call against a floor (docs/benchmarks.md).
	@command -v h2load >/dev/null || $(MAKE) --no-print-directory h2load
	$(UV) run --locked python -m bench $(BENCH_ARGS)

.PHONY: bench-watch
bench-watch: install ## WatchTasks: memory per idle watcher, write-to-event latency (BENCH_ARGS).
	$(UV) run --locked python -m bench.watch $(BENCH_ARGS)

# h2load, the load generator `make bench` drives (Debian's nghttp2-client).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
.PHONY: h2load
h2load:
	$(SUDO) apt-get install -y --no-install-recommends nghttp2-client \
		|| { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends nghttp2-client; }

# The failover drill (tests/ha): etcd and three Patroni nodes running PostgreSQL 15 on free local
# ports, one taskservice server, primary crashes and a switchover under load. Needs root (it runs
# PostgreSQL as the postgres user); Debian's patroni and etcd-server are installed when missing.
# HA_ARGS go to the harness, e.g. HA_ARGS="--runs 3" or HA_ARGS="--events kill,kill-restart".
HA_PACKAGES := patroni etcd-server postgresql-15
.PHONY: ha-test
ha-test: install ## Failover drill on a 3-node Patroni cluster: primary kills, a switchover (HA_ARGS).
	@if ! command -v patroni >/dev/null || ! command -v etcd >/dev/null \
		|| [ ! -x /usr/lib/postgresql/15/bin/postgres ]; then \
		$(SUDO) apt-get install -y --no-install-recommends $(HA_PACKAGES) \
		|| { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends $(HA_PACKAGES); }; \
	fi
	$(UV) run --locked python -m tests.ha $(HA_ARGS)

# The descriptor set keeps the protos' comments (source info) and every import, for server
# reflection: the generated *_pb2 modules carry neither comments nor a way to add them.
DESCRIPTOR_SET := taskservice/v1/descriptor_set.binpb

.PHONY: proto
proto: install ## Regenerate taskservice/v1 (gRPC and Connect code, the reflection descriptor set) from protos/.
	rm -f taskservice/v1/*_pb2*.py taskservice/v1/*_pb2*.pyi taskservice/v1/*_connect.py $(DESCRIPTOR_SET)
	$(UV) run --locked python -m grpc_tools.protoc -I$(PROTO_DIR) \
		--python_out=. --pyi_out=. --grpc_python_out=. \
		--plugin=protoc-gen-connectrpc=.venv/bin/protoc-gen-connectrpc \
		--connectrpc_out=. --connectrpc_opt=protobuf=google \
		--include_source_info --include_imports --descriptor_set_out=$(DESCRIPTOR_SET) \
		$(PROTO_FILES)

$(BUF): package.json package-lock.json
	npm ci --no-fund --no-audit --loglevel=error
	@touch $(BUF)

# The browser test's page: TypeScript messages from protos/ (protoc-gen-es), type-checked by tsc,
# bundled with @connectrpc/connect-web by esbuild into web/dist/app.js (neither is committed).
.PHONY: web
web: $(BUF) ## Build the browser page (web/) that tests/test_browser.py drives.
	$(BUF) generate --template web/buf.gen.yaml
	node_modules/.bin/tsc -p web/tsconfig.json
	node_modules/.bin/esbuild web/src/main.ts --bundle --format=iife --target=es2020 \
		--log-level=warning --outfile=web/dist/app.js

.PHONY: lint
lint: install $(BUF) ## ruff (lint and format check), buf lint and breaking, and the Kubernetes manifests (offline).
	$(UV) run --locked ruff check .
	$(UV) run --locked ruff format --check .
	cd $(PROTO_DIR) && ../$(BUF) lint
	$(MAKE) --no-print-directory breaking
	$(UV) run --locked kubernetes-validate --strict --quiet -k $(KUBERNETES_VERSION) deploy/kubernetes/*.yaml

# The contract clients were given: every later change must be an addition (buf's FILE rules).
# The first released protos; move it forward only with a deliberate, announced break.
BREAKING_BASE ?= b863fe46b1a703e85f29485d0205e96dc9d7da62

.PHONY: breaking
breaking: $(BUF) ## buf breaking: the protos against the released contract ($(BREAKING_BASE)).
	@if git cat-file -e $(BREAKING_BASE)^{commit} 2>/dev/null; then \
		cd $(PROTO_DIR) && ../$(BUF) breaking --against '../.git#ref=$(BREAKING_BASE),subdir=$(PROTO_DIR)' && echo "buf breaking: only additions since $(BREAKING_BASE)"; \
	else \
		echo "breaking: $(BREAKING_BASE) is not in this clone (shallow?): fetch it to compare" >&2; exit 1; \
	fi

.PHONY: format
format: install ## Format and autofix with ruff.
	$(UV) run --locked ruff format .
	$(UV) run --locked ruff check --fix .
