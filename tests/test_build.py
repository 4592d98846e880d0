"""Specification of pipeline.build: refuse, compile (errors first, cached), lint, measure the unsafe share.

The toolchain is real (rustc, clippy-driver, Debian's libc crate), prepared once per session with its cache in
a pytest temporary directory, so the tests never touch ~/.cache.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from pipeline.build import BINARY_NAME, BuildResult, Toolchain
from pipeline.config import SandboxSettings, ToolchainSettings, load_config
from pipeline.errors import ConfigError
from pipeline.rust_source import (
    c_runs_other_code,
    forbidden_constructs,
    foreign_code,
    mask_comments_and_strings,
    unsafe_stats,
)
from pipeline.sandbox import Limits, Sandbox
from pipeline.verifier import refusal

GOOD = """
use std::io::Read;

fn shout(s: &str) -> String {
    s.to_uppercase()
}

fn main() {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).unwrap();
    let text = std::ffi::CString::new(input.trim()).unwrap();
    let n = unsafe { libc::strlen(text.as_ptr()) };
    println!("{} {}", shout(input.trim()), n);
    std::process::exit(if n > 3 { 0 } else { 4 });
}
"""

TYPE_ERROR = """
fn main() {
    let unused = 1;
    let x: i32 = "text";
    let y: bool = 5;
    println!("{} {}", x, y);
}
"""


def unique(source: str) -> str:
    """The same program with a fresh comment, so that the session cache has never seen it."""
    return f"{source}\n// {secrets.token_hex(8)}\n"


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture(scope="session")
def toolchain(cache_dir: Path) -> Toolchain:
    """One toolchain per session; libc is built once into the session's cache directory."""
    return anyio.run(Toolchain.prepare, ToolchainSettings(cache_dir=str(cache_dir)))


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox.open(SandboxSettings()) as sb:
        yield sb


# ---------------------------------------------------------------------------------------------------------
# Building


async def test_good_program_builds_and_runs(toolchain: Toolchain, sandbox: Sandbox) -> None:
    """A program using libc compiles to out_dir/main, which runs in the sandbox."""
    async with sandbox.build_dir() as out:
        result = await toolchain.build(unique(GOOD), out)
        assert result.ok and not result.cached and result.refused is None
        assert result.binary == out / BINARY_NAME
        assert (result.diagnostics, result.error_count) == ("", 0)
        async with sandbox.workdir() as wd:
            run = await sandbox.run([str(result.binary)], cwd=wd, stdin=b"hello\n", limits=Limits(wall_seconds=10))
    assert run.ok, run.describe()
    assert run.stdout == b"HELLO 5\n"


async def test_a_build_holds_the_cpu_slot_only_while_rustc_runs(toolchain: Toolchain, tmp_path: Path) -> None:
    """The source is written while every CPU slot is taken; rustc waits for a slot and gives it back when done."""
    cpu = anyio.CapacityLimiter(1)
    other = object()  # another task's test run, holding the only slot
    await cpu.acquire_on_behalf_of(other)
    results: list[BuildResult] = []

    async def build() -> None:
        results.append(await toolchain.build(unique(GOOD), tmp_path, cpu=cpu))

    async with anyio.create_task_group() as tg:
        tg.start_soon(build)
        with anyio.fail_after(5):
            while not (tmp_path / f"{BINARY_NAME}.rs").exists():  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert cpu.statistics().tasks_waiting == 1 and not results
        assert not (tmp_path / BINARY_NAME).exists()
        cpu.release_on_behalf_of(other)
    (result,) = results
    assert result.ok and result.binary == tmp_path / BINARY_NAME
    assert os.stat(result.binary).st_mode & 0o777 == 0o755
    assert cpu.borrowed_tokens == 0


async def test_type_error_gives_the_errors_first_and_no_warnings(toolchain: Toolchain, tmp_path: Path) -> None:
    """Diagnostics hold the errors, first error first, with relative file names and no warnings."""
    result = await toolchain.build(unique(TYPE_ERROR), tmp_path)
    assert not result.ok and result.binary is None and result.refused is None
    assert result.error_count == 2
    assert result.diagnostics.startswith("error[E0308]: mismatched types\n --> main.rs:4:18")
    assert result.diagnostics.count("error[E0308]") == 2
    assert "warning" not in result.diagnostics
    assert "aborting due to" not in result.diagnostics
    assert not (tmp_path / BINARY_NAME).exists()


