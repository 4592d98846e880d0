"""Reading Rust source without a parser: what the pipeline needs to know of a candidate before compiling it.

- :func:`mask_comments_and_strings` blanks the insides of comments and literals, so that the scans below see
  code only (memoised: the stage loop, the build and the statistics ask about the same candidate);
- :func:`forbidden_constructs` refuses what would read the build machine (``include_str!``, ``env!``, ...);
- :func:`first_unsafe_line` and :func:`unsafe_stats` apply the one rule for ``unsafe`` (the idiomatic stage's
  refusal and the unsafe share in ``clippy_stat.json``).
"""

from __future__ import annotations

import functools
import re
from typing import Any

#: The crates a candidate may name: only the standard library and libc are available when it compiles.
ALLOWED_CRATES = frozenset({"libc", "std", "core", "alloc", "self"})

_TOKEN = re.compile(r"""//|/\*|(?<![A-Za-z0-9_])[bc]?r(#*)"|"|'""")
_CHAR_LITERAL = re.compile(
    r"""'(?:[^\\'\n]|\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F_]{1,8}\}|[nrt\\0'"]))'"""
)


_NOT_NEWLINE = re.compile(r"[^\n]")


@functools.lru_cache(maxsize=64)
def mask_comments_and_strings(source: str) -> str:
    """``source`` with the insides of comments, string and char literals replaced by spaces.

    Offsets and line breaks are kept, so positions in the result are positions in ``source``.
    """
    n = len(source)
    pieces: list[str] = []
    kept = 0  # source[:kept] is in pieces; the scan only moves forward, so blanked spans come in order

    def blank(start: int, end: int) -> None:
        nonlocal kept
        end = min(end, n)
        if end <= start:
            return
        pieces.append(source[kept:start])
        # Whole spans at a time, not character by character (#16: 0.1 ms per program less).
        pieces.append(_NOT_NEWLINE.sub(" ", source[start:end]))
        kept = end

    i = 0
    while True:
        m = _TOKEN.search(source, i)
        if m is None:
            break
        tok, start = m.group(0), m.start()
        if tok == "//":
            end = source.find("\n", start)
            end = n if end < 0 else end
            blank(start, end)
            i = end
        elif tok == "/*":
            depth, j = 1, start + 2
            while j < n and depth:
                if source.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif source.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            blank(start, j)
            i = j
        elif tok.endswith('"') and m.group(1) is not None:  # raw string r#"..."#
            closing = '"' + m.group(1)
            end = source.find(closing, m.end())
            end = n if end < 0 else end
            blank(m.end(), end)
            i = end + len(closing)
        elif tok == '"':
            j = start + 1
            while j < n and source[j] != '"':
                j += 2 if source[j] == "\\" else 1
            blank(start + 1, j)
            i = j + 1
        else:  # a quote: a char literal, or a lifetime / label
            lit = _CHAR_LITERAL.match(source, start)
            if lit:
                blank(start + 1, lit.end() - 1)
                i = lit.end()
            else:
                i = start + 1
    pieces.append(source[kept:])
    return "".join(pieces)


