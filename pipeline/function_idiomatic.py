"""The idiomatic stage for programs translated function by function: made safe one unit at a time, verified at
every step inside the whole Rust program.

Input: the verified unidiomatic program of :mod:`pipeline.combine` (``#[repr(C)]`` types, ``static mut``
globals, ``unsafe extern "C"`` functions) and the C program's item graph. While the work goes on the program
has two halves (see docs/function_level.md):

- the crate root holds what is already safe, under the final names; it does ``use unidiomatic::*;``, so
  safe code may use the original types and constants that are safe as they are;
- ``mod unidiomatic`` (which does ``use super::*;``) holds the rest: the original types and globals, the
  functions not converted yet, and the *wrappers*: for a safe function that unconverted callers still call,
  a function with the old signature that converts the arguments and calls ``super::NAME``. Module items
  shadow glob imports, so unconverted code keeps calling old-signature functions by their plain names.

The units of work come bottom-up (callees first): a function, or a recursion group, merged with every other
function that shares a global or a model-written helper with it (those must change together: a global
becomes safe state only when all its users are safe). One prompt per unit (fixed instructions, the marker
line ``Idiomatic function-level item: <label>``, then the unit's current Rust and, declared only, the types,
safe callees and helpers it needs). The answer's safe items go to the root, its `unsafe` items (wrappers,
conversion helpers) to the module; the whole program is built with the whole-file toolchain and tested; a
failure goes back to the model naming the unit's functions, up to the attempt limit. A unit that fails
blocks the units that call it. When every unit is safe, the module is dropped (with it every wrapper), the
original types and constants the safe code still uses are lifted to the root, and the program is built,
tested and checked for `unsafe`.

Resume: :class:`IdiomaticBook` (``idiomatic_items.json`` in the task's result folder) records each unit's
accepted answer under a digest of its own code and of the state of the units it calls and of those whose
safe types it uses, so a rerun replays what was verified and asks only for units that failed or whose
input changed (and what depends on them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio

from .c_program import CProgram, _strongly_connected
from .combine import PRELUDE, CombinedProgram, attribute_errors
from .errors import TaskFailure
from .extract import BEGIN_MARK, END_MARK
from .function_stage import FunctionEnv
from .item_loop import Check, ask_until_verified
from .items import read_book
from .records import STAGE_SPECS, Attempt, AttemptKind, StageResult, TestSuite
from .results import atomic_write_json, atomic_write_text
from .rust_items import RustItem, defined_names, join_items, split_items
from .rust_source import first_unsafe_line
from .testing import run_test_suite

log = logging.getLogger(__name__)

MODULE = "unidiomatic"
MARKER = "Idiomatic function-level item: "
BOOK = "idiomatic_items.json"
BOOK_VERSION = 1
FEEDBACK_CHARS = 6000
#: Item kinds of the original program that stay in the module and may be lifted to the root at the end.
_DATA_KINDS = ("struct", "union", "enum", "type", "const", "impl", "static", "use", "trait", "macro_rules")
_NAMESPACED = ("fn", "struct", "enum", "union", "type", "const", "static", "thread_local", "trait", "mod",
               "macro_rules")

IDIOMATIC_FUNCTION_REQUEST = f"""You are making a Rust program safe one function at a time. It was translated \
from C function by function and is still close to the C: `#[repr(C)]` types, raw pointers, `static mut` \
globals, `unsafe extern "C"` functions. While the work goes on the program has two parts: the crate root holds \
the functions already made safe, and `mod {MODULE}` (which does `use super::*;`) holds everything not yet safe: \
the original types and globals, the functions not converted yet, and wrappers.

Rewrite the function(s) named below as safe, idiomatic Rust for the crate root:
- No `unsafe`, no raw pointers, no `static mut`, no `libc`. Use owned and borrowed safe types: `Vec`, \
`String`, `&str`, slices, `Box`, `Option`, references, enums, iterators, `i32`/`i64`/`usize`/`bool`.
- Keep the functions' names; their parameter and return types may change. The safe functions they call are \
declared below: call them as declared. Their callers are made safe later.
- A type that needs a safe form and has none below yet: define it at the crate root under the same name \
(for example `struct Node {{ value: i32, next: Option<Box<Node>> }}`). Safe types given below: use them, do \
not define them again. Original types that are already safe (plain numbers, constants) may be used as they are.
- Globals listed for this step are used by these functions only: replace them with safe state (parameters, \
locals of `main`, or `thread_local!` with `Cell`/`RefCell`).
- The behaviour must not change: the same bytes on standard output and standard error, the same exit code.
- For each function listed under "Wrappers needed", also write a wrapper for `mod {MODULE}`: a function with \
exactly the old signature shown that converts its arguments, calls the safe function as `super::NAME(...)` and \
converts the result back, so the callers not converted yet keep working. Only wrappers and the conversion \
helpers they use may use `unsafe`; inside `mod {MODULE}` the original types have the plain names and the safe \
ones are `super::NAME`. Conversion helpers already there are declared below; reuse them. Wrappers are removed \
once every caller is safe.

