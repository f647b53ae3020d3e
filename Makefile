# The two commands: `make run` starts the product, `make test` runs the tests.
# Both create the virtual environment and install what they need on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export DAGSTER_HOME := $(CURDIR)/dagster_home

.PHONY: run test install migrate bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/python -m outreach_pipeline.db.migrate

# Dagster UI and daemon on :3000, the API on :8000; Ctrl-C stops both (outreach_pipeline/run_product.py).
run: migrate
	@echo "Dagster UI: http://localhost:3000   API: http://localhost:8000/schema   Outbox: data/outbox/"
	@$(BIN)/python -m outreach_pipeline.run_product

test: install
	$(BIN)/python -m pytest

bench: install
	@ls tests/bench/*.py 2>/dev/null | xargs -r -n1 $(BIN)/python

clean:
	rm -rf $(VENV) data
