# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/chatbot: setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip wheel
	$(BIN)/pip install -e '.[embedded,test]'
	touch $@

install: $(BIN)/chatbot

run: install
	$(BIN)/chatbot up

tests/js/node_modules: tests/js/package.json $(BIN)/chatbot
	$(BIN)/npm install --prefix tests/js --no-audit --no-fund
	touch $@

test: install tests/js/node_modules
	$(BIN)/pytest

.PHONY: install run test
