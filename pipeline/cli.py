"""The command line: ``run`` (the default), ``translate``, ``check``, ``report``, ``generate-tests``. The only
module that prints.

Exit status: 0 every task verified both stages; 1 the run finished but some tasks failed (or inputs were
skipped); 2 bad usage, configuration or input directories; 3 the model server is unusable; 130 interrupted.

The setting flags come from :data:`pipeline.config.SETTINGS` (one table for keys, flags, variables and job
keys); this module adds the corpus flags and the job file's own keys. Nothing it prints or logs shows the API
key or credentials in the server URL.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import math
import os
import re
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import anyio

from . import __version__
from .config import JOB_SETTINGS, SETTINGS, Config, load_config, read_toml
from .discovery import classify_test_file
from .engine import RunOptions, open_services, run_batch
from .errors import EXIT_INTERRUPTED, EXIT_USAGE, ConfigError, FatalError
from .ledger import run_lock
from .progress import LogReporter, Reporter, TqdmReporter
from .results import kept_inputs, write_task_results
from .task import Task

log = logging.getLogger("pipeline")

#: A job file's own keys (besides the settings of JOB_SETTINGS): paths are relative to the job file.
JOB_PATHS = ("c_files", "json_files", "output", "config")
JOB_SWITCHES = ("retry_failed",)
JOB_KEYS = (*JOB_PATHS, *JOB_SWITCHES, *JOB_SETTINGS)


class UsageError(Exception):
    """Bad usage found by the CLI itself: exit 2 with the message."""


# --------------------------------------------------------------------------------------------------------
# Arguments


def _setting_flags(group: argparse._ArgumentGroup, panel: str, names: Sequence[str] = ()) -> None:
    for s in SETTINGS:
        if s.panel != panel or (names and s.name not in names):
            continue
        if s.flag:
            metavar = s.metavar or ("N" if s.kind is int else "SECONDS" if s.kind is float else "VALUE")
            group.add_argument(s.flag, dest=s.name, metavar=metavar, help=s.help,
                               action="append" if s.many else "store")
        if len(s.switches) == 1:
            flag, value, text = s.switches[0]
            group.add_argument(flag, dest=s.name, action="store_const", const=value, help=text)
        elif s.switches:
            exclusive = group.add_mutually_exclusive_group()
            for flag, value, text in s.switches:
                exclusive.add_argument(flag, dest=s.name, action="store_const", const=value, help=text)


def _server_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model server (override sactor.toml and VLLM_* environment variables)")
    g.add_argument("--config", type=Path, metavar="FILE",
                   help="settings file (default: $SACTOR_CONFIG, or ./sactor.toml if present)")
    _setting_flags(g, "server")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    g.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def _translation_options(p: argparse.ArgumentParser) -> None:
    _setting_flags(p.add_argument_group("translation"), "translation")


def _corpus_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("corpus (the default command, `run`)")
    g.add_argument("--c-files", type=Path, metavar="DIR", help="directory of C files")
    g.add_argument("--json-files", type=Path, metavar="DIR", help="directory of JSON test tasks (may equal --c-files)")
    g.add_argument("--output", type=Path, metavar="DIR",
                   help="results directory (one folder per task, batch_summary.json)")
    g.add_argument("--job", type=Path, metavar="FILE", help="a jobs/*.toml corpus-run definition; flags override it")
    g.add_argument("--retry-failed", action="store_const", const=True, help="redo tasks that failed before")
    g.add_argument("--force", action="store_true", help="redo every task, even finished ones")
    g.add_argument("--progress-interval", type=_seconds, default=30.0, metavar="SECONDS",
                   help="seconds between progress lines when not on a terminal")


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds greater than zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a finite number of seconds greater than zero")
    return value


def _run_options(p: argparse.ArgumentParser) -> None:
    _corpus_options(p)
    _server_options(p)
    _translation_options(p)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line. Its own help shows the corpus flags, as the original script's did."""
    parser = argparse.ArgumentParser(
        prog="batch_translate_generic.py",
        usage="%(prog)s [run] --c-files DIR --json-files DIR --output DIR [options]\n"
              "       %(prog)s translate C_FILE TEST_FILE -r RESULT_DIR [options]\n"
              "       %(prog)s check [options]\n"
              "       %(prog)s report OUT [OUT2 ...] [-o report.html] [--format html|md|json]\n"
              "       %(prog)s generate-tests C_FILE_OR_DIR... [--input TEXT] [--seeds FILE] [options]",
        description="Translate C programs to Rust with a self-hosted model: unidiomatic, then idiomatic; "
                    "each compiled, tested and repaired. Without a command, the flags are those of `run`.",
        epilog="`%(prog)s COMMAND --help` shows a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # Shown in the top-level help; parsing goes through the `run` sub-command (main() inserts it).
    _run_options(parser)
    sub = parser.add_subparsers(dest="command", title="commands",
                                metavar="{run,translate,check,report,generate-tests}",
                                prog=parser.prog)
    run = sub.add_parser("run", help="translate a corpus (the default command)")
    _run_options(run)
    tr = sub.add_parser("translate", help="translate one C file (like `sactor translate`)")
    tr.add_argument("c_file", type=Path)
    tr.add_argument("test_file", type=Path, help="its JSON test task (or sample list)")
    tr.add_argument("-r", "--result-dir", type=Path, required=True, help="results directory")
    _server_options(tr)
    _translation_options(tr)
    ck = sub.add_parser("check", help="check the model server: models, context length, one short request")
    _server_options(ck)
    rp = sub.add_parser("report", help="an HTML (or Markdown, JSON) report of finished runs, compared side by side")
    rp.add_argument("outputs", type=Path, nargs="+", metavar="OUT", help="--output folders of finished runs")
    rp.add_argument("-o", type=Path, dest="report_file", metavar="FILE",
                    help="where to write it (default: OUT/report.html for html, standard output for md and json)")
    rp.add_argument("--format", choices=("html", "md", "json"), default="html", help="default: html")
    rp.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    rp.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    _generate_tests_parser(sub)
    return parser


def _generate_tests_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gt = sub.add_parser(
        "generate-tests", help="write SACToR tests (NAME.json, NAME_samples.json) for C files without tests",
        description="Record tests from the C program itself (like `sactor generate-tests`): seed inputs you give "
                    "and inputs the model proposes, kept only where the C program is deterministic, ends in "
                    "time and is clean under ASan/UBSan.")
    gt.add_argument("paths", type=Path, nargs="+", metavar="C_FILE_OR_DIR", help="a C file or a folder of them")
    gt.add_argument("--input", dest="seed_inputs", action="append", default=[], metavar="TEXT",
                    help="a seed input (repeatable), for every program")
    gt.add_argument("--seeds", type=Path, metavar="FILE",
                    help="seed inputs: a JSON list of strings or of {\"input\": ...} samples, for every program; "
                         "or a folder of NAME_seeds.json (keep it apart from the C files)")
    gt.add_argument("--model-inputs", type=_count, default=0, metavar="N",
                    help="also ask the model for N inputs (talks to the configured server)")
    gt.add_argument("--mutations", type=_count, default=0, metavar="N",
                    help="also keep up to N mutations of the inputs (numbers perturbed, tokens dropped, ...)")
    gt.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the mutations' order (default 0)")
    gt.add_argument("-o", "--output", type=Path, metavar="DIR", help="where to write (default: beside each C file)")
    gt.add_argument("--force", action="store_true", help="replace existing NAME.json and NAME_samples.json")
    _server_options(gt)
    _setting_flags(gt.add_argument_group("running the C program"), "translation",
                   ("feed", "jobs", "test_timeout", "cache_dir"))


def _count(text: str) -> int:
    """An argparse type: a whole number from 0 to 100."""
    if not text.isdigit() or int(text) > 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 0 to 100")
    return int(text)


# --------------------------------------------------------------------------------------------------------
# Job files and settings


def _read_job(args: argparse.Namespace) -> dict[str, Any]:
    """Fill unset corpus options from a jobs/*.toml file; return its settings (relative paths: to the file)."""
    path: Path = args.job
    data = read_toml(path, "job file", "the --job path")
    job = data.get("job", data)
    if not isinstance(job, dict):
        raise ConfigError(f"{path}: [job] must be a table of settings")
    settings: dict[str, Any] = {}
    for key, value in job.items():
        if key not in JOB_KEYS:
            raise ConfigError(f"{path}: [job] unknown key '{key}'; known keys: {', '.join(sorted(JOB_KEYS))}")
        if key in JOB_PATHS:
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{path}: [job] {key} must be a path (text), not {type(value).__name__} "
                                  f"{value!r}: write it like {key} = \"../corpus\"")
            if getattr(args, key) is None:
                setattr(args, key, (path.parent / value).resolve())
                if key == "config":
                    args.config_hint = f"{path}: [job] config"
        elif key in JOB_SWITCHES:
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: [job] {key} must be true or false, not {type(value).__name__} "
                                  f"{value!r}")
            if getattr(args, key) is None:
                setattr(args, key, value)
        else:
            settings[key] = value
    return settings


