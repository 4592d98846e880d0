"""Corpus discovery: which files become tasks, which become orphans and why, and that it stays lazy."""

from __future__ import annotations

import json
import os
import re
import sys
import time
import tracemalloc
from collections.abc import Mapping
from pathlib import Path

import pytest

from pipeline.discovery import detect_layout, discover, task_id
from pipeline.errors import ConfigError
from pipeline.task import Feed, Orphan, Task

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpus"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "corpus"

C_SOURCE = "int main(void) { return 0; }\n"
TEST_TASK = json.dumps([{"command": "%t 1", "test_id": 0}, {"command": "%t 2", "test_id": 1}])
SAMPLES = json.dumps([{"input": "1 2", "output": "3"}, {"input": "4 5", "output": "9"}])
SAFE_ID = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


def write(root: Path, files: Mapping[str, str | bytes]) -> Path:
    """Create files (relative path -> text or bytes) under root and return root."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def run_task(name: str, samples: str | None = None) -> str:
    """A test task whose commands use `sactor run-tests` on a samples file."""
    return json.dumps(
        [{"command": f"sactor run-tests --type bin ./{samples or name + '_samples.json'} %t {i} --feed-as-args",
          "test_id": i} for i in range(2)]
    )


async def collect(c_dir: Path, json_dir: Path | None = None, feed: Feed = "stdin") -> tuple[list[Task], list[Orphan]]:
    tasks: list[Task] = []
    orphans: list[Orphan] = []
    async for item in discover(c_dir, json_dir or c_dir, feed=feed):
        if isinstance(item, Task):
            tasks.append(item)
        else:
            orphans.append(item)
    return tasks, orphans


def reasons(orphans: list[Orphan], root: Path) -> dict[str, str]:
    return {str(o.path.relative_to(root)): o.reason for o in orphans}


# -- flat ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("separate", [pytest.param(False, id="same-folder"), pytest.param(True, id="two-folders")])
async def test_flat_layout_pairs_each_c_file_with_the_json_of_the_same_name(tmp_path: Path, separate: bool) -> None:
    """NAME.c pairs with NAME.json, whether the JSON files sit beside the C files or in their own folder."""
    c_dir = write(tmp_path / "c", {"alpha.c": C_SOURCE, "beta.c": C_SOURCE})
    json_dir = tmp_path / "j" if separate else c_dir
    write(json_dir, {"alpha.json": TEST_TASK, "beta.json": SAMPLES})
    tasks, orphans = await collect(c_dir, json_dir)
    assert orphans == []
    assert [(t.id, t.c_path, t.test_path, t.test_kind, t.layout) for t in tasks] == [
        ("alpha", c_dir / "alpha.c", json_dir / "alpha.json", "task", "flat"),
        ("beta", c_dir / "beta.c", json_dir / "beta.json", "samples", "flat"),
    ]


async def test_samples_lists_beside_test_tasks_are_neither_tasks_nor_orphans(tmp_path: Path) -> None:
    """NAME_samples.json, and a samples list a test task names, are the tests' data, not work or orphans."""
    write(tmp_path, {
        "one.c": C_SOURCE, "one.json": run_task("one"), "one_samples.json": SAMPLES,
        "two.c": C_SOURCE, "two.json": run_task("two", samples="data/../inputs.json"), "inputs.json": SAMPLES,
    })
    tasks, orphans = await collect(tmp_path)
    assert orphans == []
    assert [(t.id, t.test_kind) for t in tasks] == [("one", "task"), ("two", "task")]


