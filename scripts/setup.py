#!/usr/bin/env python3
"""Idempotent set-up for a fresh machine: the project's virtual environment, the libc crate source, a Rust check.

Run it with the Python you want the project to use (`make PYTHON=/usr/bin/python3 ...`): it creates `.venv`
from that interpreter and installs the package there (`pip install -e '.[dev,report,ray]'`: `report` brings
matplotlib for the report's charts, `ray` Ray for the tests of `--executor ray`), so it works where pip may not
install into the interpreter itself (Debian's externally managed Python, PEP 668), with pyenv and with conda.
Where Debian's Python lacks the venv module, it installs python3-venv as root, as it installs librust-libc-dev.
Fast when nothing is missing, so `make demo` and `make test` can always call it first.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
#: In the venv: which interpreter created it, and the pyproject.toml it was installed from.
CREATED_BY = VENV / ".created-by"
INSTALLED = VENV / ".installed"


def _apt_install(*packages: str) -> bool:
    """Install Debian packages when we are root on Debian; False when we cannot."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    print(f"setup: installing {' '.join(packages)} (apt-get)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    return subprocess.run(["apt-get", "install", "-y", "-qq", *packages], env=env).returncode == 0


def _venv_module() -> bool:
    """Whether this interpreter can create a virtual environment with pip in it (Debian splits it out)."""
    if importlib.util.find_spec("venv") and importlib.util.find_spec("ensurepip"):
        return True
    version = f"python{sys.version_info.major}.{sys.version_info.minor}-venv"
    if _apt_install(version) or _apt_install("python3-venv"):
        importlib.invalidate_caches()
        return bool(importlib.util.find_spec("ensurepip"))
    print(f"setup: {sys.executable} cannot create a virtual environment (no ensurepip): run "
          f"`sudo apt-get install -y {version}` (Debian/Ubuntu), or run make with another Python: "
          f"make PYTHON=/path/to/python3", file=sys.stderr)
    return False


def _virtualenv() -> bool:
    """``.venv`` made by this interpreter (re-made when another one made it). False when it cannot be made."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return True  # run from the venv itself
    creator = os.path.realpath(sys.executable)
    if VENV_PYTHON.exists() and CREATED_BY.exists() and CREATED_BY.read_text().strip() == creator:
        return True
    if not _venv_module():
        return False
    print(f"setup: creating the project's virtual environment {VENV} with {creator}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    CREATED_BY.write_text(creator + "\n")
    INSTALLED.unlink(missing_ok=True)
    return True


def _python_packages() -> None:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if INSTALLED.exists() and INSTALLED.read_text().strip() == digest:
        return
    print(f"setup: installing Python packages into {VENV} (pip install -e '.[dev,report,ray]')", flush=True)
    subprocess.run([str(VENV_PYTHON), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(VENV_PYTHON), "-m", "pip", "install", "-q", "-e", f"{ROOT}[dev,report,ray]"], check=True)
    INSTALLED.write_text(digest + "\n")


def _libc_source() -> None:
    if glob.glob("/usr/share/cargo/registry/libc-*") or os.environ.get("C2RUST_LIBC_SOURCE"):
        return
    if not _apt_install("librust-libc-dev"):
        print("setup: the libc crate source is missing: run `sudo apt-get install -y librust-libc-dev`, "
              "or set [toolchain] libc_source in sactor.toml", file=sys.stderr)


def _sandbox_helper() -> None:
    """Build the compiled sandbox helper into the default cache directory (else the first run builds it)."""
    code = ("from pipeline.config import ToolchainSettings; from pipeline.sandbox_helper import build; "
            "h = build(ToolchainSettings().resolved_cache_dir()); print(h.describe())")
    done = subprocess.run([str(VENV_PYTHON), "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    text = (done.stdout or done.stderr).strip().splitlines()
    print(f"setup: sandbox: {text[-1] if text else 'helper build exited ' + str(done.returncode)}", flush=True)


def main() -> int:
    if sys.version_info < (3, 10):  # noqa: UP036 -- this script runs on whatever Python make was given
        print(f"setup: {sys.executable} is Python {sys.version.split()[0]}; this project needs 3.10 or newer: "
              f"run make PYTHON=/path/to/python3.10+", file=sys.stderr)
        return 1
    if not shutil.which("rustc"):
        print("setup: rustc not found: install Rust (rustup or `apt-get install rustc`)", file=sys.stderr)
        return 1
    _libc_source()
    if not _virtualenv():
        return 1
    _python_packages()
    _sandbox_helper()
    return 0


if __name__ == "__main__":
    sys.exit(main())