async def test_long_diagnostics_are_trimmed_whole_errors_first(toolchain: Toolchain, tmp_path: Path) -> None:
    """Past max_diagnostic_chars the text keeps whole leading errors and says how many were left out."""
    body = "\n".join(f'    let v{i}: u8 = "{i}";' for i in range(20))
    result = await toolchain.build(unique(f"fn main() {{\n{body}\n}}\n"), tmp_path, max_diagnostic_chars=700)
    assert result.error_count == 20
    assert len(result.diagnostics) <= 700
    assert result.diagnostics.startswith("error[E0308]")
    assert result.diagnostics.rstrip().endswith("more errors")


async def test_second_build_of_the_same_source_is_cached(toolchain: Toolchain, tmp_path: Path) -> None:
    """A repeated source is not recompiled: the binary (or the errors) come from the cache."""
    good, bad = unique(GOOD), unique(TYPE_ERROR)
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    first = await toolchain.build(good, first_dir)
    second = await toolchain.build(good, second_dir)
    assert first.ok and not first.cached
    assert second.ok and second.cached and second.binary == second_dir / BINARY_NAME
    assert second.binary.read_bytes() == (first_dir / BINARY_NAME).read_bytes()
    assert not second.binary.samefile(first_dir / BINARY_NAME)  # a copy: a run's uid may own the directory
    failed = await toolchain.build(bad, first_dir)
    failed_again = await toolchain.build(bad, second_dir)
    assert not failed.cached and failed_again.cached
    assert (failed_again.ok, failed_again.diagnostics, failed_again.error_count) == (
        False, failed.diagnostics, failed.error_count,
    )
    assert not (second_dir / f"{BINARY_NAME}.rs").exists()  # nothing was compiled the second time


async def test_without_the_compile_cache_every_build_runs_rustc_and_nothing_is_stored(
    toolchain: Toolchain, cache_dir: Path, tmp_path: Path
) -> None:
    """compile_cache = false: repeated sources are compiled again, and a caching toolchain finds no entry."""
    uncached = await Toolchain.prepare(ToolchainSettings(cache_dir=str(cache_dir), compile_cache=False, clippy=False))
    good, bad = unique(GOOD), unique(TYPE_ERROR)
    dirs = [tmp_path / name for name in ("a", "b", "c", "d", "e")]
    for d in dirs:
        d.mkdir()
    first, second = await uncached.build(good, dirs[0]), await uncached.build(good, dirs[1])
    assert first.ok and second.ok and not first.cached and not second.cached
    assert second.binary == dirs[1] / BINARY_NAME and (dirs[1] / f"{BINARY_NAME}.rs").is_file()
    failed, failed_again = await uncached.build(bad, dirs[2]), await uncached.build(bad, dirs[3])
    assert not failed.ok and not failed.cached and not failed_again.cached
    assert failed_again.diagnostics == failed.diagnostics
    assert not (await toolchain.build(good, dirs[4])).cached
    assert not (await toolchain.build(bad, dirs[4])).cached


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("", True, id="default-on"),
    pytest.param("[toolchain]\ncompile_cache = false\n", False, id="off-in-sactor-toml"),
])
def test_compile_cache_setting_is_read_from_sactor_toml(tmp_path: Path, text: str, expected: bool) -> None:
    """[toolchain] compile_cache is a boolean key of sactor.toml, on unless set to false."""
    path = tmp_path / "sactor.toml"
    path.write_text(text)
    assert load_config(path, environ={}).toolchain.compile_cache is expected


# ---------------------------------------------------------------------------------------------------------
# Refusing


