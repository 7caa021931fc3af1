# Two commands matter on a fresh machine: `make run` and `make test`.
# Everything else is a building block of those, or a tool for working by hand.

PYTHON      ?= python3
VENV        ?= .venv
BIN         := $(VENV)/bin
PY          := $(BIN)/python
STAMP       := $(VENV)/.installed
PYTEST_ARGS ?=
TEST_WORKERS ?= 2

.PHONY: help venv lock run test test-unit test-integration test-e2e lint typecheck protos \
        protos-check buf-check kafka-jars deploy-tools kcat grpcurl chromium dev-up dev-down \
        bench clean

help:
	@echo "make run        start the service on the embedded default (no Kafka, no DB server to install)"
	@echo "make test       create the venv, fetch Kafka, start Kafka + PostgreSQL, run every test"
	@echo "make test-unit | test-integration | test-e2e   one layer of the suite"
	@echo "make lint       ruff + mypy (strict on ledger/)"
	@echo "make protos     regenerate protos/gen from protos/*.proto"
	@echo "make lock       resolve pyproject.toml's dependencies again into requirements.lock"
	@echo "make bench      measure CanSend and the writes against their baselines"
	@echo "make dev-up / dev-down   a Kafka broker and PostgreSQL for working by hand"
	@echo "make deploy-tools  fetch kustomize and promtool for tests/deploy (make test does)"

# The dependencies from the lock (every version pinned, every file's hash checked),
# then the project itself without resolving anything again.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Resolve pyproject.toml's dependencies (and the dev, speed and embedded extras) again
# into requirements.lock, after a change to them; tests/unit/test_lock.py checks the
# two agree. pip-tools lives in a venv of its own, outside the lock.
lock:
	$(PYTHON) -m venv var/pip-tools
	var/pip-tools/bin/pip install --quiet pip-tools
	var/pip-tools/bin/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe \
	  --extra dev --extra speed --extra embedded --no-emit-index-url --no-emit-find-links \
	  --output-file requirements.lock pyproject.toml

venv: $(STAMP)

run: $(STAMP)
	$(PY) -m services.cli serve --embedded

kafka-jars: $(STAMP)
	$(PY) -m tests.infra fetch

# kustomize, promtool (cached beside the jars) for tests/deploy; see tests/deploy/tools.py
deploy-tools: $(STAMP)
	$(PY) -m tests.deploy.tools

# The stream contract's worked example (protos/README.md) runs kcat in a test.
kcat:
	bash scripts/ensure_kcat.sh

# grpcurl (reflection and the README's walk-through run it in tests), built once with
# `go install` into ~/.cache/consent-ledger/tools/bin
grpcurl:
	bash scripts/ensure_grpcurl.sh

# Debian's Chromium and chromedriver: the auditor's console's browser test drives them
# (apt-get as root, or sudo without a password; see the script).
chromium:
	bash scripts/ensure_chromium.sh

# The whole suite: lint and types first (seconds), then every test, real Kafka and
# PostgreSQL included. pytest's exit code 5 (no tests ran) fails the target too.
# Two workers (pytest-xdist), each with its own Kafka and PostgreSQL: one leaves a
# core idle about half the time while tests wait on servers and subprocesses. A
# module stays on one worker (--dist loadfile), so its fixtures start once.
test: $(STAMP) kafka-jars deploy-tools kcat grpcurl chromium lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit tests/conformance $(PYTEST_ARGS)

test-integration: $(STAMP) kafka-jars kcat
	$(PY) -m pytest tests/integration tests/infra $(PYTEST_ARGS)

test-e2e: $(STAMP) kafka-jars grpcurl chromium
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy ledger services bench

protos: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/gen_protos.sh

protos-check: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/check_protos_fresh.sh

buf-check:
	bash scripts/buf_check.sh

dev-up: $(STAMP) kafka-jars
	$(PY) -m tests.infra up

dev-down: $(STAMP)
	$(PY) -m tests.infra down

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
