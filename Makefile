# One entry point for people and CI. `make demo` and `make test` set everything up themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

PY_DIRS := $(wildcard supervisor tests examples bench scripts)

.PHONY: setup demo serve top test test-fast soak soak-reduced lint typecheck format docs dist bench bench-quick conformance-setup clients-setup clean

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing trio-session-supervisor with all extras"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[all]"
	@touch $(STAMP)

setup: $(STAMP)

conformance-setup:
	@if [ -x scripts/setup-conformance.sh ] || [ -f scripts/setup-conformance.sh ]; then bash scripts/setup-conformance.sh; fi

## The independent MCP clients tests/test_mcp_clients.py runs (the official TypeScript client,
## pinned in tests/clients/npm) into .tools/clients; a no-op when already installed
clients-setup:
	@bash scripts/setup-clients.sh

## The main job: the demo MCP server on http://127.0.0.1:8000/mcp, with a short idle timeout
## so `make top` shows sessions expiring (60 s after their last request; serve's default is 1800)
DEMO_IDLE_TIMEOUT ?= 60
demo serve: setup
	$(PY) -m supervisor serve --host 127.0.0.1 --port 8000 --admin-port 8001 \
		--idle-timeout $(DEMO_IDLE_TIMEOUT)

## Live view of `make demo` (run in a second terminal)
top: setup
	$(PY) -m supervisor top --url http://127.0.0.1:8001

## The documentation site (warnings are errors, as in CI)
docs: setup
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

## Every test (sets up Python packages, the Node-based conformance suite and the independent
## MCP clients first), then the reliability soak tests at reduced size (they are skipped in the
## plain pytest run)
test: setup conformance-setup clients-setup
	$(PY) -m pytest -q
	$(PY) scripts/soak.py --reduced

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not conformance"

## Long reliability runs (bounded): load, leaks, floods at full size; writes docs/reliability/figures.json
## (the only target that writes into the tracked tree; soak-reduced, part of `make test`, writes
## its figures to the system's temporary directory)
soak: setup
	$(PY) scripts/soak.py

soak-reduced: setup
	$(PY) scripts/soak.py --reduced

## Benchmarks: docs/benchmarks.md, docs/bench/*.png and results.json (a few minutes)
bench: setup
	$(PY) -m bench --out docs/bench

bench-quick: setup
	$(PY) -m bench --quick --out .bench-quick

lint: setup
	$(VENV)/bin/ruff check $(PY_DIRS)
	$(VENV)/bin/ruff format --check $(PY_DIRS)

typecheck: setup
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format $(PY_DIRS)
	$(VENV)/bin/ruff check --fix $(PY_DIRS)

## The wheel and the sdist in dist/, checked as PyPI would (tests/test_packaging.py does the same
## in a temporary directory, then installs the wheel into a fresh venv and serves the demo)
dist: setup
	rm -rf dist
	$(PY) -m build --outdir dist
	$(PY) -m twine check --strict dist/*

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache .hypothesis docs/_build dist build
