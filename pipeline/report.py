"""The figures of a finished run, read from its output folder: what the report shows, in one plain dict.

Use :func:`run_figures` on an ``--output`` folder (``batch_summary.json``, the task folders' failure and
statistics files) and :func:`compare` over several; :mod:`pipeline.report_render` turns the result into
HTML, Markdown or JSON. Everything here is pure and synchronous (files in, numbers out): call it from a
command or a worker thread, never on an event loop. Fields other branches add later (``differential``,
``granularity``/``items``) are read defensively and shown only when present.

Raises :class:`ReportError` when a folder holds no readable ``batch_summary.json``; a task's missing or
unreadable statistics file only leaves that task out of the figures it would feed.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .records import STAGES

SUMMARY = "batch_summary.json"
#: z for a 95 % confidence interval.
Z95 = 1.959963984540054
#: Settings shown in the headline (section, key, label); the full configuration is in the appendix.
HEADLINE_SETTINGS = (
    ("translation", "max_attempts", "attempts per stage"),
    ("model", "temperature", "temperature"),
    ("model", "max_tokens", "max tokens"),
    ("translation", "num_tests", "tests per task"),
    ("translation", "test_timeout", "test timeout (s)"),
    ("client", "workers", "requests in flight"),
    ("run", "jobs", "compile/test jobs"),
    ("run", "feed", "feed"),
)
TEST_CLASSES = ("wrong output", "crash or signal", "timeout", "limit hit", "no output")
_ERROR_CODE = re.compile(r"\bE[0-9]{4}\b")
_FIRST_FAILURE = re.compile(r"first: test \S+ failed: (.*)$", re.S)


class ReportError(Exception):
    """A folder cannot be reported on (no summary, unreadable summary): the message names it and the fix."""


def wilson(successes: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (0, 0 for no trials): honest also near 0 % and 100 %."""
    if total <= 0:
        return 0.0, 0.0
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def public_url(url: str) -> str:
    """``url`` without user name, password, query or fragment."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unreadable URL)"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def classify_test_failure(message: str) -> str:
    """The class of a ``test_failure`` attempt, from its message (the first failing test's reason)."""
    found = _FIRST_FAILURE.search(message)
    reason = (found.group(1) if found else message).lower()
    if "timed out" in reason:
        return "timeout"
    if "limit" in reason or "exceeded" in reason or "out of memory" in reason:
        return "limit hit"
    if "signal" in reason:
        return "crash or signal"
    if "nothing printed" in reason:
        return "no output"
    return "wrong output"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return None


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _sum_numbers(into: dict[str, float], data: Any, prefix: str = "") -> None:
    """Add every numeric leaf of ``data`` into ``into`` under its dotted key."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            _sum_numbers(into, value, f"{prefix}{key}." if isinstance(value, Mapping) else f"{prefix}{key}")
    elif isinstance(data, int | float) and not isinstance(data, bool):
        into[prefix.rstrip(".")] = into.get(prefix.rstrip("."), 0) + data


def read_summary(out: Path) -> dict[str, Any]:
    """``out/batch_summary.json``. Raises ReportError naming the file and the fix."""
    path = out / SUMMARY
    if not path.is_file():
        raise ReportError(f"{out} has no {SUMMARY}: give the --output folder of a finished run")
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
        raise ReportError(f"{path} is not a batch summary (unreadable JSON or no \"tasks\" list): rerun the batch "
                          "over that folder to rewrite it")
    return data


def _tasks(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [t for t in summary.get("tasks", []) if isinstance(t, dict) and isinstance(t.get("task_id"), str)]


def _stage(task: Mapping[str, Any], name: str) -> dict[str, Any]:
    stage = task.get("stages", {}).get(name) if isinstance(task.get("stages"), Mapping) else None
    return stage if isinstance(stage, dict) else {"status": "not_run"}


def _headline(summary: Mapping[str, Any], tasks: list[dict[str, Any]]) -> dict[str, Any]:
    totals = summary.get("totals") if isinstance(summary.get("totals"), Mapping) else None
    if totals is None:
        from .results import totals as count

        totals = count(tasks)
    total, verified = int(totals.get("tasks", 0)), int(totals.get("verified", 0))
    low, high = wilson(verified, total)
    run = summary.get("run") or {}
    server = summary.get("server") or {}
    config = summary.get("config") or {}
    settings = {label: config.get(section, {}).get(key) for section, key, label in HEADLINE_SETTINGS
                if isinstance(config.get(section), Mapping) and key in config[section]}
    stages = {name: {k: int(v) for k, v in totals.get("stages", {}).get(name, {}).items()} for name in STAGES}
    return {
        "tasks": total, "verified": verified, "failed": int(totals.get("failed", total - verified)),
        "pass_rate": verified / total if total else 0.0, "ci_low": low, "ci_high": high,
        "stages": stages,
        "model": server.get("model"), "server": public_url(str(server.get("base_url") or "")),
        "max_model_len": server.get("max_model_len"),
        "started": run.get("started"), "duration_seconds": run.get("wall_seconds"),
        "interrupted": run.get("interrupted"), "stopped_by": run.get("stopped_by"),
        "sandbox": run.get("sandbox"), "fingerprint": run.get("settings_fingerprint"),
        "translated_this_run": (summary.get("this_run") or {}).get("translated"),
        "unchanged": summary.get("skipped_unchanged", 0), "orphans": len(summary.get("orphans") or []),
        "settings": settings,
    }


def _settings(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Every public setting as ``section.key``; long text cut so the appendix stays a table."""
    flat: dict[str, Any] = {}
    for section, values in (summary.get("config") or {}).items():
        if not isinstance(values, Mapping):
            continue
        for key, value in values.items():
            if key == "base_url":
                value = public_url(str(value))
            text = value if not isinstance(value, str) or len(value) <= 120 else value[:117] + "..."
            flat[f"{section}.{key}"] = text
    return flat


class _Collector:
    """Walks the tasks once, reading each one's failure and statistics files."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.attempts: dict[str, Counter[str]] = {name: Counter() for name in STAGES}
        self.repairs: dict[str, dict[str, Any]] = {
            name: {"first_try": 0, "repaired": 0, "fixed": Counter[str](), "unfixed": Counter[str]()}
            for name in STAGES}
        self.codes: Counter[str] = Counter()
        self.test_classes: Counter[str] = Counter({c: 0 for c in TEST_CLASSES})
        self.kinds: Counter[str] = Counter()
        self.refused_unsafe = 0
        self.cost = {"requests": 0.0, "model_seconds": 0.0, "cpu_seconds": 0.0, "wall_seconds": 0.0}
        self.cpu_tasks = 0
        self.quality: dict[str, dict[str, Any]] = {
            name: {"programs": 0, "unsafe_lines": 0, "total_lines": 0, "with_unsafe": 0, "clippy_warnings": 0,
                   "lints": Counter[str]()}
            for name in STAGES}
        self.differential: dict[str, dict[str, float]] = {}
        self.items: dict[str, float] = {}
        self.granularity: Counter[str] = Counter()

    def task(self, task: Mapping[str, Any]) -> None:
        folder = self.out / task["task_id"]
        self.cost["wall_seconds"] += _num(task.get("wall_seconds"))
        cpu = [_stage(task, n).get("cpu_seconds") for n in STAGES if _stage(task, n).get("status") != "not_run"]
        if cpu and all(isinstance(c, int | float) for c in cpu):
            self.cost["cpu_seconds"] += sum(_num(c) for c in cpu)
            self.cpu_tasks += 1
        for name in STAGES:
            self._stage(folder, name, _stage(task, name))
        self._extras(task)

    def _stage(self, folder: Path, name: str, stage: Mapping[str, Any]) -> None:
        status = stage.get("status")
        if status not in ("verified", "failed"):
            return
        attempts = int(_num(stage.get("attempts")))
        self.attempts[name][str(attempts) if status == "verified" else "failed"] += 1
        self.cost["requests"] += _num(stage.get("requests"))
        llm = _read_json(folder / f"llm_stat_{name}.json")
        if isinstance(llm, Mapping):
            self.cost["model_seconds"] += _num(llm.get("total_costed_time"))
        info = _read_json(folder / f"{name}_failure_info.json")
        failed = [a for a in (info or {}).get("attempts", []) if isinstance(a, Mapping)] \
            if isinstance(info, Mapping) else []
        repairs = self.repairs[name]
        if status == "verified":
            repairs["first_try" if attempts <= 1 else "repaired"] += 1
        for attempt in failed:
            kind, message = str(attempt.get("kind")), str(attempt.get("message") or "")
            (repairs["fixed"] if status == "verified" else repairs["unfixed"])[kind] += 1
            self.kinds[kind] += 1
            if kind == "compile_error":
                self.codes.update(_ERROR_CODE.findall(message))
            elif kind == "test_failure":
                self.test_classes[classify_test_failure(message)] += 1
            elif kind == "refused" and "unsafe" in message:
                self.refused_unsafe += 1
        if status == "verified":
            self._quality(folder, name)
        diff = stage.get("differential")
        if isinstance(diff, Mapping):
            _sum_numbers(self.differential.setdefault(name, {}), diff)

    def _quality(self, folder: Path, name: str) -> None:
        stat = _read_json(folder / f"translated_code_{name}" / "clippy_stat.json")
        if not isinstance(stat, Mapping) or "total_lines" not in stat:
            return
        q = self.quality[name]
        q["programs"] += 1
        q["unsafe_lines"] += int(_num(stat.get("unsafe_lines")))
        q["total_lines"] += int(_num(stat.get("total_lines")))
        q["with_unsafe"] += 1 if _num(stat.get("unsafe_lines")) or _num(stat.get("unsafe_blocks")) else 0
        q["clippy_warnings"] += int(_num(stat.get("total_warnings")))
        lints = stat.get("lints")
        if isinstance(lints, Mapping):
            q["lints"].update({str(k): int(_num(v)) for k, v in lints.items()})

    def _extras(self, task: Mapping[str, Any]) -> None:
        if isinstance(task.get("differential"), Mapping):
            _sum_numbers(self.differential.setdefault("task", {}), task["differential"])
        if isinstance(task.get("granularity"), str):
            self.granularity[task["granularity"]] += 1
        items = task.get("items")
        if isinstance(items, Mapping):
            _sum_numbers(self.items, items)
        elif isinstance(items, list):
            for item in items:
                if isinstance(item, Mapping):
                    key = str(item.get("status", "unknown"))
                    self.items[key] = self.items.get(key, 0) + 1


def _per(value: float, count: int) -> float | None:
    return value / count if count else None


def run_figures(out: Path, name: str | None = None) -> dict[str, Any]:
    """Every figure of the report for the run in ``out``. Raises ReportError (see the module)."""
    summary = read_summary(out)
    tasks = _tasks(summary)
    head = _headline(summary, tasks)
    c = _Collector(out)
    for task in tasks:
        c.task(task)
    totals = summary.get("totals") or {}
    prompt, completion = int(_num(totals.get("prompt_tokens"))), int(_num(totals.get("completion_tokens")))
    verified = head["verified"]
    kinds = c.kinds
    quality = {}
    for stage, q in c.quality.items():
        quality[stage] = {**q, "unsafe_share": _per(q["unsafe_lines"], q["total_lines"]),
                          "lints": dict(q["lints"].most_common())}
    differential: dict[str, Any] | None = None
    if c.differential or isinstance(totals.get("differential"), Mapping):
        run_totals: dict[str, float] = {}
        _sum_numbers(run_totals, totals.get("differential") or {})
        differential = {"stages": c.differential, "totals": run_totals}
    items = ({"granularity": dict(c.granularity), "items": c.items}
             if c.items or c.granularity else None)
    return {
        "name": name or out.name or str(out),
        "path": str(out),
        "headline": head,
        "attempts": {stage: dict(sorted(counts.items(), key=lambda kv: (kv[0] == "failed", int(kv[0])
                                                                          if kv[0].isdigit() else 0)))
                     for stage, counts in c.attempts.items()},
        "repairs": {stage: {**r, "fixed": dict(r["fixed"]), "unfixed": dict(r["unfixed"])}
                    for stage, r in c.repairs.items()},
        "taxonomy": {
            "rustc_codes": dict(c.codes.most_common()),
            "test_failures": dict(c.test_classes),
            "attempt_kinds": dict(kinds.most_common()),
            "refused_unsafe": c.refused_unsafe,
            "refused_other": kinds["refused"] - c.refused_unsafe,
            "truncated": kinds["truncated"],
            "no_code": kinds["no_code"],
            "request_failed": kinds["request_failed"],
            "vacuous_tests": int(_num(totals.get("vacuous_tests"))),
            "input_errors": int(_num(totals.get("input_errors"))),
        },
        "cost": {
            "prompt_tokens": prompt, "completion_tokens": completion,
            "requests": int(c.cost["requests"]), "model_seconds": round(c.cost["model_seconds"], 3),
            "cpu_seconds": round(c.cost["cpu_seconds"], 3) if c.cpu_tasks else None,
            "per_verified_task": {
                "prompt_tokens": _per(prompt, verified), "completion_tokens": _per(completion, verified),
                "requests": _per(c.cost["requests"], verified), "model_seconds": _per(c.cost["model_seconds"],
                                                                                      verified),
            },
            "cpu_seconds_per_task": _per(c.cost["cpu_seconds"], c.cpu_tasks),
            "wall_seconds_per_task": _per(c.cost["wall_seconds"], len(tasks)),
        },
        "quality": quality,
        "differential": differential,
        "items": items,
        "settings": _settings(summary),
        "tasks": [_task_row(t) for t in tasks],
    }


def _task_row(task: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "task_id": task["task_id"], "status": task.get("status", "failed"),
        "failure_kind": task.get("failure_kind"), "reason": task.get("reason"),
        "stages": {n: {"status": _stage(task, n).get("status", "not_run"),
                       "attempts": _stage(task, n).get("attempts")} for n in STAGES},
    }


def _names(outs: list[Path]) -> list[str]:
    """Short distinct labels: the folder names, with parents added while two are equal."""
    depth = 1
    while True:
        names = ["/".join(p.resolve().parts[-depth:]) for p in outs]
        if len(set(names)) == len(names) or depth > 8:
            return names
        depth += 1


def compare(outs: Iterable[Path]) -> dict[str, Any]:
    """The figures of every run in ``outs`` and the tasks whose status differs between them.

    Raises ReportError for the first folder that cannot be read.
    """
    paths = list(outs)
    runs = [run_figures(out, name) for out, name in zip(paths, _names(paths), strict=True)]
    flipped: list[dict[str, Any]] = []
    if len(runs) > 1:
        status = [{t["task_id"]: t["status"] for t in r["tasks"]} for r in runs]
        common = sorted(set.intersection(*(set(s) for s in status)))
        for task_id in common:
            seen = [s[task_id] for s in status]
            if "verified" in seen and any(v != "verified" for v in seen):
                flipped.append({"task_id": task_id, "statuses": seen})
    return {"runs": runs, "flipped": flipped}


__all__ = ["ReportError", "classify_test_failure", "compare", "public_url", "read_summary", "run_figures", "wilson"]