def _config(args: argparse.Namespace, job: dict[str, Any] | None = None) -> Config:
    flags = {s.name: getattr(args, s.name, None) for s in SETTINGS}
    if flags.get("api_key") is not None:
        log.warning("--api-key puts the key on the command line, where other users of this machine can see it "
                    "(ps): prefer VLLM_API_KEY or [VLLM] api_key in a file only you can read")
    config = load_config(
        args.config, flags=flags, job=job, job_path=getattr(args, "job", None),
        path_hint=getattr(args, "config_hint", "the --config path"),
    )
    _SCRUB.learn(config)
    return config


def _check_output(path: Path, flag: str) -> None:
    """Create the results directory ``path`` if needed; UsageError when it cannot hold results."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file, not a directory: name a directory (it is created if missing)")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{flag} {path}: {parent} is a file, so no directory can be created under it: "
                                 f"name a directory")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UsageError(f"{flag} {path} is not writable ({exc.strerror}): name a directory you can write to") \
            from None


# --------------------------------------------------------------------------------------------------------
# What the user sees: never a key, never credentials in a URL


class _Scrubber(logging.Filter):
    """Replaces the API key and a URL's credentials in every line the CLI prints or logs."""

    def __init__(self) -> None:
        super().__init__()
        self.patterns: list[tuple[re.Pattern[str], str]] = []

    def learn(self, config: Config) -> None:
        model = config.model
        for url in (model.base_url, *(e.base_url for e in model.endpoints)):
            scheme, _, rest = url.partition("://")
            userinfo = rest.partition("/")[0].rpartition("@")[0]
            if userinfo:
                # Any form of the URL (with or without /v1, as the client's root URL) shows the same authority.
                self.patterns.append((re.compile(re.escape(f"{scheme}://{userinfo}@")), f"{scheme}://***@"))
        for key in (model.api_key, *(e.api_key for e in model.endpoints)):
            if key and key != "EMPTY":
                # A whole-token match: a short key such as "test" must not blank out "tests".
                self.patterns.append((re.compile(rf"(?<![\w.-]){re.escape(key)}(?![\w.-])"), "***"))

    def __call__(self, text: str) -> str:
        for pattern, shown in self.patterns:
            text = pattern.sub(shown, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.patterns:
            record.msg, record.args = self(record.getMessage()), None
        return True


_SCRUB = _Scrubber()


def _say(text: str, *, err: bool = False) -> None:
    print(_SCRUB(text), file=sys.stderr if err else sys.stdout)


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_SCRUB)
    for noisy in ("httpx", "httpx2", "httpcore", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# --------------------------------------------------------------------------------------------------------
# Commands


def _cmd_run(args: argparse.Namespace) -> int:
    job = _read_job(args) if args.job is not None else None
    missing = [f for f, v in (("--c-files", args.c_files), ("--json-files", args.json_files),
                              ("--output", args.output)) if v is None]
    if missing:
        raise UsageError(f"{', '.join(missing)} required (or give --job FILE)")
    for flag, directory in (("--c-files", args.c_files), ("--json-files", args.json_files)):
        if not directory.is_dir():
            raise UsageError(f"{flag} {directory}: not a directory")
    config = _config(args, job)
    _check_output(args.output, "--output")
    options = RunOptions(c_dir=args.c_files, json_dir=args.json_files, output=args.output,
                         retry_failed=bool(args.retry_failed), force=args.force)
    reporter: Reporter = TqdmReporter() if sys.stderr.isatty() else LogReporter(args.progress_interval)
    servers = (", ".join(e.public_url for e in config.model.endpoints) if config.model.endpoints
               else config.model.public_url)
    _say(f"model {config.model.model} at {servers}; {config.client.workers} requests in flight, "
         f"{config.run.jobs} compile/test jobs; results in {args.output}", err=True)
    outcome = anyio.run(lambda: run_batch(config, options, reporter=reporter))
    for line in outcome.table:
        _say(line)
    if outcome.summary:
        _say(f"results: {args.output}/<task>/ ; summary: {args.output / 'batch_summary.json'}")
    if outcome.message:
        _say(("error: " if outcome.exit_code not in (0, EXIT_INTERRUPTED) else "") + outcome.message, err=True)
    return outcome.exit_code


async def _translate_one(config: Config, args: argparse.Namespace) -> int:
    task = Task(id=args.c_file.stem, c_path=args.c_file.resolve(), test_path=args.test_file.resolve(),
                test_kind=classify_test_file(args.test_file), feed=config.run.feed)
    from .translate import read_task, translate_task

    state: dict[str, str] = {}
    failure: Exception | None = None
    hidden = (task.c_path.parent, task.test_path.parent, args.result_dir)  # where the expected outputs are
    async with open_services(config, hidden=hidden) as services, anyio.create_task_group() as tg:

        async def watch() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    state["interrupted"] = signal.Signals(signum).name
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch)
        try:
            files = await read_task(task)
            result, transcript = await translate_task(services.env, task, files.digest, files,
                                                      result_dir=args.result_dir)
            with anyio.CancelScope(shield=True):
                await write_task_results(args.result_dir, result, transcript)
        except Exception as exc:
            failure = exc  # raised below as it is, not inside the task group's exception group
        tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
    if "interrupted" in state:
        _say(f"interrupted by {state['interrupted']}", err=True)
        return EXIT_INTERRUPTED
    for stage in result.stages:
        verdict = stage.attempts[-1].message if stage.verified and stage.attempts else stage.reason
        _say(f"{stage.stage}: {stage.status} after {len(stage.attempts)} attempt(s)"
             + (f": {verdict}" if verdict else ""))
    report = result.differential or {}
    if report.get("note") or report.get("tried"):
        _say(f"differential: {report['note'] or kept_inputs(report) + '; saved as differential_samples.json'}")
    if result.reason:
        _say(f"failed: {result.reason}")
    _say(f"results: {args.result_dir}")
    return 0 if result.status == "verified" else 1


