# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3

.PHONY: setup demo test test-vllm lint bench

setup:
	@$(PYTHON) scripts/setup.py

demo: setup
	$(PYTHON) scripts/demo.py

test: setup
	$(PYTHON) -m pytest -q

# The real-vLLM suite (tests/vllm): builds or reuses the vLLM venv and the tiny model under
# C2RUST_VLLM_CACHE (default ~/.cache/c2rust-batch/vllm), then runs the suite against real servers on 127.0.0.1.
test-vllm: setup
	$(PYTHON) scripts/vllm/vllm_env.py ensure
	C2RUST_VLLM_SUITE=1 $(PYTHON) -m pytest -q -p no:cacheprovider --durations=5 tests/vllm

lint: setup
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy

bench: setup
	$(PYTHON) bench/throughput.py --preset balanced
