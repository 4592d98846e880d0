"""Corpus discovery: the async producer that pairs C programs with their JSON tests.

Use :func:`discover` to turn a corpus on disk into a stream of :class:`~pipeline.task.Task` values (work) and
:class:`~pipeline.task.Orphan` values (files that cannot become work, with the reason, for the summary).

Three layouts, detected per corpus by :func:`detect_layout`:

``flat``     ``C_DIR/NAME.c`` with ``JSON_DIR/NAME.json``; id ``NAME``. Samples lists beside the test tasks
             (``NAME_samples.json``, or any samples list a test task names) are data, not tasks or orphans.
``sactor``   ``C_DIR/NAME/NAME.c`` with ``JSON_DIR/NAME/test_task/test_task.json``; id ``NAME``.
``codenet``  ``C_DIR/PROBLEM/C/SUB.c`` with ``JSON_DIR/PROBLEM/C/*.json``: ``SUB.json`` if it exists, else the
             problem's only JSON serves every submission; id ``PROBLEM/SUB``.

Discovery is lazy: directories are read with :func:`os.scandir` in chunks of :data:`LISTING_CHUNK` entries,
all file-system work happens in worker threads, a small batch at a time, and nothing holds a list of the
corpus. Memory is bounded by one chunk (plus, for codenet, the JSON names of one problem folder).

Never opened: FIFOs, devices, sockets and broken links (each reported as an Orphan with what it is; a FIFO
would block ``open`` forever), and the output directory when it lies inside the corpus (skipped silently).

Order is deterministic: each chunk is sorted by name, so a directory of at most :data:`LISTING_CHUNK` entries
comes out fully sorted; a larger one comes out in sorted runs whose boundaries follow the file system's own
(stable while the directory is unchanged) listing order. Task ids never depend on the order.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import re
import stat
import time
from collections.abc import AsyncGenerator, Collection, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import anyio.to_thread

from .errors import ConfigError
from .task import Feed, Orphan, Task, TestKind

log = logging.getLogger(__name__)

Layout = Literal["flat", "sactor", "codenet"]

#: Entries read from a directory and sorted together; bounds discovery's memory.
LISTING_CHUNK = 1024
#: Bytes of a JSON file read to classify it (a full validation happens when the tests are loaded).
JSON_PEEK = 4096
#: Bytes of a C file read to check that it is readable UTF-8.
C_PEEK = 1 << 16
#: Directory entries looked at by detect_layout.
DETECT_ENTRIES = 64
#: Items produced per worker-thread call: the first call returns as soon as one item exists.
_BATCH = 64
_BATCH_SECONDS = 0.05

_DIR, _FILE = "d", "f"
_SAMPLES_SUFFIX = "_samples.json"
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_ID_PART_MAX = 200
# A key of the first objects of a JSON list; the look-behind skips escaped quotes inside string values.
_JSON_KEY = re.compile(r'(?<!\\)"(command|input|output)"\s*:')
# The samples file a `sactor run-tests` command names.
_RUN_TESTS_REF = re.compile(r'run-tests\b[^"\n]*?([^\s"\\]+\.json)(?=[\s"\\])')

Item = Task | Orphan


def task_id(relative: str, reserved: Collection[str] = ()) -> str:
    """The task id for a corpus-relative path without extension ('NAME' or 'PROBLEM/SUB').

    Keeps ``[A-Za-z0-9._-]`` and ``/``; any other character becomes ``_``, and so does a leading ``.`` (hidden
    names in the output directory are the tool's temporary files). When that (or a '.'/'..' part, a part
    longer than 200 characters, or a first part in ``reserved``: the names of the tool's own files in the
    output directory) changed the text, ``-`` and 8 hex digits of the original path's SHA-256 are appended: a
    rewritten id never takes the plain id of another file, nor the name of one of the tool's files.
    """
    parts: list[str] = []
    for part in relative.split("/"):
        safe = _ID_UNSAFE.sub("_", part)[:_ID_PART_MAX]
        if safe in ("", ".", ".."):
            safe = "_" * max(1, len(safe))
        elif safe.startswith("."):
            safe = "_" + safe[1:]
        parts.append(safe)
    ident = "/".join(parts)
    if ident != relative or parts[0] in reserved:
        digest = hashlib.sha256(relative.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        ident = f"{ident}-{digest}"
    return ident


def _check_dir(path: Path, flag: str, what: str) -> None:
    hint = f"pass the folder that holds the {what}"
    try:
        if not path.exists():
            raise ConfigError(f"{flag} {path}: not a directory (it does not exist): {hint}")
        if not path.is_dir():
            raise ConfigError(f"{flag} {path}: not a directory (it is a file): {hint}, not a file")
        with os.scandir(path) as it:
            next(it, None)
    except OSError as exc:
        raise ConfigError(
            f"{flag} {path}: cannot read the directory ({exc.strerror or exc}): check its permissions"
        ) from exc


def _check_dirs(c_dir: Path, json_dir: Path) -> None:
    _check_dir(c_dir, "--c-files", "C programs")
    _check_dir(json_dir, "--json-files", "JSON test files")


def _special(mode: int) -> str:
    """What a file that is neither a regular file nor a directory is, for a reason."""
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def _kind(entry: os.DirEntry[str]) -> str:
    """_DIR, _FILE, or what else the entry is ("a FIFO", "a broken symbolic link", ...), without opening it."""
    try:
        if entry.is_dir():
            return _DIR
        if entry.is_file():
            return _FILE
        return _special(entry.stat().st_mode)
    except FileNotFoundError:
        return "a broken symbolic link"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"


def _skipped(kind: str) -> str:
    return f"{kind}, not a regular file: skipped without opening it"


class NotRegularFile(OSError):
    """A path that names a FIFO, a device or a socket: reading it could block or have side effects."""


def _open_regular(path: Path) -> int:
    """A read-only descriptor of ``path``, refused (NotRegularFile) unless it is a regular file.

    Checked before opening (a device is never opened) and again on the descriptor (it may have been replaced
    in between; O_NONBLOCK keeps such a FIFO from blocking the open). Raises OSError.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFile(f"{path} is {_special(mode)}")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"{path} is {_special(mode)}")
    except BaseException:
        os.close(fd)
        raise
    return fd