@pytest.mark.parametrize(
    ("files", "orphan", "reason"),
    [
        pytest.param({"lonely.c": C_SOURCE}, "lonely.c", "no tests", id="c-without-json"),
        pytest.param({"stray.json": TEST_TASK}, "stray.json", "no C file", id="json-without-c"),
        pytest.param({"x.c": b"int main(void) { return 0; } /* \xff */\n", "x.json": TEST_TASK},
                     "x.c", "not valid UTF-8 (byte 0xff at offset 32)", id="c-not-utf8"),
        pytest.param({"y.c": C_SOURCE, "y.json": b'[{"command": "%t \xe9"}]'},
                     "y.json", "not valid UTF-8", id="json-not-utf8"),
        pytest.param({"data.json": SAMPLES}, "data.json", "samples list that no test task names",
                     id="unreferenced-samples-list"),
    ],
)
async def test_flat_files_that_cannot_be_paired_are_orphans_with_a_reason(
    tmp_path: Path, files: dict[str, str | bytes], orphan: str, reason: str
) -> None:
    """Each unusable file is reported once, with why; the good pair beside it is still a task."""
    write(tmp_path, {"good.c": C_SOURCE, "good.json": TEST_TASK, **files})
    tasks, orphans = await collect(tmp_path)
    assert [t.id for t in tasks] == ["good"]
    found = reasons(orphans, tmp_path)
    assert list(found) == [orphan]
    assert reason in found[orphan]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
async def test_an_unreadable_c_file_is_an_orphan(tmp_path: Path) -> None:
    """A file discovery may not read becomes an orphan instead of stopping the run."""
    write(tmp_path, {"locked.c": C_SOURCE, "locked.json": TEST_TASK})
    (tmp_path / "locked.c").chmod(0)
    tasks, orphans = await collect(tmp_path)
    assert tasks == []
    assert "cannot read" in reasons(orphans, tmp_path)["locked.c"]


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        pytest.param(TEST_TASK, "task", id="test-task"),
        pytest.param(SAMPLES, "samples", id="samples-list"),
        pytest.param(json.dumps([{"test_id": i, "command": f"%t {i}"} for i in range(400)]), "task",
                     id="long-test-task-classified-from-its-head"),
        pytest.param(json.dumps([{"output": "x" * 50, "input": str(i)} for i in range(400)]), "samples",
                     id="long-samples-list-classified-from-its-head"),
        pytest.param('{"not": "a list"}', "task", id="unrecognised-left-to-the-test-loader"),
    ],
)
@pytest.mark.parametrize("feed", ["stdin", "args"])
async def test_json_files_are_classified_by_peeking_and_samples_carry_the_feed(
    tmp_path: Path, content: str, kind: str, feed: Feed
) -> None:
    """A list of commands is a test task, a list of input/output samples is fed as the run asks."""
    write(tmp_path, {"p.c": C_SOURCE, "p.json": content})
    tasks, orphans = await collect(tmp_path, feed=feed)
    assert orphans == []
    assert [(t.test_kind, t.feed) for t in tasks] == [(kind, feed)]


async def test_an_empty_folder_reports_that_no_c_files_were_found(tmp_path: Path) -> None:
    """An empty corpus is one orphan naming the folder, not a silent success."""
    tasks, orphans = await collect(tmp_path)
    assert tasks == []
    assert [(o.path, o.reason) for o in orphans] == [(tmp_path, f"no C files found in {tmp_path}")]


# -- sactor ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("separate", [pytest.param(False, id="same-folder"), pytest.param(True, id="two-folders")])
async def test_sactor_layout_pairs_name_folders_with_their_test_task(tmp_path: Path, separate: bool) -> None:
    """NAME/NAME.c pairs with NAME/test_task/test_task.json; missing halves are orphans."""
    c_dir = write(tmp_path / "c", {"add/add.c": C_SOURCE, "mul/mul.c": C_SOURCE, "nothing/readme.txt": "x"})
    json_dir = tmp_path / "j" if separate else c_dir
    write(json_dir, {"add/test_task/test_task.json": TEST_TASK, "lost/test_task/test_task.json": TEST_TASK})
    tasks, orphans = await collect(c_dir, json_dir)
    assert [(t.id, t.c_path, t.test_path, t.layout) for t in tasks] == [
        ("add", c_dir / "add" / "add.c", json_dir / "add" / "test_task" / "test_task.json", "sactor")
    ]
    found = {str(o.path.relative_to(tmp_path)): o.reason for o in orphans}
    assert "no tests" in found[os.path.join("c", "mul", "mul.c")]
    assert "no C files found" in found[os.path.join("c", "nothing")]
    lost = os.path.join("j" if separate else "c", "lost", "test_task", "test_task.json")
    assert "no C file" in found[lost]
    assert len(found) == 3


# -- codenet ---------------------------------------------------------------------------------------------------


