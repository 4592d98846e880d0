# The two commands a newcomer needs: `make demo` and `make test`.
# PYTHON creates the project's virtual environment .venv (make PYTHON=/usr/bin/python3 ...); everything else
# runs in .venv, so pip never installs into a system (externally managed), pyenv or conda interpreter.
PYTHON ?= python3
VENV_PYTHON := .venv/bin/python

.PHONY: setup demo test test-vllm test-ray test-examples lint bench

setup:
	@$(PYTHON) scripts/setup.py

demo: setup
	$(VENV_PYTHON) scripts/demo.py

test: setup
	$(VENV_PYTHON) -m pytest -q

# The real-vLLM suite (tests/vllm): builds or reuses the vLLM venv and the tiny model under
# C2RUST_VLLM_CACHE (default ~/.cache/c2rust-batch/vllm), then runs the suite against real servers on 127.0.0.1.
test-vllm: setup
	$(VENV_PYTHON) scripts/vllm/vllm_env.py ensure
	C2RUST_VLLM_SUITE=1 $(VENV_PYTHON) -m pytest -q -p no:cacheprovider --durations=5 tests/vllm

# The Ray executor's suite (tests/test_ray_executor.py): starts Ray clusters on 127.0.0.1; needs the ray extra,
# which `make setup` installs (C2RUST_REQUIRE_RAY=1: a missing Ray fails the suite instead of skipping it).
test-ray: setup
	C2RUST_RAY_SUITE=1 C2RUST_REQUIRE_RAY=1 $(VENV_PYTHON) -m pytest -q -p no:cacheprovider tests/test_ray_executor.py

# The bundled multi-function examples (examples/functions) translated function by function from canned answers,
# through the CLI and the simulator with a 4096-token context, and directly through the function stage.
test-examples: setup
	C2RUST_EXAMPLES_SUITE=1 $(VENV_PYTHON) -m pytest -q -p no:cacheprovider --durations=5 \
		tests/test_function_examples_e2e.py tests/functions/test_example_answers.py

lint: setup
	$(VENV_PYTHON) -m ruff check .
	$(VENV_PYTHON) -m mypy

bench: setup
	$(VENV_PYTHON) bench/throughput.py --preset balanced
