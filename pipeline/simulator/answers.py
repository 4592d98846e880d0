"""Choosing the assistant message for a chat request: canned answers, then directives, then a refusal.

Canned answers live in ``answers_dir``::

    answers_dir/<key>/match.txt          optional: a substring identifying the task (default "<key>.c")
    answers_dir/<key>/unidiomatic-1.md   the whole assistant message for attempt 1 of the unidiomatic stage
    answers_dir/<key>/unidiomatic-2.md   attempt 2, ... (a later attempt gets the last file)
    answers_dir/<key>/idiomatic-1.md     ...
    answers_dir/<key>/inputs-1.md        the answer to a request for test inputs (``generate-tests``)
    answers_dir/<key>/unidiomatic-1-c2.md  optional: choice 2 of a request for several (``n``); without such a
                                         file, every choice gets the plain file

* task: the key whose match string occurs in the FIRST user message; the longest match string wins
  (then the smallest key, so the choice is deterministic);
* stage: ``inputs`` when the first user message starts with "Propose test inputs" (a request for test inputs);
  else the last stage declared in :data:`pipeline.records.STAGE_SPECS` whose ``quotes`` fence starts a line of
  the first user message (``idiomatic`` for "```rust"), else the first stage (``unidiomatic``);
* attempt: 1 + the number of assistant messages in the request.

Function-level requests (docs/function_level.md) are recognised by a marker line of the first user message,
never by guessing, and answered from a folder per kind::

    answers_dir/<key>/functions/<label>-<N>.md            "Function-level item: <label>" (the unidiomatic
                                                          prompt of one function group; <label> is the group's
                                                          names joined with '+' in the prompt's order, e.g.
                                                          is_even+is_odd)
    answers_dir/<key>/globals/<name>-<N>.md               "Global-level item: <name>" (a global or a type)
    answers_dir/<key>/idiomatic-functions/<label>-<N>.md  "Idiomatic function-level item: <label>"

N is the attempt as above (a later attempt gets the last file); the task key is found as for whole-file
requests. A key without the expected file gets the refusal below, which then names the path it looked for.

A file may start with one header line ``<!-- sim: {JSON} -->`` (removed from the answer). Options:
``{"finish_reason": "length"}`` sends the answer as truncated; ``{"fault": KIND}`` applies that fault kind
every time this answer is served, or only the first N times with ``"fault_times": N``.

The directory is scanned once (keys and match strings); answer files are read on first use and cached.

Without a canned answer or a directive, a first user message that is exactly ``Reply with the word X.`` is
obeyed (the answer is ``X``), as a model would, so a server check passes; anything else gets a refusal.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..records import STAGE_SPECS, STAGES
from . import directive
from .model import check_fault_kind
from .tokens import content_text

log = logging.getLogger(__name__)

DIRECTIVE_KEY = "directive"
#: Not a translation stage: a request for test inputs (``generate-tests``), answered from ``inputs-N.md``.
INPUTS = "inputs"
ANSWER_STAGES = (*STAGES, INPUTS)
_ANSWER_FILE = re.compile("^(" + "|".join(map(re.escape, ANSWER_STAGES)) + r")-(\d+)(?:-c(\d+))?\.md$")
#: Later stages first: a stage's first request may also quote what an earlier one quotes (the C program).
_DETECTION_ORDER = tuple(reversed(STAGE_SPECS.values()))
_HEADER = re.compile(r"^<!--\s*sim:\s*(.*?)\s*-->[ \t]*\r?\n?")
_REPLY_WITH_WORD = re.compile(r"^\s*Reply with the word (\w+)\.?\s*$")
#: Marker line -> answer folder of the function-level kinds (the longest marker first: one ends another).
ITEM_KINDS = (("Idiomatic function-level item: ", "idiomatic-functions"), ("Function-level item: ", "functions"),
              ("Global-level item: ", "globals"))
_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_+]*")

NOT_FOUND_TEXT = (
    "I could not find a translation for this task: the simulator has no canned answer that matches it and "
    "the prompt carries no @sim directive. Please check the task name or the simulator's answers directory."
)


@dataclass(frozen=True)
class Answer:
    """What to send back for one chat request (before max_tokens is applied)."""

    text: str
    finish_reason: str = "stop"
    key: str | None = None
    stage: str = STAGES[0]
    attempt: int = 1
    fault: str | None = None


@dataclass(frozen=True)
class _CannedFile:
    text: str
    finish_reason: str
    fault: str | None
    fault_times: int | None


def first_user_text(messages: list[Any]) -> str:
    """The text of the first message with role ``user`` ("" when there is none)."""
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def detect_stage(first_user: str) -> str:
    """``inputs`` for a request for test inputs; else the last declared stage whose quoted program's fence
    (```` ```rust ```` for ``idiomatic``) starts a line of the first user message; else the first declared stage."""
    if first_user.lstrip().startswith("Propose test inputs"):
        return INPUTS
    for spec in _DETECTION_ORDER:
        fence = "```" + spec.quotes
        if fence in first_user and any(line.startswith(fence) for line in first_user.splitlines()):
            return spec.name
    return STAGES[0]


def detect_item(first_user: str) -> tuple[str, str] | None:
    """(answer folder, label) of a function-level request: the first line starting with a marker of
    :data:`ITEM_KINDS` followed by a label of identifiers joined with '+'; None for other requests."""
    for line in first_user.splitlines():
        for marker, folder in ITEM_KINDS:
            if line.startswith(marker) and _LABEL.fullmatch(label := line[len(marker):].strip()):
                return folder, label
    return None


def detect_attempt(messages: list[Any]) -> int:
    """1 + the number of assistant messages."""
    return 1 + sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")


def parse_canned(raw: str, *, source: str = "answer") -> tuple[str, dict[str, Any]]:
    """Split an answer file into its text and its header options (``{}`` without a header line).

    A header whose JSON is not an object is dropped with a log warning.
    """
    match = _HEADER.match(raw)
    if not match:
        return raw, {}
    text = raw[match.end():]
    try:
        options = json.loads(match.group(1))
    except ValueError:
        log.warning("%s: ignoring a sim header that is not JSON: %.200s", source, match.group(1))
        return text, {}
    if not isinstance(options, dict):
        log.warning("%s: ignoring a sim header that is not a JSON object", source)
        return text, {}
    return text, options


class AnswerBook:
    """The canned answers of one directory, plus directive mode and the not-found refusal.

    Use :meth:`scan` once (blocking; run it in a thread from async code), then :meth:`choose` per request
    (also blocking on first use of a file). Thread-safe.
    """

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._matches: list[tuple[str, str]] = []  # (match string, key), longest first
        self._files: dict[tuple[str, str], list[tuple[int, Path]]] = {}
        self._cache: dict[Path, _CannedFile] = {}
        self._served: dict[Path, int] = {}
        self._lock = threading.Lock()

    def scan(self) -> None:
        """Build the key -> match-string table. Raises OSError when ``root`` cannot be listed."""
        table: list[tuple[str, str]] = []
        if self.root is not None:
            for entry in sorted(self.root.iterdir()):
                if not entry.is_dir() or entry.name.startswith("."):
                    continue
                match_file = entry / "match.txt"
                match = ""
                if match_file.is_file():
                    match = match_file.read_text(encoding="utf-8", errors="replace").strip()
                table.append((match or f"{entry.name}.c", entry.name))
        table.sort(key=lambda item: (-len(item[0]), item[1]))
        with self._lock:
            self._matches = table
            self._files.clear()
            self._cache.clear()
            self._served.clear()
        log.info("simulator: %d canned answer keys under %s", len(table), self.root)

    @property
    def keys(self) -> list[str]:
        """Every key found by :meth:`scan`."""
        return sorted(key for _, key in self._matches)

    def find_key(self, first_user: str) -> str | None:
        """The key whose match string occurs in ``first_user`` (longest match string wins)."""
        for match, key in self._matches:
            if match in first_user:
                return key
        return None

    def _stage_files(self, key: str, stage: str) -> list[tuple[int, Path]]:
        with self._lock:
            cached = self._files.get((key, stage))
        if cached is not None:
            return cached
        assert self.root is not None
        found: dict[str, list[tuple[int, Path]]] = {s: [] for s in ANSWER_STAGES}
        try:
            names = [p.name for p in (self.root / key).iterdir()]
        except OSError as exc:
            log.warning("simulator: cannot list answers of %s: %s", key, exc)
            names = []
        for name in names:
            m = _ANSWER_FILE.match(name)
            if m:
                # Choice k's files of a stage are listed under "stage-ck" (see _canned).
                group = f"{m.group(1)}-c{int(m.group(3))}" if m.group(3) else m.group(1)
                found.setdefault(group, []).append((int(m.group(2)), self.root / key / name))
        with self._lock:
            for s, files in found.items():
                self._files[(key, s)] = sorted(files)
            return self._files.setdefault((key, stage), [])

    def _load(self, path: Path) -> _CannedFile:
        with self._lock:
            cached = self._cache.get(path)
        if cached is not None:
            return cached
        raw = path.read_text(encoding="utf-8", errors="replace")
        text, options = parse_canned(raw, source=str(path))
        finish = options.get("finish_reason", "stop")
        if finish not in ("stop", "length"):
            log.warning("%s: finish_reason must be 'stop' or 'length', got %r", path, finish)
            finish = "stop"
        fault = options.get("fault")
        if fault is not None:
            try:
                fault = check_fault_kind(str(fault))
            except ValueError as exc:
                log.warning("%s: %s", path, exc)
                fault = None
        times = options.get("fault_times")
        loaded = _CannedFile(text, finish, fault, int(times) if isinstance(times, int) else None)
        with self._lock:
            self._cache[path] = loaded
        return loaded

    def _canned(self, key: str, stage: str, attempt: int, choice: int = 1) -> Answer | None:
        files = (self._stage_files(key, f"{stage}-c{choice}") if choice > 1 else []) or self._stage_files(key, stage)
        return self._serve(files, key, stage, attempt) if files else None

    def _serve(self, files: list[tuple[int, Path]], key: str, stage: str, attempt: int) -> Answer:
        """The answer of the file for ``attempt`` among ``files`` (numbered, sorted): the last one not after it."""
        chosen = files[0][1]
        for number, path in files:
            if number <= attempt:
                chosen = path
        canned = self._load(chosen)
        fault = canned.fault
        if fault is not None and canned.fault_times is not None:
            with self._lock:
                served = self._served.get(chosen, 0)
                self._served[chosen] = served + 1
            if served >= canned.fault_times:
                fault = None
        return Answer(canned.text, canned.finish_reason, key, stage, attempt, fault)

    def _item_files(self, key: str, folder: str, label: str) -> list[tuple[int, Path]]:
        assert self.root is not None
        pattern = re.compile(re.escape(label) + r"-(\d+)\.md")
        try:
            names = [p.name for p in (self.root / key / folder).iterdir()]
        except OSError:
            return []
        return sorted((int(m.group(1)), self.root / key / folder / name) for name in names
                      if (m := pattern.fullmatch(name)))

    def _canned_item(self, key: str, folder: str, label: str, attempt: int) -> Answer:
        stage = f"{folder}/{label}"
        files = self._item_files(key, folder, label)
        if not files:
            expected = self.root / key / folder / f"{label}-{attempt}.md" if self.root else None
            log.warning("simulator: no canned answer %s", expected)
            return Answer(f"{NOT_FOUND_TEXT} (expected {expected})", "stop", None, stage, attempt)
        return self._serve(files, key, stage, attempt)

    def choose(self, messages: list[Any], choice: int = 1) -> Answer:
        """The answer for a request's ``messages`` (choice ``choice`` of a request for several). Raises OSError if
        a matched answer file is unreadable."""
        first_user = first_user_text(messages)
        stage = detect_stage(first_user)
        attempt = detect_attempt(messages)
        key = self.find_key(first_user) if self._matches else None
        item = detect_item(first_user)
        if key is not None and item is not None:
            return self._canned_item(key, *item, attempt)
        if key is not None:
            answer = self._canned(key, stage, attempt, choice)
            if answer is not None:
                return answer
        found = directive.find_directive(first_user)
        if found is not None:
            text, finish = directive.render(found, stage, attempt, choice)
            return Answer(text, finish, DIRECTIVE_KEY, stage, attempt)
        word = _REPLY_WITH_WORD.match(first_user)
        if word is not None:
            return Answer(word.group(1), "stop", None, stage, attempt)
        return Answer(NOT_FOUND_TEXT, "stop", None, stage, attempt)