def _cmd_translate(args: argparse.Namespace) -> int:
    for label, path in (("C file", args.c_file), ("test file", args.test_file)):
        if not path.is_file():
            raise UsageError(f"{label} {path} does not exist")
    _check_output(args.result_dir, "-r/--result-dir")
    config = _config(args)
    with run_lock(args.result_dir, flag="-r/--result-dir"):
        return anyio.run(_translate_one, config, args)


def _cmd_check(args: argparse.Namespace) -> int:
    from .check import run_checks

    config = _config(args)
    reports = anyio.run(run_checks, config)
    if len(reports) > 1:
        ok = sum(r.ok for r in reports)
        _say(f"{len(reports)} model servers: {ok} OK, {len(reports) - ok} FAILED")
    for number, report in enumerate(reports):
        if number:
            _say("")
        for line in report.lines():
            _say(line)
    return 0 if all(r.ok for r in reports) else 1


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import ReportError, compare
    from .report_render import render
    from .results import atomic_write_text

    target: Path | None = args.report_file
    if target is None and args.format == "html":
        target = args.outputs[0] / "report.html"
    try:
        data = compare(args.outputs)
        text = render(data, args.format, (target or Path.cwd()).absolute().parent)
    except ReportError as exc:
        raise UsageError(str(exc)) from None
    if target is None:
        sys.stdout.write(text)
        return 0
    try:
        atomic_write_text(target, text)
    except OSError as exc:
        raise UsageError(f"-o {target} cannot be written ({exc.strerror or exc}): name a writable file") from None
    _say(f"report: {target}")
    return 0


