"""Test inputs the model proposes for a C program (SACToR's ``generate-tests`` idea), parsed defensively.

Use :func:`propose_inputs` to ask a :class:`~pipeline.interfaces.Model` for inputs; the C program then judges
them like any other input (:func:`pipeline.differential.build_oracle` ``proposed=``, or
:func:`pipeline.differential.judge_inputs`): only inputs on which it is deterministic, quick and free of
undefined behaviour become tests, and their expected outputs are the C program's, never the model's.

The request asks for a JSON list of strings in one fenced block. :func:`parse_proposals` accepts what models
actually send: prose around the block, several blocks, a bare list, numbers or ``{"input": ...}`` objects in
place of strings, argument lists as lists, and an answer cut off mid-list (the complete strings are kept).
Everything is capped: the answer scanned, the number of inputs, each input's length.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .differential import feedable
from .errors import TaskFailure
from .interfaces import Model
from .records import Usage
from .task import Feed

log = logging.getLogger(__name__)

#: The first words of the request (the simulator recognises an input-proposal request by them).
REQUEST_HEAD = "Propose test inputs for the C program"
#: The system message of the request (the translation's is about writing Rust, not choosing inputs).
SYSTEM_MESSAGE = "You choose test inputs for C programs: valid, varied, and aimed at edge cases."
#: Characters of an answer looked at; the rest is ignored.
MAX_ANSWER_CHARS = 200_000
#: A proposed input longer than this is dropped.
MAX_PROPOSAL_CHARS = 4096
#: Inputs asked for at most in one request.
MAX_COUNT = 100
#: Characters of the C program and of each example shown in the request.
MAX_SOURCE_CHARS = 24_000
MAX_EXAMPLE_CHARS = 400
MAX_EXAMPLES = 5

_FENCE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\r?\n(.*?)(?:```|\Z)", re.DOTALL)
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')

_FEEDS: dict[Feed, str] = {
    "stdin": "Each input is the whole text given to the program on standard input (a newline is added at the "
             "end). Use \\n inside a string for line breaks.",
    "args": "Each input is the program's command line without the program name: the string is split on "
            "whitespace into arguments (no quoting, no shell).",
}


@dataclass(frozen=True)
class Proposal:
    """What the model proposed: new inputs (deduplicated, examples left out) and how the answer went."""

    inputs: tuple[str, ...]
    parsed: int = 0  # items found in the answer, before deduplication and caps
    problem: str | None = None  # why there are none (request failed, nothing parseable)
    tokens: int = 0  # prompt + completion tokens the request used
    usage: Usage = field(default_factory=Usage)  # the same, split as the server reported them
    requests: int = 0  # chat requests sent (1 + retries)


def proposal_request(name: str, c_source: str, feed: Feed, examples: Sequence[str], count: int) -> str:
    """The user message asking for ``count`` inputs (pure, so tests and the simulator's answers can see it)."""
    source = c_source if len(c_source) <= MAX_SOURCE_CHARS else c_source[:MAX_SOURCE_CHARS] + "\n/* ... */\n"
    shown = [text[:MAX_EXAMPLE_CHARS] for text in examples[:MAX_EXAMPLES]]
    lines = [
        f"{REQUEST_HEAD} `{name}` below: {count} inputs that exercise it well, "
        "including edge cases (zero, negative and large numbers, empty or minimal input, longest lines), "
        "but only inputs the program is written to accept: its expected outputs will be recorded by running it.",
        "",
        _FEEDS[feed],
    ]
    if shown:
        lines += ["", "Inputs it is known to accept:", "```json", json.dumps(shown, indent=1), "```"]
    lines += [
        "",
        f"Reply with one JSON list of {count} strings in a ```json fenced block, and nothing else.",
        "",
        f"The C program `{name}`:",
        "```c",
        source.rstrip("\n"),
        "```",
    ]
    return "\n".join(lines) + "\n"


async def propose_inputs(
    model: Model, *, name: str, c_source: str, feed: Feed, examples: Sequence[str], count: int,
    system_message: str = SYSTEM_MESSAGE,
) -> Proposal:
    """Ask ``model`` for up to ``count`` inputs of the C program ``name``; ``examples`` are inputs it accepts.

    A request that cannot succeed (:class:`~pipeline.errors.TaskFailure`) gives a Proposal with a ``problem``
    (proposals are optional); :class:`~pipeline.errors.FatalError` propagates.
    """
    count = max(0, min(count, MAX_COUNT))
    if count == 0:
        return Proposal(())
    messages = [{"role": "user", "content": proposal_request(name, c_source, feed, examples, count)}]
    if system_message:
        messages.insert(0, {"role": "system", "content": system_message})
    try:
        completion = await model.complete(messages, purpose=f"{name}: input proposals")
    except TaskFailure as exc:
        log.warning("%s: the model proposed no inputs: %s", name, exc)
        return Proposal((), problem=f"the request failed: {exc}", requests=exc.requests)
    tokens = completion.usage.prompt_tokens + completion.usage.completion_tokens
    items = parse_proposals(completion.text)
    known = set(examples)
    fresh = [text for text in dict.fromkeys(_usable(items, feed)) if text not in known][:count]
    problem = None if items else "the answer held no JSON list of inputs"
    if completion.truncated:
        problem = (problem + "; " if problem else "") + "the answer was cut off at max_tokens"
    log.info("%s: the model proposed %d inputs, %d new and usable", name, len(items), len(fresh))
    return Proposal(tuple(fresh), len(items), problem, tokens, completion.usage, completion.requests)


def parse_proposals(text: str) -> list[str]:
    """The inputs in a model's answer, in order (see the module docstring for what is accepted).

    The first fenced block (or else the bare answer) that holds a JSON list wins; failing that, the complete
    string literals of a list cut off mid-way. Never raises.
    """
    text = text[:MAX_ANSWER_CHARS]
    blocks = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for block in blocks:
        found = _first_list(block)
        if found is not None:
            return [item for item in (_as_input(value) for value in found[:MAX_COUNT]) if item is not None]
    for block in blocks:
        start = block.find("[")
        if start >= 0:
            salvaged: list[str] = []
            for literal in _STRING.findall(block[start:]):
                try:
                    salvaged.append(json.loads(literal))
                except ValueError:
                    continue
                if len(salvaged) >= MAX_COUNT:
                    break
            if salvaged:
                return salvaged
    return []


def _first_list(block: str) -> list[Any] | None:
    decoder = json.JSONDecoder()
    start = block.find("[")
    while start >= 0:
        try:
            value, _ = decoder.raw_decode(block, start)
        except (ValueError, RecursionError):
            value = None
        if isinstance(value, list) and value:
            return value
        start = block.find("[", start + 1)
    return None


def _as_input(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, dict):
        inner = value.get("input", value.get("stdin", value.get("args")))
        return _as_input(inner) if not isinstance(inner, dict) else None
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                       for v in value):
        return " ".join(str(v) for v in value)
    return None


def _usable(items: Sequence[str], feed: Feed) -> list[str]:
    """Items that can be fed as they are (UTF-8 without NUL, not too long); trailing line ends dropped for stdin (a
    newline is added anyway), whitespace runs made single spaces for arguments (they are split on it anyway)."""
    out: list[str] = []
    for item in items:
        text = item.rstrip("\r\n") if feed == "stdin" else " ".join(item.split())
        if len(text) > MAX_PROPOSAL_CHARS or not feedable(text):
            continue
        out.append(text)
    return out