_HOST_MACRO = re.compile(r"(?<![A-Za-z0-9_])(include_str|include_bytes|include|option_env|env)\s*!")
# The same macros reached without writing `name!`: imported under another name, or called through a macro
# variable (`$m!` with `m` = include_str, or `$($t)*!`).
_HOST_MACRO_NAME = re.compile(r"(?<![A-Za-z0-9_$])(include_str|include_bytes|option_env)(?![A-Za-z0-9_])")
_RENAMED = re.compile(r"(?<![A-Za-z0-9_])(env|include)\s+as\s+[A-Za-z_]")
_MACRO_VAR_CALL = re.compile(r"\$[A-Za-z_][A-Za-z0-9_]*\s*!|\$\([^)]*\)\s*[*+?]\s*!")
_EXTERN_CRATE = re.compile(r"(?<![A-Za-z0-9_])extern\s+crate\s+([A-Za-z_][A-Za-z0-9_]*)")
_LINK_ATTR = re.compile(r"#\s*!?\s*\[\s*link\s*\(")
_PATH_ATTR = re.compile(r"#\s*!?\s*\[\s*path\s*=")
_OUTLINE_MOD = re.compile(r"(?<![A-Za-z0-9_])mod\s+([A-Za-z_][A-Za-z0-9_]*)\s*;")
#: What `env!` and `env as` start with: a literal prefix, so this scans fast where the look-behinds do not.
_ENV_GATE = re.compile(r"env(?:\s*!|\s+as)")
_ASM = re.compile(r"(?<![A-Za-z0-9_])(global_asm|naked_asm|asm)\s*!")
# Also reached without writing `name!`: `use std::arch::global_asm as g;` then `g!(...)`.
_ASM_NAME = re.compile(r"(?<![A-Za-z0-9_$])(global_asm|naked_asm|asm)(?![A-Za-z0-9_])\s*(?:as\b|[;,}])")
_DEBUGGER_VISUALIZER = re.compile(r"#\s*!?\s*\[\s*debugger_visualizer\b")


def forbidden_constructs(source: str) -> str | None:
    """Why ``source`` must not be compiled, or None when it may be.

    Refused: ``include_str!``, ``include_bytes!``, ``include!``, ``env!``, ``option_env!`` (they read the build
    machine), also when renamed by ``use ... as`` or called through a macro variable; ``#[link(...)]`` and
    ``extern crate`` of anything but libc and the standard library; ``#[path = ...]`` and out-of-line
    ``mod name;`` and ``#[debugger_visualizer]`` (they read other files); inline and global assembly (``asm!``,
    ``global_asm!``, ``naked_asm!``, also imported under another name): its ``.incbin`` reads any file of the
    build machine, and the directive can be spelled by ``concat!``, an assembler macro or a ``sym`` operand.
    Comments and string literals are ignored. The reason names the construct and the line.
    This is a textual check, not a parser: it errs on the side of refusing.
    """
    masked = mask_comments_and_strings(source)
    found: list[tuple[int, str]] = []

    def line_of(pos: int) -> int:
        return masked.count("\n", 0, pos) + 1

    def search(pattern: re.Pattern[str], *words: str) -> re.Match[str] | None:
        # A cheap test first: each pattern needs one of its words, and most programs have none (#16: the
        # patterns' look-behinds cost about 0.3 ms per program, the tests a few microseconds).
        return pattern.search(masked) if any(w in masked for w in words) else None

    # `std::env::args()` is common, `env!`/`env as` are not: only those make the host-macro patterns worth running.
    host = "include" in masked or "option_env" in masked or _ENV_GATE.search(masked) is not None
    for m in (search(_HOST_MACRO, "include", "env") if host else None,
              search(_HOST_MACRO_NAME, "include", "env") if host else None):
        if m:
            found.append((m.start(), _host_macro_reason(m.group(1))))
    m = search(_RENAMED, "env", "include") if host else None
    if m:
        found.append((m.start(), f"imports `{m.group(1)}` under another name, which would call the "
                                 f"{m.group(1)}! macro; it is not allowed: use the std::{m.group(1)} path as it is"
                      if m.group(1) == "env" else
                      f"imports `{m.group(1)}` under another name (the {m.group(1)}! macro, which reads files of "
                      f"the build machine); it is not allowed"))
    m = search(_MACRO_VAR_CALL, "$")
    if m:
        found.append((m.start(), "calls a macro through a macro variable ($m!), which could reach include_str! "
                                 "or env!; it is not allowed: call macros by their names"))
    for m in _EXTERN_CRATE.finditer(masked) if "crate" in masked else ():
        if m.group(1) not in ALLOWED_CRATES:
            found.append((m.start(), f"uses `extern crate {m.group(1)}`; only the standard library and libc "
                                     f"are available: remove the dependency"))
            break
    m = search(_LINK_ATTR, "link")
    if m:
        found.append((m.start(), "uses #[link(...)], which links a library of the build machine; it is not "
                                 "allowed: only the standard library and libc are available"))
    m = search(_PATH_ATTR, "path")
    if m:
        found.append((m.start(), "uses #[path = ...], which reads another file of the build machine; it is not "
                                 "allowed: write the module inline (mod name { ... })"))
    m = search(_OUTLINE_MOD, "mod")
    if m:
        name = m.group(1)
        found.append((m.start(), f"declares `mod {name};`, which reads {name}.rs from the build machine; it is "
                                 f"not allowed: write the module inline (mod {name} {{ ... }})"))
    m = search(_ASM, "asm") or search(_ASM_NAME, "asm")
    if m:
        found.append((m.start(), f"uses inline or global assembly ({m.group(1)}!), which can read files of the "
                                 "build machine (.incbin) and hide what the program does; it is not allowed: write "
                                 "it in Rust"))
    m = search(_DEBUGGER_VISUALIZER, "debugger_visualizer")
    if m:
        found.append((m.start(), "uses #![debugger_visualizer(...)], which reads another file of the build machine "
                                 "into the program; it is not allowed: remove it"))
    if not found:
        return None
    pos, why = min(found)
    return f"line {line_of(pos)} {why}"