def _cmd_generate_tests(args: argparse.Namespace) -> int:
    from .gentests import GenerateOptions, c_files_of, describe, generate_tests

    config = _config(args)
    if args.output is not None:
        _check_output(args.output, "--output")
    if args.seeds is not None and not args.seeds.exists():
        raise UsageError(f"--seeds {args.seeds} does not exist: name a JSON file of inputs or a folder of "
                         f"NAME_seeds.json")
    options = GenerateOptions(
        c_files=tuple(c_files_of(args.paths)), inputs=tuple(args.seed_inputs), seeds=args.seeds,
        output=args.output, model_inputs=args.model_inputs, mutations=args.mutations, seed=args.seed,
        force=args.force)
    results = anyio.run(generate_tests, config, options)
    for result in results:
        for line in describe(result):
            _say(line)
    written = sum(r.task_path is not None for r in results)
    skipped = sum(r.skipped is not None for r in results)
    _say(f"tests written for {written} of {len(results)} C files"
         + (f" ({skipped} skipped: they have tests)" if skipped else ""))
    return 0 if all(r.ok for r in results) else 1


def _pidfd_usable() -> bool:
    try:
        fd = os.pidfd_open(os.getpid())
    except (AttributeError, OSError):  # not Linux, a kernel before 5.3, or a seccomp filter that refuses it
        return False
    os.close(fd)
    return True


