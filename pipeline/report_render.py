"""The report of one run or of runs compared, as one self-contained HTML page, Markdown, or JSON.

Input is :func:`pipeline.report.compare`'s dict; every format shows the same numbers. The HTML page needs no
network: charts are drawn by matplotlib (Agg, object API, no pyplot state) and inlined as SVG; without
matplotlib the page is written without charts and says how to get them. Numbers the tests read carry
``data-figure`` attributes. Rendering is synchronous and CPU-bound: call it from a command or a worker thread.
"""

from __future__ import annotations

import html
import io
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .records import STAGES

log = logging.getLogger(__name__)

FORMATS = ("html", "md", "json")
#: Colours shared by charts and page (colour-blind safe: Okabe-Ito).
GREEN, RED, GREY, BLUE, ORANGE = "#009E73", "#D55E00", "#BBBBBB", "#0072B2", "#E69F00"
RUN_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00")
TOP = 12  # bars in a frequency chart

Runs = list[dict[str, Any]]


# --------------------------------------------------------------------------------------------------------
# Numbers as shown


def fmt(value: Any, digits: int = 1) -> str:
    """A number for people: thousands separated, floats with ``digits`` decimals, "—" for none."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}\u00a0%"


def ci(run: dict[str, Any]) -> str:
    h = run["headline"]
    return f"{100 * h['ci_low']:.1f} – {pct(h['ci_high'])}"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "—"
    minutes, secs = divmod(float(seconds), 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:.0f} s" if minutes else f"{secs:.1f} s"


def _stage_rate(run: dict[str, Any], stage: str) -> str:
    s = run["headline"]["stages"].get(stage, {})
    total = run["headline"]["tasks"]
    return f"{s.get('verified', 0):,} / {total:,}"


# --------------------------------------------------------------------------------------------------------
# The figures as rows: (label, key for data-figure or None, value per run); one list feeds HTML and Markdown


Row = tuple[str, str | None, list[Any]]


def headline_rows(runs: Runs) -> list[Row]:
    rows: list[Row] = [
        ("tasks", "tasks", [r["headline"]["tasks"] for r in runs]),
        ("verified (both stages)", "verified", [r["headline"]["verified"] for r in runs]),
        ("failed", "failed", [r["headline"]["failed"] for r in runs]),
        ("pass rate", None, [pct(r["headline"]["pass_rate"]) for r in runs]),
        ("95 % confidence interval (Wilson)", None, [ci(r) for r in runs]),
    ]
    for stage in STAGES:
        for status in ("verified", "failed", "not_run"):
            rows.append((f"{stage}: {status.replace('_', ' ')}", f"stages.{stage}.{status}",
                         [r["headline"]["stages"].get(stage, {}).get(status, 0) for r in runs]))
    return rows


def run_rows(runs: Runs) -> list[Row]:
    rows: list[Row] = [
        ("model", None, [r["headline"]["model"] for r in runs]),
        ("server", None, [r["headline"]["server"] for r in runs]),
        ("started", None, [str(r["headline"]["started"] or "—").replace("T", " ") for r in runs]),
        ("duration of the last run", None, [_duration(r["headline"]["duration_seconds"]) for r in runs]),
        ("translated by the last run / unchanged", None,
         [f"{fmt(r['headline']['translated_this_run'])} / {fmt(r['headline']['unchanged'])}" for r in runs]),
    ]
    stopped = [r["headline"]["stopped_by"] or r["headline"]["interrupted"] for r in runs]
    if any(stopped):
        rows.append(("run stopped by", None, [s or "—" for s in stopped]))
    labels = list(dict.fromkeys(k for r in runs for k in r["headline"]["settings"]))
    rows += [(label, None, [r["headline"]["settings"].get(label) for r in runs]) for label in labels]
    rows.append(("settings fingerprint", None, [r["headline"]["fingerprint"] for r in runs]))
    return rows


def _round(value: float | None) -> int | None:
    return None if value is None else round(value)


def cost_rows(runs: Runs) -> list[Row]:
    c = [r["cost"] for r in runs]
    return [
        ("prompt tokens (in)", "prompt_tokens", [x["prompt_tokens"] for x in c]),
        ("completion tokens (out)", "completion_tokens", [x["completion_tokens"] for x in c]),
        ("requests", "requests", [x["requests"] for x in c]),
        ("model seconds (request wall time, queueing included)", None, [x["model_seconds"] for x in c]),
        ("tokens in per verified task", None, [_round(x["per_verified_task"]["prompt_tokens"]) for x in c]),
        ("tokens out per verified task", None, [_round(x["per_verified_task"]["completion_tokens"]) for x in c]),
        ("requests per verified task", None, [x["per_verified_task"]["requests"] for x in c]),
        ("model seconds per verified task", None, [x["per_verified_task"]["model_seconds"] for x in c]),
        ("CPU seconds per task (compile + test)", None, [x["cpu_seconds_per_task"] for x in c]),
        ("wall seconds per task", None, [x["wall_seconds_per_task"] for x in c]),
    ]


def taxonomy_rows(runs: Runs) -> list[Row]:
    t = [r["taxonomy"] for r in runs]
    rows: list[Row] = [(f"test failure: {name}", None, [x["test_failures"].get(name, 0) for x in t])
                       for name in dict.fromkeys(k for x in t for k in x["test_failures"])]
    rows += [
        ("compile errors (attempts)", None, [x["attempt_kinds"].get("compile_error", 0) for x in t]),
        ("refused: `unsafe` in the idiomatic stage", "refused_unsafe", [x["refused_unsafe"] for x in t]),
        ("refused: other (include_str! ...)", None, [x["refused_other"] for x in t]),
        ("truncated answers", "truncated", [x["truncated"] for x in t]),
        ("answers without code", None, [x["no_code"] for x in t]),
        ("request failures", "request_failed", [x["request_failed"] for x in t]),
        ("tasks with vacuous tests", "vacuous_tests", [x["vacuous_tests"] for x in t]),
        ("tasks with unusable inputs", "input_errors", [x["input_errors"] for x in t]),
    ]
    return rows


def quality_rows(runs: Runs) -> list[Row]:
    rows: list[Row] = []
    for stage in STAGES:
        q = [r["quality"][stage] for r in runs]
        rows += [
            (f"{stage}: verified programs measured", None, [x["programs"] for x in q]),
            (f"{stage}: unsafe share of lines", None, [pct(x["unsafe_share"]) for x in q]),
            (f"{stage}: programs with unsafe", None, [x["with_unsafe"] for x in q]),
            (f"{stage}: lines (total)", None, [x["total_lines"] for x in q]),
            (f"{stage}: clippy warnings", f"clippy.{stage}", [x["clippy_warnings"] for x in q]),
        ]
    return rows


def repair_rows(runs: Runs) -> list[Row]:
    rows: list[Row] = []
    for stage in STAGES:
        rep = [r["repairs"][stage] for r in runs]
        rows += [(f"{stage}: verified at the first attempt", None, [x["first_try"] for x in rep]),
                 (f"{stage}: verified after repairs", None, [x["repaired"] for x in rep])]
        for part, outcome in (("fixed", "fixed by a later attempt"), ("unfixed", "never fixed (stage failed)")):
            kinds = dict.fromkeys(k for x in rep for k, v in x[part].items() if v)
            rows += [(f"{stage}: {k.replace('_', ' ')}, {outcome}", None, [x[part].get(k, 0) for x in rep])
                     for k in kinds]
    return rows


def extra_rows(runs: Runs) -> list[Row]:
    """Differential evidence and function-level items, when some run recorded them."""
    rows: list[Row] = []
    for where in dict.fromkeys(w for r in runs if r["differential"] for w in ("totals", *r["differential"]["stages"])):
        keys = dict.fromkeys(k for r in runs if r["differential"]
                             for k in (r["differential"]["totals"] if where == "totals"
                                       else r["differential"]["stages"].get(where, {})))
        for key in keys:
            values = [((r["differential"]["totals"] if where == "totals" else r["differential"]["stages"].get(
                where, {})).get(key) if r["differential"] else None) for r in runs]
            rows.append((f"differential {where}: {key}", None, values))
    for r_key in ("granularity", "items"):
        keys = dict.fromkeys(k for r in runs if r["items"] for k in r["items"][r_key])
        rows += [(f"{r_key}: {k}", None, [r["items"][r_key].get(k) if r["items"] else None for r in runs])
                 for k in keys]
    return rows


# --------------------------------------------------------------------------------------------------------
# Charts


def charts(runs: Runs) -> dict[str, str]:
    """Inline SVG per chart name; empty when matplotlib is missing (logged once)."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed, so the report has no charts: pip install 'c2rust-batch[report]'")
        return {}
    names = [r["name"] for r in runs]
    out: dict[str, str] = {}
    style: Any = {"svg.fonttype": "none", "svg.hashsalt": "c2rust-batch", "font.size": 9,
             "font.family": ["DejaVu Sans", "sans-serif"], "axes.spines.top": False, "axes.spines.right": False}
    with matplotlib.rc_context(style):
        out["stages"] = _svg(Figure(figsize=(5.2, 1.0 + 0.45 * len(runs) * len(STAGES))), _stages_chart, runs)
        out["attempts"] = _svg(Figure(figsize=(5.2, 2.6)), _attempts_chart, runs)
        codes = _top(runs, lambda r: r["taxonomy"]["rustc_codes"])
        if codes:
            out["codes"] = _svg(Figure(figsize=(5.2, 1.0 + 0.28 * len(codes) * max(1, len(runs) * 0.6))),
                                _bars, names, codes, "compile errors (attempts)")
        classes = _top(runs, lambda r: r["taxonomy"]["test_failures"], keep_zero=True)
        out["tests"] = _svg(Figure(figsize=(5.2, 1.0 + 0.28 * len(classes) * max(1, len(runs) * 0.6))),
                            _bars, names, classes, "test failures (attempts)")
        for stage in STAGES:
            lints = _top(runs, lambda r, s=stage: r["quality"][s]["lints"])  # type: ignore[misc]
            if lints:
                out[f"lints-{stage}"] = _svg(
                    Figure(figsize=(5.2, 1.0 + 0.28 * len(lints) * max(1, len(runs) * 0.6))),
                    _bars, names, lints, f"clippy warnings per lint: {stage}")
    return out


