"""A C program as items: functions, structs, unions, enums, typedefs, globals and macros, with what each uses.

Function-level translation (issue 12) needs, for one function, the definitions it depends on and nothing
else, and an order in which every item comes after what it uses. :func:`parse_program` reads a C file with
libclang (the ``libclang`` wheel's ``clang.cindex``), with the program's own ``#include "..."`` files inlined
first, so every item has a byte range in one source text. :meth:`CProgram.groups` orders the items bottom-up
(what is used before its users) as the strongly connected components of the use graph (Tarjan): mutually
recursive functions form one group, to be translated together, where SACToR refuses them.

Parsing is synchronous and pure (same text, same model); call :func:`load_program` from async code, which
finds the C compiler's own headers once and parses in a worker thread.

Names of items are keys ``"kind:name"`` (``"function:main"``, ``"struct:Item"``, ``"typedef:Item"``,
``"macro:MAX_NAME"``). A struct, union or enum without a tag that a typedef names takes the typedef's name
(libclang reports it that way), so ``typedef struct {...} Price;`` gives ``struct:Price`` and
``typedef:Price``. The range of a typedef that defines its record in place contains the record's range.
"""

from __future__ import annotations

import heapq
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio

from .errors import ConfigError, TaskInputError
from .sandbox import Limits, run_process, tool_env

ItemKind = Literal["function", "struct", "union", "enum", "typedef", "global", "macro"]
KINDS: tuple[ItemKind, ...] = ("function", "struct", "union", "enum", "typedef", "global", "macro")
LIBCLANG_HINT = "pip install 'libclang>=18' (the wheel bundles libclang.so)"
#: The dialect the programs are parsed in: GNU C11 knows gcc's builtins (``__builtin_add_overflow``).
CLANG_ARGS = ("-x", "c", "-std=gnu11")
_INCLUDE = re.compile(rb'^[ \t]*#[ \t]*include[ \t]*"([^"\n]+)"[^\n]*$', re.MULTILINE)


@dataclass(frozen=True)
class Span:
    """A byte range ``[start, end)`` of :attr:`CProgram.source` and the line it starts on (1-based)."""

    start: int
    end: int
    line: int


@dataclass(frozen=True)
class CItem:
    """One top-level definition of the program.

    ``uses`` holds the keys of the program's items this one refers to (itself excluded; see ``recursive``);
    ``external`` the names it takes from outside the program (``printf``, ``qsort``, ``stderr``).
    ``declarations`` are the other places the item is declared without being defined (function prototypes,
    ``extern`` lines), which the FFI harness must edit alongside the definition.
    """

    kind: ItemKind
    name: str
    span: Span
    text: str
    uses: frozenset[str] = frozenset()
    external: frozenset[str] = frozenset()
    recursive: bool = False
    is_static: bool = False
    declarations: tuple[Span, ...] = ()
    function_like: bool = False  # macros only
    signature: str = ""  # functions only: the definition's text before its body ("static int f(int x)")

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class CProgram:
    """The items of one C program in source order, and the inlined source their spans point into."""

    path: Path
    source: bytes
    items: tuple[CItem, ...]
    include_dirs: tuple[str, ...] = ()  # what it was parsed with: a second parse of ``source`` needs them
    _index: dict[str, CItem] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update((item.key, item) for item in self.items)

    def __getitem__(self, key: str) -> CItem:
        return self._index[key]

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def of_kind(self, kind: ItemKind) -> tuple[CItem, ...]:
        return tuple(item for item in self.items if item.kind == kind)

    def groups(self) -> tuple[tuple[str, ...], ...]:
        """Every item key once, in groups, each group after every group it uses (bottom-up).

        A group is a strongly connected component of the use graph: one item, or items that use each other
        (mutually recursive functions; structs that point at each other). Keys inside a group keep source
        order; among groups free to go next, the one that starts first in the source goes first. The result
        depends on the text alone.
        """
        return _strongly_connected(
            [item.key for item in self.items], {item.key: item.uses for item in self.items}
        )

    def function_groups(self) -> tuple[tuple[str, ...], ...]:
        """The groups that hold functions, functions only, bottom-up: the translation units of work."""
        out = []
        for group in self.groups():
            functions = tuple(key for key in group if key.startswith("function:"))
            if functions:
                out.append(functions)
        return tuple(out)

    def recursive_groups(self) -> tuple[tuple[str, ...], ...]:
        """Groups of functions that call each other (two or more): they must be translated together."""
        return tuple(group for group in self.function_groups() if len(group) > 1)

    def closure(self, key: str) -> tuple[str, ...]:
        """Every item ``key`` needs, directly or not, itself excluded, in source order."""
        seen: set[str] = set()
        todo = [key]
        while todo:
            for used in self._index[todo.pop()].uses:
                if used not in seen:
                    seen.add(used)
                    todo.append(used)
        seen.discard(key)
        return tuple(item.key for item in self.items if item.key in seen)


