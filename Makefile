# The two set-up commands of the README: `make demo` (the main job) and `make test` (every test).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install binaries lint test test-fast demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

# Real kube-apiserver, etcd, kubectl and helm, built from their Go modules and cached outside the repo.
binaries:
	bash scripts/k8s-test-binaries.sh >/dev/null

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: install binaries lint
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q tests/unit tests/integration

demo: install
	$(BIN)/python -m examples.demo

bench: install
	$(BIN)/python -m bench.bench_engine

clean:
	rm -rf $(VENV) .durable
