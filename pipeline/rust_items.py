"""Top-level items of a Rust source without a parser: enough to take a program (or an answer) apart by item.

The function-level idiomatic stage (:mod:`pipeline.function_idiomatic`) moves items between the two halves of
a program being made safe, shows callees in declared form, and tells a safe function from its wrapper. It
needs, for each top-level item, its text (attributes and doc comments included), its kind and its name;
:func:`split_items` gives that from a brace-matching scan over the source with comments and literals masked
(:func:`~pipeline.rust_source.mask_comments_and_strings`). Inner attributes (``#![allow(...)]``) are items of
kind ``inner_attribute``. Text the scan cannot place (a stray ``}``) ends up in an item of kind ``other``, so
nothing is lost.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .rust_source import first_unsafe_line, mask_comments_and_strings

_HEAD = re.compile(
    r"^(?:pub(?:\s*\([^)]*\))?\s+)?(?:default\s+)?(?:(?:unsafe|const|async|extern(?:\s+\"[^\"]*\")?)\s+)*"
    r"(?P<kind>fn|struct|enum|union|type|const|static|mod|trait|use|impl|macro_rules!|thread_local!|\{)"
    r"(?P<rest>.*)",
    re.DOTALL,
)
_NAME = re.compile(r"\s*(?:mut\s+)?(?:r#)?([A-Za-z_][A-Za-z0-9_]*)")
_IMPL_TARGET = re.compile(r"\s*(?:<[^{]*?>\s*)?(?:[\w:<>, ]+?\s+for\s+)?([A-Za-z_][A-Za-z0-9_]*)")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class RustItem:
    """One top-level item: ``kind`` is ``fn``, ``struct``, ``enum``, ``union``, ``type``, ``const``,
    ``static``, ``mod``, ``trait``, ``use``, ``impl`` (``name`` is the type implemented), ``extern`` (an
    ``extern "C" {...}`` block), ``macro_rules``,
    ``thread_local`` (``name`` is the first variable declared), ``inner_attribute`` or ``other``."""

    kind: str
    name: str
    text: str

    @property
    def is_unsafe(self) -> bool:
        """Whether the item uses `unsafe` (outside comments and literals)."""
        return first_unsafe_line(self.text) is not None

    def words(self) -> set[str]:
        """The identifiers the item's code mentions (comments and literals excluded)."""
        return set(_WORD.findall(mask_comments_and_strings(self.text)))

    def signature(self) -> str:
        """A function's declaration (its text up to the body, attributes dropped) ending in ``;``; the item's
        text for anything else."""
        if self.kind != "fn":
            return self.text.strip()
        masked = mask_comments_and_strings(self.text)
        start = _code_start(masked)
        brace = _body_brace(masked, start)
        return " ".join(self.text[start:brace].split()) + ";"


def _code_start(masked: str, i: int = 0) -> int:
    """Where the item from ``i`` has its own code, after its outer attributes and leading blanks."""
    n = len(masked)
    while True:
        while i < n and masked[i].isspace():
            i += 1
        if masked.startswith("#[", i):
            i = _close(masked, i + 1)
            continue
        return i  # comments are blanks in the masked text


def _scan(masked: str, start: int, stops: str, nest: str = "([{") -> int:
    """The index of the first character of ``stops`` from ``start`` outside the brackets of ``nest`` that
    open after ``start``; the end of the text when there is none."""
    closers = {"(": ")", "[": "]", "{": "}"}
    inner = "".join(closers[c] for c in nest)
    depth = 0
    for j in range(start, len(masked)):
        ch = masked[j]
        if depth == 0 and ch in stops:
            return j
        if ch in nest:
            depth += 1
        elif ch in inner:
            depth -= 1
    return len(masked)


def _close(masked: str, open_at: int) -> int:
    """The index after the ``]`` matching the ``[`` at ``open_at`` (an attribute)."""
    return min(_scan(masked, open_at + 1, "]") + 1, len(masked))


def _body_brace(masked: str, start: int) -> int:
    """Where a function's body opens: its first ``{`` (or ``;``) outside parentheses and brackets."""
    return _scan(masked, start, "{;", nest="([")


def _kind_and_name(code: str) -> tuple[str, str]:
    match = _HEAD.match(code)
    if match is None:
        return "other", ""
    kind, rest = match.group("kind"), match.group("rest")
    if kind == "impl":
        target = _IMPL_TARGET.match(rest)
        return "impl", target.group(1) if target else ""
    if kind == "macro_rules!":
        name = _NAME.match(rest)
        return "macro_rules", name.group(1) if name else ""
    if kind == "thread_local!":
        name = re.search(r"static\s+([A-Za-z_][A-Za-z0-9_]*)", rest)
        return "thread_local", name.group(1) if name else ""
    if kind == "{":  # extern "C" { ... }: the declarations of an extern block
        return "extern", ""
    if kind == "use":
        return "use", " ".join(rest.split()).rstrip(";")
    name = _NAME.match(rest)
    return kind, name.group(1) if name else ""


def split_items(source: str) -> list[RustItem]:
    """The top-level items of ``source`` in order. An item ends at a ``;`` or at the ``}`` that closes its
    body at the top level (for ``static``/``const`` with an initializer, at the ``;`` after it)."""
    masked = mask_comments_and_strings(source)
    items: list[RustItem] = []
    n = len(masked)
    i = 0
    while i < n:
        start = i
        code = _code_start(masked, i)
        if code >= n:
            break
        if masked.startswith("#![", code):
            end = _close(masked, code + 2)
            items.append(RustItem("inner_attribute", "", source[start:end].strip("\n")))
            i = end
            continue
        kind, _ = _kind_and_name(masked[code:code + 400])
        if kind in ("static", "const", "type", "use"):
            end = _scan(masked, code, ";") + 1
        else:
            stop = _scan(masked, code, "{;", nest="([")
            end = _scan(masked, stop + 1, "}") + 1 if masked[stop:stop + 1] == "{" else stop + 1
        end = min(end, n)
        text = source[start:end]
        kind, name = _kind_and_name(masked[code:end]) if kind != "other" else ("other", "")
        items.append(RustItem(kind, name, text.strip("\n")))
        i = end
    return [item for item in items if item.text.strip()]


def join_items(items: Iterable[RustItem]) -> str:
    """The items' texts, one blank line apart."""
    return "\n\n".join(item.text.strip("\n") for item in items)


def defined_names(items: Iterable[RustItem]) -> set[str]:
    """The names the items define in the value or type namespace (``use`` and impls define none)."""
    return {item.name for item in items if item.name and item.kind not in ("use", "impl", "inner_attribute")}
