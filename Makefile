# llm-relay. `make dev` and `make test` do their own set-up on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8080
export PORT
DYNAMODB_PORT ?= 8000
# aws-sam-cli lives in its own virtualenv: its pinned dependencies conflict with ours.
SAM_CLI_VERSION ?= 1.170.0
SAM_VENV ?= .venv-sam
SAM := SAM_CLI_TELEMETRY=0 $(SAM_VENV)/bin/sam
EVENT ?= events/chat-streamed.json
INVOKE_DEV_KEY ?= lr-dev-local-key

.PHONY: dev dynamodb test lint typecheck unit bench clean sam build invoke prices bench-lambda bench-kinds bench-scale bench-browser docs docs-build docs-reference

# constraints.txt pins every package (`pip freeze` of a working .venv), so CI installs what was tested.
$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

dev: $(BIN)/.installed ## run the relay locally: moto DynamoDB (or RELAY_DYNAMODB_ENDPOINT) + mock upstream, prints a key and curl lines; LAMBDA=1: behind a local function-URL front
	RELAY_DEV_LAMBDA=$(LAMBDA) $(BIN)/python -m llm_relay_dev.devserver

dynamodb: $(BIN)/.installed ## the local DynamoDB of `make dev` in the foreground on 127.0.0.1:$(DYNAMODB_PORT), to share
	$(BIN)/python -m llm_relay_dev.local_dynamodb --port $(DYNAMODB_PORT) $(if $(THROTTLE),--throttle)

prices: $(BIN)/.installed ## regenerate functions/relay/llm_relay/prices.json from the pinned genai-prices
	$(BIN)/python -m llm_relay_dev.price_table

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy

# The documentation site (mkdocs.yml). Its pages under docs/reference/ are generated from the code, and docs-build
# fails when they are out of date. Port 8001: `make dynamodb` holds mkdocs' default, 8000.
DOCS_PORT ?= 8001
export NO_MKDOCS_2_WARNING := 1

docs: $(BIN)/.installed ## serve the documentation site on 127.0.0.1:$(DOCS_PORT), rebuilt as pages change
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:$(DOCS_PORT)

docs-reference: $(BIN)/.installed ## rewrite docs/reference/ from the code (settings, CLI, errors, metrics, template.yaml)
	$(BIN)/python -m llm_relay_dev.docs_reference

docs-build: $(BIN)/.installed ## check the generated pages, then build the site strictly (a broken link fails) into .venv/site
	$(BIN)/python -m llm_relay_dev.docs_reference --check
	$(BIN)/mkdocs build --strict --site-dir $(VENV)/site

unit: $(BIN)/.installed
	$(BIN)/pytest tests/unit -q

# The tests spread over one process per core (at most 4), a file's tests in one process (its module-scoped servers
# start once; the sam build is shared, tests/packaging/conftest.py): most of them wait on servers and subprocesses,
# so two processes on two cores take about 60 % of the time one does.
test: lint typecheck docs-build sam ## lint, types, the documentation site, then every test (tests/packaging runs sam validate --lint and sam build)
	$(BIN)/pytest -q --numprocesses auto --maxprocesses 4 --dist loadfile

bench: $(BIN)/.installed ## relay vs direct, 1 and 50 concurrent streams (not part of `make test`)
	$(BIN)/python -m bench.run

bench-kinds: $(BIN)/.installed ## what each kind of upstream (openai, ollama, ndjson, bedrock) costs the relay (not part of `make test`)
	$(BIN)/python -m bench.kinds

bench-scale: $(BIN)/.installed ## the limits at 1,000 requests/s for one key and 10,000 in all, on a local DynamoDB that throttles as DynamoDB does (time scaled; not part of `make test`)
	$(BIN)/python -m bench.scale

bench-browser: $(BIN)/.installed ## a long streamed markdown answer in headless Chromium: frames/s and long tasks, client + renderer against a naive consumer (not part of `make test`)
	$(BIN)/python -m bench.browser_rendering

bench-lambda: $(BIN)/.installed sam ## sam build, then the artifact beside the required stack alone, with no quota and at 256/512/1024/1769 MB CPU shares, and the cost table (root: cgroup quota; not part of `make test`); figures in bench/results/runs/ (git-ignored)
	$(SAM) build --build-dir .aws-sam/bench-lambda --cache-dir .aws-sam/bench-lambda-cache
	$(BIN)/python -m bench.lambda_profile --build .aws-sam/bench-lambda

clean:
	rm -rf $(VENV) $(SAM_VENV) .mypy_cache .pytest_cache .ruff_cache build .aws-sam

$(SAM_VENV)/.installed-$(SAM_CLI_VERSION):
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install -q --upgrade pip
	$(SAM_VENV)/bin/python -m pip install -q 'aws-sam-cli==$(SAM_CLI_VERSION)'
	touch $@

sam: $(SAM_VENV)/.installed-$(SAM_CLI_VERSION) ## install aws-sam-cli (sam, and the Lambda Runtime Interface Emulator) in .venv-sam

build: sam ## sam validate --lint, then sam build (function code + dependency layer) into .aws-sam/build
	$(SAM) validate --lint
	$(SAM) build

# stdout is the Lambda response JSON and nothing else (`make invoke ... | jq .statusCode`): the set-up runs in a
# silent sub-make with its output on stderr, and the recipe line is not echoed.
invoke: ## EVENT=events/<file>.json through the Lambda Runtime Interface Emulator + Mangum, offline
	@$(MAKE) -s --no-print-directory $(BIN)/.installed sam >&2
	@RELAY_DEV_KEY=$(INVOKE_DEV_KEY) $(BIN)/python scripts/invoke.py $(EVENT)
