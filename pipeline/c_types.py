"""C type definitions to ``#[repr(C)]`` Rust, deterministically, and a check of their layouts against gcc.

Function-level translation shows the model the Rust form of the types a function uses, and the FFI harness
passes values of those types between C and Rust, so the Rust definitions must have C's layout exactly.
:func:`translate_types` writes them from libclang's type information, the way c2rust does: structs and
unions become ``#[repr(C)] #[derive(Copy, Clone)]`` Rust structs and unions with ``libc`` scalar types, raw
pointers (``*const`` when the pointee is const), arrays, ``Option<unsafe extern "C" fn(...)>`` for function
pointers; an enum becomes an integer type alias and one constant per enumerator (a Rust ``enum`` would make
any other value C can store undefined behaviour); typedefs become type aliases. A record defined inside
another (``union { ... } as;``) gets the name ``Outer_field``. Field and type names that are Rust keywords
are written as raw identifiers (``r#as``). What it cannot express (bit-fields, members without a name,
``long double``, ``va_list``) is listed in :attr:`TypeTranslation.unsupported` with the reason, for the model.

:func:`verify_layouts` builds a C program printing ``sizeof``, ``_Alignof`` and ``offsetof`` of every
translated type and field, and a Rust program printing ``size_of``, ``align_of`` and ``offset_of!`` of the
same, runs both (child processes with limits) and compares.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from .build import Toolchain
from .c_program import CProgram, is_unnamed, parse_unit, record_kind, record_name
from .sandbox import Limits, run_process, tool_env

log = logging.getLogger(__name__)

_SCALARS = {
    "VOID": "libc::c_void", "BOOL": "bool", "CHAR_S": "libc::c_char", "CHAR_U": "libc::c_char",
    "SCHAR": "libc::c_schar", "UCHAR": "libc::c_uchar", "SHORT": "libc::c_short", "USHORT": "libc::c_ushort",
    "INT": "libc::c_int", "UINT": "libc::c_uint", "LONG": "libc::c_long", "ULONG": "libc::c_ulong",
    "LONGLONG": "libc::c_longlong", "ULONGLONG": "libc::c_ulonglong", "FLOAT": "libc::c_float",
    "DOUBLE": "libc::c_double", "INT128": "i128", "UINT128": "u128",
}
#: Library typedefs kept by name (their Rust spelling), rather than replaced by what they stand for here.
_LIBRARY_TYPEDEFS = {
    "size_t": "libc::size_t", "ssize_t": "libc::ssize_t", "ptrdiff_t": "libc::ptrdiff_t",
    "intptr_t": "isize", "uintptr_t": "usize", "int8_t": "i8", "int16_t": "i16", "int32_t": "i32",
    "int64_t": "i64", "uint8_t": "u8", "uint16_t": "u16", "uint32_t": "u32", "uint64_t": "u64",
    "FILE": "libc::FILE", "off_t": "libc::off_t", "time_t": "libc::time_t", "wchar_t": "libc::wchar_t",
    "pid_t": "libc::pid_t", "clock_t": "libc::clock_t",
}
_KEYWORDS = frozenset({
    "as", "break", "const", "continue", "else", "enum", "extern", "false", "fn", "for", "if", "impl", "in", "let",
    "loop", "match", "mod", "move", "mut", "pub", "ref", "return", "static", "struct", "trait", "true", "type",
    "unsafe", "use", "where", "while", "async", "await", "dyn", "abstract", "become", "box", "do", "final",
    "macro", "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "gen",
})
_NOT_RAW = frozenset({"self", "Self", "super", "crate", "_"})
_PROBE_LIMITS = Limits(wall_seconds=120.0, memory_bytes=2 << 30, output_bytes=1 << 20)
_RUN_LIMITS = Limits(wall_seconds=20.0, memory_bytes=512 << 20, output_bytes=1 << 20)


def rust_ident(name: str) -> str:
    """``name`` usable as a Rust identifier: keywords raw (``r#as``), the few that cannot be raw with ``_``."""
    if name in _NOT_RAW:
        return f"{name}_"
    return f"r#{name}" if name in _KEYWORDS else name


class _Unsupported(Exception):
    """A C construct this translator does not write; the item goes to the model with this reason."""


@dataclass(frozen=True)
class RustType:
    """The Rust definition of one C type.

    ``c_type`` is a C type-name for the same type (``struct Item``, ``Price``, or ``__typeof__`` of a member
    for a record defined inside another), used by the layout probe. ``fields`` pairs each C member name with
    its Rust field name (records only). ``code`` is empty for a typedef that only repeats its record's name
    (``typedef struct Item {...} Item;``): the record's definition serves both.
    """

    key: str
    rust_name: str
    kind: str  # "struct", "union", "enum" or "alias"
    code: str
    c_type: str
    fields: tuple[tuple[str, str], ...] = ()
    layout: bool = True  # False for what C gives no size (a typedef of a function type)


@dataclass(frozen=True)
class TypeTranslation:
    """Rust for every type item of a program (source order), and what could not be written, with why."""

    types: tuple[RustType, ...]
    unsupported: dict[str, str] = field(default_factory=dict)
    #: function key -> its Rust declaration for an ``extern "C"`` block (``fn f(x: libc::c_int) -> libc::c_int``)
    signatures: dict[str, str] = field(default_factory=dict)
    #: global key -> its Rust declaration for an ``extern "C"`` block (``static mut g_count: libc::c_int``)
    globals: dict[str, str] = field(default_factory=dict)
    #: global key -> its Rust definition for the all-Rust program, where the initializer is simple enough
    #: (none, a number, NULL, a string literal for a pointer); the others are for the model
    global_definitions: dict[str, str] = field(default_factory=dict)

    def code_for(self, key: str) -> str:
        """The Rust an item key stands for: a record with the records defined inside it, an enum with its
        constants, a typedef's alias; for a typedef of a record's own name, the record's definition."""
        parts = [t.code for t in self.types if t.key == key and t.code]
        if not parts:
            aliased = [t for t in self.types if t.key == key and not t.code]
            if aliased:
                target = aliased[0].rust_name
                parts = [t.code for t in self.types if t.rust_name == target and t.code]
        return "\n\n".join(parts)

    def rust_source(self) -> str:
        """Every definition, in source order: a Rust module body."""
        return "\n\n".join(t.code for t in self.types if t.code) + "\n"


def translate_types(program: CProgram) -> TypeTranslation:
    """The Rust definitions of ``program``'s structs, unions, enums and typedefs (synchronous and pure: it
    parses ``program.source`` again with libclang; run it in a worker thread from async code).

    Raises what :func:`pipeline.c_program.parse_unit` raises.
    """
    cindex, unit = parse_unit(program.path, program.source, include_dirs=program.include_dirs)
    return _TypeWriter(cindex, unit, program).run()


class _TypeWriter:
    def __init__(self, cindex: Any, unit: Any, program: CProgram) -> None:
        self.tk = cindex.TypeKind
        self.ck = cindex.CursorKind
        self.unit = unit
        self.program = program
        self.main_file = str(program.path)
        self.names: dict[str, str] = {}  # declaration USR (or position) -> Rust name

    def _id(self, cursor: Any) -> str:
        return str(cursor.get_usr()) or f"{cursor.extent.start.offset}"

    def _in_program(self, cursor: Any) -> bool:
        file = cursor.location.file
        return file is not None and file.name == self.main_file

    def run(self) -> TypeTranslation:
        types: list[RustType] = []
        unsupported: dict[str, str] = {}
        top = [c for c in self.unit.cursor.get_children() if self._in_program(c)]
        # Names first: a field may point at a record defined further down.
        for cursor in top:
            if record_kind(cursor) is not None and cursor.is_definition():
                self.names[self._id(cursor)] = rust_ident(record_name(cursor))
        seen: set[str] = set()
        for cursor in top:
            kind = record_kind(cursor)
            if cursor.kind == self.ck.TYPEDEF_DECL:
                key = f"typedef:{cursor.spelling}"
            elif kind is not None and cursor.is_definition():
                key = f"{kind}:{record_name(cursor)}"
            else:
                continue
            if key in seen or key not in self.program:
                continue
            seen.add(key)
            try:
                if cursor.kind == self.ck.TYPEDEF_DECL:
                    types.append(self._typedef(cursor, key))
                elif kind == "enum":
                    types.append(self._enum(cursor, key, self.names[self._id(cursor)]))
                else:
                    types.extend(self._record(cursor, key, self.names[self._id(cursor)], self._c_name(cursor)))
            except _Unsupported as exc:
                unsupported[key] = str(exc)
                log.debug("c_types: %s left to the model: %s", key, exc)
        signatures: dict[str, str] = {}
        globals_: dict[str, str] = {}
        definitions: dict[str, str] = {}
        for cursor in top:
            if cursor.kind == self.ck.FUNCTION_DECL and cursor.is_definition() and cursor.spelling != "main":
                key, table = f"function:{cursor.spelling}", signatures
            elif cursor.kind == self.ck.VAR_DECL and f"global:{cursor.spelling}" not in globals_:
                key, table = f"global:{cursor.spelling}", globals_
            else:
                continue
            try:
                table[key] = self._signature(cursor) if table is signatures else self._static(cursor)
                if table is globals_ and (key in self.program and self.program[key].span.start
                                          == cursor.extent.start.offset):
                    definitions[key] = self._global_definition(cursor, globals_[key])
            except _Unsupported as exc:
                unsupported[key] = str(exc)
        return TypeTranslation(tuple(types), unsupported, signatures, globals_, definitions)

    def _global_definition(self, cursor: Any, declaration: str) -> str:
        """``pub static mut NAME: T = VALUE;`` for a global whose initializer is absent or a plain literal."""
        # Rust statics holding raw pointers must be mut (they are not Sync); C's const is kept by the C side.
        declaration = declaration.replace("static ", "static mut ", 1) if " mut " not in declaration else declaration
        if "=" not in (str(t.spelling) for t in cursor.get_tokens()):
            return f"pub {declaration} = unsafe {{ std::mem::zeroed() }};"  # C zero-initializes
        init = [c for c in cursor.get_children() if c.kind.is_expression()]
        value = self._literal(init[-1], cursor.type) if init else None
        if value is None:
            raise _Unsupported(f"the initializer of {cursor.spelling} is not a plain literal")
        return f"pub {declaration} = {value};"

    def _literal(self, expr: Any, ctype: Any) -> str | None:
        canonical = ctype.get_canonical()
        # A macro's expansion has no tokens of its own; its extent still covers the macro's name in the text.
        written = self.program.source[expr.extent.start.offset:expr.extent.end.offset].strip()
        if canonical.kind == self.tk.POINTER and written in (b"NULL", b"0"):
            const = canonical.get_pointee().is_const_qualified()
            return "std::ptr::null()" if const else "std::ptr::null_mut()"
        while expr.kind in (self.ck.UNEXPOSED_EXPR, self.ck.PAREN_EXPR, self.ck.CSTYLE_CAST_EXPR):
            children = [c for c in expr.get_children() if c.kind.is_expression()]
            if len(children) != 1:
                return None
            expr = children[0]
        tokens = [str(t.spelling) for t in expr.get_tokens()]
        if expr.kind in (self.ck.INTEGER_LITERAL, self.ck.FLOATING_LITERAL):
            if len(tokens) != 1 or not re.fullmatch(r"[0-9][0-9a-fA-FxX.eE+-]*", tokens[0]):
                return None  # a macro's expansion: its value is not in the tokens
            if canonical.kind == self.tk.POINTER:
                return None
            number = tokens[0].rstrip("uUlLfF") if not tokens[0].lower().startswith("0x") else tokens[0]
            return f"{number} as {self.rust_type(ctype)}"
        if expr.kind == self.ck.STRING_LITERAL and canonical.kind == self.tk.POINTER and len(tokens) == 1:
            literal = tokens[0]
            if not literal.startswith('"') or re.search(r"\\[0-7xuU]", literal):
                return None
            return f"b{literal[:-1]}\\0\".as_ptr() as {self.rust_type(ctype)}"
        return None

    def _signature(self, cursor: Any) -> str:
        params = []
        for index, arg in enumerate(cursor.get_arguments()):
            name = rust_ident(str(arg.spelling)) if arg.spelling else f"_arg{index}"
            params.append(f"{name}: {self.rust_type(arg.type)}")
        if cursor.type.kind == self.tk.FUNCTIONPROTO and cursor.type.is_function_variadic():
            params.append("...")
        result = cursor.result_type
        returns = "" if result.get_canonical().kind == self.tk.VOID else f" -> {self.rust_type(result)}"
        return f"fn {rust_ident(str(cursor.spelling))}({', '.join(params)}){returns}"

    def _static(self, cursor: Any) -> str:
        element = cursor.type
        while element.kind in (self.tk.CONSTANTARRAY, self.tk.INCOMPLETEARRAY):
            element = element.element_type
        mutable = "" if element.is_const_qualified() else "mut "
        return f"static {mutable}{rust_ident(str(cursor.spelling))}: {self.rust_type(cursor.type)}"

    def _c_name(self, cursor: Any) -> str:
        tokens = [t.spelling for t in list(cursor.get_tokens())[:2]]
        keyword = str(tokens[0]) if tokens else "struct"
        tagged = len(tokens) > 1 and tokens[1] != "{" and not is_unnamed(cursor)
        return f"{keyword} {cursor.spelling}" if tagged else str(cursor.spelling)

    # ---- types ----

    def rust_type(self, ctype: Any) -> str:
        tk = self.tk
        kind = ctype.kind
        if kind == tk.ELABORATED:
            return self.rust_type(ctype.get_named_type())
        if kind == tk.TYPEDEF:
            decl = ctype.get_declaration()
            if self._in_program(decl):
                return rust_ident(str(decl.spelling))
            name = str(decl.spelling)
            if name in _LIBRARY_TYPEDEFS:
                return _LIBRARY_TYPEDEFS[name]
            return self.rust_type(ctype.get_canonical())
        if kind in (tk.RECORD, tk.ENUM):
            decl = ctype.get_declaration()
            known = self.names.get(self._id(decl))
            if known is None:
                if not self._in_program(decl) and not is_unnamed(decl):
                    raise _Unsupported(f"the library type {ctype.spelling} has no Rust spelling here")
                raise _Unsupported(f"the type {ctype.spelling} is not defined at file scope")
            return known
        if kind == tk.POINTER:
            pointee = ctype.get_pointee()
            canonical = pointee.get_canonical()
            if canonical.kind in (tk.FUNCTIONPROTO, tk.FUNCTIONNOPROTO):
                function = pointee if pointee.kind in (tk.FUNCTIONPROTO, tk.FUNCTIONNOPROTO) else canonical
                return f"Option<{self._function(function)}>"
            target = "libc::c_void" if canonical.kind == tk.VOID else self.rust_type(pointee)
            return f"*{'const' if pointee.is_const_qualified() else 'mut'} {target}"
        if kind == tk.CONSTANTARRAY:
            return f"[{self.rust_type(ctype.element_type)}; {ctype.element_count}]"
        if kind == tk.INCOMPLETEARRAY:
            return f"[{self.rust_type(ctype.element_type)}; 0]"
        if kind in (tk.FUNCTIONPROTO, tk.FUNCTIONNOPROTO):
            return self._function(ctype)
        if kind.name in _SCALARS:
            return _SCALARS[kind.name]
        if kind == tk.UNEXPOSED or kind.name == "ATTRIBUTED":
            canonical = ctype.get_canonical()
            if canonical.kind != kind:
                return self.rust_type(canonical)
        raise _Unsupported(f"the C type {ctype.spelling} ({kind.name.lower()}) has no Rust translation here")

    def _function(self, ctype: Any) -> str:
        args = [self.rust_type(a) for a in ctype.argument_types()] if ctype.kind == self.tk.FUNCTIONPROTO else []
        if ctype.kind == self.tk.FUNCTIONPROTO and ctype.is_function_variadic():
            args.append("...")
        result = ctype.get_result()
        returns = "" if result.get_canonical().kind == self.tk.VOID else f" -> {self.rust_type(result)}"
        return f"unsafe extern \"C\" fn({', '.join(args)}){returns}"

    # ---- definitions ----

    def _typedef(self, cursor: Any, key: str) -> RustType:
        name = rust_ident(str(cursor.spelling))
        underlying = cursor.underlying_typedef_type
        while underlying.kind == self.tk.ELABORATED:
            underlying = underlying.get_named_type()
        if underlying.kind in (self.tk.RECORD, self.tk.ENUM):
            target = self.names.get(self._id(underlying.get_declaration()))
            if target == name:
                return RustType(key, name, "alias", "", str(cursor.spelling))
        canonical = underlying.get_canonical()
        sized = canonical.kind not in (self.tk.FUNCTIONPROTO, self.tk.FUNCTIONNOPROTO, self.tk.VOID)
        code = f"pub type {name} = {self.rust_type(underlying)};"
        return RustType(key, name, "alias", code, str(cursor.spelling), layout=sized)

    def _enum(self, cursor: Any, key: str, name: str) -> RustType:
        lines = [f"pub type {name} = {self.rust_type(cursor.enum_type)};"]
        for constant in cursor.get_children():
            if constant.kind == self.ck.ENUM_CONSTANT_DECL:
                lines.append(f"pub const {rust_ident(str(constant.spelling))}: {name} = {constant.enum_value};")
        return RustType(key, name, "enum", "\n".join(lines), self._c_name(cursor))

    def _record(self, cursor: Any, key: str, name: str, c_type: str) -> list[RustType]:
        inner: list[RustType] = []
        fields: list[tuple[str, str]] = []
        lines: list[str] = []
        for member in cursor.get_children():
            if member.kind != self.ck.FIELD_DECL:
                continue
            if member.is_bitfield():
                raise _Unsupported(f"{name}.{member.spelling} is a bit-field")
            if not member.spelling:
                raise _Unsupported(f"{name} has a member without a name (an anonymous struct or union)")
            nested, path = self._defined_inside(member.type, cursor)
            # A record used by a second member is already written (and named) by the first.
            if nested is not None and self._id(nested) not in self.names:
                nested_name = f"{name}_{member.spelling}" if is_unnamed(nested) else rust_ident(str(nested.spelling))
                nested_c = f"__typeof__((({c_type} *)0)->{member.spelling}{path})"
                self.names[self._id(nested)] = nested_name
                if record_kind(nested) == "enum":
                    inner.append(self._enum(nested, key, nested_name))
                else:
                    inner.extend(self._record(nested, key, nested_name, nested_c))
            rust_field = rust_ident(str(member.spelling))
            fields.append((str(member.spelling), rust_field))
            lines.append(f"    pub {rust_field}: {self.rust_type(member.type)},")
        keyword = "union" if cursor.kind == self.ck.UNION_DECL else "struct"
        body = "\n".join(lines)
        code = f"#[repr(C)]\n#[derive(Copy, Clone)]\npub {keyword} {name} {{\n{body}\n}}"
        return [*inner, RustType(key, name, keyword, code, c_type, tuple(fields))]

    def _defined_inside(self, ctype: Any, owner: Any) -> tuple[Any | None, str]:
        """The record or enum declaration a member's type names when it is written inside ``owner``, and the
        subscripts that reach one element (``[0]`` per array level)."""
        path = ""
        while ctype.kind in (self.tk.CONSTANTARRAY, self.tk.INCOMPLETEARRAY):
            ctype = ctype.element_type
            path += "[0]"
        while ctype.kind == self.tk.ELABORATED:
            ctype = ctype.get_named_type()
        if ctype.kind not in (self.tk.RECORD, self.tk.ENUM):
            return None, ""
        decl = ctype.get_declaration()
        inside = owner.extent.start.offset < decl.extent.start.offset < owner.extent.end.offset
        return (decl, path) if inside else (None, "")


# --------------------------------------------------------------------------------------------------------
# Layout verification


@dataclass(frozen=True)
class LayoutReport:
    """What the layout check compared: ``checked`` facts (sizes, alignments, offsets); each mismatch as
    ``"offset Item.next: C 40, Rust 48"``; ``error`` when a probe did not build or run (then nothing is
    compared)."""

    checked: int
    mismatches: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.mismatches and self.checked > 0


def _facts(translation: TypeTranslation) -> Iterator[tuple[str, str, str]]:
    """(fact name, C expression, Rust expression) for every size, alignment and field offset to compare."""
    for t in translation.types:
        if not t.code or not t.layout:
            continue
        yield f"size {t.rust_name}", f"sizeof({t.c_type})", f"std::mem::size_of::<{t.rust_name}>()"
        yield f"align {t.rust_name}", f"_Alignof({t.c_type})", f"std::mem::align_of::<{t.rust_name}>()"
        for c_field, rust_field in t.fields:
            yield (f"offset {t.rust_name}.{c_field}", f"offsetof({t.c_type}, {c_field})",
                   f"std::mem::offset_of!({t.rust_name}, {rust_field})")


def layout_probes(program: CProgram, translation: TypeTranslation) -> tuple[str, str]:
    """The C and the Rust program that print the same layout facts, one ``NAME VALUE`` line each.

    The C probe is the program itself with its ``main`` renamed, so every type is in scope as written.
    """
    facts = list(_facts(translation))
    c_lines = [f'    printf("{name} %zu\\n", (size_t)({expr}));' for name, expr, _ in facts]
    c_source = (
        "#define main c2rust_layout_program_main\n"
        + program.source.decode("utf-8", "surrogateescape")
        + "\n#undef main\n#include <stddef.h>\n#include <stdio.h>\n"
        + "int main(void) {\n" + "\n".join(c_lines) + "\n    return 0;\n}\n"
    )
    rust_lines = [f'    println!("{name} {{}}", {expr});' for name, _, expr in facts]
    rust_source = (
        "#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code)]\n\n"
        + translation.rust_source()
        + "\nfn main() {\n" + "\n".join(rust_lines) + "\n}\n"
    )
    return c_source, rust_source


async def verify_layouts(
    program: CProgram, translation: TypeTranslation, toolchain: Toolchain, work_dir: Path | None = None
) -> LayoutReport:
    """Compare the layouts gcc gives the C types with the ones rustc gives their translations.

    Both probes are built and run as child processes with deadlines and output caps, in ``work_dir`` (a
    temporary directory when None). A probe that does not build or run is reported in
    :attr:`LayoutReport.error`, not raised; OSError only when ``work_dir`` cannot be written.
    """
    c_source, rust_source = layout_probes(program, translation)
    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix="c2rust-layout-") as tmp:
            return await _verify(c_source, rust_source, toolchain, Path(tmp))
    return await _verify(c_source, rust_source, toolchain, work_dir)