def _host_macro_reason(name: str) -> str:
    if name in ("env", "option_env"):
        return (f"uses {name}!, which reads the build machine's environment when compiling; it is not allowed: "
                f"read the environment at run time with std::env::var instead")
    return f"uses {name}!, which reads files of the build machine; it is not allowed: inline the data instead"


#: Programs other than the translation: a shell, an interpreter or a compiler run on an embedded copy of the C program
#: would give the right output for every test without being a translation.
_SPAWNS = re.compile(
    r"(?<![A-Za-z0-9_])process\s*::\s*(?!(?:exit|abort|id|ExitCode|Termination)\b)(\{|\*|[A-Za-z_]\w*)"
    r"|(?<![A-Za-z0-9_.])(system|popen|execvp?e?|execl[pe]?|fexecve|execveat|posix_spawnp?|syscall)\s*\("
    r"|::\s*process\s+as\b"  # `use std::process as p;`, not a variable named process cast with `as`
)
_PROCESS_ALLOWED = frozenset({"exit", "abort", "id", "ExitCode", "Termination", "self"})
#: Code the source does not hold: a library loaded at run time, memory made executable, data in a code section.
_LOADS_CODE = re.compile(
    r"(?<![A-Za-z0-9_.])(dlopen|dlmopen|dlsym|dlvsym|mmap|mmap64|mprotect|pkey_mprotect|memfd_create)\s*\("
    r"|(?<![A-Za-z0-9_])(PROT_EXEC|link_section)(?![A-Za-z0-9_])"
)
#: What a C program calls when it runs other programs or code itself: then its translation may do the same.
_C_RUNS_OTHER_CODE = re.compile(
    r"(?<![A-Za-z0-9_])(system|popen|fork|vfork|clone|exec[lv]p?e?|fexecve|execveat|posix_spawnp?|syscall|dlopen"
    r"|dlsym|mmap|mprotect|memfd_create)\s*\("
)


def c_runs_other_code(c_source: str) -> bool:
    """Whether a C program starts other programs or loads or maps code (``system``, ``exec*``, ``fork``,
    ``dlopen``, ``mmap``, ...): then :func:`foreign_code` does not apply to its translations."""
    return _C_RUNS_OTHER_CODE.search(c_source) is not None


def _process_item(token: str | None, rest: str) -> str:
    """How a refused use of ``std::process`` is named (``std::process::Command`` also for ``{Command, ...}``), or
    "" for a group of allowed names only."""
    if token == "{":
        names = re.findall(r"[A-Za-z_]\w*", rest[: rest.find("}") if "}" in rest else len(rest)])
        token = next((n for n in names if n not in _PROCESS_ALLOWED and n != "as"), "")
        if not token:
            return ""
    return f"std::process::{token}" if token else "std::process as ..."