@pytest.mark.parametrize(
    ("snippet", "named"),
    [
        pytest.param('const D: &str = include_str!("/etc/passwd");', "include_str!", id="include_str"),
        pytest.param('static B: &[u8] = include_bytes!("/etc/shadow");', "include_bytes!", id="include_bytes"),
        pytest.param('include!("/etc/hosts");', "include!", id="include"),
        pytest.param('const K: &str = env!("VLLM_API_KEY");', "env!", id="env"),
        pytest.param('const K: Option<&str> = option_env!("HOME");', "option_env!", id="option_env"),
        pytest.param('const K: &str = std::env!("HOME");', "env!", id="env-by-path"),
        pytest.param("use std::env as e;", "imports `env` under another name", id="env-renamed"),
        pytest.param("use std::{include as inc};", "imports `include` under another name", id="include-renamed"),
        pytest.param("use std::include_str as inc;", "include_str!", id="include_str-imported"),
        pytest.param("macro_rules! m { ($f:ident) => { $f!(\"/etc/passwd\") } }", "macro variable",
                     id="macro-variable-call"),
        pytest.param("macro_rules! m { ($($t:tt)*) => { $($t)*!(\"/x\") } }", "macro variable",
                     id="macro-repetition-call"),
        pytest.param("extern crate serde;", "extern crate serde", id="extern-crate"),
        pytest.param('#[link(name = "ssl")]\nextern "C" { fn SSL_new(); }', "#[link(...)]", id="link-attribute"),
        pytest.param('#[path = "/etc/passwd"]\nmod secrets {}', "#[path = ...]", id="path-attribute"),
        pytest.param("mod helpers;", "mod helpers;", id="out-of-line-module"),
        pytest.param('std::arch::global_asm!(".incbin \\"/etc/shadow\\"");', ".incbin", id="asm-incbin"),
        pytest.param('std::arch::global_asm!(concat!(".inc", "bin \\"/etc/shadow\\""));', "global_asm!",
                     id="asm-incbin-spelled-by-concat"),
        pytest.param('core::arch::global_asm!(".macro m x\\n.inc\\\\x \\"/etc/shadow\\"\\n.endm\\nm bin");',
                     "global_asm!", id="asm-incbin-spelled-by-a-macro"),
        pytest.param("use std::arch::global_asm as g;", "global_asm!", id="asm-renamed"),
        pytest.param('fn f() { unsafe { std::arch::asm!("nop"); } }', "asm!", id="inline-asm"),
        pytest.param('#![debugger_visualizer(gdb_script_file = "/etc/shadow")]', "debugger_visualizer",
                     id="debugger-visualizer"),
    ],
)
async def test_forbidden_construct_is_refused_without_compiling(
    toolchain: Toolchain, tmp_path: Path, snippet: str, named: str
) -> None:
    """Sources that would read the build machine are refused, naming the construct and its line."""
    source = f"// header\n\n{snippet}\nfn main() {{}}\n"
    reason = forbidden_constructs(source)
    assert reason is not None and reason.startswith("line 3 ") and named in reason
    result = await toolchain.build(source, tmp_path)
    assert (result.ok, result.refused, result.binary, result.cached) == (False, reason, None, False)
    assert result.diagnostics == reason
    assert entries(tmp_path) == []  # rustc never ran


@pytest.mark.parametrize(
    "source",
    [
        pytest.param('// include_str!("/etc/passwd")\nfn main() {}', id="line-comment"),
        pytest.param('/* env!("X") /* nested */ include!("y") */\nfn main() {}', id="nested-block-comment"),
        pytest.param('fn main() { println!("use include_bytes!(x) and env!(y)"); }', id="string"),
        pytest.param('fn main() { let s = r#"env!("HOME") "quoted" "#; }', id="raw-string"),
        pytest.param("fn main() { let c = '\"'; let d = env_var!(); }", id="char-quote-and-other-macro"),
        pytest.param("fn main() { let a: Vec<String> = std::env::args().collect(); }", id="std-env-module"),
        pytest.param("extern crate libc;\nextern crate std as s;\nfn main() {}", id="extern-crate-libc"),
        pytest.param('extern "C" { #[link_name = "abs"] fn c_abs(x: i32) -> i32; }\nfn main() {}', id="link-name"),
        pytest.param("mod inline { pub fn f() {} }\nfn main() { inline::f() }", id="inline-module"),
        pytest.param("use std::env;\nfn main() { let home = env::var(\"HOME\"); let env = 1; }", id="env-module"),
        pytest.param("macro_rules! sq { ($x:expr) => { $x * $x } }\nfn main() { sq!(2); }", id="plain-macro"),
        pytest.param("fn main() { let (a, m) = (3u32, 1u32); let _ = (a + 1) * !m; }", id="bitwise-not"),
    ],
)
def test_harmless_lookalikes_are_allowed(source: str) -> None:
    """The same words in comments, strings and harmless constructs do not refuse a program."""
    assert forbidden_constructs(source) is None