Reply with the Rust code only, between these two lines:
{BEGIN_MARK}
(the safe function(s) and any new safe types, then the wrappers and their helpers)
{END_MARK}
"""


@dataclass(frozen=True)
class Unit:
    """One step: ``functions`` (the C program's function keys), the Rust ``names`` rewritten (those functions
    and model-written helpers), the ``globals`` only it uses, its current ``code``, the names that need a
    wrapper (called from outside the unit), and the labels of the units it calls."""

    label: str
    functions: tuple[str, ...]
    names: tuple[str, ...]
    globals: tuple[str, ...]
    code: str
    wrappers: tuple[str, ...]
    uses: tuple[str, ...]
    accessors: tuple[str, ...] = ()  # shared scalar globals it uses, through get_NAME / set_NAME


@dataclass(frozen=True)
class UnitOutcome:
    """One unit's end: ``status`` verified, resumed (verified in an earlier run), failed or blocked."""

    label: str
    functions: tuple[str, ...]
    status: str
    attempts: tuple[Attempt, ...] = ()
    safe_code: str | None = None
    reason: str = ""
    blocked_by: str | None = None
    requests: int = 0


@dataclass(frozen=True)
class IdiomaticRun:
    """The stage's result. ``source`` is the safe program when it verified; ``partial_source`` the last
    program that verified on the way (it still has `unsafe` when some unit failed); ``stage`` is ``passed``,
    ``incomplete`` (some unit failed or was blocked), ``build``, ``tests`` or ``unsafe`` (the final program)."""

    outcomes: tuple[UnitOutcome, ...]
    stage: str
    reason: str = ""
    source: str | None = None
    partial_source: str | None = None
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return sum(outcome.requests for outcome in self.outcomes)

    @property
    def verified(self) -> bool:
        return self.stage == "passed" and self.source is not None

    def failure_info(self) -> dict[str, Any]:
        """Failure information keyed by C function (``function:NAME``): status, attempts, reason, blocker;
        a failure of the final program under ``program``."""
        info: dict[str, Any] = {}
        for outcome in self.outcomes:
            if outcome.status in ("verified", "resumed"):
                continue
            status = "blocked_by_failed_dependency" if outcome.status == "blocked" else "failed"
            for key in outcome.functions or (f"function:{outcome.label}",):
                info[key] = {"status": status, "attempts": len(outcome.attempts), "reason": outcome.reason,
                             **({"blocked_by": outcome.blocked_by} if outcome.blocked_by else {})}
        if self.stage not in ("passed", "incomplete"):
            info["program"] = {"status": "failed", "reason": self.reason}
        return info

    def stage_result(self) -> StageResult:
        """The run as the idiomatic stage's result for results.py and the summary: every unit's attempts
        in order (numbered through, each message naming its unit), the safe program when it verified."""
        attempts = [replace(a, number=number, message=f"{o.label}: {a.message}")
                    for number, (o, a) in enumerate(((o, a) for o in self.outcomes for a in o.attempts), 1)]
        return StageResult("idiomatic", "verified" if self.verified else "failed", tuple(attempts),
                           code=self.source if self.verified else None,
                           reason=None if self.verified else self.reason, wall_seconds=self.seconds,
                           requests=self.requests, items={"failure_info": self.failure_info(),
                                                          "llm_stat": self.llm_stat()})

    def llm_stat(self) -> dict[str, Any]:
        """SACToR's llm_stat keys per unit label (only units that sent requests)."""
        stats: dict[str, Any] = {}
        for outcome in self.outcomes:
            if not outcome.requests:
                continue
            inputs = [a.usage.prompt_tokens for a in outcome.attempts]
            outputs = [a.usage.completion_tokens for a in outcome.attempts]
            stats[outcome.label] = {
                "status": outcome.status, "total_queries": outcome.requests,
                "total_costed_input_tokens": sum(inputs), "total_costed_output_tokens": sum(outputs),
                "costed_input_tokens": inputs, "costed_output_tokens": outputs,
            }
        return stats

    def counts(self) -> dict[str, int]:
        """Units per status, for the summary."""
        out: dict[str, int] = {}
        for outcome in self.outcomes:
            out[outcome.status] = out.get(outcome.status, 0) + 1
        return out


# --------------------------------------------------------------------------------------------------------
# The program as units