#: (st_dev, st_ino) of a directory that discovery never enters (the output directory inside the corpus).
Skip = tuple[int, int]


def _listing(directory: Path, skip: Skip | None = None) -> Iterator[tuple[str, str]]:
    """(name, kind) of a directory's visible entries, sorted chunk by chunk. Raises OSError."""
    with os.scandir(directory) as it:
        while True:
            chunk: list[tuple[str, str]] = []
            for entry in it:
                if skip is not None and entry.inode() == skip[1] and _is_skipped(entry, skip):
                    continue
                if not entry.name.startswith("."):
                    chunk.append((entry.name, _kind(entry)))
                    if len(chunk) >= LISTING_CHUNK:
                        break
            chunk.sort()
            yield from chunk
            if len(chunk) < LISTING_CHUNK:
                return


def _is_skipped(entry: os.DirEntry[str], skip: Skip) -> bool:
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    if (info.st_dev, info.st_ino) == skip:
        log.debug("not looking into %s: it is the output directory", entry.path)
        return True
    return False


def detect_layout(c_dir: Path, json_dir: Path) -> Layout:
    """Guess the corpus layout from the first few entries of ``c_dir`` (then ``json_dir``). Blocking: call it
    from a worker thread in async code.

    ``.c`` files at the top mean flat; sub-folders holding ``C/`` mean codenet; sub-folders ``NAME`` holding
    ``NAME.c`` (or ``test_task/``) mean sactor. Anything else, including an empty folder, is flat.
    Raises ConfigError when either folder is missing or unreadable.
    """
    _check_dirs(c_dir, json_dir)
    for directory in (c_dir, json_dir):
        seen = 0
        flat = codenet = sactor = False
        with os.scandir(directory) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                seen += 1
                if seen > DETECT_ENTRIES:
                    break
                kind = _kind(entry)
                if kind == _FILE and entry.name.endswith(".c"):
                    flat = True
                elif kind == _DIR:
                    sub = Path(entry.path)
                    if os.path.isdir(sub / "C"):
                        codenet = True
                    elif os.path.isfile(sub / f"{entry.name}.c") or os.path.isdir(sub / "test_task"):
                        sactor = True
        if flat:
            return "flat"
        if codenet:
            return "codenet"
        if sactor:
            return "sactor"
    return "flat"