def foreign_code(source: str) -> str | None:
    """Why ``source`` runs code it does not hold, or None: another program (``std::process`` but ``exit``,
    ``abort`` and ``id``; libc's ``system``, ``popen``, ``exec*``, ``posix_spawn``, ``syscall``), a library loaded
    at run time (``dlopen``, ``dlsym``), memory made executable (``mmap``, ``mprotect``, ``PROT_EXEC``,
    ``memfd_create``) or a ``#[link_section]``. Such a program could print the C program's output by running the
    C program (or a copy in another language): its tests prove nothing of the translation. Comments and string
    literals are ignored; the reason names the construct and the line."""
    masked = mask_comments_and_strings(source)
    spawn, name = None, ""
    for found in _SPAWNS.finditer(masked):
        name = found.group(2) or _process_item(found.group(1), masked[found.end():])
        if name:  # not `use std::process::{self, exit}`
            spawn = found
            break
    load = _LOADS_CODE.search(masked)
    if spawn is None and load is None:
        return None
    if spawn is not None and (load is None or spawn.start() <= load.start()):
        return (f"line {masked.count(chr(10), 0, spawn.start()) + 1} runs another program ({name}), which the C "
                "program never does: the output must come from the translation itself; remove it")
    assert load is not None
    name = load.group(1) or load.group(2)
    return (f"line {masked.count(chr(10), 0, load.start()) + 1} runs code it does not contain ({name}), which the C "
            "program never does: the output must come from the translation itself; remove it")


#: The one rule for `unsafe`: the keyword outside comments and literals (blocks, fns, impls, traits, and
#: unsafe attributes such as ``#[unsafe(no_mangle)]``).
_UNSAFE = re.compile(r"(?<![A-Za-z0-9_])unsafe(?![A-Za-z0-9_])")


def first_unsafe_line(source: str) -> int | None:
    """The line of the first `unsafe` outside comments and string literals, or None for safe Rust."""
    masked = mask_comments_and_strings(source)
    match = _UNSAFE.search(masked)
    return masked.count("\n", 0, match.start()) + 1 if match else None


def unsafe_stats(source: str) -> dict[str, Any]:
    """The share of non-blank lines inside ``unsafe`` blocks, fns and impls (a brace-matching scan)."""
    masked = mask_comments_and_strings(source)
    lines = source.splitlines()
    nonblank = {i + 1 for i, text in enumerate(lines) if text.strip()}
    covered: set[int] = set()
    blocks = fns = 0
    n = len(masked)
    for m in _UNSAFE.finditer(masked):
        j = m.end()
        while j < n and masked[j].isspace():
            j += 1
        if j < n and masked[j] == "(":
            continue  # #[unsafe(no_mangle)]: an attribute, not a region
        depth = 0
        while j < n:
            ch = masked[j]
            if ch in "([":
                depth += 1
            elif ch in ")]":
                depth -= 1
            elif depth <= 0 and ch in "{;":
                break
            j += 1
        if j >= n or masked[j] == ";":
            continue  # a declaration without a body
        header = masked[m.end():j]
        level = 0
        while j < n:
            if masked[j] == "{":
                level += 1
            elif masked[j] == "}":
                level -= 1
                if level == 0:
                    break
            j += 1
        first = masked.count("\n", 0, m.start()) + 1
        last = first + masked.count("\n", m.start(), min(j, n))
        covered.update(range(first, last + 1))
        if not header.strip():
            blocks += 1
        elif re.search(r"(?<![A-Za-z0-9_])fn(?![A-Za-z0-9_])", header):
            fns += 1
    unsafe_lines = len(covered & nonblank)
    total = len(nonblank)
    return {
        "unsafe_lines": unsafe_lines,
        "total_lines": total,
        "unsafe_fraction": round(unsafe_lines / total, 4) if total else 0.0,
        "unsafe_blocks": blocks,
        "unsafe_fns": fns,
    }