@dataclass(frozen=True)
class Plan:
    """The unidiomatic program taken apart: the items that stay in the module (types, constants, globals),
    the units bottom-up, and each global's definition."""

    data: tuple[RustItem, ...]
    units: tuple[Unit, ...]
    globals: dict[str, RustItem]
    scalars: dict[str, tuple[str, str]] = field(default_factory=dict)  # shared scalar -> (type, initializer)

    def accessors(self, name: str, *, safe: bool) -> str:
        """``get_NAME``/``set_NAME`` of a shared scalar global: over the ``static mut`` while unconverted
        code uses it (in the module), over a ``thread_local!`` ``Cell`` at the end (at the root)."""
        rust_type, initial = self.scalars[name]
        if safe:
            return (f"thread_local! {{\n    static {name}: std::cell::Cell<{rust_type}> = "
                    f"std::cell::Cell::new({initial});\n}}\n\n"
                    f"fn get_{name}() -> {rust_type} {{\n    {name}.with(|cell| cell.get())\n}}\n\n"
                    f"fn set_{name}(value: {rust_type}) {{\n    {name}.with(|cell| cell.set(value));\n}}")
        return (f"pub fn get_{name}() -> {rust_type} {{\n    unsafe {{ {name} }}\n}}\n\n"
                f"pub fn set_{name}(value: {rust_type}) {{\n    unsafe {{ {name} = value; }}\n}}")


_SCALAR_STATIC = re.compile(
    r"^(?:pub(?:\s*\([^)]*\))?\s+)?static\s+mut\s+(?:r#)?\w+\s*:\s*"
    r"(?P<type>libc::(?:c_\w+|size_t|ssize_t)|[iu](?:8|16|32|64|128|size)|f32|f64|bool)\s*=\s*(?P<init>[^;]+);\s*$"
)


def _scalar(item: RustItem) -> tuple[str, str] | None:
    """(type, initializer) of a ``static mut`` of a number or bool type with a plain initializer."""
    code = "\n".join(line for line in item.text.splitlines() if not line.lstrip().startswith(("#", "//")))
    match = _SCALAR_STATIC.match(code.strip())
    if match is None or first_unsafe_line(match.group("init")) is not None:
        return None
    return match.group("type"), " ".join(match.group("init").split())


def _public_main(item: RustItem) -> RustItem:
    """``main`` inside the module must be reachable from the root's forwarding ``fn main``."""
    text = re.sub(r"(?<![A-Za-z0-9_])(?<!pub )fn\s+main\s*\(", "pub fn main(", item.text, count=1)
    return RustItem(item.kind, item.name, text)


def plan_units(program: CProgram, combined_source: str) -> Plan:
    """The units of :func:`idiomatic_by_function` for ``combined_source``, bottom-up (see the module
    docstring). Functions that ``program`` does not have (helpers the model wrote) are units of their own,
    merged with their users like globals."""
    items = [item for item in split_items(combined_source) if item.kind != "inner_attribute"]
    group_of = {program[key].name: group for group in program.function_groups() for key in group}
    fns: dict[str, RustItem] = {}
    data: list[RustItem] = []
    globals_: dict[str, RustItem] = {}
    for item in items:
        if item.kind == "fn" and item.name and item.name not in fns:
            fns[item.name] = _public_main(item) if item.name == "main" else item
        elif item.kind in ("static", "thread_local") and item.name:
            globals_[item.name] = item
            data.append(item)
        else:
            data.append(item)
    node_of: dict[str, str] = {}
    members: dict[str, list[str]] = {}
    for name in fns:
        group = group_of.get(name)
        node = "g:" + "+".join(group) if group else f"h:{name}"
        node_of[name] = node
        members.setdefault(node, []).append(name)
    for name in globals_:
        node_of.setdefault(name, f"v:{name}")
    words: dict[str, set[str]] = {}
    for name, item in fns.items():
        words.setdefault(node_of[name], set()).update(item.words())
    for name, item in globals_.items():
        words.setdefault(node_of[name], set()).update(item.words())
    nodes = list(dict.fromkeys(node_of[name] for name in [*fns, *globals_]))
    edges: dict[str, set[str]] = {node: set() for node in nodes}
    for node in nodes:
        edges[node] = {node_of[w] for w in words.get(node, ()) if w in node_of} - {node}
    scalars = {name: found for name, item in globals_.items() if (found := _scalar(item)) is not None}
    # A global or helper changes together with all its users; a scalar global need not: safe code reaches
    # it through accessors (unless one unit holds all its users, which then owns it).
    shared = [node for node in nodes if node.startswith("h:") or (node.startswith("v:") and node[2:] not in scalars)]
    for node in nodes:
        for target in list(edges[node]):
            if target in shared:
                edges[target].add(node)
    components = _strongly_connected(nodes, {node: frozenset(targets) for node, targets in edges.items()})
    owner: dict[str, int] = {}
    for index, component in enumerate(components):
        for node in component:
            owner[node] = index
    users: dict[str, set[int]] = {}
    for node in nodes:
        for target in edges[node]:
            if target.startswith("v:") and target[2:] in scalars and members.get(node):
                users.setdefault(target[2:], set()).add(owner[node])
    owned = {name: next(iter(found)) for name, found in users.items() if len(found) == 1}
    scalars = {name: found for name, found in scalars.items() if name in users and name not in owned}
    labels: dict[int, str] = {}
    units: list[Unit] = []
    for index, component in enumerate(components):
        names = [name for node in component for name in members.get(node, ())]
        if not names:
            continue
        functions = tuple(f"function:{name}" for name in names if name in group_of)
        label = "+".join(key.split(":", 1)[1] for key in functions) or "+".join(names)
        labels[index] = label
        outside_words = set().union(*(words.get(node, set()) for node in nodes
                                      if owner[node] != index and (node.startswith("v:") or members.get(node))))
        wrappers = tuple(name for name in names if name in outside_words and name != "main")
        uses = tuple(dict.fromkeys(labels[owner[t]] for node in component for t in sorted(edges[node])
                                   if owner[t] != index and owner[t] in labels))
        own_globals = [node[2:] for node in component if node.startswith("v:")]
        own_globals += [name for name, unit_index in owned.items() if unit_index == index]
        unit_words = set().union(*(words.get(node, set()) for node in component))
        units.append(Unit(label, functions, tuple(names), tuple(name for name in globals_ if name in own_globals),
                          join_items(fns[name] for name in names), wrappers, uses,
                          tuple(name for name in scalars if name in unit_words)))
    return Plan(tuple(data), tuple(units), globals_, scalars)


