# edgefit — every entry point a developer or CI uses. `make run` and `make test` are the two
# commands README gives; `make setup` is the idempotent part of both.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
SAMPLE := $(SHARED)/imagenet-sample
STORE_DIR ?= model_store/artifacts
INSTALLED := $(VENV)/.installed
UNIT_INSTALLED := $(VENV)/.installed-unit

.PHONY: setup run test unit lint system-deps loadtest bench soak test-container test-arm64 clean-store

setup: $(INSTALLED) $(STORE_DIR)/manifest.json

$(INSTALLED): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[export,loadtest,deploy,dev]'
	touch $@

# Built only when absent: a store is data, not a build product to refresh on every change.
# A pool of candidates, not this machine's frontier: the server chooses the frontier of the device
# it runs on. The ladder (lite0, lite1, lite2) in fp32 and int8, whatever their speed or int8
# agreement here; then lite0's subnets, 8 picks from the search at 192, 160 and 128 px, each in
# fp32 and int8 (`edgefit store specialize --family lite2` cuts lite2's on demand). Last, every
# variant's answers on the sample (the first two steps kept most), from which each server plans
# confidence cascades among the variants it serves (after a `store add`, rerun `edgefit store
# cascades` for the new variants' answers).
$(STORE_DIR)/manifest.json: | $(INSTALLED)
	$(BIN)/edgefit store build --store $(STORE_DIR) --images $(SAMPLE)
	$(BIN)/edgefit store specialize --store $(STORE_DIR) --images $(SAMPLE) --search-images 100 \
		--family lite0 --resolutions 192,160,128 --k 8 --budget 15
	$(BIN)/edgefit store cascades --store $(STORE_DIR) --images $(SAMPLE)

run: setup
	$(BIN)/edgefit serve --host 0.0.0.0 --port 8000 --store $(STORE_DIR)

# Debian packages the integration tests run for real (Prometheus, promtool).
system-deps:
	bash deploy/scripts/install-system-deps.sh

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: setup system-deps lint
	EDGEFIT_SAMPLE_DIR=$(SAMPLE) $(BIN)/pytest

# The in-process tiers alone, on a clean clone: no store, no torch, no system packages (tiny ONNX
# models built by the tests stand in for the store). The API fuzz tries every operation, then
# fuzzes on for 10 s rather than make test's 60.
$(UNIT_INSTALLED): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

unit: $(UNIT_INSTALLED)
	EDGEFIT_SAMPLE_DIR=$(SAMPLE) EDGEFIT_FUZZ_SECONDS=10 $(BIN)/pytest tests/unit tests/app

loadtest: $(INSTALLED)
	bash loadtest/run.sh

bench: setup
	bash bench/run.sh

test-container: setup
	bash deploy/container/test-container.sh

test-arm64: setup
	bash deploy/container/test-arm64.sh

clean-store:
	rm -rf $(STORE_DIR)

# The long reliability run (minutes; not CI): ~70 % of capacity, mixed budgets, 50 reloads and 5
# SIGKILLs under load; errors, budget met per tier and RSS into bench/results/soak.{json,md}.
# SOAK_SECONDS, SOAK_RELOADS, SOAK_KILLS and the limits: bench/soak.py's docstring.
soak: setup
	EDGEFIT_SAMPLE_DIR=$(SAMPLE) $(BIN)/python bench/soak.py
