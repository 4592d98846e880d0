#!/usr/bin/env python3
"""Entry point: ``python batch_translate_generic.py --c-files DIR --json-files DIR --output DIR``.

Everything lives in :mod:`pipeline`; this file only hands over to its command line.
"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