_TOP_ITEM = re.compile(
    r"(?:pub(?:\([^)]*\))?\s+)?(?:(?:unsafe|const|async|default)\s+)*(?:extern\s+(?:\"[^\"]*\"\s+)?)?"
    r"(?P<kind>fn|struct|enum|union|trait|type|const|static(?:\s+mut)?|mod|impl|use|macro_rules!|extern)"
    r"(?:\s+(?P<name>r#\w+|[A-Za-z_]\w*))?"
)
_ATTRIBUTE = re.compile(r"#\s*!?\s*\[")


def _skip_bracketed(masked: str, start: int, open_: str, close: str) -> int:
    """The index after the bracket closing the one at ``start``."""
    depth = 0
    for j in range(start, len(masked)):
        if masked[j] == open_:
            depth += 1
        elif masked[j] == close:
            depth -= 1
            if depth == 0:
                return j + 1
    return len(masked)


def _item_end(masked: str, start: int) -> int:
    """The index after the item starting at ``start``: its closing brace, or the ``;`` of a braceless item."""
    depth = 0
    for j in range(start, len(masked)):
        ch = masked[j]
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == ";" and depth == 0:
            return j + 1
        elif ch == "{" and depth == 0:
            return _skip_bracketed(masked, j, "{", "}")
    return len(masked)


def top_level_items(source: str) -> list[tuple[str, str, int, int]]:
    """The top-level items of ``source`` as (kind, name, start, end): kind ``fn``, ``struct``, ``static``
    (``static mut`` too), ``extern`` (an ``extern "C" { ... }`` block, name ""), ``attribute`` (an inner
    ``#![...]``), ...; the span includes the item's outer attributes. A textual scan, not a parser: text
    it does not recognise is skipped up to the next ``;`` or block."""
    masked = mask_comments_and_strings(source)
    items: list[tuple[str, str, int, int]] = []
    i, n = 0, len(masked)
    while i < n:
        while i < n and masked[i].isspace():
            i += 1
        if i >= n:
            break
        start = i
        attribute = _ATTRIBUTE.match(masked, i)
        if attribute and "!" in attribute.group(0):
            end = _skip_bracketed(masked, masked.index("[", i), "[", "]")
            items.append(("attribute", "", start, end))
            i = end
            continue
        while attribute:  # outer attributes belong to the item after them
            i = _skip_bracketed(masked, masked.index("[", i), "[", "]")
            while i < n and masked[i].isspace():
                i += 1
            attribute = _ATTRIBUTE.match(masked, i)
            if attribute and "!" in attribute.group(0):
                break
        match = _TOP_ITEM.match(masked, i)
        end = _item_end(masked, i)
        if match:
            kind = match.group("kind")
            kind = "static" if kind.startswith("static") else kind
            name = (match.group("name") or "") if kind not in ("extern", "impl", "use") else ""
            if kind == "extern" and match.group("name") == "crate":
                kind = "extern crate"
            items.append((kind, name.removeprefix("r#"), start, end))
        i = max(end, i + 1)
    return items


#: Item kinds that define a type or a constant, a global, a function (what a prompt can give in declared form).
_TYPE_KINDS = frozenset({"struct", "enum", "union", "type", "const"})


def given_names(source: str) -> set[str]:
    """The names ``source``'s top-level items define (types, constants, statics, functions), for
    :func:`strip_given`."""
    return {name for kind, name, _, _ in top_level_items(source) if name and kind in (*_TYPE_KINDS, "static", "fn")}


def _extern_declared(block: str) -> list[tuple[str, int, int]]:
    """The (name, start, end) of each declaration inside an ``extern "C" { ... }`` block's text."""
    masked = mask_comments_and_strings(block)
    inner = masked.index("{") + 1
    out = []
    for match in re.finditer(r"(?:pub(?:\([^)]*\))?\s+)?(?:fn|static(?:\s+mut)?)\s+(?:r#)?(\w+)[^;]*;",
                             masked[inner:]):
        head = masked.rfind("\n", 0, inner + match.start()) + 1
        out.append((match.group(1), max(head, inner), inner + match.end()))
    return out