# --------------------------------------------------------------------------------------------------------
# Rendering


def _dedupe_labelled(items: Sequence[tuple[str, RustItem]]) -> list[tuple[str, RustItem]]:
    """Later definitions of a name replace earlier ones (an answer may redefine a safe type or a helper);
    identical ``use`` lines once. Items come with the label of the unit that wrote them."""
    seen: set[tuple[str, str]] = set()
    out: list[tuple[str, RustItem]] = []
    for label, item in reversed(items):
        space = "type" if item.kind in ("struct", "enum", "union", "type", "trait") else item.kind
        key = (space, item.name) if item.kind in _NAMESPACED and item.name else (item.kind, item.text.strip())
        if item.kind == "impl" or key not in seen:
            seen.add(key)
            out.append((label, item))
    return out[::-1]


def _dedupe(items: Sequence[RustItem]) -> list[RustItem]:
    return [item for _, item in _dedupe_labelled([("", item) for item in items])]


def _labelled(codes: Iterable[tuple[str, str]]) -> list[tuple[str, RustItem]]:
    return _dedupe_labelled([(label, item) for label, code in codes for item in split_items(code)])


def _blocks(labelled: Sequence[tuple[str, RustItem]]) -> list[tuple[str, str]]:
    """Consecutive items of one unit as one block, for the line map."""
    blocks: list[tuple[str, str]] = []
    for label, item in labelled:
        if blocks and blocks[-1][0] == label:
            blocks[-1] = (label, blocks[-1][1] + "\n\n" + item.text.strip("\n"))
        else:
            blocks.append((label, item.text.strip("\n")))
    return blocks


@dataclass
class _Program:
    """The program between steps: the plan, each converted unit's safe and transitional code."""

    plan: Plan
    safe: dict[str, str] = field(default_factory=dict)
    transitional: dict[str, str] = field(default_factory=dict)

    def items(self) -> list[RustItem]:
        """Every item the program holds now: original data, safe code, wrappers and helpers."""
        texts = [*self.safe.values(), *self.transitional.values()]
        return [*self.plan.data, *(item for text in texts for item in split_items(text))]

    def root_items(self, extra: tuple[str, str] | None = None) -> list[RustItem]:
        texts = [self.safe[u.label] for u in self.plan.units if u.label in self.safe]
        if extra is not None:
            texts.append(extra[0])
        return _dedupe([item for text in texts for item in split_items(text)])

    def render(self, step: tuple[Unit, str, str] | None = None) -> CombinedProgram:
        """The whole program with the converted units (and ``step``: a unit with its safe and transitional
        code) in their safe form; item keys in ``lines`` are unit labels (``types`` for the original data)."""
        unit_now = step[0].label if step else None
        converted = set(self.safe) | ({unit_now} if unit_now else set())
        blocks: list[tuple[str, str]] = [("root", "use unidiomatic::*;")]
        safe = [(u.label, self.safe[u.label]) for u in self.plan.units if u.label in self.safe]
        transitional = [(u.label, self.transitional[u.label]) for u in self.plan.units if u.label in self.transitional]
        if step is not None:
            safe.append((step[0].label, step[1]))
            transitional.append((step[0].label, step[2]))
        blocks.extend(_blocks(_labelled(safe)))
        if not any("main" in u.names for u in self.plan.units if u.label in converted):
            blocks.append(("root", f"fn main() {{ {MODULE}::main() }}"))
        blocks.append(("module", f"pub mod {MODULE} {{\nuse super::*;"))
        blocks.append(("types", join_items(self.plan.data)))
        blocks.extend(("accessors", self.plan.accessors(name, safe=False)) for name in self.plan.scalars)
        blocks.extend((unit.label, unit.code) for unit in self.plan.units if unit.label not in converted)
        blocks.extend(_blocks(_labelled(transitional)))
        blocks.append(("module", "}"))
        return _assemble(blocks)

    def final(self) -> CombinedProgram:
        """The program without the module: the safe items, and the original items they still use that have
        no `unsafe` (no `static mut`), lifted to the root."""
        root = self.root_items()
        defined = defined_names(root)
        needed: set[str] = set().union(*(item.words() for item in root)) if root else set()
        liftable = [item for item in self.plan.data if item.kind in _DATA_KINDS and not item.is_unsafe
                    and not re.search(r"\bstatic\s+mut\b", item.text) and item.name not in defined]
        lifted: list[RustItem] = []
        changed = True
        while changed:
            changed = False
            for item in liftable:
                if item not in lifted and item.name and item.name in needed:
                    lifted.append(item)
                    needed |= item.words()
                    changed = True
        lifted.sort(key=self.plan.data.index)
        safe_state = [self.plan.accessors(name, safe=True) for name in self.plan.scalars
                      if f"get_{name}" in needed or f"set_{name}" in needed]
        blocks = [("types", join_items(lifted)), ("globals", "\n\n".join(safe_state)),
                  ("program", join_items(root))]
        return _assemble(blocks)


