#!/usr/bin/env python3
"""Entry point: ``python batch_translate_generic.py --c-files DIR --json-files DIR --output DIR``.

Everything lives in :mod:`pipeline`; this file only hands over to its command line (the ``c2rust-batch``
command's entry point, :func:`pipeline.cli.console_main`).
"""

from pipeline.cli import console_main

if __name__ == "__main__":
    console_main()
