# The two commands a newcomer needs: `make demo` and `make test`.
# PYTHON creates the project's virtual environment .venv (make PYTHON=/usr/bin/python3 ...); everything else
# runs in .venv, so pip never installs into a system (externally managed), pyenv or conda interpreter.
PYTHON ?= python3
VENV_PYTHON := .venv/bin/python

.PHONY: setup demo test lint bench

setup:
	@$(PYTHON) scripts/setup.py

demo: setup
	$(VENV_PYTHON) scripts/demo.py

test: setup
	$(VENV_PYTHON) -m pytest -q

lint: setup
	$(VENV_PYTHON) -m ruff check .
	$(VENV_PYTHON) -m mypy

bench: setup
	$(VENV_PYTHON) bench/throughput.py --preset balanced
