# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3

.PHONY: setup demo test lint bench

setup:
	@$(PYTHON) scripts/setup.py

demo: setup
	$(PYTHON) scripts/demo.py

test: setup
	$(PYTHON) -m pytest -q

lint: setup
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy

bench: setup
	$(PYTHON) bench/throughput.py --preset balanced
