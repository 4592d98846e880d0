"""Small JSON verdicts kept under the cache directory (tests that prove nothing, differential oracles).

Read leniently (a missing or damaged entry is a miss, never an error) and written atomically (temp file,
``os.replace``); a cache that cannot be written only costs the work again next time.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def read_json(path: Path) -> Any | None:
    """The entry at ``path``, or None when it is missing or not valid JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: Any) -> None:
    """Store ``data`` at ``path`` whole or not at all; failures are logged, not raised."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("cache entry %s not written: %s", path, exc)