def _assemble(blocks: Sequence[tuple[str, str]]) -> CombinedProgram:
    text = PRELUDE
    lines: list[tuple[str, int, int]] = []
    for key, block in blocks:
        if not block.strip():
            continue
        text += "\n"
        first = text.count("\n") + 1
        text += block.strip("\n") + "\n"
        lines.append((key, first, text.count("\n")))
    return CombinedProgram(text, tuple(lines))


# --------------------------------------------------------------------------------------------------------
# Prompts


def _section(title: str, code: str) -> str:
    return f"{title}:\n```rust\n{code.strip()}\n```" if code.strip() else ""


def unit_prompt(program: CProgram, state: _Program, unit: Unit) -> str:
    """The first request for ``unit``: the fixed instructions, the marker line, then the unit's current Rust
    and what it needs in declared form (no other function's body)."""
    unit_items = split_items(unit.code)
    own = [*unit_items, *(state.plan.globals[g] for g in unit.globals)]
    mentioned: set[str] = set().union(*(item.words() for item in own)) if own else set()
    root = state.root_items()
    callees = [item for item in root if item.kind == "fn" and item.name in mentioned and item.name != "main"]
    for item in callees:
        mentioned |= item.words()
    safe_types = [item for item in root if item.kind in ("struct", "enum", "union", "type", "const")
                  and item.name in mentioned]
    original: list[RustItem] = []
    queue = set(mentioned)
    changed = True  # the types those types use, until nothing new is reached
    while changed:
        changed = False
        for item in state.plan.data:
            if item.kind in ("struct", "union", "enum", "type", "const") and item.name in queue \
                    and item not in original:
                original.append(item)
                queue |= item.words()
                changed = True
    original.sort(key=state.plan.data.index)
    helpers = [item for text in state.transitional.values() for item in split_items(text)
               if item.kind == "fn" and item.name not in {n for u in state.plan.units for n in u.names}]
    old = {item.name: item for item in unit_items if item.kind == "fn"}
    names = list(unit.names)
    wrappers = "\n".join(old[name].signature() for name in unit.wrappers if name in old)
    intro = [
        f"{MARKER}{unit.label}",
        f"Program `{program.path.name}`. Function{'s' if len(names) > 1 else ''} to make safe: "
        + ", ".join(f"`{name}`" for name in names) + "."
        + (" They call each other or share state, so they are rewritten together." if len(names) > 1 else ""),
        ("Wrappers needed (callers not yet safe call these with the old signature):\n" + wrappers)
        if wrappers else "Wrappers needed: none (no function outside this step calls these).",
    ]
    if unit.globals:
        intro.append("Globals only this step uses (replace them with safe state): "
                     + ", ".join(f"`{g}`" for g in unit.globals) + ".")
    if unit.accessors:
        intro.append("Globals shared with functions outside this step: read and write them only through "
                     "these safe functions (they stay valid when the global itself becomes safe):\n"
                     + "\n".join(f"fn get_{g}() -> {state.plan.scalars[g][0]};\n"
                                 f"fn set_{g}(value: {state.plan.scalars[g][0]});" for g in unit.accessors))
    sections = [
        _section(f"Original types it uses (in `mod {MODULE}`)", join_items(original)),
        _section("Safe types already at the crate root (use them, do not redefine)", join_items(safe_types)),
        _section("Safe functions it calls (at the crate root, declared)",
                 "\n".join(item.signature() for item in callees)),
        _section(f"Conversion helpers in `mod {MODULE}` (declared)", "\n".join(h.signature() for h in helpers)),
        _section("The globals' current definitions", join_items(state.plan.globals[g] for g in unit.globals)),
        _section("The current Rust to make safe", unit.code),
    ]
    return IDIOMATIC_FUNCTION_REQUEST + "\n" + "\n\n".join(intro) + "\n\n" + "\n\n".join(s for s in sections if s) \
        + "\n"


