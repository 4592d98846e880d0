"""SACToR's result layout per task, the batch summary, and the end-of-run table.

Per task (SACToR's names, so users' scripts keep working)::

    RESULT/translated_code_unidiomatic/combined.rs      only when that stage verified
    RESULT/translated_code_unidiomatic/clippy_stat.json
    RESULT/translated_code_idiomatic/combined.rs
    RESULT/translated_code_idiomatic/clippy_stat.json
    RESULT/unidiomatic_failure_info.json, RESULT/idiomatic_failure_info.json
    RESULT/llm_stat_unidiomatic.json, RESULT/llm_stat_idiomatic.json
    RESULT/attempts/<stage>-<n>.rs                      failed attempts' code, for debugging
    RESULT/differential_samples.json                    generated inputs and the C program's outputs (SACToR
                                                        samples), when differential testing kept any
    RESULT/items.json                                   function-level tasks: the item book (resume per item)
    RESULT/translated_code_unidiomatic/{functions,structs,enums,global_vars}/NAME.rs   function-level tasks:
                                                        SACToR's per-item layout (pipeline/items.py)
    RESULT/result.json                                  written last: its presence means the task is complete
    RESULT/transcript.jsonl

Every file is written to a temporary name and moved into place (``os.replace``), so a killed run never
leaves a half-written file under a final name, with the mode the user's umask gives new files. Before a
task's new results are written, ``result.json`` and every file of an earlier run that the new result does
not vouch for (a stage that now failed, did not run, or an input that became invalid) are removed, so the
folder always describes the latest run. ``result.json`` is written last.
"""

from __future__ import annotations

import errno
import itertools
import json
import math
import os
import re
import shutil
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import anyio

from .errors import DiskFull
from .records import STAGE_SPECS, STAGES, StageResult, TaskResult

#: errno values that mean the disk (or the quota) is full: fatal for the run, never one task's failure.
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


def _file_mode() -> int:
    """The mode ``open()`` gives a new file under this process's umask (mkstemp would give 0600)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # read at import, before any worker thread exists
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


_TEMP_NAMES = itertools.count()
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_PID = os.getpid()  # a forked child repeats its parent's names: O_EXCL refuses them and it takes the next


def _open_temp(path: Path | str) -> tuple[int, str]:
    """A new temporary file beside ``path`` (a hidden name no other writer uses), with the umask's mode."""
    folder, slash, name = os.fspath(path).rpartition("/")
    while True:
        tmp = f"{folder}{slash}.{name}.{_PID}-{next(_TEMP_NAMES)}.tmp"
        try:
            return os.open(tmp, _TEMP_FLAGS, _FILE_MODE), tmp
        except FileExistsError:  # left by a killed run whose pid this process now has
            continue


#: The name :func:`_open_temp` gives: ``.NAME.PID-N.tmp``.
_TEMP_NAME = re.compile(r"\..+\.([0-9]+)-[0-9]+\.tmp")


def _alive(pid: int) -> bool:
    if pid == _PID:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # there, another user's
    return True


def remove_stale_temporaries(folder: Path, *, recursive: bool = False) -> int:
    """Remove the temporary files a killed run left in ``folder`` (and below it, with ``recursive``): our own
    temporary names whose writer is gone. Nothing trusts them (only complete files are moved into place), but
    they would stay in the output forever. Any other file, a user's too, stays. Returns how many were removed.
    Blocking; never raises."""
    removed = 0
    try:
        walk = os.walk(folder) if recursive else [(os.fspath(folder), [], os.listdir(folder))]
        for top, _dirs, names in walk:
            for name in names:
                match = _TEMP_NAME.fullmatch(name)
                if match is None or _alive(int(match.group(1))):
                    continue
                try:
                    os.unlink(os.path.join(top, name))
                    removed += 1
                except OSError:
                    pass
    except OSError:
        pass
    return removed


