# Tallyray — run `make help` for the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= examples/llm-api/tallyray.json

.DEFAULT_GOAL := help
.PHONY: help install run demo test unit integration e2e lint typecheck bench clean openapi openapi-check contract

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet -e 'clients/python[litellm]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install Tallyray with its dev extras, and the gateway client

run: $(STAMP) ## start the server on embedded SQLite with demo data (Ctrl-C stops it)
	$(BIN)/tallyray serve --config $(CONFIG) --demo

demo: $(STAMP) ## rate the example events under the Pro plan, offline (no server)
	$(BIN)/tallyray check-config $(CONFIG)
	$(BIN)/tallyray price --config $(CONFIG) --plan pro --events examples/llm-api/events.jsonl

test: $(STAMP) ## the whole suite: unit, integration (SQLite; + Postgres if TALLYRAY_TEST_POSTGRES_URL), e2e
	$(BIN)/pytest tests/unit tests/integration tests/e2e -q

integration: $(STAMP) ## integration tests only (local Ray, SQLite and maybe Postgres)
	$(BIN)/pytest tests/integration -q

e2e: $(STAMP) ## end-to-end tests: `tallyray serve` over HTTP
	$(BIN)/pytest tests/e2e -q

unit: $(STAMP) ## unit tests only (no Ray, no database)
	$(BIN)/pytest tests/unit -q

openapi: $(STAMP) ## write the API's OpenAPI document to docs/openapi.json
	$(BIN)/python -m tallyray.serve.openapi > docs/openapi.json

openapi-check: $(STAMP) ## fail when docs/openapi.json is not what the code serves
	@$(BIN)/python -m tallyray.serve.openapi > .openapi.current.json
	@cmp -s .openapi.current.json docs/openapi.json \
		|| { rm -f .openapi.current.json; echo "docs/openapi.json is stale: run 'make openapi' and commit it" >&2; exit 1; }
	@rm -f .openapi.current.json

contract: $(STAMP) ## Schemathesis against a live `tallyray serve`: no 5xx, every answer in its schema
	$(BIN)/pytest tests/e2e/test_contract.py -q

lint: $(STAMP) ## ruff
	$(BIN)/ruff check tallyray tests bench clients
	$(BIN)/ruff format --check tallyray tests bench clients

typecheck: $(STAMP) ## mypy --strict on the server and the gateway client
	$(BIN)/mypy
	cd clients/python && ../../$(BIN)/mypy

bench: $(STAMP) ## benchmarks: pricing (offline), HTTP ingest and quota checks (on Postgres)
	$(BIN)/python bench/bench_pricing.py
	$(BIN)/python bench/bench_ingest.py
	$(BIN)/python bench/bench_quota.py

clean: ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