# --------------------------------------------------------------------------------------------------------
# Reading


def inline_local_includes(path: Path, text: bytes | None = None) -> bytes:
    """``path``'s text with each ``#include "x.h"`` that names an existing file beside its includer replaced
    by that file's text (recursively; a file already inlined once is not inlined again). ``<...>`` includes
    and ``"..."`` includes that do not resolve stay as they are (libclang then reports the latter).
    """
    seen: set[Path] = set()

    def expand(file: Path, data: bytes) -> bytes:
        seen.add(file.resolve())

        def replace(match: re.Match[bytes]) -> bytes:
            target = (file.parent / match.group(1).decode("utf-8", "surrogateescape")).resolve()
            if not target.is_file():
                return match.group(0)
            if target in seen:
                return b"/* " + match.group(0).strip().replace(b"*/", b"* /") + b": inlined above */"
            inner = expand(target, target.read_bytes())
            return inner if inner.endswith(b"\n") else inner + b"\n"

        return _INCLUDE.sub(replace, data)

    return expand(path, path.read_bytes() if text is None else text)


async def compiler_include_dirs() -> tuple[str, ...]:
    """The C compiler's own header directory (``stddef.h``, ``limits.h``), which the libclang wheel lacks.

    Asks ``gcc -print-file-name=include`` once per process; empty when gcc does not say.
    """
    if _COMPILER_DIRS:
        return _COMPILER_DIRS[0]
    result = await run_process(
        ["gcc", "-print-file-name=include"], cwd=Path("/"), env=tool_env(),
        limits=Limits(wall_seconds=30.0, memory_bytes=1 << 30, output_bytes=10_000),
    )
    found = result.stdout.decode("utf-8", "replace").strip() if result.ok else ""
    exists: bool = bool(found) and await anyio.to_thread.run_sync(lambda: os.path.isdir(found))
    dirs = (found,) if exists else ()
    _COMPILER_DIRS.append(dirs)
    return dirs


_COMPILER_DIRS: list[tuple[str, ...]] = []


async def load_program(path: Path) -> CProgram:
    """:func:`parse_program` for async callers: the file is read and parsed in a worker thread.

    Raises what :func:`parse_program` raises.
    """
    include_dirs = await compiler_include_dirs()
    return await anyio.to_thread.run_sync(lambda: parse_program(path, include_dirs=include_dirs))


def parse_program(path: Path, text: bytes | None = None, *, include_dirs: Iterable[str] = ()) -> CProgram:
    """The items of the C program at ``path`` (``text`` if given, else the file), local includes inlined.

    Raises ConfigError when libclang cannot be loaded (the fix: :data:`LIBCLANG_HINT`), TaskInputError
    naming the file, line and message when the program does not parse.
    """
    source = inline_local_includes(path, text)
    dirs = tuple(include_dirs)
    cindex, unit = parse_unit(path, source, include_dirs=dirs)
    return _Builder(cindex, path, source, unit, dirs).build()


