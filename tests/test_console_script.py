"""The ``c2rust-batch`` command as pip installs it: the script pip writes for pyproject's entry point, run as a user
runs it; its exit code, its output, and its fast exit (#16)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeline.config import read_toml
from tests.conftest import ROOT, Cli
from tests.test_batch_e2e import flat_corpus

#: What pip (its vendored distlib) writes for a console script: the entry point's module and function.
PIP_SCRIPT = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from {module} import {function}
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit({function}())
"""

#: Loaded by the interpreter at start-up (``sitecustomize``): the first exit handler registered runs last,
#: after the command's own, just before the interpreter's last garbage collection; it notes how many objects
#: that collection has to walk (objects frozen by gc.freeze() are not walked).
AT_EXIT = """import atexit, gc, os

def _note() -> None:
    with open(os.environ["EXIT_NOTE"], "w") as fh:
        fh.write(str(len(gc.get_objects())))

atexit.register(_note)
"""


def console_script(tmp_path: Path) -> Path:
    """The ``c2rust-batch`` script pip would install for this tree's pyproject.toml."""
    entry = read_toml(ROOT / "pyproject.toml", "project file", "this tree")["project"]["scripts"]["c2rust-batch"]
    module, function = entry.split(":")
    script = tmp_path / "bin" / "c2rust-batch"
    script.parent.mkdir()
    script.write_text(PIP_SCRIPT.format(python=sys.executable, module=module, function=function))
    script.chmod(0o755)
    return script


def run_console_script(cli: Cli, tmp_path: Path, *args: str | Path) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run ``c2rust-batch ARGS`` from PATH; returns the process and the objects left for the last collection."""
    script = console_script(tmp_path)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(AT_EXIT)
    note = tmp_path / "exit-note"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    env.update(PATH=f"{script.parent}{os.pathsep}{env.get('PATH', '')}", EXIT_NOTE=str(note),
               PYTHONPATH=os.pathsep.join([str(ROOT), str(hooks)]))
    proc = subprocess.run(["c2rust-batch", *map(str, args), "--cache-dir", str(cli.cache_dir)], cwd=cli.cwd,
                          env=env, capture_output=True, text=True, timeout=180)
    return proc, int(note.read_text())


def test_console_script_runs_a_corpus_and_exits_without_walking_its_objects_again(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """`c2rust-batch --c-files ...` (the script pip installs) translates the corpus, prints the table, exits 0, and
    leaves the interpreter's last garbage collection (nearly) nothing to walk: the run's objects were frozen."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    names = flat_corpus(corpus, 3)
    _sim, url = simulator_factory()
    proc, left = run_console_script(cli, tmp_path, "--c-files", corpus, "--json-files", corpus, "--output", out,
                                    "--base-url", url, "--model", "sim-model")
    assert proc.returncode == 0, proc.stderr
    assert "tasks: 3 (3 verified, 0 failed, 0 unchanged from earlier runs)" in proc.stdout
    assert f"summary: {out / 'batch_summary.json'}" in proc.stdout
    assert all((out / name / "result.json").is_file() for name in names)
    # Without the freeze the run leaves about 1,500 objects here (the ledger's index grows with the corpus); the
    # few left are the exit handlers' own.
    assert left < 200, f"{left} objects left for the last garbage collection"


def test_console_script_exit_code_of_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    """A usage error through the installed command: exit 2 and the message naming the flag."""
    proc, _left = run_console_script(cli, tmp_path, "--c-files", tmp_path / "missing", "--json-files",
                                     tmp_path, "--output", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert f"error: --c-files {tmp_path / 'missing'}: not a directory" in proc.stderr
