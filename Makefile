# `make demo` and `make test` do all the set-up on a fresh machine, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
AZURITE := tests/emulators/node_modules/.bin/azurite-blob
PYTEST_ARGS ?= -n 2

.PHONY: demo test test-fast install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[all]'
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

$(AZURITE): tests/emulators/package.json
	npm install --prefix tests/emulators --no-audit --no-fund --loglevel=error
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/flexingest run pipelines/demo.yaml --once

test: $(VENV)/.installed-test $(AZURITE)
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-test $(AZURITE)
	$(BIN)/pytest $(PYTEST_ARGS) -m 'not slow'

clean:
	rm -rf $(VENV) tests/emulators/node_modules .pytest_cache out .flexingest
