"""Shared fixtures: the simulator, the real CLI as a subprocess, corpora and canned answers written by tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_CORPUS = ROOT.parent / "shared" / "corpus"
#: The Ray executor's tests start a Ray cluster (tens of seconds each): `make test-ray` runs them
#: (C2RUST_RAY_SUITE=1), `make test` does not collect them, as it does not collect tests/vllm/.
collect_ignore = [] if os.environ.get("C2RUST_RAY_SUITE") else ["test_ray_executor.py"]
#: The large examples translated function by function (minutes each): `make test-examples` runs them
#: (C2RUST_EXAMPLES_SUITE=1; tests/functions/conftest.py ignores its part the same way).
if not os.environ.get("C2RUST_EXAMPLES_SUITE"):
    collect_ignore.append("test_function_examples_e2e.py")
DIFFERENTIAL_VARIABLE = "C2RUST_DIFFERENTIAL"


@pytest.fixture(scope="session", autouse=True)
def differential_off() -> Iterator[None]:
    """Differential testing (on by default) builds every task's C program with gcc and the sanitizers and runs it
    on generated inputs: seconds per task. The tests of other features run without it, through the setting's
    variable, which every CLI the tests start inherits; tests/test_differential_e2e.py switches it back on.
    ``C2RUST_DIFFERENTIAL=20 pytest`` runs the whole suite with it."""
    with pytest.MonkeyPatch.context() as patch:
        if not os.environ.get(DIFFERENTIAL_VARIABLE):
            patch.setenv(DIFFERENTIAL_VARIABLE, "0")
        yield


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One toolchain cache per test session: the libc rlib is built once."""
    return tmp_path_factory.mktemp("toolchain-cache")


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass
class Cli:
    """Runs `python batch_translate_generic.py ...` for real, with a clean environment."""

    cache_dir: Path
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)

    def __call__(self, *args: str | Path, timeout: float = 120, env: dict[str, str] | None = None) -> CliResult:
        base = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
        base.update(self.env)
        base.update(env or {})
        argv = [sys.executable, str(ROOT / "batch_translate_generic.py"), *map(str, args)]
        if args and str(args[0]) not in ("check", "report"):
            argv += ["--cache-dir", str(self.cache_dir)]
        proc = subprocess.run(argv, cwd=self.cwd, env=base, capture_output=True, text=True, timeout=timeout)
        return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli(cache_dir: Path, tmp_path: Path) -> Cli:
    """The real command line, run in an empty directory (so no stray sactor.toml is read)."""
    work = tmp_path / "cwd"
    work.mkdir()
    return Cli(cache_dir=cache_dir, cwd=work)


RUST_OK = """fn main() {{
    println!("{out}");
}}
"""


def answer(code: str, prose: str = "Here is the translation.") -> str:
    """A model-shaped answer: prose around a fenced block."""
    return f"{prose}\n\n```rust\n{code}```\n\nThe program keeps the C behaviour."


@dataclass
class Corpus:
    """A flat corpus and the simulator's canned answers, written by a test."""

    root: Path

    @property
    def corpus(self) -> Path:
        return self.root / "corpus"

    @property
    def answers(self) -> Path:
        return self.root / "answers"

    def add_task(
        self,
        name: str,
        *,
        expected: str = "hello",
        tests: list[dict[str, object]] | None = None,
        unidiomatic: list[str] | None = None,
        idiomatic: list[str] | None = None,
        c_source: str | None = None,
        samples: list[dict[str, str]] | None = None,
    ) -> None:
        """A C file whose run-tests samples expect ``expected`` on stdout (or ``samples``: inputs and outputs),
        with canned answers per attempt."""
        self.corpus.mkdir(parents=True, exist_ok=True)
        (self.corpus / f"{name}.c").write_text(
            c_source or f'#include <stdio.h>\n/* {name} */\nint main(void) {{ puts("{expected}"); return 0; }}\n'
        )
        samples = samples or [{"input": "", "output": expected}, {"input": "x", "output": expected}]
        (self.corpus / f"{name}_samples.json").write_text(json.dumps(samples))
        if tests is None:
            tests = [
                {"command": f"sactor run-tests --type bin ./{name}_samples.json %t {i} --feed-as-stdin",
                 "test_id": i}
                for i in range(len(samples))
            ]
        (self.corpus / f"{name}.json").write_text(json.dumps(tests))
        key = self.answers / name
        key.mkdir(parents=True, exist_ok=True)
        (key / "match.txt").write_text(f"{name}.c")
        ok = answer(RUST_OK.format(out=expected))
        for stage, texts in (("unidiomatic", unidiomatic or [ok]), ("idiomatic", idiomatic or [ok])):
            for number, text in enumerate(texts, start=1):
                (key / f"{stage}-{number}.md").write_text(text)


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    return Corpus(tmp_path / "data")


@pytest.fixture
def simulator_factory() -> Iterator[object]:
    """Start simulators for a test; each is stopped when the test ends."""
    from contextlib import ExitStack

    from pipeline.simulator import SimConfig, Simulator

    with ExitStack() as stack:

        def start(**kwargs: object) -> tuple[Simulator, str]:
            sim = Simulator(SimConfig(**kwargs))  # type: ignore[arg-type]
            url = stack.enter_context(sim.running())
            return sim, url

        yield start
