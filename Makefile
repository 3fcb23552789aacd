# `make demo` and `make test` do all the set-up on a fresh machine, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
AZURITE := tests/emulators/node_modules/.bin/azurite-blob
PYTEST_ARGS ?= -n 2

.PHONY: demo test test-fast lint install clean system-tools

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

# Debian packages the tests drive (command:package); installed only when the command is missing
# java: the Pub/Sub emulator (shipped with the Google Cloud CLI, used by tests/test_events.py) runs on it
# tesseract, pdftotext, zip: OCR, the PDF reference and encrypted zip members (tests/test_ocr.py, ...)
# chromium + chromedriver: the status page in a real browser (tests/test_http_page.py)
SYSTEM_TOOLS := systemd-analyze:systemd setpriv:util-linux logger:bsdutils java:openjdk-17-jre-headless \
	tesseract:tesseract-ocr pdftotext:poppler-utils zip:zip chromium:chromium chromedriver:chromium-driver

system-tools:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
		command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing (Debian packages the tests use)"; \
		apt-get install -y -q $$missing >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null; }; \
	fi

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/flexingest run pipelines/demo.yaml --once

lint: $(VENV)/.installed-test
	$(BIN)/ruff check flexingest tests benchmarks
	$(BIN)/mypy

test: lint $(AZURITE) system-tools
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: lint $(AZURITE) system-tools
	$(BIN)/pytest $(PYTEST_ARGS) -m 'not slow'

clean:
	rm -rf $(VENV) tests/emulators/node_modules .pytest_cache out .flexingest