def _unreadable(exc: OSError | UnicodeDecodeError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        bad = exc.object[exc.start : exc.start + 1]
        return (f"not valid UTF-8 (byte 0x{bad.hex()} at offset {exc.start}): convert it to UTF-8, e.g. "
                "`iconv -f latin1 -t utf-8` (or the encoding it was saved in: shift_jis, utf-16, ...)")
    if isinstance(exc, NotRegularFile):
        return _skipped(str(exc).rpartition(" is ")[2])
    return f"cannot read the file ({exc.strerror or exc})"


def _peek_text(path: Path, limit: int) -> tuple[str, bool]:
    """The first ``limit`` bytes decoded and whether that was all. Raises OSError (NotRegularFile for a FIFO
    or device, which is never read), UnicodeDecodeError."""
    with os.fdopen(_open_regular(path), "rb") as fh:
        data = fh.read(limit + 1)
    whole = len(data) <= limit
    # An incremental decoder accepts a multi-byte character cut at the end of a partial read.
    return codecs.getincrementaldecoder("utf-8")().decode(data[:limit], final=whole), whole


@dataclass(frozen=True)
class _JsonPeek:
    kind: TestKind | None  # None: not recognisably either; the test loader reports why
    refs: tuple[str, ...]  # file names of samples lists its run-tests commands name


def _peek_json(path: Path) -> _JsonPeek:
    """Classify a JSON test file from its first few KB. Raises OSError, UnicodeDecodeError."""
    text, whole = _peek_text(path, JSON_PEEK)
    body = text.lstrip("\ufeff \t\r\n")
    refs = tuple(sorted({PurePosixPath(m).name for m in _RUN_TESTS_REF.findall(body)}))
    if not body.startswith("["):
        return _JsonPeek(None, refs)
    if whole:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # nested too deeply: the test loader says so, for this task alone
            return _JsonPeek(None, refs)
        first = data[0] if isinstance(data, list) and data else None
        if isinstance(first, dict):
            if "command" in first:
                return _JsonPeek("task", refs)
            if "input" in first or "output" in first:
                return _JsonPeek("samples", refs)
        return _JsonPeek(None, refs)
    found = _JSON_KEY.search(body)
    if found is None:
        return _JsonPeek(None, refs)
    return _JsonPeek("task" if found.group(1) == "command" else "samples", refs)


def classify_test_file(path: Path) -> TestKind:
    """Whether a JSON file is a test task or a samples list ("task" when unsure: its loader reports why)."""
    try:
        return _peek_json(path).kind or "task"
    except (OSError, UnicodeDecodeError):
        return "task"


class _Walker:
    """One discovery run over one corpus: blocking, lazy, run a batch at a time in a worker thread."""

    def __init__(self, c_dir: Path, json_dir: Path, layout: Layout, feed: Feed, *,
                 skip: Skip | None = None, reserved: Collection[str] = ()) -> None:
        self.c_dir = c_dir
        self.json_dir = json_dir
        self.layout: Layout = layout
        self.feed: Feed = feed
        self.skip = skip
        self.reserved = reserved
        self.same_dir = c_dir.resolve() == json_dir.resolve()
        self.c_files = 0
        # Samples lists named by test tasks, kept only for unusual names (not *_samples.json): usually empty.
        self.referenced: set[str] = set()

    def walk(self) -> Generator[Item, None, None]:
        log.info("discovering %s layout: C files in %s, tests in %s", self.layout, self.c_dir, self.json_dir)
        if self.layout == "flat":
            yield from self._flat()
        elif self.layout == "sactor":
            yield from self._sactor()
        else:
            yield from self._codenet()

    # -- shared ------------------------------------------------------------------------------------------

    def _note(self, peek: _JsonPeek) -> None:
        self.referenced.update(r for r in peek.refs if not r.endswith(_SAMPLES_SUFFIX))

    def _pair(self, relative: str, c_path: Path, json_path: Path) -> Item:
        try:
            _peek_text(c_path, C_PEEK)
        except (OSError, UnicodeDecodeError) as exc:
            return Orphan(c_path, _unreadable(exc), task_id=self._unread(relative, exc))
        try:
            peek = _peek_json(json_path)
        except FileNotFoundError:
            return Orphan(c_path, f"no tests: {json_path} not found")
        except (OSError, UnicodeDecodeError) as exc:
            return Orphan(json_path, f"{_unreadable(exc)}; {c_path.name} has no usable tests",
                          task_id=self._unread(relative, exc))
        self._note(peek)
        kind: TestKind = peek.kind or "task"
        return Task(task_id(relative, self.reserved), c_path, json_path, test_kind=kind, feed=self.feed,
                    layout=self.layout)

    def _unread(self, relative: str, exc: OSError | UnicodeDecodeError) -> str | None:
        """The id of the task a file that is there but could not be read belongs to (see Orphan.task_id); None
        when what stopped the reading is the file itself (its encoding, a FIFO, a broken link)."""
        if isinstance(exc, (UnicodeDecodeError, NotRegularFile, FileNotFoundError)):
            return None
        return task_id(relative, self.reserved)

    def _stray_json(self, json_path: Path, c_path: Path, pending: list[Path]) -> Iterator[Orphan]:
        """A JSON with no C file: an orphan unless it is a samples list (decided later when oddly named)."""
        if json_path.name.endswith(_SAMPLES_SUFFIX):
            return
        try:
            peek = _peek_json(json_path)
        except (OSError, UnicodeDecodeError) as exc:
            yield Orphan(json_path, _unreadable(exc))
            return
        self._note(peek)
        if peek.kind == "samples":
            pending.append(json_path)
        else:
            yield Orphan(json_path, f"no C file: {c_path} not found")

    def _unreferenced(self, pending: list[Path]) -> Iterator[Orphan]:
        for path in pending:
            if path.name not in self.referenced:
                yield Orphan(path, "a samples list that no test task names, and no C file uses it")

    def _listed(self, directory: Path) -> Iterator[tuple[str, str] | Orphan]:
        try:
            yield from _listing(directory, self.skip)
        except OSError as exc:
            yield Orphan(directory, f"cannot list the directory ({exc.strerror or exc})", incomplete=True)

    @staticmethod
    def _odd(directory: Path, name: str, kind: str, suffix: str) -> Iterator[Orphan]:
        """An Orphan for a ``suffix`` name that is not a regular file or a folder (a FIFO, a device, ...)."""
        if kind not in (_DIR, _FILE) and name.endswith(suffix):
            yield Orphan(directory / name, _skipped(kind))

    def _no_c_files(self) -> Iterator[Orphan]:
        if self.c_files == 0:
            yield Orphan(self.c_dir, f"no C files found in {self.c_dir}")

    # -- layouts -----------------------------------------------------------------------------------------

    def _flat(self) -> Iterator[Item]:
        for entry in self._listed(self.c_dir):
            if isinstance(entry, Orphan):
                yield entry
                continue
            name, kind = entry
            yield from self._odd(self.c_dir, name, kind, ".c")
            if kind == _FILE and name.endswith(".c"):
                self.c_files += 1
                stem = name[:-2]
                yield self._pair(stem, self.c_dir / name, self.json_dir / f"{stem}.json")
        yield from self._no_c_files()
        pending: list[Path] = []
        for entry in self._listed(self.json_dir):
            if isinstance(entry, Orphan):
                yield entry
                continue
            name, kind = entry
            if kind not in (_DIR, _FILE) and not os.path.isfile(self.c_dir / f"{name[:-5]}.c"):
                yield from self._odd(self.json_dir, name, kind, ".json")  # else its C file's pairing says so
            if kind == _FILE and name.endswith(".json"):
                c_path = self.c_dir / f"{name[:-5]}.c"
                if not os.path.isfile(c_path):
                    yield from self._stray_json(self.json_dir / name, c_path, pending)
        yield from self._unreferenced(pending)

    def _sactor(self) -> Iterator[Item]:
        for entry in self._listed(self.c_dir):
            if isinstance(entry, Orphan):
                yield entry
                continue
            name, kind = entry
            if kind != _DIR:
                continue
            c_path = self.c_dir / name / f"{name}.c"
            json_path = self.json_dir / name / "test_task" / "test_task.json"
            if os.path.isfile(c_path):
                self.c_files += 1
                yield self._pair(name, c_path, json_path)
            elif (odd := _not_regular(c_path)) is not None:
                yield Orphan(c_path, _skipped(odd))
            elif self.same_dir and os.path.isfile(json_path):
                yield Orphan(json_path, f"no C file: {c_path} not found")
            else:
                yield Orphan(c_path.parent, f"no C files found in {c_path.parent} (expected {c_path.name})")
        yield from self._no_c_files()
        if self.same_dir:
            return
        for entry in self._listed(self.json_dir):
            if isinstance(entry, Orphan):
                yield entry
                continue
            name, kind = entry
            json_path = self.json_dir / name / "test_task" / "test_task.json"
            c_path = self.c_dir / name / f"{name}.c"
            if kind == _DIR and os.path.isfile(json_path) and not os.path.isfile(c_path):
                yield Orphan(json_path, f"no C file: {c_path} not found")

    def _codenet(self) -> Iterator[Item]:
        for entry in self._listed(self.c_dir):
            if isinstance(entry, Orphan):
                yield entry
            elif entry[1] == _DIR:
                yield from self._problem(entry[0])
        yield from self._no_c_files()
        if self.same_dir:
            return
        for entry in self._listed(self.json_dir):
            if isinstance(entry, Orphan):
                yield entry
                continue
            problem, kind = entry
            if kind != _DIR or os.path.isdir(self.c_dir / problem / "C"):
                continue
            for item in self._listed(self.json_dir / problem / "C"):
                if isinstance(item, Orphan):
                    continue  # a problem without tests is no news when it has no C folder either
                name, kind = item
                if kind == _FILE and name.endswith(".json") and not name.endswith(_SAMPLES_SUFFIX):
                    path = self.json_dir / problem / "C" / name
                    yield Orphan(path, f"no C file: {self.c_dir / problem / 'C'} does not exist")

    def _problem_jsons(self, jdir: Path) -> tuple[set[str], str | None, list[Orphan]]:
        """Stems of a problem folder's test JSON files and the one that serves every submission, if any."""
        stems: set[str] = set()
        trouble: list[Orphan] = []
        if not os.path.isdir(jdir):
            return stems, None, trouble
        for entry in self._listed(jdir):
            if isinstance(entry, Orphan):
                trouble.append(entry)
                continue
            name, kind = entry
            trouble.extend(self._odd(jdir, name, kind, ".json"))
            if kind == _FILE and name.endswith(".json") and not name.endswith(_SAMPLES_SUFFIX):
                stems.add(name[:-5])
        shared = next(iter(stems)) if len(stems) == 1 else None
        if 1 < len(stems) <= 8:
            # A test task plus an oddly named samples list it names still counts as one shared test file.
            named: set[str] = set()
            for stem in stems:
                try:
                    named.update(_peek_json(jdir / f"{stem}.json").refs)
                except (OSError, UnicodeDecodeError):
                    pass
            rest = [s for s in stems if f"{s}.json" not in named]
            shared = rest[0] if len(rest) == 1 else None
        return stems, shared, trouble

    def _problem(self, problem: str) -> Iterator[Item]:
        cdir = self.c_dir / problem / "C"
        jdir = self.json_dir / problem / "C"
        if not os.path.isdir(cdir):
            yield Orphan(self.c_dir / problem, f"no C files found in {self.c_dir / problem} (no C folder)")
            return
        stems, shared, trouble = self._problem_jsons(jdir)
        yield from trouble
        used: set[str] = set()
        count = 0
        for entry in self._listed(cdir):
            if isinstance(entry, Orphan):
                yield entry
                continue
            name, kind = entry
            yield from self._odd(cdir, name, kind, ".c")
            if kind != _FILE or not name.endswith(".c"):
                continue
            count += 1
            self.c_files += 1
            stem = name[:-2]
            chosen = stem if stem in stems else shared
            if chosen is None:
                reason = f"no tests: no {stem}.json in {jdir}" + (
                    f" and its {len(stems)} JSON files do not name a shared one" if stems else ""
                )
                yield Orphan(cdir / name, reason)
                continue
            used.add(chosen)
            yield self._pair(f"{problem}/{stem}", cdir / name, jdir / f"{chosen}.json")
        if count == 0:
            yield Orphan(cdir, f"no C files found in {cdir}")
        pending: list[Path] = []
        for stem in sorted(stems - used):
            yield from self._stray_json(jdir / f"{stem}.json", cdir / f"{stem}.c", pending)
        yield from self._unreferenced(pending)


def _not_regular(path: Path) -> str | None:
    """What ``path`` is when it exists but is neither a regular file nor a folder, else None."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(path) else None
    except (OSError, ValueError):
        return None
    return None if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else _special(mode)


def _take(items: Iterator[Item], limit: int) -> list[Item]:
    """Up to ``limit`` items, fewer if producing them takes longer than a moment: keeps the consumer fed."""
    batch: list[Item] = []
    deadline = time.monotonic() + _BATCH_SECONDS
    for item in items:
        batch.append(item)
        if len(batch) >= limit or time.monotonic() >= deadline:
            break
    return batch


def _identity(path: Path | None) -> Skip | None:
    if path is None:
        return None
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


async def discover(
    c_dir: Path, json_dir: Path, *, feed: Feed = "stdin", output: Path | None = None,
    reserved: Collection[str] = (),
) -> AsyncGenerator[Task | Orphan, None]:
    """Yield every task of a corpus, and an Orphan for every file that cannot become one, lazily.

    Use it as the engine's producer: the first task arrives after one directory chunk has been read, whatever
    the corpus size. ``feed`` is how samples-list JSON files are fed to the program ("stdin" or "args").
    ``output``, when it exists and lies inside the corpus, is never entered (the run's own results are no
    input); ``reserved`` are names no task id may take (the tool's files in the output directory).
    Close it with ``aclose()`` (or ``contextlib.aclosing``) when stopping early. Never raises for a single bad
    file; raises ConfigError, naming the flag, when ``c_dir`` or ``json_dir`` is missing, not a directory or
    unreadable.
    """
    layout = await anyio.to_thread.run_sync(detect_layout, c_dir, json_dir)
    skip = await anyio.to_thread.run_sync(_identity, output)
    items = _Walker(c_dir, json_dir, layout, feed, skip=skip, reserved=reserved).walk()
    try:
        limit = 1
        while True:
            batch = await anyio.to_thread.run_sync(_take, items, limit)
            for item in batch:
                yield item
            if not batch:
                return
            limit = _BATCH
    finally:
        # The generator is idle here (run_sync is not abandoned on cancel), so closing it is safe.
        items.close()
