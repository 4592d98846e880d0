"""Find the Rust program in a model's answer.

Use :func:`extract_rust` on every answer; it never raises. The rules, in order:

1. Reasoning is removed first: every ``<think>...</think>`` section, everything up to a ``</think>`` that has
   no opening tag (templates that open the section in the prompt), and everything from an unclosed
   ``<think>`` on.
2. Markers (what our prompts ask for): the lines between a line ``----RUST BEGIN----`` and a line
   ``----RUST END----`` (any number of dashes, at least three, any case, surrounding blanks allowed). A
   fence wrapped around the code inside the markers is dropped. A begin marker without an end marker means
   the answer ended inside the code.
3. Fences, when there are no markers: blocks opened by three or more backticks (or tildes) tagged ``rust``
   or ``rs`` (any case, extra info after the tag allowed), and untagged blocks whose body has ``fn main``.
   Blocks tagged with another language are ignored. A Rust or untagged fence that is never closed means the
   answer ended inside the code.
4. Bare code, when there are neither markers nor fences: an answer with ``fn main`` is taken from its first
   line that starts a Rust item (``use``, ``fn``, ``#[``, ``struct``, ...) to its last line that is ``}``.

When several blocks qualify (marker pairs or fences), the ones with ``fn main`` are the complete programs.
With several of them, each is a candidate (:attr:`Extraction.candidates`), the last one first, as a later
block is usually the corrected one; the stage compiles them in that order and keeps the first that compiles
(a long "before" version or a usage example must not win over the program that builds). When exactly one
block has ``fn main``, the other Rust blocks are helpers and are joined in answer order, but only those that
define at least one item (``fn``, ``struct``, ...) and none that the program block, or an earlier helper,
already defines: a snippet that repeats a function of the full program is an excerpt, not a helper. When no
block has ``fn main`` the longest Rust block is returned (the compiler will then say what is missing).

Exactly one of :attr:`Extraction.code` and :attr:`Extraction.problem` is ``None``. Problems are written for
the model. An answer flagged ``truncated`` (finish_reason=length) is a problem even when a complete block was
found: the program may be incomplete. Every problem about an answer that ended early says "cut off".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

BEGIN_MARK = "----RUST BEGIN----"
END_MARK = "----RUST END----"

NO_CODE = "the answer contains no Rust code: reply with the complete program between the markers"
TRUNCATED = (
    "the answer was cut off by the length limit (finish_reason=length) before the code ended: "
    "give a shorter, complete program"
)
UNTERMINATED = (
    f"the answer was cut off before the code ended (no closing ``` fence or no {END_MARK} line): "
    f"reply with the complete program between {BEGIN_MARK} and {END_MARK}"
)

Source = Literal["markers", "fence", "bare", "none"]

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_BEGIN = re.compile(r"^\s*-{3,}\s*RUST\s+BEGIN\s*-{3,}\s*$", re.IGNORECASE)
_END = re.compile(r"^\s*-{3,}\s*RUST\s+END\s*-{3,}\s*$", re.IGNORECASE)
_FENCE_OPEN = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_FN_MAIN = re.compile(r"\bfn\s+main\s*\(")
_ITEM_NAME = re.compile(
    r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:unsafe\s+|const\s+|async\s+|extern\s+\"[^\"]*\"\s+)*"
    r"(?:fn|struct|enum|union|trait|type|const|static(?:\s+mut)?|mod)\s+(?P<name>[A-Za-z_]\w*)",
    re.MULTILINE,
)
_ITEM_START = re.compile(
    r"^(?:use\s+[\w:]+(?:::|;|\s+as\s)|fn\s|pub\s|pub\(|#\[|#!\[|struct\s|enum\s|union\s|impl[\s<]"
    r"|trait\s|type\s|const\s|static\s|mod\s|extern\s|unsafe\s|macro_rules!|//)"
)
_RUST_TAGS = frozenset({"rust", "rs"})


@dataclass(frozen=True)
class Extraction:
    """The program found in an answer (``code``), or why there is none (``problem``), and where it was."""

    code: str | None
    problem: str | None
    source: Source
    #: Every complete program found, in the order to try them; ``code`` is the first. Empty without code.
    candidates: tuple[str, ...] = ()

    @property
    def cut_off(self) -> bool:
        """True when the answer ended before its code did (the length limit, or a missing closing fence)."""
        return self.problem in (TRUNCATED, UNTERMINATED)


@dataclass(frozen=True)
class _Block:
    body: str
    tagged: bool  # tagged rust/rs (or inside markers), as opposed to an untagged fence


def extract_rust(answer: str, *, truncated: bool = False) -> Extraction:
    """Find the Rust program in ``answer``; ``truncated`` says the server stopped it at the length limit.

    Never raises; see the module docstring for the rules.
    """
    text = _strip_reasoning(answer)
    lines = text.splitlines()

    blocks, unterminated = _marker_blocks(lines)
    if blocks or unterminated:
        return _result(blocks, "markers", unterminated, truncated)

    blocks, unterminated = _fenced_blocks(lines)
    if blocks or unterminated:
        return _result(blocks, "fence", unterminated, truncated)

    bare = _bare_code(lines)
    if bare is not None:
        return _result([_Block(bare, True)], "bare", False, truncated)
    return Extraction(None, TRUNCATED if truncated else NO_CODE, "none")


def _strip_reasoning(answer: str) -> str:
    text = _THINK_BLOCK.sub("", answer)
    closing = list(_THINK_CLOSE.finditer(text))
    if closing:
        text = text[closing[-1].end():]
    opening = _THINK_OPEN.search(text)
    if opening:
        text = text[: opening.start()]
    return text


def _marker_blocks(lines: list[str]) -> tuple[list[_Block], bool]:
    """Bodies of the complete marker pairs, and whether a begin marker was never closed."""
    blocks: list[_Block] = []
    body: list[str] | None = None
    for line in lines:
        if body is None:
            if _BEGIN.match(line):
                body = []
        elif _END.match(line):
            blocks.append(_Block(_unwrap_fence(body), True))
            body = None
        elif _BEGIN.match(line):
            body = []  # a second begin: the model restarted
        else:
            body.append(line)
    return [b for b in blocks if b.body.strip()], body is not None


def _unwrap_fence(body: list[str]) -> str:
    """The lines inside markers without a fence wrapped around them."""
    lines = list(body)
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    if lines and _FENCE_OPEN.match(lines[0]):
        lines.pop(0)
        if lines and (_is_fence_close(lines[-1], "`") or _is_fence_close(lines[-1], "~")):
            lines.pop()
    return "\n".join(lines)


def _is_fence_close(line: str, char: str, width: int = 3) -> bool:
    stripped = line.strip()
    return len(stripped) >= width and stripped == char * len(stripped)


def _fenced_blocks(lines: list[str]) -> tuple[list[_Block], bool]:
    """Rust (and untagged ``fn main``) fenced blocks, and whether a Rust/untagged fence was never closed."""
    blocks: list[_Block] = []
    i = 0
    while i < len(lines):
        opened = _FENCE_OPEN.match(lines[i])
        if not opened:
            i += 1
            continue
        fence = opened.group("fence")
        indent = len(opened.group("indent"))
        tag = re.split(r"[\s,{]", opened.group("info").strip(), maxsplit=1)[0].lower()
        body: list[str] = []
        i += 1
        closed = False
        while i < len(lines):
            if _is_fence_close(lines[i], fence[0], len(fence)):
                closed = True
                i += 1
                break
            body.append(_dedent(lines[i], indent))
            i += 1
        if tag and tag not in _RUST_TAGS:
            continue
        if not closed:
            return blocks, True
        code = "\n".join(body)
        if tag in _RUST_TAGS:
            if code.strip():
                blocks.append(_Block(code, True))
        elif _FN_MAIN.search(code):
            blocks.append(_Block(code, False))
    return blocks, False


def _dedent(line: str, indent: int) -> str:
    prefix = len(line) - len(line.lstrip())
    return line[min(prefix, indent):]


def _bare_code(lines: list[str]) -> str | None:
    text = "\n".join(lines)
    if not _FN_MAIN.search(text):
        return None
    start = next((n for n, line in enumerate(lines) if _ITEM_START.match(line)), None)
    if start is None:
        return None
    closers = [n for n, line in enumerate(lines) if line.rstrip() == "}" and n >= start]
    end = closers[-1] if closers else len(lines) - 1
    code = "\n".join(lines[start : end + 1])
    return code if _FN_MAIN.search(code) else None


def _result(blocks: list[_Block], source: Source, unterminated: bool, truncated: bool) -> Extraction:
    if unterminated:
        return Extraction(None, TRUNCATED if truncated else UNTERMINATED, source)
    if truncated:
        return Extraction(None, TRUNCATED, source)
    found = _choose(blocks)
    if not found:
        return Extraction(None, NO_CODE, source)
    candidates = tuple(dict.fromkeys(code.strip("\n").rstrip() + "\n" for code in found))
    return Extraction(candidates[0], None, source, candidates)


def _choose(blocks: list[_Block]) -> list[str]:
    if not blocks:
        return []
    mains = [n for n, block in enumerate(blocks) if _FN_MAIN.search(block.body)]
    if len(mains) > 1:
        return [blocks[n].body for n in reversed(mains)]
    if not mains:
        tagged = [block.body for block in blocks if block.tagged]
        return [max(reversed(tagged), key=len)] if tagged else []
    main = mains[0]
    defined = _item_names(blocks[main].body)
    chosen: dict[int, str] = {main: blocks[main].body}
    for n, block in enumerate(blocks):
        if n == main or not block.tagged:
            continue
        names = _item_names(block.body)
        if names and not names & defined:
            chosen[n] = block.body
            defined |= names
    return ["\n\n".join(chosen[n] for n in sorted(chosen))]


def _item_names(code: str) -> set[str]:
    return {match.group("name") for match in _ITEM_NAME.finditer(code)}
