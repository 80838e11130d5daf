# `make demo` runs a whole local federation; `make test` runs lint, types and the tests.
# Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedtune-installed

.PHONY: test lint typecheck pytest demo bench openapi clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[dev,lab]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest

test: lint typecheck pytest

demo: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m lab.demo

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/aggregation.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/ingest.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/client_overhead.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/longpoll.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/client_training.py

openapi: $(STAMP)
	$(BIN)/fedtune-server export-openapi --output docs/openapi.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