def _svg(fig: Any, draw: Callable[..., None], *args: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # Agg measures the text for the layout; no pyplot, no GUI backend, no global state
    draw(fig, *args)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    return re.sub(r"\s*<metadata>.*?</metadata>", "", text[text.index("<svg"):], count=1, flags=re.S)


def _top(runs: Runs, pick: Callable[[dict[str, Any]], dict[str, int]], keep_zero: bool = False
         ) -> dict[str, list[int]]:
    total: dict[str, int] = {}
    for r in runs:
        for k, v in pick(r).items():
            total[k] = total.get(k, 0) + v
    keys = [k for k, v in sorted(total.items(), key=lambda kv: -kv[1]) if v or keep_zero][:TOP]
    return {k: [pick(r).get(k, 0) for r in runs] for k in keys}


def _bars(fig: Any, names: list[str], data: dict[str, list[int]], title: str) -> None:
    ax = fig.add_subplot()
    labels = list(data)[::-1]
    n = len(names)
    height = 0.8 / n
    for i, name in enumerate(names):
        ys = [j + (n - 1 - i - (n - 1) / 2) * height for j in range(len(labels))]
        values = [data[k][i] for k in labels]
        bars = ax.barh(ys, values, height=height * 0.9, color=RUN_COLOURS[i % len(RUN_COLOURS)], label=name)
        ax.bar_label(bars, labels=[f"{v:,}" if v else "" for v in values], padding=2, fontsize=8)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(-0.7, len(labels) - 0.3)
    ax.set_title(title, loc="left", fontsize=10)
    ax.margins(x=0.12)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if n > 1:
        ax.legend(frameon=False, fontsize=8, ncols=n, loc="lower right", bbox_to_anchor=(1, 1), borderaxespad=0.2)


def _stages_chart(fig: Any, runs: Runs) -> None:
    ax = fig.add_subplot()
    labels: list[str] = []
    parts: dict[str, list[int]] = {"verified": [], "failed": [], "not_run": []}
    for stage in STAGES[::-1]:
        for r in runs[::-1]:
            labels.append(f"{stage} · {r['name']}" if len(runs) > 1 else stage)
            for status in parts:
                parts[status].append(r["headline"]["stages"].get(stage, {}).get(status, 0))
    left = [0] * len(labels)
    for status, colour in (("verified", GREEN), ("failed", RED), ("not_run", GREY)):
        bars = ax.barh(labels, parts[status], left=left, color=colour, label=status.replace("_", " "), height=0.6)
        ax.bar_label(bars, labels=[str(v) if v else "" for v in parts[status]], label_type="center",
                     fontsize=8, color="white" if status != "not_run" else "black")
        left = [a + b for a, b in zip(left, parts[status], strict=True)]
    ax.legend(frameon=False, fontsize=8, ncols=3, loc="lower right", bbox_to_anchor=(1, 1), borderaxespad=0.2)
    ax.xaxis.get_major_locator().set_params(integer=True)


def _attempts_chart(fig: Any, runs: Runs) -> None:
    axes = fig.subplots(1, len(STAGES), sharey=True)
    for ax, stage in zip(axes, STAGES, strict=True):
        keys = list(dict.fromkeys(k for r in runs for k in r["attempts"][stage]))
        keys.sort(key=lambda k: (k == "failed", int(k) if k.isdigit() else 0))
        n = len(runs)
        width = 0.8 / max(n, 1)
        for i, r in enumerate(runs):
            xs = [j + (i - (n - 1) / 2) * width for j in range(len(keys))]
            colours = [RED if k == "failed" and n == 1 else RUN_COLOURS[i % len(RUN_COLOURS)] for k in keys]
            bars = ax.bar(xs, [r["attempts"][stage].get(k, 0) for k in keys], width=width * 0.9, color=colours,
                          label=r["name"])
            ax.bar_label(bars, fontsize=8, padding=1)
        ax.set_xticks(range(len(keys)), keys)
        ax.set_title(f"{stage}: attempts to verify", loc="left", fontsize=10)
        ax.margins(y=0.15)
        ax.yaxis.get_major_locator().set_params(integer=True)
    if len(runs) > 1:
        axes[-1].legend(frameon=False, fontsize=8)


# --------------------------------------------------------------------------------------------------------
# HTML

_CSS = """
:root { --fg:#1d2430; --muted:#5b6575; --line:#d9dee6; --bg:#f6f7f9; --ok:#00795a; --bad:#b84300; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--fg);
       background: var(--bg); margin: 0; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 0 0 10px; }
h3 { font-size: 15px; margin: 14px 0 6px; color: var(--muted); }
.sub { color: var(--muted); margin: 0 0 18px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 20px;
          margin: 0 0 18px; }
.cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: 12px; margin: 0 0 12px; }
@media (max-width: 720px) { .cards { grid-template-columns: 1fr 1fr; } }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; background: #fbfcfd; }
.card .big { font-size: 26px; font-weight: 650; } .card .lbl { color: var(--muted); font-size: 13px; }
.card .run { font-size: 12px; color: var(--muted); }
.ok { color: var(--ok); } .bad { color: var(--bad); }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #eef1f5; font-weight: 600; }
td.n, th.n, td.t { text-align: right; font-variant-numeric: tabular-nums; }
td.n, th.n { white-space: nowrap; } td.t { overflow-wrap: anywhere; }
tbody tr:nth-child(even) td { background: #fafbfc; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 16px 28px;
         align-items: start; margin-top: 4px; }
.grid2 > * { min-width: 0; }
.grid2 svg, .chart svg { width: 100%; height: auto; display: block; }
.chart { margin: 10px 0; }
.reason { color: var(--muted); font-size: 13px; max-width: 520px; overflow-wrap: anywhere; }
.pill { display: inline-block; padding: 0 7px; border-radius: 10px; font-size: 12px; font-weight: 600; }
.pill.verified { background: #d8f1e8; color: var(--ok); } .pill.failed { background: #fbe3d6; color: var(--bad); }
.pill.not_run, .pill.skipped, .pill.absent { background: #eceff3; color: var(--muted); }
.note { color: var(--muted); font-size: 13px; }
.settings { columns: 2 360px; font-size: 13px; } .settings div { break-inside: avoid; }
.settings code { color: var(--muted); }
table.tasks { table-layout: fixed; } table.tasks th:first-child { width: 24%; }
table.tasks code { overflow-wrap: anywhere; }
tr.differs td { font-weight: 600; }
@media print {
  body { background: #fff; font-size: 11pt; } main { max-width: none; padding: 0; }
  section { border: none; padding: 0; margin: 0 0 14pt; break-inside: auto; }
  h2 { break-after: avoid; } .chart, tr, .card { break-inside: avoid; }
  .grid2 { grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 8pt 16pt; }
  table { font-size: 9pt; } td.n, td.t { white-space: normal; overflow-wrap: anywhere; }
  .cards { gap: 6pt; } .card .big { font-size: 18pt; }
  a { color: inherit; text-decoration: none; }
}
"""


def _e(value: Any) -> str:
    return html.escape(fmt(value))


def _table(runs: Runs, rows: list[Row], run_index_attr: bool = True) -> str:
    head = "".join(f'<th class="n">{html.escape(r["name"])}</th>' for r in runs)
    body = []
    for label, key, values in rows:
        cells = []
        for i, v in enumerate(values):
            attr = f' data-figure="run{i}.{key}"' if key and run_index_attr else ""
            text = fmt(v)
            kind = "n" if len(text) < 32 and " " not in text.strip() else "t"
            cells.append(f'<td class="{kind}"{attr}>{_e(v)}</td>')
        body.append(f"<tr><td>{html.escape(label)}</td>{''.join(cells)}</tr>")
    return f"<table><thead><tr><th>figure</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _cards(runs: Runs) -> str:
    rows = []
    for i, r in enumerate(runs):
        h = r["headline"]
        who = f'<div class="run">{html.escape(r["name"])}</div>' if len(runs) > 1 else ""
        rows.append(
            '<div class="cards">'
            f'<div class="card">{who}<div class="big ok">{pct(h["pass_rate"])}</div>'
            f'<div class="lbl">pass rate (95 % CI {ci(r)})</div></div>'
            f'<div class="card">{who}<div class="big"><span data-figure="run{i}.card.verified">{h["verified"]:,}'
            f'</span> / <span data-figure="run{i}.card.tasks">{h["tasks"]:,}</span></div>'
            f'<div class="lbl">tasks verified (both stages)</div></div>'
            + "".join(f'<div class="card">{who}<div class="big">{_stage_rate(r, s)}</div>'
                      f'<div class="lbl">{s} verified</div></div>' for s in STAGES)
            + "</div>"
        )
    return "".join(rows)


def _chart(svgs: dict[str, str], *names: str) -> str:
    return "".join(f'<div class="chart">{svgs[n]}</div>' for n in names if n in svgs)


def _pill(status: str | None) -> str:
    status = status or "absent"
    return f'<span class="pill {html.escape(status)}">{html.escape(status.replace("_", " "))}</span>'


def _task_table(data: dict[str, Any], report_dir: Path) -> str:
    runs: Runs = data["runs"]
    by_run = [{t["task_id"]: t for t in r["tasks"]} for r in runs]
    ids = list(dict.fromkeys(t for rows in by_run for t in rows))
    groups: dict[str, list[str]] = {}
    for task_id in ids:
        seen = [rows.get(task_id, {}).get("status") for rows in by_run]
        if len(runs) > 1 and "verified" in seen and any(s != "verified" for s in seen):
            group = "flipped (verified in one run, not in another)"
        elif all(s == "verified" for s in seen):
            group = "verified" if len(runs) == 1 else "verified in every run"
        else:
            group = "failed" if len(runs) == 1 else "failed in every run"
        groups.setdefault(group, []).append(task_id)
    order = ["flipped (verified in one run, not in another)", "failed", "failed in every run", "verified",
             "verified in every run"]
    head = "".join(f"<th>{html.escape(r['name'])}</th>" for r in runs)
    parts = []
    for group in order:
        if group not in groups:
            continue
        rows = []
        for task_id in sorted(groups[group]):
            cells = []
            for run, rows_of in zip(runs, by_run, strict=True):
                t = rows_of.get(task_id)
                if t is None:
                    cells.append(f"<td>{_pill(None)}</td>")
                    continue
                link = quote(os.path.relpath(Path(run["path"]) / task_id, report_dir)) + "/"
                stages = " ".join(f'{s[:1]}:{html.escape(fmt(t["stages"][s]["attempts"]))}' for s in STAGES)
                reason = f'<div class="reason">{html.escape(t["reason"])}</div>' if t["reason"] else ""
                cells.append(f'<td data-task="{html.escape(task_id)}" data-status="{html.escape(t["status"])}">'
                             f'{_pill(t["status"])} <a href="{html.escape(link)}">folder</a> '
                             f'<span class="note">attempts {stages}</span>{reason}</td>')
            rows.append(f"<tr><td><code>{html.escape(task_id)}</code></td>{''.join(cells)}</tr>")
        parts.append(f'<h3 data-group="{html.escape(group)}">{html.escape(group)}: {len(groups[group]):,}</h3>'
                     f'<table class="tasks"><thead><tr><th>task</th>{head}</tr></thead>'
                     f"<tbody>{''.join(rows)}</tbody></table>")
    legend = '<p class="note">"folder": the task\'s result folder; attempts u: unidiomatic, i: idiomatic.</p>'
    return legend + "".join(parts)


def render_html(data: dict[str, Any], report_dir: Path) -> str:
    """The page. ``report_dir`` is where it will be written (task links are relative to it)."""
    runs: Runs = data["runs"]
    svgs = charts(runs)
    title = ("c2rust-batch report: " + runs[0]["name"]) if len(runs) == 1 else \
        f"c2rust-batch: {len(runs)} runs compared"
    sub = " · ".join(f'{html.escape(r["name"])}: {html.escape(fmt(r["headline"]["model"]))}, '
                     f'{html.escape(fmt(r["headline"]["started"]))}' for r in runs)
    no_charts = "" if svgs else '<p class="note">Charts need matplotlib: pip install \'c2rust-batch[report]\'.</p>'
    sections = [
        f"<section><h2>Headline</h2>{_cards(runs)}<div class=\"grid2\"><div>{_table(runs, headline_rows(runs))}"
        f"{_chart(svgs, 'stages')}</div><div>{_table(runs, run_rows(runs))}</div></div></section>",
        f"<section><h2>Attempts and repairs</h2><div class=\"grid2\"><div>{_chart(svgs, 'attempts')}"
        '<p class="note">Attempts a stage needed to verify; "failed": not verified after every attempt.</p>'
        f"</div><div>{_table(runs, repair_rows(runs))}</div></div></section>",
        f"<section><h2>Failure taxonomy</h2><div class=\"grid2\"><div>{_table(runs, taxonomy_rows(runs))}"
        '<p class="note">Counts are failed attempts (an attempt counts once, by its first failing test), except '
        f"the last two rows (tasks).</p></div><div>{_chart(svgs, 'tests', 'codes')}{_codes_table(runs)}</div>"
        "</div></section>",
        f"<section><h2>Cost and code quality</h2><div class=\"grid2\"><div>{_table(runs, cost_rows(runs))}"
        '<p class="note">CPU seconds: wall time of the compiler and test processes, each holding one CPU slot.'
        f"</p></div><div>{_table(runs, quality_rows(runs))}</div>"
        f"{''.join(f'<div>{svgs[n]}</div>' for n in (f'lints-{s}' for s in STAGES) if n in svgs)}</div></section>",
    ]
    extra = extra_rows(runs)
    if extra:
        sections.append(f"<section><h2>Differential testing and function-level items</h2>"
                        f"{_table(runs, extra)}</section>")
    flipped = "" if len(runs) == 1 else (
        f'<p>Tasks that flipped (verified in one run, failed in another, of the tasks the runs share): '
        f'<b data-figure="flipped">{len(data["flipped"]):,}</b></p>')
    sections.append(f"<section><h2>Every task</h2>{flipped}{_task_table(data, report_dir)}</section>")
    sections.append(f"<section><h2>Settings</h2>{_settings(runs)}</section>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body><main>"
            f"<h1>{html.escape(title)}</h1><p class=\"sub\">{sub}</p>{no_charts}{''.join(sections)}"
            "</main></body></html>\n")


def _codes_table(runs: Runs) -> str:
    codes = _top(runs, lambda r: r["taxonomy"]["rustc_codes"])
    if not codes:
        return '<p class="note">No rustc error code was recorded.</p>'
    rows: list[Row] = [(f"rustc {code}", None, values) for code, values in codes.items()]
    return _table(runs, rows)


def _settings(runs: Runs) -> str:
    if len(runs) > 1:
        keys = list(dict.fromkeys(k for r in runs for k in r["settings"]))
        values = {k: [fmt(r["settings"].get(k)) for r in runs] for k in keys}
        keys.sort(key=lambda k: len(set(values[k])) == 1)  # the settings that differ first
        head = "".join(f"<th>{html.escape(r['name'])}</th>" for r in runs)
        rows = "".join(
            f'<tr class="{"differs" if len(set(values[k])) > 1 else ""}"><td><code>{html.escape(k)}</code></td>'
            + "".join(f"<td>{html.escape(v)}</td>" for v in values[k]) + "</tr>" for k in keys)
        return ('<p class="note">Settings that differ between the runs come first, in bold.</p>'
                f'<table class="tasks"><thead><tr><th>setting</th>{head}</tr></thead><tbody>{rows}</tbody></table>')
    parts = []
    for r in runs:
        items = "".join(f"<div><code>{html.escape(k)}</code> {html.escape(fmt(v))}</div>"
                        for k, v in r["settings"].items())
        head = f"<h3>{html.escape(r['name'])}</h3>" if len(runs) > 1 else ""
        sandbox = html.escape(fmt(r["headline"]["sandbox"]))
        parts.append(f'{head}<div class="settings">{items}</div><p class="note">sandbox: {sandbox}</p>')
    return "".join(parts)


# --------------------------------------------------------------------------------------------------------
# Markdown and JSON


def _md_table(runs: Runs, rows: list[Row]) -> list[str]:
    lines = ["| figure | " + " | ".join(r["name"] for r in runs) + " |",
             "|---|" + "---:|" * len(runs)]
    lines += [f"| {label} | " + " | ".join(fmt(v).replace("|", "\\|") for v in values) + " |"
              for label, _key, values in rows]
    return [*lines, ""]


def render_md(data: dict[str, Any]) -> str:
    runs: Runs = data["runs"]
    out = ["# c2rust-batch report: " + ", ".join(r["name"] for r in runs), ""]
    sections: Sequence[tuple[str, list[Row]]] = [
        ("Headline", headline_rows(runs) + run_rows(runs)), ("Attempts and repairs", repair_rows(runs)),
        ("Failure taxonomy", taxonomy_rows(runs) + [(f"rustc {c}", None, v) for c, v in
                                                    _top(runs, lambda r: r["taxonomy"]["rustc_codes"]).items()]),
        ("Cost", cost_rows(runs)), ("Code quality of verified translations", quality_rows(runs)),
    ]
    for title, rows in sections:
        out += [f"## {title}", "", *_md_table(runs, rows)]
    for stage in STAGES:
        attempts = _top(runs, lambda r, s=stage: r["attempts"][s], keep_zero=True)  # type: ignore[misc]
        out += [f"### {stage}: attempts to verify", "",
                *_md_table(runs, [(k, None, v) for k, v in sorted(attempts.items(), key=lambda kv: (
                    kv[0] == "failed", int(kv[0]) if kv[0].isdigit() else 0))])]
    extra = extra_rows(runs)
    if extra:
        out += ["## Differential testing and function-level items", "", *_md_table(runs, extra)]
    if len(runs) > 1:
        out += [f"## Tasks that flipped: {len(data['flipped'])}", ""]
        out += [f"- `{f['task_id']}`: " + ", ".join(f"{r['name']} {s}" for r, s in zip(runs, f["statuses"],
                                                                                        strict=True))
                for f in data["flipped"]]
        out.append("")
    for r in runs:
        failed = [t for t in r["tasks"] if t["status"] != "verified"]
        out += [f"## Failed tasks in {r['name']}: {len(failed)}", ""]
        out += [f"- `{t['task_id']}`: " + " ".join(str(t["reason"] or t["status"]).split()) for t in failed] + [""]
    return "\n".join(out)


def render_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def render(data: dict[str, Any], fmt_name: str, report_dir: Path) -> str:
    """The report in ``fmt_name`` (one of FORMATS)."""
    if fmt_name == "html":
        return render_html(data, report_dir)
    if fmt_name == "md":
        return render_md(data)
    return render_json(data)


__all__ = ["FORMATS", "charts", "render", "render_html", "render_json", "render_md"]