@pytest.mark.parametrize(
    ("snippet", "named"),
    [
        pytest.param('use std::process::Command;', "runs another program (std::process::Command)", id="command"),
        pytest.param('use std::process::{exit, Command as C};', "(std::process::Command)", id="command-in-braces"),
        pytest.param('use std::os::unix::process::CommandExt;', "(std::process::CommandExt)", id="command-ext"),
        pytest.param('use std::process::*;', "(std::process::*)", id="process-glob"),
        pytest.param('use std::process as p;', "(std::process as ...)", id="process-renamed"),
        pytest.param('fn f() { unsafe { libc::execvp(a, b); } }', "runs another program (execvp)", id="execvp"),
        pytest.param('use libc::*; fn f() { unsafe { system(c); } }', "(system)", id="system-imported"),
        pytest.param('fn f() { unsafe { libc::syscall(59, a, b, c); } }', "(syscall)", id="syscall"),
        pytest.param('fn f() { unsafe { libc::dlsym(h, s); } }', "runs code it does not contain (dlsym)", id="dlsym"),
        pytest.param('fn f() { unsafe { libc::mprotect(p, 4096, 7); } }', "(mprotect)", id="mprotect"),
        pytest.param('#[link_section = ".text"]\nstatic CODE: [u8; 1] = [0xc3];', "(link_section)",
                     id="link-section"),
    ],
)
def test_a_program_that_runs_other_code_is_refused_unless_the_c_program_does(snippet: str, named: str) -> None:
    """Running other programs or code the source does not hold is refused before compiling, naming it; a C
    program that runs other code itself allows its translation to."""
    source = f"// header\n\n{snippet}\nfn main() {{}}\n"
    refused = refusal("unidiomatic", source)
    assert refused is not None and refused[0] == "refused"
    assert refused[1].startswith("line 3 ") and named in refused[1], refused[1]
    assert refusal("unidiomatic", source, c_runs_other_code=True) is None
    assert c_runs_other_code('int main(void) { return system("date"); }')
    assert not c_runs_other_code('int main(void) { puts("x"); return 0; }')


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("fn main() { std::process::exit(1); }", id="exit"),
        pytest.param("use std::process::{self, exit};\nfn main() { process::abort(); }", id="exit-and-abort"),
        pytest.param("impl Clone for X { fn clone(&self) -> X { X } }\nfn main() { let y = x.clone(); }",
                     id="clone"),
        pytest.param('fn main() { let system = 3; println!("system({})", system); }', id="variable-and-string"),
        pytest.param("// std::process::Command\nfn main() {}", id="comment"),
        pytest.param("fn process(n: i32) -> i32 { n }\nfn main() { let process_count = process(2);\n"
                     "    let process = 3i32; let total = process as u32 + process_count as u32; }",
                     id="c-function-and-variable-named-process"),
    ],
)
def test_programs_that_run_only_their_own_code_are_not_refused(source: str) -> None:
    """exit, abort, a clone method, a variable named like a libc function, comments: none runs other code."""
    assert foreign_code(source) is None


def test_masking_keeps_offsets_and_lines() -> None:
    """Masked text has the same length and line breaks; code outside literals is untouched."""
    source = 'let s = "a\\"b"; // c\nlet t = \'x\'; /* d\n e */ let u = 1;'
    masked = mask_comments_and_strings(source)
    assert len(masked) == len(source)
    assert masked.count("\n") == source.count("\n")
    assert masked.split() == ["let", "s", '=', '"', '";', "let", "t", "=", "'", "';", "let", "u", "=", "1;"]


# ---------------------------------------------------------------------------------------------------------
# Lints and the unsafe share


async def test_clippy_counts_lints_and_the_unsafe_share(toolchain: Toolchain, tmp_path: Path) -> None:
    """clippy_stats counts a known lint, and the unsafe share over non-blank lines."""
    source = (
        "fn plus_one(x: i32) -> i32 {\n"
        "    return x + 1;\n"
        "}\n"
        "\n"
        "fn main() {\n"
        "    let n = unsafe {\n"
        "        libc::abs(-3)\n"
        "    };\n"
        '    println!("{}", plus_one(n));\n'
        "}\n"
    )
    if toolchain.clippy is None:
        pytest.skip("clippy-driver is not installed")
    stats = await toolchain.clippy_stats(source, tmp_path)
    assert stats["lints"] == {"clippy::needless_return": 1}
    assert stats["total_warnings"] == 1
    assert (stats["unsafe_lines"], stats["total_lines"], stats["unsafe_blocks"]) == (3, 9, 1)
    assert stats["unsafe_fraction"] == pytest.approx(3 / 9, abs=1e-4)
    assert "clippy_error" not in stats


