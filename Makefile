# llm-relay. `make dev` and `make test` do their own set-up on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8080
export PORT

.PHONY: dev test lint typecheck unit bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

dev: $(BIN)/.installed ## run the relay locally: moto DynamoDB + mock upstream, prints a key and curl lines
	$(BIN)/python -m llm_relay.devserver

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy

unit: $(BIN)/.installed
	$(BIN)/pytest tests/unit -q

test: lint typecheck ## lint, types, then every test
	$(BIN)/pytest -q

bench: $(BIN)/.installed ## relay vs direct, 1 and 50 concurrent streams (not part of `make test`)
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build .aws-sam