async def test_codenet_layout_shares_a_problems_only_json_and_prefers_a_same_stem_json(tmp_path: Path) -> None:
    """One JSON serves every submission of its problem; a JSON named like the submission wins."""
    write(tmp_path, {
        "p00001/C/s100.c": C_SOURCE, "p00001/C/s200.c": C_SOURCE, "p00001/C/tests.json": SAMPLES,
        "p00002/C/s100.c": C_SOURCE, "p00002/C/s300.c": C_SOURCE, "p00002/C/s100.json": SAMPLES,
        "p00002/C/s300.json": TEST_TASK,
    })
    tasks, orphans = await collect(tmp_path, feed="stdin")
    assert orphans == []
    assert [(t.id, t.test_path.relative_to(tmp_path).as_posix(), t.test_kind, t.layout) for t in tasks] == [
        ("p00001/s100", "p00001/C/tests.json", "samples", "codenet"),
        ("p00001/s200", "p00001/C/tests.json", "samples", "codenet"),
        ("p00002/s100", "p00002/C/s100.json", "samples", "codenet"),
        ("p00002/s300", "p00002/C/s300.json", "task", "codenet"),
    ]
    assert all(t.feed == "stdin" for t in tasks)


async def test_codenet_test_task_with_an_oddly_named_samples_list_still_serves_the_problem(tmp_path: Path) -> None:
    """A test task and the samples list it names count as one shared test file."""
    write(tmp_path, {"p1/C/s1.c": C_SOURCE, "p1/C/t.json": run_task("t", samples="cases.json"),
                     "p1/C/cases.json": SAMPLES})
    tasks, orphans = await collect(tmp_path)
    assert orphans == []
    assert [(t.id, t.test_path.name) for t in tasks] == [("p1/s1", "t.json")]


async def test_codenet_orphans_name_what_is_missing(tmp_path: Path) -> None:
    """Ambiguous tests, problems without C files and tests without a C folder are reported."""
    c_dir = write(tmp_path / "c", {
        "p1/C/s1.c": C_SOURCE, "p2/C/s2.c": C_SOURCE, "p3/C/notes.txt": "x", "p4/Python/a.py": "",
    })
    json_dir = write(tmp_path / "j", {
        "p1/C/s1.json": SAMPLES, "p2/C/a.json": SAMPLES, "p2/C/b.json": SAMPLES, "p9/C/s9.json": SAMPLES,
    })
    tasks, orphans = await collect(c_dir, json_dir)
    assert [t.id for t in tasks] == ["p1/s1"]
    found = reasons(orphans, tmp_path)
    assert "its 2 JSON files do not name a shared one" in found["c/p2/C/s2.c"]
    assert "no C file" in found["j/p2/C/a.json"] and "no C file" in found["j/p2/C/b.json"]
    assert "no C files found" in found["c/p3/C"]
    assert "no C files found" in found["c/p4"]
    assert "does not exist" in found["j/p9/C/s9.json"]
    assert len(found) == 6


async def test_ids_are_unique_when_submissions_in_different_problems_share_a_file_name(tmp_path: Path) -> None:
    """The problem folder is part of the id, so equal submission names do not collide."""
    write(tmp_path, {f"p{n}/C/main.c": C_SOURCE for n in range(3)} | {f"p{n}/C/t.json": SAMPLES for n in range(3)})
    tasks, _ = await collect(tmp_path)
    assert [t.id for t in tasks] == ["p0/main", "p1/main", "p2/main"]


# -- ids and layouts -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        pytest.param("s123", "s123", id="plain-kept"),
        pytest.param("p02/s-1.v2_x", "p02/s-1.v2_x", id="nested-plain-kept"),
        pytest.param("a b", "a_b-", id="space-replaced-and-hashed"),
        pytest.param("héllo", "h_llo-", id="non-ascii-replaced-and-hashed"),
        pytest.param("p1/..", "p1/__-", id="dot-dot-part-neutralised"),
    ],
)
def test_task_ids_are_directory_safe_and_mark_rewritten_names_with_a_hash(relative: str, expected: str) -> None:
    """Only [A-Za-z0-9._-] and '/' survive; a rewritten id carries a hash of the original path."""
    ident = task_id(relative)
    assert SAFE_ID.match(ident) and ".." not in ident.split("/")
    if expected.endswith("-"):
        assert ident.startswith(expected) and re.fullmatch(r"[0-9a-f]{8}", ident[len(expected):])
    else:
        assert ident == expected


