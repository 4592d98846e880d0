"""`report OUT [OUT2 ...]`: the numbers a user reads in the HTML page (as headless Chromium renders it), in
Markdown and in JSON are batch_summary.json's; runs compared show the tasks that flipped."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from pipeline.report import classify_test_failure
from tests.conftest import Cli
from tests.test_batch_e2e import directive_c, run, samples_json, summary, task_json

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
#: Task -> (unidiomatic outcomes, idiomatic outcomes) of the simulator's directive mode (the last repeats).
PLANS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "clean": (("pass",), ("pass",)),
    "compile_fixed": (("compile_error", "pass"), ("pass",)),
    "test_fixed": (("test_fail", "pass"), ("unsafe", "pass")),
    "cut_off": (("truncated", "pass"), ("pass",)),
    "never_compiles": (("compile_error",), ("pass",)),
    "never_right": (("pass",), ("test_fail",)),
    "no_code": (("no_code",), ("pass",)),
}


def mixed_corpus(root: Path) -> Path:
    """Tasks that verify at once, after repairs of each kind, or never; and one whose tests prove nothing."""
    root.mkdir(parents=True)
    for name, (unidiomatic, idiomatic) in PLANS.items():
        (root / f"{name}.c").write_text(directive_c(name, f"out {name}", unidiomatic=unidiomatic,
                                                    idiomatic=idiomatic))
        (root / f"{name}_samples.json").write_text(samples_json(f"out {name}"))
        (root / f"{name}.json").write_text(task_json(name))
    (root / "vacuous.c").write_text(directive_c("vacuous", "out vacuous"))
    (root / "vacuous.json").write_text(json.dumps([{"command": "echo hello"}]))
    return root


@pytest.fixture(scope="module")
def finished(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """The mixed corpus run twice: with 3 attempts per stage (out), and with 1 (out1: repaired tasks fail)."""
    from pipeline.simulator import SimConfig, Simulator

    root = tmp_path_factory.mktemp("report-runs")
    corpus = mixed_corpus(root / "corpus")
    (root / "cwd").mkdir()
    cli = Cli(cache_dir=cache_dir, cwd=root / "cwd")
    outs = root / "out", root / "out1"
    with Simulator(SimConfig()).running() as url:
        for out, attempts in zip(outs, ("3", "1"), strict=True):
            result = run(cli, corpus, out, url, "--max-attempts", attempts)
            assert result.returncode == 1, result.output
    yield outs


class Figures(HTMLParser):
    """Text of the elements marked data-figure, and data-status per data-task cell, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, str] = {}
        self.statuses: dict[str, list[str]] = {}
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("data-task") is not None and a.get("data-status") is not None:
            self.statuses.setdefault(str(a["data-task"]), []).append(str(a["data-status"]))
        if tag not in ("br", "meta", "img", "link", "input"):
            self._open.append(a.get("data-figure"))
            if a.get("data-figure"):
                self.figures[str(a["data-figure"])] = ""

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for key in self._open:
            if key:
                self.figures[key] += data


def shown(page: str) -> Figures:
    parser = Figures()
    parser.feed(page)
    return parser


def number(text: str) -> int:
    return int(text.replace(",", "").strip())


def expected_figures(data: dict[str, Any], run_index: int = 0) -> dict[str, int]:
    """The figures the page must show for one run, straight from its batch_summary.json."""
    t = data["totals"]
    want = {f"run{run_index}.{k}": t[k] for k in ("tasks", "verified", "failed", "prompt_tokens",
                                                   "completion_tokens", "vacuous_tests", "input_errors")}
    want[f"run{run_index}.card.tasks"], want[f"run{run_index}.card.verified"] = t["tasks"], t["verified"]
    for stage, counts in t["stages"].items():
        for status, value in counts.items():
            want[f"run{run_index}.stages.{stage}.{status}"] = value
    return want