# --------------------------------------------------------------------------------------------------------
# One answer


def _is_transitional(item: RustItem) -> bool:
    return item.is_unsafe or "super::" in item.text or bool(re.search(r'extern\s+"C"', item.text))


def _normal(text: str) -> str:
    return " ".join(text.split())


def split_answer(unit: Unit, code: str, given: Iterable[RustItem] = ()) -> tuple[str, str, str | None]:
    """(safe code for the root, transitional code for the module, the problem or None) of an answer.

    Items that repeat one of ``given`` (the program's items) word for word are dropped; a ``mod unidiomatic``
    the answer writes out is taken apart, its items going to the module."""
    known = {_normal(item.text) for item in given}
    items: list[RustItem] = []
    forced: list[RustItem] = []
    for item in split_items(code):
        if item.kind == "mod" and item.name == MODULE:
            inner = item.text[item.text.index("{") + 1:item.text.rindex("}")]
            forced.extend(i for i in split_items(inner) if not (i.kind == "use" and i.name == "super::*"))
        elif item.kind != "inner_attribute" and not (item.kind == "use" and item.name.startswith(MODULE)):
            items.append(item)
    items = [item for item in items if _normal(item.text) not in known]
    forced = [item for item in forced if _normal(item.text) not in known]
    safe = [item for item in items if not _is_transitional(item)]
    transitional = [*forced, *(item for item in items if _is_transitional(item))]
    problems: list[str] = []
    safe_fns = {item.name for item in safe if item.kind == "fn"}
    for key in unit.functions:
        name = key.split(":", 1)[1]
        if name in safe_fns:
            continue
        unsafe = next((item for item in transitional if item.kind == "fn" and item.name == name), None)
        if unsafe is not None:
            line = first_unsafe_line(unsafe.text)
            where = f"`unsafe` on line {line} of it" if line is not None else "it is written for `mod unidiomatic`"
            problems.append(f"`{name}` is not safe Rust ({where}): write it without `unsafe`, raw pointers, "
                            f"`static mut` or `super::`" + (", and its wrapper separately" if name in unit.wrappers
                                                             else ""))
        else:
            problems.append(f"the answer has no safe `fn {name}` (without `unsafe`)")
    wrapper_fns = {item.name for item in transitional if item.kind == "fn"}
    for name in unit.wrappers:
        if name not in wrapper_fns:
            problems.append(f"callers not yet safe call `{name}` with its old signature: add a wrapper with "
                            f"exactly that signature that calls `super::{name}`")
    return join_items(safe), join_items(transitional), "; ".join(problems) or None


async def _check(env: FunctionEnv, suite: TestSuite, combined: CombinedProgram) -> tuple[str, str, dict[str, str]]:
    """(stage, feedback, rustc errors per unit label) of one program: ``passed``, ``build`` or ``tests``."""
    async with env.sandbox.build_dir() as build_dir:
        async with env.cpu or nullcontext():
            built = await env.toolchain.build(combined.source, build_dir, max_diagnostic_chars=FEEDBACK_CHARS)
        if not built.ok or built.binary is None:
            return "build", built.refused or built.diagnostics, attribute_errors(combined, built.diagnostics)
        async with env.cpu or nullcontext():
            verdict = await run_test_suite(built.binary, suite, sandbox=env.sandbox, limits=env.limits)
    if verdict.passed:
        return "passed", "", {}
    return "tests", verdict.feedback(FEEDBACK_CHARS), {}


#: Attempt kinds of the loop's stages (:class:`~pipeline.item_loop.Try`).
_KINDS: dict[str, AttemptKind] = {
    "passed": "verified", "build": "compile_error", "tests": "test_failure", "refused": "refused",
    "no_code": "no_code", "truncated": "truncated", "request_failed": "request_failed",
}
#: The end of a unit's repair request: what to send back.
IDIOMATIC_REPLY = (f"Reply with the corrected safe Rust of these functions (and their wrappers) only, between "
                   f"{BEGIN_MARK} and {END_MARK}.")


