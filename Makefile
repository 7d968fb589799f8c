# dspark-k8s developer entry points. Everything runs from a virtualenv at .venv.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)
PYTEST_ARGS ?=

.PHONY: demo experiment test lint venv system-deps cluster-bins cluster-up cluster-down clean help

help:
	@echo "make demo          run the whole pipeline on this machine (embedded default)"
	@echo "make test          install everything the tests need, lint, and run the tests"
	@echo "make lint          ruff + mypy"
	@echo "make experiment    DSpark vs DFlash on SmolLM2-135M (one GPU; docs/results.md)"
	@echo "make cluster-up    start the local test Kubernetes control plane (kubeconfig in .cluster/)"
	@echo "make cluster-down  stop it"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[operator,trainer,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

system-deps:
	scripts/install-system-deps.sh

cluster-bins: venv
	scripts/build-cluster-binaries.sh
	scripts/build-s3-server.sh
	scripts/build-kueue.sh

demo: venv system-deps
	$(VENV)/bin/dspark train --local

experiment: venv
	$(PY) -m pip install -q -e '.[trainer,eval]'
	PATH=$(VENV)/bin:$$PATH scripts/run-experiment.sh .experiment

test: venv system-deps cluster-bins lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check operator trainer tests benchmarks
	$(VENV)/bin/mypy

cluster-up: venv cluster-bins
	PYTHONPATH=tests $(PY) -m harness.cluster up

cluster-down: venv
	PYTHONPATH=tests $(PY) -m harness.cluster down

clean:
	rm -rf $(VENV) .cluster .demo