def chromium(page: Path, tmp_path: Path, *args: str) -> str:
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    profile.mkdir()
    proc = subprocess.run([str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
                          capture_output=True, text=True, timeout=90, start_new_session=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def rendered(page: Path, tmp_path: Path, name: str) -> str:
    """The page as Chromium renders it (its DOM after layout), after a non-trivial screenshot was taken."""
    shot = tmp_path / f"{name}.png"
    chromium(page, tmp_path, f"--screenshot={shot}", "--window-size=1280,2000")
    assert shot.stat().st_size > 30_000, "the screenshot is (nearly) blank"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return chromium(page, tmp_path, "--dump-dom")


def test_report_of_a_run_shows_the_summarys_numbers(cli: Cli, finished: tuple[Path, Path], tmp_path: Path) -> None:
    """The page of a run with verified and failed tasks shows batch_summary.json's numbers, rendered."""
    out = finished[0]
    result = cli("report", out)
    assert result.returncode == 0, result.output
    page = out / "report.html"
    assert f"report: {page}" in result.stdout
    html = page.read_text()
    assert "<svg" in html  # charts inline; nothing to fetch when the page is opened
    assert not re.search(r"<script|<link|(src|href)=\"(https?:)?//|url\((?!#)", html)
    data = summary(out)
    screens = [html]
    if CHROMIUM.exists():
        screens.append(rendered(page, tmp_path, "one-run"))
    for dom in screens:
        figures = shown(dom)
        for key, value in expected_figures(data).items():
            assert number(figures.figures[key]) == value, key
        statuses = {task_id: seen[0] for task_id, seen in figures.statuses.items()}
        assert statuses == {t["task_id"]: t["status"] for t in data["tasks"]}
    assert data["totals"]["verified"] == 4 and data["totals"]["vacuous_tests"] == 1
    for task_id in ("never_compiles", "clean"):
        assert f'href="{task_id}/"' in html  # links to the task's result folder, relative to the page


def test_runs_compared_side_by_side_show_the_flipped_tasks(
    cli: Cli, finished: tuple[Path, Path], tmp_path: Path
) -> None:
    """Two runs: each one's numbers in its own column, and the tasks verified in one but not the other."""
    page = tmp_path / "compare" / "report.html"
    result = cli("report", *finished, "-o", page)
    assert result.returncode == 0, result.output
    datas = [summary(out) for out in finished]
    doms = [page.read_text()]
    if CHROMIUM.exists():
        doms.append(rendered(page, tmp_path, "two-runs"))
    flipped = {t["task_id"] for t in datas[0]["tasks"] if t["status"] == "verified"} - \
        {t["task_id"] for t in datas[1]["tasks"] if t["status"] == "verified"}
    assert flipped == {"compile_fixed", "test_fixed", "cut_off"}
    for dom in doms:
        figures = shown(dom)
        for index, data in enumerate(datas):
            for key, value in expected_figures(data, index).items():
                assert number(figures.figures[key]) == value, key
        assert number(figures.figures["flipped"]) == len(flipped)
        for task_id in flipped:
            assert figures.statuses[task_id] == ["verified", "failed"]
    assert '<h3 data-group="flipped (verified in one run, not in another)">' in doms[0]
    for out in finished:  # each run's task folders, relative to the page
        assert f'href="{os.path.relpath(out / "clean", page.parent)}/"' in doms[0]


def test_markdown_and_json_show_the_same_numbers(cli: Cli, finished: tuple[Path, Path]) -> None:
    """--format json and --format md print the figures the page shows, failure taxonomy included."""
    out = finished[0]
    data = summary(out)
    as_json = cli("report", out, "--format", "json")
    assert as_json.returncode == 0, as_json.output
    figures = json.loads(as_json.stdout)["runs"][0]
    head = figures["headline"]
    assert (head["tasks"], head["verified"], head["failed"]) == (8, 4, 4)
    assert head["stages"] == data["totals"]["stages"]
    assert figures["cost"]["prompt_tokens"] == data["totals"]["prompt_tokens"]
    taxonomy = figures["taxonomy"]
    assert taxonomy["rustc_codes"] == {"E0308": 4}  # compile_fixed once, never_compiles three times
    assert taxonomy["test_failures"]["wrong output"] == 4  # test_fixed once, never_right three times
    assert (taxonomy["refused_unsafe"], taxonomy["truncated"], taxonomy["no_code"]) == (1, 1, 3)
    assert taxonomy["vacuous_tests"] == 1
    assert figures["repairs"]["unidiomatic"]["fixed"] == {"compile_error": 1, "test_failure": 1, "truncated": 1}
    assert figures["attempts"]["unidiomatic"] == {"1": 2, "2": 3, "failed": 2}  # clean, never_right; the fixed ones
    assert figures["quality"]["idiomatic"]["unsafe_share"] == 0.0
    assert isinstance(figures["cost"]["cpu_seconds_per_task"], float)

    as_md = cli("report", out, "--format", "md")
    assert as_md.returncode == 0, as_md.output
    rows = dict(re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|$", as_md.stdout, re.M))
    assert number(rows["tasks"]) == 8 and number(rows["verified (both stages)"]) == 4
    assert number(rows["prompt tokens (in)"]) == data["totals"]["prompt_tokens"]
    assert number(rows["rustc E0308"]) == 4 and number(rows["truncated answers"]) == 1
    assert "- `never_compiles`: unidiomatic: not verified after 3 attempts" in as_md.stdout


def test_a_folder_without_a_summary_is_refused(cli: Cli, tmp_path: Path) -> None:
    """Not the output folder of a run: exit 2, naming the folder and what to give instead."""
    result = cli("report", tmp_path)
    assert result.returncode == 2
    assert f"{tmp_path} has no batch_summary.json: give the --output folder of a finished run" in result.stderr


def test_old_and_newer_summaries_render(cli: Cli, finished: tuple[Path, Path], tmp_path: Path) -> None:
    """A summary from before cpu_seconds, with differential and function-level fields of later versions."""
    out = tmp_path / "copy"
    shutil.copytree(finished[0], out)
    data = summary(out)
    for task in data["tasks"]:
        for stage in task["stages"].values():
            stage.pop("cpu_seconds", None)
            stage["differential"] = {"tried": 10, "agreed": 9}
        task["items"] = {"verified": 2, "failed": 1}
    data["server"]["base_url"] = "http://alice:s3cret@gpu-host:8000/v1?token=s3cret"  # an older run's summary
    (out / "batch_summary.json").write_text(json.dumps(data))
    result = cli("report", out, "--format", "json")
    assert result.returncode == 0, result.output
    figures = json.loads(result.stdout)["runs"][0]
    assert figures["cost"]["cpu_seconds_per_task"] is None
    ran = sum(1 for t in data["tasks"] if t["stages"]["unidiomatic"]["status"] != "not_run")
    assert figures["differential"]["stages"]["unidiomatic"] == {"tried": 10 * ran, "agreed": 9 * ran}
    assert figures["items"]["items"] == {"verified": 16, "failed": 8}
    assert figures["headline"]["server"] == "http://gpu-host:8000/v1"
    page = cli("report", out)
    html = (out / "report.html").read_text()
    assert page.returncode == 0 and "differential unidiomatic: agreed" in html
    assert "s3cret" not in html + result.stdout


@pytest.mark.parametrize(("message", "kind"), [
    pytest.param("2 of 2 tests failed; first: test 0 failed: wrong output", "wrong output", id="wrong"),
    pytest.param("1 of 2 tests failed; first: test 1 failed: wrong output (nothing printed)", "no output",
                 id="nothing"),
    pytest.param("1 of 1 tests failed; first: test 0 failed: timed out after 3.0 s; process tree killed", "timeout",
                 id="timeout"),
    pytest.param("1 of 1 tests failed; first: test 0 failed: wrong output; the program ended: killed by signal "
                 "SIGSEGV", "crash or signal", id="signal"),
    pytest.param("1 of 1 tests failed; first: test 0 failed: memory limit of 64 MB reached (killed by signal "
                 "SIGKILL)", "limit hit", id="memory"),
    pytest.param("1 of 1 tests failed; first: test 0 failed: output exceeded 4000 bytes; killed", "limit hit",
                 id="output-cap"),
    pytest.param("1 of 1 tests failed; first: test 0 failed: exit status 1", "wrong output", id="self-check"),
])
def test_test_failures_are_classified_from_their_recorded_message(message: str, kind: str) -> None:
    """The failure files' messages (the first failing test's reason) sort into the report's classes."""
    assert classify_test_failure(message) == kind


def test_without_matplotlib_the_page_is_written_without_charts(
    cli: Cli, finished: tuple[Path, Path], tmp_path: Path
) -> None:
    """matplotlib missing (the `report` extra not installed): the same figures, no charts, and how to get them."""
    hidden = tmp_path / "hide"
    (hidden / "matplotlib").mkdir(parents=True)
    (hidden / "matplotlib" / "__init__.py").write_text("raise ImportError('matplotlib hidden by the test')\n")
    page = tmp_path / "plain.html"
    result = cli("report", finished[0], "-o", page, env={"PYTHONPATH": str(hidden)})
    assert result.returncode == 0, result.output
    html = page.read_text()
    assert "<svg" not in html and "Charts need matplotlib: pip install 'c2rust-batch[report]'" in html
    assert "matplotlib is not installed" in result.stderr
    figures = shown(html).figures
    for key, value in expected_figures(summary(finished[0])).items():
        assert number(figures[key]) == value, key
