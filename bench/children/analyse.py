"""``python -m bench.children.analyse DIR``: processes alive in a run recorded by bench/children/sitecustomize.py.

For our CLI (batch_translate_generic.py) and the pool baseline (bench.baselines): the steady window (from the 5%
to the 90% quantile of the starts: no ramp-up, no drain), the mean number of compile and test processes alive in
it, and the share of it with at least two alive (what two cores need to stay busy).
"""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path


def alive(spans: list[tuple[float, float]]) -> dict[str, float]:
    starts = sorted(s for s, _ in spans)
    t0, t1 = starts[len(starts) // 20], starts[len(starts) * 9 // 10]
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    live, last, area, two = 0, t0, 0.0, 0.0
    for t, step in events:
        if t > t1:
            break
        if t > t0:
            area += live * (t - last)
            two += (t - last) if live >= 2 else 0.0
            last = t
        live += step
    area += live * (t1 - last)
    two += (t1 - last) if live >= 2 else 0.0
    window = t1 - t0
    return {"window_s": window, "processes": len(spans), "mean_alive": area / window, "two_or_more": two / window}


def main(argv: list[str]) -> int:
    for directory in argv:
        for path in sorted(glob.glob(f"{directory}/*.json")):
            data = json.loads(Path(path).read_text())
            command = " ".join(data["argv"])
            kind = "ours" if "batch_translate" in command else "pool" if "baselines" in command else None
            if kind is None or len(data["spans"]) < 20:
                continue
            figures = alive([tuple(span) for span in data["spans"]])
            print(directory, kind, {k: round(v, 3) for k, v in figures.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