def parse_unit(path: Path, source: bytes, *, include_dirs: Iterable[str] = ()) -> tuple[Any, Any]:
    """libclang's module and translation unit for ``source`` (already inlined) read as the file ``path``.

    For modules that need libclang's types themselves (:mod:`pipeline.c_types`). Raises ConfigError when
    libclang cannot be loaded, TaskInputError naming the file, line and message when the text does not parse.
    """
    cindex = _cindex()
    name = str(path)
    args = [*CLANG_ARGS, *(f"-isystem{d}" for d in include_dirs), f"-I{path.parent}"]
    try:
        unit = cindex.Index.create().parse(
            name, args=args, unsaved_files=[(name, source.decode("utf-8", "surrogateescape"))],
            options=cindex.TranslationUnit.PARSE_DETAILED_PROCESSING_RECORD,
        )
    except cindex.TranslationUnitLoadError as exc:
        raise TaskInputError(f"{path}: libclang could not parse the file ({exc})") from exc
    errors = [d for d in unit.diagnostics if d.severity >= cindex.Diagnostic.Error]
    if errors:
        first = errors[0]
        where = f"{first.location.line}:{first.location.column}" if first.location.file else "?"
        raise TaskInputError(
            f"{path}:{where}: {first.spelling} ({len(errors)} error(s) in all); function-level translation "
            f"needs a program that compiles"
        )
    return cindex, unit


def _cindex() -> Any:
    try:
        import clang.cindex as cindex
    except ImportError as exc:
        raise ConfigError(f"function-level translation needs libclang's Python bindings: {LIBCLANG_HINT}") from exc
    try:
        cindex.conf.lib  # noqa: B018 -- loading the shared library is what can fail here
    except Exception as exc:
        raise ConfigError(f"libclang's shared library cannot be loaded ({exc}): {LIBCLANG_HINT}") from exc
    return cindex


# --------------------------------------------------------------------------------------------------------
# Building the model from libclang's cursors


def record_kind(cursor: Any) -> ItemKind | None:
    """"struct", "union" or "enum" for a libclang record or enum declaration, else None."""
    return {"STRUCT_DECL": "struct", "UNION_DECL": "union", "ENUM_DECL": "enum"}.get(
        cursor.kind.name)  # type: ignore[return-value]


def is_unnamed(cursor: Any) -> bool:
    """A struct, union or enum without a tag (libclang spells those "struct (unnamed at ...)" or "")."""
    spelling = str(cursor.spelling)
    return not spelling or " " in spelling or "(" in spelling


def record_name(cursor: Any) -> str:
    """The item name of a struct, union or enum: its tag, the typedef's name for ``typedef struct {...} T``
    (libclang's spelling), else a name made from its first constant or its position."""
    if not is_unnamed(cursor):
        return str(cursor.spelling)
    if cursor.kind.name == "ENUM_DECL":
        constants = [c.spelling for c in cursor.get_children()]
        return f"anonymous_{constants[0]}" if constants else f"anonymous_{cursor.extent.start.line}"
    return f"anonymous_{cursor.extent.start.line}_{cursor.extent.start.column}"


