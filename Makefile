# `make demo` and `make test` do all the set-up on a fresh machine, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
AZURITE := tests/emulators/node_modules/.bin/azurite-blob
PYTEST_ARGS ?= -n 2

.PHONY: demo test test-fast lint install clean system-deps

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

install: $(VENV)/.installed

# OCR and PDF tests run the real programs: Tesseract, Poppler's pdftotext, zip (encrypted members)
DEBIAN_PACKAGES := tesseract-ocr poppler-utils zip
system-deps:
	@command -v tesseract >/dev/null && command -v pdftotext >/dev/null && command -v zip >/dev/null || \
	  { apt-get install -y -qq $(DEBIAN_PACKAGES) >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null && apt-get install -y -qq $(DEBIAN_PACKAGES) >/dev/null; }; }

demo: $(VENV)/.installed
	$(BIN)/flexingest run pipelines/demo.yaml --once

lint: $(VENV)/.installed-test
	$(BIN)/ruff check flexingest tests benchmarks
	$(BIN)/mypy

test: lint $(AZURITE) system-deps
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: lint $(AZURITE) system-deps
	$(BIN)/pytest $(PYTEST_ARGS) -m 'not slow'

clean:
	rm -rf $(VENV) tests/emulators/node_modules .pytest_cache out .flexingest