async def test_ids_are_unique_and_stable_across_runs(tmp_path: Path) -> None:
    """Names that sanitise alike still get distinct ids, and a second run gives the same ids."""
    names = ["a b", "a_b", "a+b", "ä b", "plain"]
    write(tmp_path, {f"{n}.c": C_SOURCE for n in names} | {f"{n}.json": TEST_TASK for n in names})
    first, _ = await collect(tmp_path)
    second, _ = await collect(tmp_path)
    ids = [t.id for t in first]
    assert len(set(ids)) == len(names)
    assert all(SAFE_ID.match(i) for i in ids)
    assert {"a_b", "plain"} <= set(ids)
    assert [(t.id, t.c_path) for t in first] == [(t.id, t.c_path) for t in second]


@pytest.mark.parametrize(
    ("files", "layout"),
    [
        pytest.param({"a.c": C_SOURCE}, "flat", id="flat"),
        pytest.param({"a/a.c": C_SOURCE}, "sactor", id="sactor"),
        pytest.param({"p1/C/s.c": C_SOURCE}, "codenet", id="codenet"),
        pytest.param({}, "flat", id="empty-is-flat"),
    ],
)
def test_detect_layout_recognises_each_layout(tmp_path: Path, files: dict[str, str | bytes], layout: str) -> None:
    """The layout is read off the first entries of the C folder."""
    write(tmp_path, files)
    assert detect_layout(tmp_path, tmp_path) == layout


@pytest.mark.parametrize(
    ("c_rel", "json_rel", "flag", "words"),
    [
        pytest.param("missing", "corpus", "--c-files", "does not exist", id="c-dir-missing"),
        pytest.param("corpus/a.c", "corpus", "--c-files", "it is a file", id="c-dir-is-a-file"),
        pytest.param("corpus", "missing", "--json-files", "does not exist", id="json-dir-missing"),
    ],
)
async def test_a_bad_corpus_folder_is_a_config_error_naming_the_flag(
    tmp_path: Path, c_rel: str, json_rel: str, flag: str, words: str
) -> None:
    """A wrong --c-files/--json-files stops the run with a message that names the flag and the fix."""
    write(tmp_path / "corpus", {"a.c": C_SOURCE, "a.json": TEST_TASK})
    with pytest.raises(ConfigError) as info:
        await collect(tmp_path / c_rel, tmp_path / json_rel)
    message = str(info.value)
    assert message.startswith(f"{flag} {tmp_path / c_rel if flag == '--c-files' else tmp_path / json_rel}")
    assert "not a directory" in message and words in message and "pass the folder" in message


# -- scale -----------------------------------------------------------------------------------------------------


async def test_a_20000_file_corpus_yields_its_first_task_at_once_in_small_memory(tmp_path: Path) -> None:
    """Discovery streams: the first task comes before the folder is listed, and memory stays far below a listing."""
    pad = "x" * 60  # long names make a whole listing clearly bigger than one chunk of it
    (tmp_path / "seed.c").write_text(C_SOURCE)
    (tmp_path / "seed.json").write_text(TEST_TASK)
    for i in range(10_000):
        os.link(tmp_path / "seed.c", tmp_path / f"prog_{i:05d}_{pad}.c")
        os.link(tmp_path / "seed.json", tmp_path / f"prog_{i:05d}_{pad}.json")
    (tmp_path / "seed.c").unlink()
    (tmp_path / "seed.json").unlink()

    tracemalloc.start()
    try:
        # CPython 3.11's pathlib interns every path part; re-size the interpreter's intern table now, while
        # traced, so that its later same-size re-allocations do not count as memory discovery holds.
        for i in range(200_000):
            sys.intern(f"warm-up-{i}")
        before = tracemalloc.get_traced_memory()[0]
        listing = sorted(os.listdir(tmp_path))
        listing_cost = tracemalloc.get_traced_memory()[0] - before
        del listing

        base = tracemalloc.get_traced_memory()[0]
        started = time.perf_counter()
        items = discover(tmp_path, tmp_path)
        first = await items.__anext__()
        first_after = time.perf_counter() - started
        held_at_first = tracemalloc.get_traced_memory()[0] - base
        count, held = 1, held_at_first
        async for _ in items:
            count += 1
            held = max(held, tracemalloc.get_traced_memory()[0] - base)
    finally:
        tracemalloc.stop()
    assert isinstance(first, Task)
    assert count == 10_000
    assert first_after < 1.0
    assert held_at_first < listing_cost / 4, (held_at_first, listing_cost)
    assert held < listing_cost / 4, (held, listing_cost)


