"""Prompts laid out for the server's automatic prefix caching: what every task shares comes first, byte for byte;
a repair request extends the request before it."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any

from pipeline import prompts
from pipeline.config import DEFAULT_SYSTEM_MESSAGE
from pipeline.extract import END_MARK
from pipeline.prompts import HISTORY_CHARS, PROMPTS_REVISION, Turn, conversation
from tests.conftest import RUST_OK, Cli, Corpus, answer
from tests.test_batch_e2e import run

#: The digests of the prompt texts each revision has had. Layout-only edits add a digest under the same
#: revision (finished tasks are kept); an edit of meaning bumps prompts.PROMPTS_REVISION (they are redone).
KNOWN_TEXTS = {
    "2": {"0ead277b5a68e2748b3ff6c2a4d938bc80bbdf1d48fa8829896ca06a4613d7e8"},
}

COMPILE_ERROR = answer('fn main() {\n    let count: i32 = "not a number";\n    println!("{}", count);\n}\n')


def common_prefix(a: str, b: str) -> int:
    """How many leading characters ``a`` and ``b`` share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def rendered(messages: list[dict[str, Any]]) -> str:
    """A request's messages as one text, as a chat template lays them out (what the server's cache keys on)."""
    return "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages)


def requests_of(sim: Any, name: str, stage: str) -> list[list[dict[str, Any]]]:
    found = [r for r in sim.chat_requests if r.stage == stage and r.status == 200
             and f"`{name}.c`" in next(m["content"] for m in r.body["messages"] if m["role"] == "user")]
    return [r.body["messages"] for r in sorted(found, key=lambda r: r.id)]


def test_first_requests_of_two_tasks_share_every_instruction_and_repairs_extend_the_request_before(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path
) -> None:
    """Two tasks through the CLI: for each stage their first requests are the same up to the task's own name and
    programs (system message, instructions, reply format: all shared), and each repair request starts with the
    previous request of its stage word for word, so the server's prefix cache holds all but the newest turn."""
    corpus.add_task("alpha", unidiomatic=[COMPILE_ERROR, answer(RUST_OK.format(out="wrong")),
                                          answer(RUST_OK.format(out="hello"))])
    corpus.add_task("bravo_with_a_longer_name", expected="other output")
    sim, url = simulator_factory(answers_dir=corpus.answers)
    result = run(cli, corpus.corpus, tmp_path / "out", url, "--workers", "2", "--max-attempts", "4")
    assert result.returncode == 0, result.output

    for stage in ("unidiomatic", "idiomatic"):
        first_a = requests_of(sim, "alpha", stage)[0]
        first_b = requests_of(sim, "bravo_with_a_longer_name", stage)[0]
        text_a, text_b = rendered(first_a), rendered(first_b)
        shared = common_prefix(text_a, text_b)
        # Everything before the task's name is instructions: the system message, the stage's rules and the reply
        # format all come before it, and all of it is shared.
        instructions = text_a.index("`alpha.c`")
        assert text_a.index(DEFAULT_SYSTEM_MESSAGE) < text_a.index(END_MARK) < instructions
        assert shared >= instructions - len("The original C program "), (stage, shared, instructions)
        print(f"{stage}: first requests share {shared} characters (~{shared // 4} tokens) of "
              f"{len(text_a)}; the task's content is the rest")

    repairs = [rendered(messages) for messages in requests_of(sim, "alpha", "unidiomatic")]
    assert len(repairs) == 3
    for before, after in itertools.pairwise(repairs):
        assert after.startswith(before.removesuffix("<|end|>\n")), "a repair request rewrote an earlier message"
        print(f"repair: {common_prefix(before, after)} of {len(after)} characters shared with the request before")


def test_long_repair_loops_stub_the_oldest_turns_once_and_stay_bounded() -> None:
    """Past HISTORY_CHARS of earlier turns the oldest become stubs; a stub once sent stays a stub, so each request
    shares with the one before everything up to the first newly stubbed turn, and the prompt stays bounded."""
    turns = [Turn(f"program {n} " + "x" * 5000, f"summary {n}", f"feedback {n} " + "y" * 1000) for n in range(1, 7)]
    sent = [conversation("system", "first", turns[:count]) for count in range(1, len(turns) + 1)]
    for before, after in itertools.pairwise(sent):
        stubs_before = sum("program omitted" in m["content"] for m in before)
        kept = 2 + 2 * stubs_before  # system, first and the turns already stubbed are resent unchanged
        assert after[:kept] == before[:kept]
        assert sum("program omitted" in m["content"] for m in after) >= stubs_before
    for messages in sent:
        earlier = messages[2:-2]
        assert sum(len(m["content"]) for m in earlier) <= HISTORY_CHARS + 600
    assert "summary 1" in sent[-1][3]["content"]  # why attempt 1 failed is still said


def test_prompt_texts_match_the_revision_in_the_settings_fingerprint() -> None:
    """The settings fingerprint holds PROMPTS_REVISION, not the texts: an edit of the texts must be classed as
    layout (same revision, finished tasks kept) or meaning (new revision, finished tasks redone)."""
    texts = [*prompts.FIRST_REQUESTS.values(), prompts.REPAIR, prompts._REPLY_FORMAT, prompts._REPLY_SHORT,
             prompts.CUT_OFF_STUB, prompts.CUT_OFF_ADVICE]
    digest = hashlib.sha256("\0".join(texts).encode()).hexdigest()
    assert digest in KNOWN_TEXTS.get(PROMPTS_REVISION, set()), (
        f"the prompt texts changed (digest {digest}): if their meaning changed, bump prompts.PROMPTS_REVISION "
        "(finished tasks are redone on upgrade); either way add the digest to KNOWN_TEXTS in tests/test_prompts.py")
