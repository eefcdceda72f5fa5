# Tallyray — run `make help` for the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= examples/llm-api/tallyray.json

.DEFAULT_GOAL := help
.PHONY: help install run demo test unit integration e2e lint typecheck bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install Tallyray with its dev extras

run: demo ## set up and show Tallyray on the example config

demo: $(STAMP) ## rate the example events under the Pro plan, offline
	$(BIN)/tallyray check-config $(CONFIG)
	$(BIN)/tallyray price --config $(CONFIG) --plan pro --events examples/llm-api/events.jsonl

test: $(STAMP) ## unit + integration tests
	$(BIN)/pytest tests/unit tests/integration -q

unit: $(STAMP) ## unit tests only (no Ray, no database)
	$(BIN)/pytest tests/unit -q

lint: $(STAMP) ## ruff
	$(BIN)/ruff check tallyray tests bench
	$(BIN)/ruff format --check tallyray tests bench

typecheck: $(STAMP) ## mypy --strict on the package
	$(BIN)/mypy

bench: $(STAMP) ## the pricing benchmark (1,000,000 events)
	$(BIN)/python bench/bench_pricing.py

clean: ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