async def test_closing_discovery_early_stops_the_walk(tmp_path: Path) -> None:
    """A consumer that stops after one task can close the producer cleanly."""
    write(tmp_path, {f"n{i}.c": C_SOURCE for i in range(50)} | {f"n{i}.json": TEST_TASK for i in range(50)})
    items = discover(tmp_path, tmp_path)
    first = await items.__anext__()
    await items.aclose()
    assert isinstance(first, Task) and first.id == "n0"
    with pytest.raises(StopAsyncIteration):
        await items.__anext__()


# -- bundled and shared corpora --------------------------------------------------------------------------------


@pytest.mark.skipif(not (SHARED / "codenet_argv").is_dir(), reason="shared evaluation corpus not present")
async def test_shared_codenet_argv_corpus_is_22_tasks_without_orphans() -> None:
    """The evaluation corpus, C files and JSON in one folder, pairs completely."""
    tasks, orphans = await collect(SHARED / "codenet_argv")
    assert (len(tasks), orphans) == (22, [])
    assert all(t.test_kind == "task" and t.layout == "flat" for t in tasks)


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="examples corpus not present")
async def test_bundled_examples_corpus_is_5_tasks_without_orphans() -> None:
    """Our own example corpus pairs completely; its samples files are not orphans."""
    tasks, orphans = await collect(EXAMPLES)
    assert orphans == []
    assert [t.id for t in tasks] == ["gcdlcm", "reverse", "rpn", "sieve", "wordfreq"]


@pytest.mark.parametrize("name", ["ledger.jsonl", "ledger.journal.jsonl", "batch_summary.json", ".run.lock"])
def test_ids_never_take_the_name_of_the_tools_own_files(name: str) -> None:
    """A task named like a file of the output directory gets a rewritten id (a hash appended)."""
    from pipeline.ledger import OUTPUT_FILES

    ident = task_id(name, OUTPUT_FILES)
    assert ident not in OUTPUT_FILES and not ident.startswith(".")
    assert re.fullmatch(r"[A-Za-z0-9._-]+-[0-9a-f]{8}", ident)
    assert task_id(f"p1/{name}", OUTPUT_FILES).startswith("p1/")


async def test_special_files_are_reported_and_never_opened(tmp_path: Path) -> None:
    """A FIFO test task (sactor layout) is an orphan with the reason; discovery does not block on it."""
    write(tmp_path, {"a/a.c": C_SOURCE, "b/b.c": C_SOURCE, "b/test_task/test_task.json": TEST_TASK})
    (tmp_path / "a" / "test_task").mkdir()
    os.mkfifo(tmp_path / "a" / "test_task" / "test_task.json")
    tasks, orphans = await collect(tmp_path)
    assert [t.id for t in tasks] == ["b"]
    assert [(o.path.name, "a FIFO" in o.reason) for o in orphans] == [("test_task.json", True)]


async def test_the_output_directory_inside_the_corpus_is_not_entered(tmp_path: Path) -> None:
    """discover(output=...) skips that folder: no orphan for it, whatever it holds."""
    write(tmp_path, {"a/a.c": C_SOURCE, "a/test_task/test_task.json": TEST_TASK, "out/a/result.json": "{}"})
    tasks, orphans = [], []
    async for item in discover(tmp_path, tmp_path, output=tmp_path / "out"):
        (tasks if isinstance(item, Task) else orphans).append(item)
    assert [t.id for t in tasks] == ["a"] and orphans == []