def _unlink_quietly(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


@contextmanager
def atomic_writer(path: Path) -> Iterator[TextIO]:
    """A text file that appears at ``path`` whole when the block ends, or not at all if it fails.

    For large files written piece by piece (summaries, ledger snapshots) without holding them in memory.
    Raises DiskFull when the disk is full; other OSErrors propagate.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _open_temp(path)
    except OSError as exc:
        if exc.errno in FULL_DISK:
            raise _disk_full(path) from exc
        raise
    try:
        # backslashreplace: text that cannot be UTF-8 (a lone surrogate from a file name) never fails a write.
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        _unlink_quietly(tmp)
        if isinstance(exc, OSError) and exc.errno in FULL_DISK:
            raise _disk_full(path) from exc
        raise


def _disk_full(path: Path) -> DiskFull:
    return DiskFull(f"no space left on the device while writing {path}: free some space and rerun; "
                    "finished tasks are kept")


def atomic_write_files(files: Sequence[tuple[Path | str, str]], *, folders_exist: bool = False) -> None:
    """Write several files so that each appears whole or not at all, in the given order.

    Every file is written to a temporary name and made durable (``fdatasync``: its data and the size needed to
    read it back) before any is moved into place, so a file named last (a task's result.json) is only ever
    there with all the others complete. Missing folders are made, unless ``folders_exist`` says they are there.
    Raises DiskFull when the disk is full; other OSErrors propagate (the files not yet moved into place are not
    touched).
    """
    written: list[tuple[str, str]] = []
    moved = 0
    current: Path | str = files[0][0] if files else ""
    try:
        made: set[str] = set()
        for path, text in files:
            current = path
            name = os.fspath(path)
            if not folders_exist:
                folder = os.path.dirname(name) or "."
                if folder not in made:
                    os.makedirs(folder, exist_ok=True)
                    made.add(folder)
            fd, tmp = _open_temp(name)
            written.append((tmp, name))
            try:
                # backslashreplace: text that cannot be UTF-8 (a lone surrogate from a file name) never fails.
                data = memoryview(text.encode("utf-8", "backslashreplace"))
                while data:
                    data = data[os.write(fd, data):]
                os.fdatasync(fd)
            finally:
                os.close(fd)
        for placed, (tmp, name) in enumerate(written, start=1):
            current = name
            os.replace(tmp, name)
            moved = placed
    except BaseException as exc:
        for tmp, _ in written[moved:]:
            _unlink_quietly(tmp)
        if isinstance(exc, OSError) and exc.errno in FULL_DISK:
            raise _disk_full(Path(current)) from exc
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a half."""
    atomic_write_files([(path, text)])


def _json_text(data: Any) -> str:
    """``json.dumps(data, indent=2)`` and a newline, the same text, without the reference cycle each call of it
    leaves (its pure-Python encoder's nested closures: about 30 objects for the garbage collector to find, 7
    calls a task, the largest source of cyclic garbage in a run; #16)."""
    out: list[str] = []
    _indented(data, "\n", out)
    out.append("\n")
    return "".join(out)


_ENCODE_STRING = json.encoder.encode_basestring_ascii  # what json.dumps uses for strings (ensure_ascii)


_LITERALS = {None: "null", True: "true", False: "false"}


def _indented(value: Any, newline: str, out: list[str]) -> None:
    """Append ``value`` as json.dumps(indent=2) writes it at the depth whose line break is ``newline``."""
    kind = type(value)
    if kind is str:
        out.append(_ENCODE_STRING(value))
    elif kind is int:
        out.append(int.__repr__(value))
    elif value is None or kind is bool:
        out.append(_LITERALS[value])
    elif kind is float and math.isfinite(value):
        out.append(float.__repr__(value))
    elif isinstance(value, str):
        out.append(_ENCODE_STRING(value))
    elif isinstance(value, dict) and value:
        inner = newline + "  "
        out.append("{")
        for number, (key, item) in enumerate(value.items()):
            out.append(("," if number else "") + inner + _ENCODE_STRING(_key(key)) + ": ")
            _indented(item, inner, out)
        out.append(newline + "}")
    elif isinstance(value, (list, tuple)) and value:
        inner = newline + "  "
        out.append("[")
        for number, item in enumerate(value):
            out.append(("," if number else "") + inner)
            _indented(item, inner, out)
        out.append(newline + "]")
    else:  # a number, true, false, null, an empty object or array: json's own (C) encoder, no cycle
        out.append(json.dumps(value))


def _key(key: Any) -> str:
    """An object key as json writes it (a string; numbers, booleans and null converted as json converts them)."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, _json_text(data))


def _llm_stat(stage: StageResult) -> dict[str, Any]:
    """SACToR's llm_stat keys, from the server's usage figures."""
    inputs = [a.usage.prompt_tokens for a in stage.attempts]
    outputs = [a.usage.completion_tokens for a in stage.attempts]
    times = [round(a.llm_seconds, 4) for a in stage.attempts]
    return {
        "total_queries": stage.requests,  # requests sent, retries and refused ones included
        "total_costed_input_tokens": sum(inputs),
        "total_costed_output_tokens": sum(outputs),
        "total_costed_time": round(sum(times), 4),
        "costed_input_tokens": inputs,
        "costed_output_tokens": outputs,
        "costed_time": times,
        **({"items": dict(stage.items["llm_stat"])} if stage.items and "llm_stat" in stage.items else {}),
    }


def _failure_info(stage: StageResult) -> dict[str, Any]:
    failed = [a for a in stage.attempts if a.kind != "verified"]
    return {
        "stage": stage.stage,
        "status": stage.status,
        "attempts": [{"attempt": a.number, "kind": a.kind, "message": a.message} for a in failed],
        **({"reason": stage.reason, "items": dict(stage.items["failure_info"])}
           if stage.items and "failure_info" in stage.items else {}),
    }


#: The folders of SACToR's per-item layout under a stage's result folder (pipeline/items.py writes them).
ITEM_FOLDERS = ("functions", "structs", "enums", "global_vars")
#: The kept generated inputs and the C program's outputs, in SACToR's samples format (reusable as tests).
DIFFERENTIAL_SAMPLES = "differential_samples.json"
_ATTEMPT_FILE = re.compile("(?:" + "|".join(STAGES) + r")-[0-9]+\.rs")


def _remove(path: Path) -> None:
    """Remove one of our result files if it is there. Raises OSError (IsADirectoryError for a folder)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _clear_earlier_results(result_dir: Path, result: TaskResult) -> None:
    """Remove an earlier run's files that this result does not replace, result.json first.

    Only our own file names are touched: anything else a user put in the folder stays.
    """
    _remove(result_dir / "result.json")  # it must not vouch for files this run is about to change
    remove_stale_temporaries(result_dir, recursive=True)  # a killed run's, from writing this folder
    for name in STAGES:
        stage = result.stage(name)
        ran = stage is not None and stage.status != "skipped"
        if not (ran and stage is not None and stage.verified and stage.code is not None):
            code_dir = result_dir / STAGE_SPECS[name].result_dir
            _remove(code_dir / "combined.rs")
            _remove(code_dir / "clippy_stat.json")
            try:
                code_dir.rmdir()
            except OSError:
                pass  # not empty (a user's file) or not there
        if not ran:
            _remove(result_dir / f"{name}_failure_info.json")
            _remove(result_dir / f"llm_stat_{name}.json")
    if not result.differential_samples:
        _remove(result_dir / DIFFERENTIAL_SAMPLES)
    if (result.granularity or {}).get("granularity") != "function":
        # A task that went whole-file this time: per-item files of an earlier function-level run would not
        # describe this result (items.json stays: digests make it safe to resume from later).
        for folder in ITEM_FOLDERS:
            for spec in STAGE_SPECS.values():
                shutil.rmtree(result_dir / spec.result_dir / folder, ignore_errors=True)
    attempts = result_dir / "attempts"
    try:
        with os.scandir(attempts) as it:
            old = [entry.name for entry in it if _ATTEMPT_FILE.fullmatch(entry.name)]
    except (FileNotFoundError, NotADirectoryError):
        old = []
    for file_name in old:
        _remove(attempts / file_name)


def _write_task_files(result_dir: Path, result: TaskResult, transcript: Iterable[Mapping[str, Any]],
                      summary: Mapping[str, Any] | None = None) -> None:
    try:
        mode = os.lstat(result_dir).st_mode
    except FileNotFoundError:
        result_dir.mkdir(parents=True)
        fresh = True  # a new folder: no earlier results to clear
    else:
        # A folder only: not a file in the way, and not a link that would put results somewhere else.
        if not stat.S_ISDIR(mode):
            what = "a symbolic link" if stat.S_ISLNK(mode) else "a file"
            raise NotADirectoryError(errno.ENOTDIR, f"{result_dir} is {what}, not a folder: move it away")
        fresh = False
        _clear_earlier_results(result_dir, result)
    top = os.fspath(result_dir)
    files: list[tuple[str, str]] = []
    made: set[str] = set()

    def folder(name: str) -> str:
        path = f"{top}/{name}"
        if name not in made:
            if fresh:
                os.mkdir(path)
            else:
                os.makedirs(path, exist_ok=True)
            made.add(name)
        return path

    for name in STAGES:
        stage = result.stage(name)
        if stage is None or stage.status == "skipped":
            continue
        if stage.verified and stage.code is not None:
            code_dir = folder(STAGE_SPECS[name].result_dir)
            files.append((f"{code_dir}/combined.rs", stage.code))
            files.append((f"{code_dir}/clippy_stat.json", _json_text(stage.clippy or {})))
        files.append((f"{top}/{name}_failure_info.json", _json_text(_failure_info(stage))))
        files.append((f"{top}/llm_stat_{name}.json", _json_text(_llm_stat(stage))))
        for attempt in stage.attempts:
            if attempt.kind != "verified" and attempt.code is not None:
                files.append((f"{folder('attempts')}/{name}-{attempt.number}.rs", attempt.code))
    if result.differential_samples:
        files.append((f"{top}/{DIFFERENTIAL_SAMPLES}",
                      _json_text([dict(sample) for sample in result.differential_samples])))
    files.append((f"{top}/transcript.jsonl",
                  "".join(json.dumps(event, ensure_ascii=False) + "\n" for event in transcript)))
    files.append((f"{top}/result.json", _json_text(summary if summary is not None else result.summary())))
    atomic_write_files(files, folders_exist=True)


def write_task_files(result_dir: Path, result: TaskResult, transcript: Iterable[Mapping[str, Any]],
                     summary: Mapping[str, Any] | None = None) -> None:
    """Write one task's SACToR-style results; result.json last (``summary``: its content, when the caller has
    ``result.summary()`` already). Blocking: call it from a worker thread (the engine writes the ledger record
    in the same trip).

    Raises DiskFull when the disk or quota is full, and OSError for anything else that stops this task's
    results from being written (its folder is a file, permission denied, an I/O error).
    """
    try:
        _write_task_files(result_dir, result, transcript, summary)
    except OSError as exc:
        if exc.errno in FULL_DISK:
            raise _disk_full(result_dir) from exc
        raise


async def write_task_results(
    result_dir: Path, result: TaskResult, transcript: Iterable[Mapping[str, Any]]
) -> None:
    """:func:`write_task_files` in a worker thread."""
    events = list(transcript)
    await anyio.to_thread.run_sync(write_task_files, result_dir, result, events)


def totals(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts and token sums over task records (pure; accepts an empty iterable)."""
    out: dict[str, Any] = {"tasks": 0, "verified": 0, "failed": 0, "vacuous_tests": 0, "input_errors": 0,
                           "prompt_tokens": 0, "completion_tokens": 0}
    per_stage = {name: {"verified": 0, "failed": 0, "not_run": 0} for name in STAGES}
    differential: dict[str, Any] = {"tasks_checked": 0, "inputs": 0, "tried": 0, "rejected": {}, "not_applicable": 0,
                                    "unavailable": 0, "no_inputs": 0, "mismatches": 0, "cpu_seconds": 0.0}
    items = {"function_level_tasks": 0, "verified": 0, "failed": 0, "blocked": 0}
    for rec in records:
        out["tasks"] += 1
        _add_differential(differential, rec)
        if rec.get("granularity") == "function":
            items["function_level_tasks"] += 1
            for status in ("verified", "failed", "blocked"):
                items[status] += (rec.get("items") or {}).get(status, 0) or 0
        out["verified" if rec.get("status") == "verified" else "failed"] += 1
        kind = rec.get("failure_kind")
        if kind == "vacuous_tests":
            out["vacuous_tests"] += 1
        elif kind == "input_error":
            out["input_errors"] += 1
        # The input-proposal request (differential testing) is the task's too.
        asked = (rec.get("differential") or {}).get("proposals") or {}
        out["prompt_tokens"] += asked.get("prompt_tokens", 0) or 0
        out["completion_tokens"] += asked.get("completion_tokens", 0) or 0
        for name in STAGES:
            st = rec.get("stages", {}).get(name, {})
            status = st.get("status", "not_run")
            per_stage[name][status if status in per_stage[name] else "not_run"] += 1
            out["prompt_tokens"] += st.get("prompt_tokens", 0) or 0
            out["completion_tokens"] += st.get("completion_tokens", 0) or 0
    out["stages"] = per_stage
    differential["cpu_seconds"] = round(differential["cpu_seconds"], 3)
    out["differential"] = differential
    if items["function_level_tasks"]:
        out["items"] = items
    return out


def _add_differential(totals: dict[str, Any], record: Mapping[str, Any]) -> None:
    """Count one task's differential testing (its oracle, and attempts that disagreed with C) into ``totals``."""
    report = record.get("differential") or {}
    status = report.get("status")
    if status == "checked":
        totals["tasks_checked"] += 1
    elif status in ("not_applicable", "unavailable", "no_inputs"):
        totals[status] += 1
    totals["inputs"] += report.get("inputs", 0) or 0
    totals["tried"] += report.get("tried", 0) or 0
    totals["cpu_seconds"] += report.get("cpu_seconds", 0.0) or 0.0
    for reason, count in (report.get("rejected") or {}).items():
        totals["rejected"][reason] = totals["rejected"].get(reason, 0) + count
    for stage in (record.get("stages") or {}).values():
        totals["mismatches"] += stage.get("differential_mismatches", 0) or 0
    asked = report.get("proposals") or {}
    if asked:  # only when the model was asked for inputs (--differential-model-inputs)
        totals["proposal_requests"] = totals.get("proposal_requests", 0) + (asked.get("requests", 0) or 0)
        totals["proposed_kept"] = totals.get("proposed_kept", 0) + (asked.get("kept", 0) or 0)


def render_table(summary: Mapping[str, Any]) -> list[str]:
    """A short end-of-run table for the terminal."""
    t = summary["totals"]
    lines = [
        f"{'stage':<12} {'verified':>9} {'failed':>7} {'not run':>8}",
    ]
    for name in STAGES:
        s = t["stages"][name]
        lines.append(f"{name:<12} {s['verified']:>9} {s['failed']:>7} {s['not_run']:>8}")
    lines.append(
        f"tasks: {t['tasks']} ({t['verified']} verified, {t['failed']} failed, "
        f"{summary.get('skipped_unchanged', 0)} unchanged from earlier runs), "
        f"orphans: {len(summary.get('orphans', []))}, tokens: {t['prompt_tokens']} in / {t['completion_tokens']} out"
    )
    d = t.get("differential") or {}
    if d.get("tried") or d.get("not_applicable") or d.get("unavailable"):
        lines.append(
            f"differential: {kept_inputs(d)} for {d['tasks_checked']} tasks, {d['cpu_seconds']:.1f} s CPU; "
            f"{d['mismatches']} attempts disagreed with C; not applicable: {d['not_applicable']}, "
            f"C not built: {d['unavailable']}"
        )
    items = t.get("items")
    if items:
        lines.append(f"function-level: {items['function_level_tasks']} tasks, items {items['verified']} verified, "
                     f"{items['failed']} failed, {items['blocked']} blocked by a failed dependency")
    if t.get("vacuous_tests") or t.get("input_errors"):
        lines.append(f"not translated: {t.get('vacuous_tests', 0)} with tests that do not exercise the program, "
                     f"{t.get('input_errors', 0)} with unusable inputs")
    return lines


def kept_inputs(report: Mapping[str, Any]) -> str:
    """"N generated inputs kept of M tried (rejected: ...)", for one task's differential report or the totals."""
    rejected = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in sorted((report.get("rejected") or {}).items()))
    return (f"{report.get('inputs', 0)} generated inputs kept of {report.get('tried', 0)} tried"
            + (f" (rejected: {rejected})" if rejected else ""))