def install_child_watcher() -> bool:
    """Wait for child processes with pidfds on Python 3.10/3.11, as 3.12 does by itself; True when installed.

    Their default, ``ThreadedChildWatcher``, starts a thread per child process to block in ``waitpid`` (a run
    starts several per task: rustc, the test programs). This watcher adds each child's pidfd to the event loop
    that started it instead, whichever loop and thread that is (a process-wide watcher bound to one loop, as
    asyncio's ``PidfdChildWatcher``, would break loops in other threads). Nothing changes on 3.12 and later, nor
    where pidfds are unavailable.
    """
    if sys.version_info >= (3, 12) or not _pidfd_usable():
        return False

    class PerLoopPidfdWatcher(asyncio.AbstractChildWatcher):
        def add_child_handler(  # type: ignore[override]  # typeshed's TypeVarTuple: args pass through
            self, pid: int, callback: Callable[..., object], *args: Any
        ) -> None:
            loop = asyncio.get_running_loop()
            pidfd = os.pidfd_open(pid)
            loop.add_reader(pidfd, self._reap, loop, pid, pidfd, callback, args)

        @staticmethod
        def _reap(
            loop: asyncio.AbstractEventLoop, pid: int, pidfd: int, callback: Callable[..., object], args: Any
        ) -> None:
            loop.remove_reader(pidfd)
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:  # reaped elsewhere: asyncio's watchers report 255 then too
                returncode = 255
                log.warning("child process %d: its exit status was read elsewhere; reporting 255", pid)
            else:
                returncode = os.waitstatus_to_exitcode(status)
            os.close(pidfd)
            callback(pid, returncode, *args)

        def remove_child_handler(self, pid: int) -> bool:
            return False  # a child's handler ends with the child; asyncio itself never removes one

        def attach_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
            pass  # every child is watched by the loop that started it

        def close(self) -> None:
            pass

        def is_active(self) -> bool:
            return True

        def __enter__(self) -> PerLoopPidfdWatcher:
            return self

        def __exit__(self, *exc_info: object) -> None:
            pass

    asyncio.set_child_watcher(PerLoopPidfdWatcher())
    return True


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["run", *argv]
    # Until the event loop takes the signals over, SIGTERM stops the CLI like Ctrl-C (exit 130, cleaned up).
    signal.signal(signal.SIGTERM, _interrupt)
    install_child_watcher()
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "translate":
            return _cmd_translate(args)
        if args.command == "check":
            return _cmd_check(args)
        if args.command == "report":
            return _cmd_report(args)


        if args.command == "generate-tests":
            return _cmd_generate_tests(args)
        parser.print_help()
        return EXIT_USAGE
    except UsageError as exc:
        _say(f"error: {exc}", err=True)
        return EXIT_USAGE
    except FatalError as exc:
        _say(("" if exc.exit_code == EXIT_INTERRUPTED else "error: ") + str(exc), err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        _say("interrupted", err=True)
        return EXIT_INTERRUPTED


#: Allocations between two collections of the garbage collector's youngest generation in the command's process.
GC_YOUNG_THRESHOLD = 10_000


def console_main() -> NoReturn:
    """The ``c2rust-batch`` command and ``batch_translate_generic.py``: :func:`main`, then the process ends with
    its exit code.

    The garbage collector's youngest generation is collected every :data:`GC_YOUNG_THRESHOLD` container
    allocations instead of every 700: a 150-task balanced run collects about 7 times instead of 120, and the
    objects of the tasks in flight are no longer walked again at every one (0.14 s of collections against
    0.105 s; #16, bench/README.md). The process's objects go back to the OS with it:
    frozen first, they are not walked once more by the interpreter's last garbage collection. Callers that go
    on after a run (tests, scripts) call :func:`main` instead.
    """
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
    code = main()
    gc.freeze()
    sys.exit(code)