async def _convert(
    env: FunctionEnv, program: CProgram, state: _Program, unit: Unit, suite: TestSuite
) -> tuple[UnitOutcome, tuple[str, str] | None, str | None]:
    """Ask for ``unit``'s safe form until the whole program verifies with it. Returns the outcome, the
    accepted (safe, transitional) code, and the program that verified."""
    names = ", ".join(f"`{name}`" for name in unit.names)
    accepted: dict[str, Any] = {}

    async def check(code: str) -> Check:
        safe, transitional, refusal = split_answer(unit, code, state.items())
        if refusal is not None:
            return Check("refused", f"For {names}: {refusal}.", message=refusal)
        combined = state.render((unit, safe, transitional))
        stage, feedback, per_item = await _check(env, suite, combined)
        if stage == "passed":
            accepted.update(parts=(safe, transitional), source=combined.source)
            return Check("passed", code=safe, message="the whole program passes the tests")
        if stage == "build":
            where = ", ".join(sorted(key for key in per_item if key not in ("root", "module", "types", "program")))
            summary = f"with the safe {names} in the program, it does not compile" + (
                f" (errors in {where})" if where else "")
            return Check(stage, f"With the safe version of {names} in the program, the compiler reported:\n"
                                f"{feedback}", message=summary)
        return Check(stage, f"With the safe version of {names} in the program, tests fail:\n{feedback}",
                     message=f"with the safe {names} in the program, tests fail")

    end = await ask_until_verified(
        env.model, system=env.system, first=unit_prompt(program, state, unit), reply=IDIOMATIC_REPLY,
        max_attempts=env.max_attempts, purpose=f"{program.path.name}:idiomatic:{unit.label}", check=check,
        record=env.record, tag={"stage": "idiomatic", "unit": unit.label}, gave_up="not made safe")
    attempts = tuple(Attempt(t.number, _KINDS.get(t.stage, "test_failure"), t.summary, t.code, t.usage, t.seconds,
                             t.check_seconds) for t in end.tries)
    status = "verified" if end.rust is not None else "failed"
    outcome = UnitOutcome(unit.label, unit.functions, status, attempts, end.rust, end.reason, requests=end.requests)
    return outcome, accepted.get("parts"), accepted.get("source")


# --------------------------------------------------------------------------------------------------------
# The book


@dataclass
class IdiomaticBook:
    """The units' records of one task in ``folder/idiomatic_items.json``: label -> digest, status, the
    accepted safe and transitional code, attempts, reason. Build it with :meth:`load`."""

    folder: Path
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path) -> IdiomaticBook:
        """The book in ``folder`` (empty when there is none). Raises TaskInputError naming the file when it
        is not a book this version wrote."""
        data = read_book(folder / BOOK, BOOK_VERSION, "units", "the idiomatic stage")
        if data is None:
            return cls(folder)
        return cls(folder, dict(data.get("units", {})))

    def save(self) -> None:
        atomic_write_json(self.folder / BOOK, {"version": BOOK_VERSION, "units": self.records})

    def accepted(self, label: str, digest: str) -> tuple[str, str] | None:
        record = self.records.get(label)
        if record is None or record.get("status") != "verified" or record.get("digest") != digest:
            return None
        return str(record.get("safe", "")), str(record.get("transitional", ""))

    def record(self, outcome: UnitOutcome, digest: str, accepted: tuple[str, str] | None) -> None:
        self.records[outcome.label] = {
            "digest": digest, "status": outcome.status, "functions": list(outcome.functions),
            "attempts": len(outcome.attempts), "reason": outcome.reason, "blocked_by": outcome.blocked_by,
            **({"safe": accepted[0], "transitional": accepted[1]} if accepted else {}),
        }
        self.save()


def _digest(unit: Unit, salt: str, state: _Program, states: dict[str, str]) -> str:
    """What a unit's accepted answer was made from: its own code and wrappers, and the state (digest and
    accepted code) of the units it calls and of the earlier units whose safe code defines a name it mentions
    (a safe type). An unrelated unit's change does not redo it."""
    words = set().union(*(item.words() for item in split_items(unit.code)))
    deps = set(unit.uses) | {label for label, code in state.safe.items()
                             if defined_names(split_items(code)) & words}
    material = json.dumps([salt, unit.label, unit.code, unit.wrappers, sorted(states[d] for d in deps if d in states)])
    return hashlib.sha256(material.encode("utf-8", "surrogateescape")).hexdigest()[:24]


# --------------------------------------------------------------------------------------------------------
# The stage