class _Builder:
    def __init__(self, cindex: Any, path: Path, source: bytes, unit: Any, include_dirs: tuple[str, ...]) -> None:
        self.include_dirs = include_dirs
        self.ck = cindex.CursorKind
        self.path = path
        self.source = source
        self.unit = unit
        self.main_file = str(path)

    def _in_program(self, cursor: Any) -> bool:
        file = cursor.location.file
        return file is not None and file.name == self.main_file

    def _span(self, cursor: Any) -> Span:
        extent = cursor.extent
        start, end = extent.start.offset, extent.end.offset
        if not (cursor.kind == self.ck.FUNCTION_DECL and cursor.is_definition()):
            # A declaration's ";" is not part of libclang's extent; the item's text should have it.
            rest = self.source[end:end + 64]
            stripped = rest.lstrip(b" \t")
            if stripped.startswith(b";"):
                end += len(rest) - len(stripped) + 1
        return Span(start, end, extent.start.line)

    def _record_kind(self, cursor: Any) -> ItemKind | None:
        return record_kind(cursor)

    def _record_name(self, cursor: Any) -> str:
        return record_name(cursor)

    def _top_record(self, cursor: Any) -> Any | None:
        """The file-scope struct, union or enum that ``cursor`` (a field, a nested record) belongs to."""
        node = cursor
        while node is not None and node.kind != self.ck.TRANSLATION_UNIT:
            parent = node.semantic_parent
            if self._record_kind(node) is not None and parent is not None and (
                parent.kind == self.ck.TRANSLATION_UNIT
            ):
                return node
            node = parent
        return None

    def _key_of(self, target: Any) -> str | None:
        """The item key a referenced declaration stands for, or None when it is local or external."""
        kind = target.kind
        if kind == self.ck.FUNCTION_DECL:
            return f"function:{target.spelling}"
        if kind == self.ck.VAR_DECL and target.semantic_parent is not None and (
            target.semantic_parent.kind == self.ck.TRANSLATION_UNIT
        ):
            return f"global:{target.spelling}"
        if kind == self.ck.TYPEDEF_DECL:
            return f"typedef:{target.spelling}"
        if kind in (self.ck.FIELD_DECL, self.ck.ENUM_CONSTANT_DECL) or self._record_kind(target) is not None:
            record = self._top_record(target)
            return None if record is None else f"{self._record_kind(record)}:{self._record_name(record)}"
        return None

    def build(self) -> CProgram:
        ck = self.ck
        top = [c for c in self.unit.cursor.get_children() if self._in_program(c)]
        defined: dict[str, Any] = {}
        declared: dict[str, list[Span]] = {}
        macros: list[Any] = []
        expansions: list[tuple[int, str]] = []
        for cursor in top:
            if cursor.kind == ck.MACRO_DEFINITION:
                macros.append(cursor)
                continue
            if cursor.kind == ck.MACRO_INSTANTIATION:
                expansions.append((cursor.extent.start.offset, str(cursor.spelling)))
                continue
            key = self._definition_key(cursor)
            if key is None:
                continue
            if self._is_definition(cursor):
                defined.setdefault(key, cursor)
            else:
                declared.setdefault(key, []).append(self._span(cursor))
        macro_names = {str(m.spelling) for m in macros}
        constants = {
            str(c.spelling): key
            for key, cursor in defined.items() if key.startswith("enum:")
            for c in cursor.get_children() if c.kind == ck.ENUM_CONSTANT_DECL
        }
        items: list[CItem] = []
        for key, cursor in defined.items():
            uses, external = self._uses(cursor, set(defined), macro_names, expansions)
            span = self._span(cursor)
            kind, name = key.split(":", 1)
            items.append(CItem(
                kind=kind,  # type: ignore[arg-type]
                name=name,
                span=span,
                text=self._text(span),
                uses=frozenset(uses - {key}),
                external=frozenset(external),
                recursive=key in uses,
                is_static=cursor.storage_class is not None and cursor.storage_class.name == "STATIC"
                if kind in ("function", "global") else False,
                declarations=tuple(declared.get(key, ())),
                signature=self._signature(cursor) if kind == "function" else "",
            ))
        named = {**{k.split(":", 1)[1]: k for k in defined}, **constants}
        for cursor in macros:
            name = str(cursor.spelling)
            span = Span(cursor.extent.start.offset, cursor.extent.end.offset, cursor.extent.start.line)
            tokens = list(cursor.get_tokens())
            # Function-like exactly when "(" follows the name with no space between.
            function_like = len(tokens) > 1 and tokens[1].spelling == "(" and (
                tokens[1].extent.start.offset == tokens[0].extent.end.offset
            )
            uses = set()
            for token in tokens[1:]:
                word = str(token.spelling)
                if word in macro_names and word != name:
                    uses.add(f"macro:{word}")
                elif word in named:
                    uses.add(named[word])
            items.append(CItem(
                kind="macro", name=name, span=span, text="#define " + self._text(span), uses=frozenset(uses),
                function_like=function_like,
            ))
        items.sort(key=lambda item: (item.span.start, KINDS.index(item.kind)))
        return CProgram(self.path, self.source, tuple(items), self.include_dirs)

    def _signature(self, cursor: Any) -> str:
        body = next((c for c in cursor.get_children() if c.kind == self.ck.COMPOUND_STMT), None)
        end = body.extent.start.offset if body is not None else cursor.extent.end.offset
        return self.source[cursor.extent.start.offset:end].decode("utf-8", "surrogateescape").strip()

    def _definition_key(self, cursor: Any) -> str | None:
        ck = self.ck
        if cursor.kind == ck.FUNCTION_DECL:
            return f"function:{cursor.spelling}"
        if cursor.kind == ck.VAR_DECL:
            return f"global:{cursor.spelling}"
        if cursor.kind == ck.TYPEDEF_DECL:
            return f"typedef:{cursor.spelling}"
        kind = self._record_kind(cursor)
        return None if kind is None else f"{kind}:{self._record_name(cursor)}"

    def _is_definition(self, cursor: Any) -> bool:
        if cursor.kind == self.ck.TYPEDEF_DECL:
            return True
        if cursor.kind == self.ck.VAR_DECL:
            # "extern int x;" declares; "int x;" (a tentative definition) and "int x = 1;" define.
            return bool(cursor.is_definition()) or cursor.storage_class.name != "EXTERN"
        return bool(cursor.is_definition())

    def _uses(
        self, cursor: Any, defined: set[str], macro_names: set[str], expansions: list[tuple[int, str]]
    ) -> tuple[set[str], set[str]]:
        ck = self.ck
        uses: set[str] = set()
        external: set[str] = set()
        for node in _descendants(cursor):
            if node.kind not in (ck.DECL_REF_EXPR, ck.MEMBER_REF_EXPR, ck.TYPE_REF, ck.CALL_EXPR):
                continue
            target = node.referenced
            if target is None:
                continue
            key = self._key_of(target)
            if key is not None and key in defined:
                uses.add(key)
            elif target.kind in (ck.FUNCTION_DECL, ck.VAR_DECL, ck.TYPEDEF_DECL) and (
                key is not None and target.semantic_parent is not None
                and target.semantic_parent.kind == ck.TRANSLATION_UNIT
            ):
                external.add(str(target.spelling))
        start, end = cursor.extent.start.offset, cursor.extent.end.offset
        for offset, name in expansions:
            if start <= offset < end:
                if name in macro_names:
                    uses.add(f"macro:{name}")
                else:
                    external.add(name)
        return uses, external

    def _text(self, span: Span) -> str:
        return self.source[span.start:span.end].decode("utf-8", "surrogateescape")