async def _verify(c_source: str, rust_source: str, toolchain: Toolchain, work: Path) -> LayoutReport:
    c_dir, rust_dir = work / "c", work / "rust"
    for directory in (c_dir, rust_dir):
        await anyio.to_thread.run_sync(_make_dir, directory)
    await anyio.to_thread.run_sync((c_dir / "layout.c").write_text, c_source)
    env = tool_env()
    built = await run_process(["gcc", "-std=gnu11", "-w", "-o", "layout", "layout.c"], cwd=c_dir,
                              limits=_PROBE_LIMITS, env=env)
    if not built.ok:
        return LayoutReport(0, error=f"the C layout probe does not build: {_tail(built.stderr)}")
    rust = await toolchain.build(rust_source, rust_dir)
    if not rust.ok or rust.binary is None:
        return LayoutReport(0, error=f"the Rust layout probe does not build: {rust.diagnostics[:2000]}")
    c_run = await run_process([str(c_dir / "layout")], cwd=c_dir, limits=_RUN_LIMITS, env=env)
    rust_run = await run_process([str(rust.binary)], cwd=rust_dir, limits=_RUN_LIMITS, env=env)
    for label, result in (("C", c_run), ("Rust", rust_run)):
        if not result.ok:
            return LayoutReport(0, error=f"the {label} layout probe failed: {result.describe()}")
    c_facts, rust_facts = _parse_facts(c_run.stdout), _parse_facts(rust_run.stdout)
    mismatches = tuple(
        f"{name}: C {c_facts.get(name, 'missing')}, Rust {rust_facts.get(name, 'missing')}"
        for name in sorted(set(c_facts) | set(rust_facts), key=lambda n: (n.split()[1], n))
        if c_facts.get(name) != rust_facts.get(name)
    )
    return LayoutReport(len(c_facts), mismatches)


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def _parse_facts(stdout: bytes) -> dict[str, int]:
    facts: dict[str, int] = {}
    for line in stdout.decode("utf-8", "replace").splitlines():
        match = re.fullmatch(r"(\w+ \S+) (\d+)", line.strip())
        if match:
            facts[match.group(1)] = int(match.group(2))
    return facts


def _tail(data: bytes, limit: int = 2000) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text[-limit:]