async def idiomatic_by_function(
    env: FunctionEnv, program: CProgram, combined_source: str, suite: TestSuite, book: IdiomaticBook
) -> IdiomaticRun:
    """Make the verified unidiomatic program ``combined_source`` safe unit by unit (see the module
    docstring). Failures are outcomes; raises only fatal errors (the model's FatalError) and OSError from the
    book or the build directory."""
    started = time.perf_counter()
    plan = plan_units(program, combined_source)
    state = _Program(plan)
    partial: str | None = None
    outcomes: list[UnitOutcome] = []
    done: dict[str, str] = {}  # label -> status of this run
    states: dict[str, str] = {}  # label -> digest of the unit's state after its step
    for unit in plan.units:
        digest = _digest(unit, env.salt, state, states)
        blocker = next((label for label in unit.uses if done.get(label) in ("failed", "blocked")), None)
        if blocker is not None:
            outcome = UnitOutcome(unit.label, unit.functions, "blocked", blocked_by=blocker,
                                  reason=f"calls {blocker}, which could not be made safe")
            await anyio.to_thread.run_sync(book.record, outcome, digest, None)
        elif (earlier := book.accepted(unit.label, digest)) is not None:
            state.safe[unit.label], state.transitional[unit.label] = earlier
            outcome = UnitOutcome(unit.label, unit.functions, "resumed", safe_code=earlier[0])
        else:
            outcome, accepted, verified_source = await _convert(env, program, state, unit, suite)
            if accepted is not None:
                state.safe[unit.label], state.transitional[unit.label] = accepted
                partial = verified_source
            await anyio.to_thread.run_sync(book.record, outcome, digest, accepted)
        log.info("%s: idiomatic %s: %s%s", program.path.name, unit.label, outcome.status,
                 f" ({outcome.reason})" if outcome.reason else "")
        done[unit.label] = outcome.status
        outcomes.append(outcome)
        states[unit.label] = json.dumps([digest, state.safe.get(unit.label, "unconverted")])
    failed = [o for o in outcomes if o.status == "failed"]
    blocked = [o for o in outcomes if o.status == "blocked"]
    if failed or blocked:
        reason = (f"function-level idiomatic: {len(failed)} of {len(outcomes)} units not made safe, "
                  f"{len(blocked)} blocked by them; " + "; ".join(f"{o.label}: {o.reason}" for o in failed[:3]))
        return IdiomaticRun(tuple(outcomes), "incomplete", reason.rstrip("; "), partial_source=partial,
                            seconds=time.perf_counter() - started)
    final = state.final()
    line = first_unsafe_line(final.source)
    if line is not None:
        return IdiomaticRun(tuple(outcomes), "unsafe", f"the final program still uses `unsafe` (line {line})",
                            partial_source=partial, seconds=time.perf_counter() - started)
    stage, feedback, _ = await _check(env, suite, final)
    if stage != "passed":
        what = "does not compile" if stage == "build" else "fails tests"
        return IdiomaticRun(tuple(outcomes), stage, f"the program without wrappers {what}:\n{feedback}",
                            partial_source=partial, seconds=time.perf_counter() - started)
    return IdiomaticRun(tuple(outcomes), "passed", source=final.source, partial_source=final.source,
                        seconds=time.perf_counter() - started)


#: Which folder of SACToR's per-item layout each kind of safe item goes to.
_FOLDERS = {"fn": "functions", "struct": "structs", "union": "structs", "type": "structs", "enum": "enums",
            "static": "global_vars", "thread_local": "global_vars", "const": "global_vars"}


def write_idiomatic_files(stage_dir: Path, run: IdiomaticRun) -> list[Path]:
    """SACToR's per-item layout under ``stage_dir`` (``translated_code_idiomatic``): each safe item of the
    units that verified in its own file (``functions/NAME.rs``, ``structs/``, ``enums/``, ``global_vars/``),
    and ``combined.rs`` when the whole program verified. Returns the files written."""
    written: list[Path] = []
    codes = [o.safe_code for o in run.outcomes if o.safe_code]
    for item in _dedupe([item for code in codes for item in split_items(code)]):
        folder = _FOLDERS.get(item.kind)
        if folder is None or not item.name:
            continue
        path = stage_dir / folder / f"{item.name}.rs"
        atomic_write_text(path, item.text.strip("\n") + "\n")
        written.append(path)
    if run.verified and run.source is not None:
        atomic_write_text(stage_dir / "combined.rs", run.source)
        written.append(stage_dir / "combined.rs")
    return written


async def idiomatic_task(
    env: FunctionEnv, program: CProgram, combined_source: str, suite: TestSuite, result_dir: Path
) -> tuple[StageResult, IdiomaticRun | None]:
    """The idiomatic stage of one function-level task with its files: the book in ``result_dir``, the run,
    SACToR's per-item layout under ``translated_code_idiomatic/`` (files of an earlier run removed first).
    A damaged book fails the stage naming the file (the run is then None). Raises only fatal errors."""
    try:
        book = await anyio.to_thread.run_sync(IdiomaticBook.load, result_dir)
    except TaskFailure as exc:
        return StageResult("idiomatic", "failed", reason=str(exc)), None
    await anyio.to_thread.run_sync(lambda: os.makedirs(result_dir, exist_ok=True))
    run = await idiomatic_by_function(env, program, combined_source, suite, book)
    stage_dir = result_dir / STAGE_SPECS["idiomatic"].result_dir

    def write() -> None:
        for folder in set(_FOLDERS.values()):
            shutil.rmtree(stage_dir / folder, ignore_errors=True)
        write_idiomatic_files(stage_dir, run)

    await anyio.to_thread.run_sync(write)
    return run.stage_result(), run
