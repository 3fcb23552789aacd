# `make demo` and `make test` do all the set-up on a fresh machine, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
AZURITE := tests/emulators/node_modules/.bin/azurite-blob
PYTEST_ARGS ?= -n 2

.PHONY: demo test test-fast lint install clean java

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# constraints.txt pins the versions the suite runs with: fast, reproducible installs
PIP_INSTALL := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e '.[all]'
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e '.[test]'
	touch $@ $(VENV)/.installed

$(AZURITE): tests/emulators/package.json
	npm install --prefix tests/emulators --no-audit --no-fund --loglevel=error
	touch $@

# The Pub/Sub emulator (tests/test_events.py) ships with the Google Cloud CLI and runs on Java 17+:
# a machine without Java gets Debian's. Without the emulator those tests fail, saying what is missing.
java:
	@command -v java >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
		openjdk-17-jre-headless >/dev/null; } || echo "warning: no Java: the Pub/Sub event tests will fail"

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/flexingest run pipelines/demo.yaml --once

lint: $(VENV)/.installed-test
	$(BIN)/ruff check flexingest tests benchmarks
	$(BIN)/mypy

test: lint $(AZURITE) java
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: lint $(AZURITE) java
	$(BIN)/pytest $(PYTEST_ARGS) -m 'not slow'

clean:
	rm -rf $(VENV) tests/emulators/node_modules .pytest_cache out .flexingest
