#!/usr/bin/env python3
"""Idempotent set-up for a fresh machine: Python packages, the libc crate source, a Rust toolchain check.

Fast when nothing is missing, so `make demo` and `make test` can always call it first.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = ROOT / ".setup-done"


def _python_packages() -> None:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if MARKER.exists() and MARKER.read_text().strip() == f"{sys.executable} {digest}":
        return
    print("setup: installing Python packages (pip install -e '.[dev]')", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", f"{ROOT}[dev]"], check=True)
    MARKER.write_text(f"{sys.executable} {digest}\n")


def _libc_source() -> None:
    if glob.glob("/usr/share/cargo/registry/libc-*") or os.environ.get("C2RUST_LIBC_SOURCE"):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("setup: installing Debian's librust-libc-dev (the libc crate source)", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "librust-libc-dev"], check=True, env=env)
    else:
        print("setup: the libc crate source is missing: run `sudo apt-get install -y librust-libc-dev`, "
              "or set [toolchain] libc_source in sactor.toml", file=sys.stderr)


def main() -> int:
    if not shutil.which("rustc"):
        print("setup: rustc not found: install Rust (rustup or `apt-get install rustc`)", file=sys.stderr)
        return 1
    _libc_source()
    _python_packages()
    return 0


if __name__ == "__main__":
    sys.exit(main())