async def test_without_clippy_only_the_unsafe_share_is_reported(
    cache_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A missing clippy-driver is a warning at start-up; clippy_stats then says "unavailable"."""
    settings = ToolchainSettings(cache_dir=str(cache_dir), clippy_driver="no-such-clippy-driver")
    toolchain = await Toolchain.prepare(settings)
    assert toolchain.clippy is None
    assert any("no-such-clippy-driver" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    stats = await toolchain.clippy_stats("fn main() {\n    unsafe { libc::abort() }\n}\n", tmp_path)
    assert stats == {
        "clippy": "unavailable", "unsafe_lines": 1, "total_lines": 3, "unsafe_fraction": pytest.approx(1 / 3, abs=1e-4),
        "unsafe_blocks": 1, "unsafe_fns": 0,
    }


@pytest.mark.parametrize(
    ("source", "lines", "blocks", "fns"),
    [
        pytest.param("fn main() {\n    let x = 1;\n}\n", 0, 0, 0, id="safe"),
        pytest.param("fn main() {\n    unsafe { libc::abort() }\n}\n", 1, 1, 0, id="one-line-block"),
        pytest.param(
            "unsafe fn f(p: *const [u8; 4]) -> u8 {\n    (*p)[0]\n}\nfn main() {}\n", 3, 0, 1, id="unsafe-fn"
        ),
        pytest.param('fn main() {\n    // unsafe { }\n    let s = "unsafe {";\n}\n', 0, 0, 0, id="comment-and-string"),
        pytest.param(
            "#[unsafe(no_mangle)]\npub extern \"C\" fn f() {\n    let _ = 1;\n}\n", 0, 0, 0, id="unsafe-attribute"
        ),
        pytest.param(
            "fn main() {\n    unsafe {\n        unsafe { }\n\n    }\n}\n", 3, 2, 0, id="nested-blocks-blank-line"
        ),
        pytest.param("fn main() {\n    let safe_unsafe_code = 1;\n}\n", 0, 0, 0, id="identifier"),
    ],
)
def test_unsafe_share_counts_lines_inside_unsafe_regions(source: str, lines: int, blocks: int, fns: int) -> None:
    """Lines inside unsafe blocks and fns count once each; comments, strings and attributes do not."""
    stats = unsafe_stats(source)
    assert (stats["unsafe_lines"], stats["unsafe_blocks"], stats["unsafe_fns"]) == (lines, blocks, fns)
    assert stats["total_lines"] == len([line for line in source.splitlines() if line.strip()])


# ---------------------------------------------------------------------------------------------------------
# Preparing


async def test_prepare_reuses_the_libc_rlib(toolchain: Toolchain, cache_dir: Path) -> None:
    """A second prepare with the same cache finds the libc rlib instead of rebuilding it."""
    before = toolchain.libc_rlib.stat().st_mtime_ns
    again = await Toolchain.prepare(ToolchainSettings(cache_dir=str(cache_dir), clippy=False))
    assert again.libc_rlib == toolchain.libc_rlib
    assert again.libc_rlib.stat().st_mtime_ns == before
    assert toolchain.libc_rlib.is_relative_to(cache_dir)
    assert again.rustc_version.startswith("rustc ")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        pytest.param({"rustc": "no-such-rustc-xyz"}, r"\[toolchain\] rustc = 'no-such-rustc-xyz' was not found",
                     id="missing-rustc"),
        pytest.param({"libc_source": "/nonexistent/libc"}, r"libc_source.*apt-get install -y librust-libc-dev",
                     id="bad-libc-source"),
    ],
)
async def test_prepare_explains_a_broken_toolchain(
    tmp_path: Path, settings: dict[str, str], message: str
) -> None:
    """A missing compiler or libc source stops the run with the fix in the message."""
    with pytest.raises(ConfigError, match=message):
        await Toolchain.prepare(ToolchainSettings(cache_dir=str(tmp_path), **settings))  # type: ignore[arg-type]


async def test_the_linkers_temporary_files_go_beside_the_build(cache_dir: Path, tmp_path: Path) -> None:
    """rustc (and cc, the linker driver it runs) gets TMPDIR = the build directory: the sandbox's scratch
    space, a tmpfs when there is one, removed with the build (#16), not the machine's /tmp."""
    import shutil
    import stat

    real = shutil.which("rustc")
    assert real is not None
    seen = tmp_path / "seen"
    # The toolchain skips rustup's proxy for the compiler in the sysroot: this one names itself as that.
    wrapper = tmp_path / "sysroot" / "bin" / "rustc"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(
        f'#!/bin/sh\nif [ "$*" = "--print sysroot" ]; then echo {tmp_path / "sysroot"}; exit 0; fi\n'
        f'echo "$TMPDIR" >> {seen}\nexec {real} "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    toolchain = await Toolchain.prepare(ToolchainSettings(cache_dir=str(cache_dir), rustc=str(wrapper),
                                                          compile_cache=False, clippy=False))
    seen.write_text("")
    build = tmp_path / "build"
    build.mkdir()
    assert (await toolchain.build(unique(GOOD), build)).ok
    assert seen.read_text().split() == [str(build)]