def strip_given(code: str, given: set[str]) -> tuple[str, list[str]]:
    """``code`` (a model's answer) without the items that repeat what the prompt gave in declared form:
    definitions of types, constants, statics or functions named in ``given``, the declarations of given
    items inside ``extern "C"`` blocks (a block left empty goes entirely), and inner attributes
    (``#![allow(...)]``, which the harness sets and which may not appear mid-file). Returns the code and
    what was removed (``struct Item``, ``extern fn tree_find``, ...), for the log."""
    removed: list[str] = []
    cuts: list[tuple[int, int, str]] = []
    for kind, name, start, end in top_level_items(code):
        if kind == "attribute":
            cuts.append((start, end, ""))
            removed.append(code[start:end].strip())
        elif kind == "extern" and "{" in mask_comments_and_strings(code[start:end]):
            block = code[start:end]
            declared = _extern_declared(block)
            drop = [(s, e) for name_, s, e in declared if name_ in given]
            if not drop:
                continue
            removed.extend(f"extern {name_}" for name_, _, _ in declared if name_ in given)
            if len(drop) == len(declared):
                cuts.append((start, end, ""))
            else:
                kept = block
                for s, e in sorted(drop, reverse=True):
                    kept = kept[:s] + kept[e:]
                cuts.append((start, end, kept))
        elif name in given and kind in (*_TYPE_KINDS, "static", "fn"):
            cuts.append((start, end, ""))
            removed.append(f"{kind} {name}")
    for start, end, replacement in sorted(cuts, reverse=True):
        if not replacement:
            start = _with_leading_comments(code, start)
        code = code[:start] + replacement + code[end:]
    return re.sub(r"\n{3,}", "\n\n", code).strip() + "\n", removed


def _with_leading_comments(code: str, start: int) -> int:
    """``start`` moved back over the ``//`` comment lines (doc comments) right before it."""
    while True:
        line_start = code.rfind("\n", 0, max(start - 1, 0)) + 1 if start > 0 else 0
        line = code[line_start:start]
        if start == 0 or not line.strip().startswith("//"):
            return start
        start = line_start


def strip_repeated(code: str, seen: dict[str, str]) -> tuple[str, list[str]]:
    """``code`` (one item of a program assembled from several answers) without what an earlier item already
    declared: ``extern "C"`` declarations of a name declared before (``stderr``, ``stdin``: the same symbol),
    and top-level items identical, up to whitespace, to an earlier item of the same name (a helper two
    answers both wrote). ``seen`` maps what came before (``extern NAME`` / ``KIND NAME`` -> text) and is
    updated. Different items of one name are kept: the build names them."""
    normal = " ".join
    given = {key.split(" ", 1)[1] for key in seen if key.startswith("extern ")}
    removed: list[str] = []
    cuts: list[tuple[int, int, str]] = []
    for kind, name, start, end in top_level_items(code):
        text = code[start:end]
        if kind == "extern" and "{" in mask_comments_and_strings(text):
            declared = _extern_declared(text)
            drop = [(s, e) for name_, s, e in declared if name_ in given]
            removed.extend(f"extern {name_}" for name_, _, _ in declared if name_ in given)
            seen.update({f"extern {name_}": "" for name_, _, _ in declared})
            if drop and len(drop) == len(declared):
                cuts.append((start, end, ""))
            elif drop:
                for s, e in sorted(drop, reverse=True):
                    text = text[:s] + text[e:]
                cuts.append((start, end, text))
        elif name and kind not in ("attribute", "use", "impl"):
            key = f"{kind} {name}"
            if key in seen and normal(seen[key].split()) == normal(text.split()):
                cuts.append((start, end, ""))
                removed.append(key)
            else:
                seen.setdefault(key, text)
    for start, end, replacement in sorted(cuts, reverse=True):
        code = code[:start] + replacement + code[end:]
    return code, removed
