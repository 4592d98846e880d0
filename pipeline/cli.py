"""The command line: ``run`` (the default), ``translate``, ``check``. The only module that prints.

Exit status: 0 every task verified both stages; 1 the run finished but some tasks failed (or inputs were
skipped); 2 bad usage, configuration or input directories; 3 the model server is unusable; 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from . import __version__
from .config import Config, load_config, redact_url
from .discovery import classify_test_file
from .engine import EXIT_INTERRUPTED, RunOptions, open_services, run_batch
from .errors import ConfigError, FatalError
from .progress import LogReporter, Reporter, TqdmReporter
from .results import write_task_results
from .task import Task

log = logging.getLogger("pipeline")

#: Keys a jobs/*.toml file may set, with the flag each stands for.
JOB_KEYS = {
    "c_files": "c_files", "json_files": "json_files", "output": "output", "config": "config",
    "workers": "workers", "jobs": "jobs", "model": "model", "base_url": "base_url", "num_tests": "num_tests",
    "max_attempts": "max_attempts", "test_timeout": "test_timeout", "max_tokens": "max_tokens",
    "temperature": "temperature", "retry_failed": "retry_failed", "feed": "feed", "outage_budget": "outage_budget",
    "request_timeout": "request_timeout",
}
_PATH_KEYS = ("c_files", "json_files", "output", "config")


def _model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model server (override sactor.toml and VLLM_* environment variables)")
    g.add_argument("--config", type=Path, help="settings file (default: ./sactor.toml if present)")
    g.add_argument("--base-url", help="OpenAI-compatible base URL ending in /v1, e.g. http://localhost:8000/v1")
    g.add_argument("--model", help="model name as the server serves it")
    g.add_argument("--api-key", help="API key, if the server wants one (never printed)")
    g.add_argument("--max-tokens", type=int, help="cap on generated tokens per request")
    g.add_argument("--temperature", type=float)
    g.add_argument("--request-timeout", type=float, help="seconds one request may take")
    g.add_argument("--outage-budget", type=float, help="seconds the server may be unreachable before the run stops")
    g.add_argument("--stream", action="store_true", default=None, help="stream answers (SSE)")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    g.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def _translation_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("translation")
    g.add_argument("--workers", type=int, help="model requests in flight (default 8)")
    g.add_argument("--jobs", type=int, help="compile and test processes at once (default: CPU cores)")
    g.add_argument("--num-tests", type=int, help="use the first N tests of each task (default: all)")
    g.add_argument("--max-attempts", type=int, help="attempts per stage (SACToR's max_translation_attempts)")
    g.add_argument("--test-timeout", type=float, help="seconds per test command (default 60)")
    g.add_argument("--no-idiomatic", dest="idiomatic", action="store_false", default=None,
                   help="stop after the unidiomatic stage")
    g.add_argument("--strict-sandbox", action="store_true", default=None,
                   help="refuse to run when full isolation is not available")
    g.add_argument("--cache-dir", help="where the libc rlib and the compile cache live")
    feed = g.add_mutually_exclusive_group()
    feed.add_argument("--feed-as-stdin", dest="feed", action="store_const", const="stdin",
                      help="for sample-list JSON files: give the input on stdin (default)")
    feed.add_argument("--feed-as-args", dest="feed", action="store_const", const="args",
                      help="for sample-list JSON files: give the input as arguments")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batch_translate_generic.py",
        description="Translate C programs to Rust with a self-hosted model: unidiomatic, then idiomatic; "
                    "each compiled, tested and repaired.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="translate a corpus (the default command)")
    run.add_argument("--c-files", type=Path, help="directory of C files")
    run.add_argument("--json-files", type=Path, help="directory of JSON test tasks (may equal --c-files)")
    run.add_argument("--output", type=Path, help="results directory (one folder per task, batch_summary.json)")
    run.add_argument("--job", type=Path, help="a jobs/*.toml corpus-run definition; flags override it")
    run.add_argument("--retry-failed", action="store_true", default=None, help="redo tasks that failed before")
    run.add_argument("--force", action="store_true", help="redo every task, even finished ones")
    run.add_argument("--progress-interval", type=float, default=30.0,
                     help="seconds between progress lines when not on a terminal")
    _model_options(run)
    _translation_options(run)
    tr = sub.add_parser("translate", help="translate one C file (like `sactor translate`)")
    tr.add_argument("c_file", type=Path)
    tr.add_argument("test_file", type=Path, help="its JSON test task (or sample list)")
    tr.add_argument("-r", "--result-dir", type=Path, required=True)
    _model_options(tr)
    _translation_options(tr)
    ck = sub.add_parser("check", help="check the model server: models, context length, one short request")
    _model_options(ck)
    return parser


def _apply_job(args: argparse.Namespace) -> None:
    """Fill unset options from a jobs/*.toml file (relative paths are relative to the job file)."""
    path: Path = args.job
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: job file not found: check the --job path") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    job = data.get("job", data)
    for key, value in job.items():
        if key not in JOB_KEYS:
            raise ConfigError(f"{path}: [job] unknown key '{key}'; known keys: {', '.join(sorted(JOB_KEYS))}")
        attr = JOB_KEYS[key]
        if key in _PATH_KEYS:
            value = (path.parent / str(value)).resolve()
        if getattr(args, attr, None) in (None, False):
            setattr(args, attr, value)


def _config(args: argparse.Namespace) -> Config:
    flags: dict[str, Any] = {}
    for name in ("base_url", "api_key", "model", "max_tokens", "temperature", "workers", "jobs", "num_tests",
                 "max_attempts", "test_timeout", "request_timeout", "outage_budget", "feed", "stream",
                 "idiomatic", "cache_dir"):
        value = getattr(args, name, None)
        if value is not None:
            flags[name] = value
    if getattr(args, "strict_sandbox", None):
        flags["strict_sandbox"] = True
    return load_config(args.config, flags=flags)


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "httpx2", "httpcore", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _shown_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` as it may be stored and shown (the run lock, the summary): no API key, no URL credentials."""
    shown: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            shown.append("***")
            hide_next = False
        elif len(arg) > 4 and "--api-key".startswith(arg):  # argparse also takes an abbreviation
            shown.append(arg)
            hide_next = True
        elif "=" in arg and len(flag := arg.partition("=")[0]) > 4 and "--api-key".startswith(flag):
            shown.append(f"{flag}=***")
        else:
            shown.append(redact_url(arg) if "://" in arg else arg)
    return shown


def _cmd_run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.job is not None:
        _apply_job(args)
    missing = [f for f, v in (("--c-files", args.c_files), ("--json-files", args.json_files),
                              ("--output", args.output)) if v is None]
    if missing:
        print(f"error: {', '.join(missing)} required (or give --job FILE)", file=sys.stderr)
        return 2
    for flag, directory in (("--c-files", args.c_files), ("--json-files", args.json_files)):
        if not directory.is_dir():
            print(f"error: {flag} {directory}: not a directory", file=sys.stderr)
            return 2
    config = _config(args)
    options = RunOptions(
        c_dir=args.c_files, json_dir=args.json_files, output=args.output,
        retry_failed=bool(args.retry_failed), force=args.force,
        command=shlex.join(["batch_translate_generic.py", *_shown_argv(argv)]),
    )
    reporter: Reporter = TqdmReporter() if sys.stderr.isatty() else LogReporter(args.progress_interval)
    print(f"model {config.model.model} at {config.model.base_url}; {config.client.workers} requests in flight, "
          f"{config.run.jobs} compile/test jobs; results in {args.output}", file=sys.stderr)
    outcome = anyio.run(lambda: run_batch(config, options, reporter=reporter))
    for line in outcome.table:
        print(line)
    if outcome.summary:
        print(f"results: {args.output}/<task>/ ; summary: {args.output / 'batch_summary.json'}")
    if outcome.message:
        print(("error: " if outcome.exit_code not in (0, EXIT_INTERRUPTED) else "") + outcome.message,
              file=sys.stderr)
    return outcome.exit_code


async def _translate_one(config: Config, args: argparse.Namespace) -> int:
    task = Task(id=args.c_file.stem, c_path=args.c_file.resolve(), test_path=args.test_file.resolve(),
                test_kind=classify_test_file(args.test_file), feed=config.run.feed)
    from .translate import input_hash, translate_task

    async with open_services(config) as (env, _info):
        result, transcript = await translate_task(env, task, input_hash(task))
        await write_task_results(args.result_dir, result, transcript)
    for stage in result.stages:
        print(f"{stage.stage}: {stage.status} after {len(stage.attempts)} attempt(s)"
              + (f": {stage.reason}" if stage.reason else ""))
    if result.reason:
        print(f"failed: {result.reason}")
    print(f"results: {args.result_dir}")
    return 0 if result.status == "verified" else 1


def _cmd_translate(args: argparse.Namespace) -> int:
    for label, path in (("C file", args.c_file), ("test file", args.test_file)):
        if not path.is_file():
            print(f"error: {label} {path} does not exist", file=sys.stderr)
            return 2
    config = _config(args)
    return anyio.run(_translate_one, config, args)


def _cmd_check(args: argparse.Namespace) -> int:
    from .check import run_check

    config = _config(args)
    report = anyio.run(run_check, config)
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["run", *argv]
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    try:
        if args.command == "run":
            return _cmd_run(args, argv[1:])
        if args.command == "translate":
            return _cmd_translate(args)
        if args.command == "check":
            return _cmd_check(args)
        parser.print_help()
        return 2
    except FatalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
