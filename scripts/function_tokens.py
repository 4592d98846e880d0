"""Prompt and completion tokens of function-level against whole-file translation of the bundled examples.

For each program of examples/functions that has canned answers (tests/functions/answers/<name>/), prints
one markdown row per granularity: requests, prompt tokens, prompt + completion tokens, the largest prompt
and the largest prompt + completion of one request, and how many requests fit a context of --context tokens.
Function level: one request per model-translated global or type and per function group, each answered by
its final canned answer. Whole file: the one first request of the unidiomatic stage, answered by the
combined program. Tokens are :func:`pipeline.llm.estimate_tokens` (len/3 + 8 a message), the count the
pipeline uses when the server has no /tokenize; run it from the repository root.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.c_program import parse_program  # noqa: E402
from pipeline.c_types import translate_types  # noqa: E402
from pipeline.combine import combine  # noqa: E402
from pipeline.config import DEFAULT_SYSTEM_MESSAGE  # noqa: E402
from pipeline.extract import BEGIN_MARK, END_MARK, extract_rust  # noqa: E402
from pipeline.function_stage import function_prompt  # noqa: E402
from pipeline.global_stage import item_prompt, leftover_items  # noqa: E402
from pipeline.llm import estimate_tokens  # noqa: E402
from pipeline.prompts import first_prompt  # noqa: E402
from pipeline.rust_source import given_names, strip_given  # noqa: E402

ANSWERS = ROOT / "tests" / "functions" / "answers"


def _answer(name: str, folder: str, label: str) -> str:
    files = sorted((ANSWERS / name / folder).glob(f"{label}-*.md"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    return files[-1].read_text()


def measure(name: str, context: int) -> list[str]:
    include = subprocess.run(["gcc", "-print-file-name=include"], capture_output=True, text=True, check=True)
    program = parse_program(ROOT / "examples" / "functions" / f"{name}.c", include_dirs=(include.stdout.strip(),))
    translation = translate_types(program)
    system = {"role": "system", "content": DEFAULT_SYSTEM_MESSAGE}
    requests: list[tuple[str, int, int]] = []  # (label, prompt tokens, completion tokens)
    globals_code: dict[str, str] = {}
    for key in leftover_items(program, translation):
        label = program[key].name
        answer = _answer(name, "globals", label)
        prompt = estimate_tokens([system, {"role": "user", "content": item_prompt(program, translation, key)}])
        requests.append((label, prompt, estimate_tokens([{"role": "assistant", "content": answer}])))
        globals_code[key] = extract_rust(answer).code or ""
    functions: dict[tuple[str, ...], str] = {}
    for group in program.function_groups():
        label = "+".join(key.split(":", 1)[1] for key in group)
        answer = _answer(name, "functions", label)
        prompt = estimate_tokens([system, {"role": "user", "content": function_prompt(program, translation, group)}])
        requests.append((label, prompt, estimate_tokens([{"role": "assistant", "content": answer}])))
        given = given_names(translation.rust_source()) | {
            item.name for item in program.items if item.kind in ("function", "global") and item.key not in group}
        functions[group] = strip_given(extract_rust(answer).code or "", given)[0]
    combined = combine(program, translation, functions, globals_code).source
    whole_prompt = estimate_tokens([system, {"role": "user", "content": first_prompt(
        "unidiomatic", name=program.path.name, c_source=program.source.decode("utf-8", "surrogateescape"))}])
    whole_answer = estimate_tokens([{"role": "assistant", "content": f"{BEGIN_MARK}\n{combined}{END_MARK}\n"}])
    rows = []
    for granularity, reqs in (("whole file", [("whole", whole_prompt, whole_answer)]), ("function level", requests)):
        prompts = sum(p for _, p, _ in reqs)
        total = sum(p + c for _, p, c in reqs)
        largest = max(reqs, key=lambda r: r[1])
        largest_total = max(reqs, key=lambda r: r[1] + r[2])
        fit = sum(1 for _, p, c in reqs if p + c <= context)
        rows.append(f"| `{name}.c` | {granularity} | {len(reqs)} | {prompts:,} | {total:,} | {largest[1]:,} "
                    f"(`{largest[0]}`) | {largest_total[1] + largest_total[2]:,} (`{largest_total[0]}`) | "
                    f"{fit} of {len(reqs)} |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", type=int, default=4096, help="max_model_len to check against (4096)")
    args = parser.parse_args()
    print("| program | granularity | requests | prompt tokens | prompt + completion | largest prompt | "
          f"largest prompt + completion | fit {args.context} |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("inventory", "exprcalc"):
        if (ANSWERS / name).is_dir():
            print("\n".join(measure(name, args.context)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