def _descendants(cursor: Any) -> Iterator[Any]:
    todo = list(cursor.get_children())
    while todo:
        node = todo.pop()
        yield node
        todo.extend(node.get_children())


# --------------------------------------------------------------------------------------------------------
# Ordering


def _strongly_connected(
    nodes: list[str], edges: dict[str, frozenset[str]]
) -> tuple[tuple[str, ...], ...]:
    """The strongly connected components (Tarjan's algorithm, iterative: deep call chains must not hit
    Python's recursion limit), each after every component it reaches ("uses" edges: callees first); among
    components free to go next, the one whose first node comes first in ``nodes``.
    """
    order = {node: i for i, node in enumerate(nodes)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[tuple[str, ...]] = []
    work: list[tuple[str, Iterator[str]]] = []  # the DFS path, each node with the targets left to try

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        targets = sorted((t for t in edges.get(node, ()) if t in order), key=order.__getitem__)
        work.append((node, iter(targets)))

    for root in nodes:
        if root in index:
            continue
        visit(root)
        while work:
            node, targets = work[-1]
            advanced = False
            for target in targets:
                if target not in index:
                    visit(target)
                    advanced = True
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                members: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.append(member)
                    if member == node:
                        break
                out.append(tuple(sorted(members, key=order.__getitem__)))
    return _topological(out, edges, order)


def _topological(
    components: list[tuple[str, ...]], edges: dict[str, frozenset[str]], order: dict[str, int]
) -> tuple[tuple[str, ...], ...]:
    """Kahn's algorithm over the components: a component once all it uses are out, earliest first."""
    owner = {node: i for i, members in enumerate(components) for node in members}
    needs: list[set[int]] = [set() for _ in components]
    users: list[set[int]] = [set() for _ in components]
    for i, members in enumerate(components):
        for node in members:
            for target in edges.get(node, ()):
                j = owner.get(target)
                if j is not None and j != i:
                    needs[i].add(j)
                    users[j].add(i)
    ready = [(order[members[0]], i) for i, members in enumerate(components) if not needs[i]]
    heapq.heapify(ready)
    out: list[tuple[str, ...]] = []
    while ready:
        _, i = heapq.heappop(ready)
        out.append(components[i])
        for user in users[i]:
            needs[user].discard(i)
            if not needs[user]:
                heapq.heappush(ready, (order[components[user][0]], user))
    return tuple(out)
