"""``generate-tests``: SACToR tests for C programs that come without any, recorded from the C program itself.

For each C file, the inputs are the user's seeds (``--input``, ``--seeds``), optionally inputs the model
proposes (``--model-inputs N``, :mod:`pipeline.proposals`) and mutations of those (``--mutations N``,
:func:`pipeline.differential.mutations`). The C program judges every input under the differential rules
(:func:`pipeline.differential.judge_inputs`: ends within the deadline, deterministic under a shifted clock,
clean under ASan and UBSan); the kept ones and the C program's outputs become

    OUT/NAME_samples.json   SACToR's samples format: [{"input": ..., "output": ...}, ...]
    OUT/NAME.json           a SACToR test task: one ``sactor run-tests --type bin ./NAME_samples.json %t I
                            --feed-as-stdin|--feed-as-args`` command per sample, with its ``test_id``

beside the C file by default (a flat corpus: ``--c-files DIR --json-files DIR`` then uses them as they are).
Unlike SACToR's generator, a non-zero exit status does not reject an input: ``run-tests`` does not judge it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from .config import Config
from .differential import MAX_INPUT_CHARS, TRIES_PER_INPUT, feedable, judge_inputs, mutations
from .errors import ConfigError, FatalError
from .interfaces import Model
from .llm import ModelClient
from .proposals import propose_inputs
from .sandbox import Limits, Sandbox
from .task import Feed

log = logging.getLogger(__name__)

SAMPLES_SUFFIX = "_samples.json"
SEEDS_SUFFIX = "_seeds.json"

REASONS = {
    "timeout": "did not end within the deadline",
    "output_limit": "printed more than the output cap",
    "crash": "the C program died of a signal",
    "nondeterministic": "the C program's output differs between two runs (time, rand() seeding, addresses)",
    "undefined_behaviour": "undefined behaviour under AddressSanitizer/UndefinedBehaviorSanitizer",
    "optimisation_dependent": "the output changes with gcc's optimisation level (e.g. a read of uninitialised memory)",
}


@dataclass(frozen=True)
class GenerateOptions:
    """What ``generate-tests`` was asked: C files, where their seeds and the results go, and how many more."""

    c_files: tuple[Path, ...]
    inputs: tuple[str, ...] = ()  # --input: seeds for every program
    # --seeds: a file (every program) or a folder of NAME_seeds.json (not the corpus folder: a batch run would
    # list those files as JSON without a C file)
    seeds: Path | None = None
    output: Path | None = None  # None: beside each C file
    model_inputs: int = 0
    mutations: int = 0
    seed: int = 0
    force: bool = False


@dataclass
class Generated:
    """The outcome for one C file: what was written (or why nothing was), and what the inputs came to."""

    c_path: Path
    task_path: Path | None = None
    samples_path: Path | None = None
    kept: dict[str, int] = field(default_factory=dict)  # source (seed, model, mutation) -> inputs kept
    tried: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count
    rejected_seeds: list[tuple[int, str, str]] = field(default_factory=list)  # (index, input, reason)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    skipped: str | None = None  # why nothing was needed (the file has tests already)

    @property
    def ok(self) -> bool:
        """Tests were written, or the file has some already."""
        return self.error is None and (self.task_path is not None or self.skipped is not None)


def c_files_of(paths: Sequence[Path]) -> list[Path]:
    """The C files named: a ``.c`` file as it is, a folder's ``*.c`` files (sorted, not recursive).

    Raises ConfigError naming the path when it is neither, or a folder without C files.
    """
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix == ".c" and p.is_file()
                           and not p.name.startswith("."))
            if not files:
                raise ConfigError(f"{path}: no .c files in this folder: name a C file or a folder of them")
            found.extend(files)
        elif path.is_file():
            if path.suffix != ".c":
                raise ConfigError(f"{path}: not a .c file: name a C file or a folder of them")
            found.append(path)
        else:
            raise ConfigError(f"{path}: no such file or folder")
    return list(dict.fromkeys(found))


def read_seeds(path: Path) -> list[str]:
    """Seed inputs from a JSON file: a list of strings, or SACToR samples (``{"input": ...}``; outputs are
    ignored, as SACToR's ``--test-samples-path``). Raises ConfigError naming the file and what is wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"--seeds {path}: cannot read it as JSON ({exc}): give a JSON list of input strings "
                          f"or of {{\"input\": ...}} samples") from None
    if not isinstance(data, list):
        raise ConfigError(f"--seeds {path}: the seeds must be a JSON list, not {type(data).__name__}")
    seeds: list[str] = []
    for index, item in enumerate(data):
        value = item.get("input") if isinstance(item, dict) else item
        if not isinstance(value, str):
            raise ConfigError(f"--seeds {path}: item {index} is not a string nor an object with a string "
                              f"\"input\"")
        seeds.append(value)
    return seeds


def _seeds_for(c_path: Path, options: GenerateOptions) -> list[str]:
    seeds = list(options.inputs)
    if options.seeds is not None:
        if options.seeds.is_dir():
            own = options.seeds / f"{c_path.stem}{SEEDS_SUFFIX}"
            if own.is_file():
                seeds += read_seeds(own)
        else:
            seeds += read_seeds(options.seeds)
    bad = [i for i, text in enumerate(seeds) if not feedable(text)]
    if bad:
        raise ConfigError(f"{c_path}: seed input {bad[0]} cannot be given to a program (a NUL character, a lone "
                          f"surrogate, or longer than {MAX_INPUT_CHARS} characters): remove it")
    return list(dict.fromkeys(seeds))


def test_task(samples_name: str, count: int, feed: Feed) -> list[dict[str, Any]]:
    """The SACToR test task running each of ``count`` samples of ``samples_name`` (beside the task)."""
    flag = "--feed-as-args" if feed == "args" else "--feed-as-stdin"
    return [{"command": f"sactor run-tests --type bin ./{samples_name} %t {i} {flag}", "test_id": i}
            for i in range(count)]


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


async def generate_tests(config: Config, options: GenerateOptions) -> list[Generated]:
    """Tests for every C file of ``options``, one :class:`Generated` each, in order.

    Files are judged concurrently (``config.run.jobs`` processes at a time). Raises ConfigError for unusable
    seeds or output paths, ModelUnavailable when ``--model-inputs`` is asked and the server cannot be used.
    """
    if options.output is not None:
        stems: dict[str, Path] = {}
        for path in options.c_files:
            if path.stem in stems:
                raise ConfigError(f"{stems[path.stem]} and {path} would both write {path.stem}.json into --output "
                                  f"{options.output}: generate them in two runs, or without --output (beside each)")
            stems[path.stem] = path
    seeds = [await anyio.to_thread.run_sync(_seeds_for, path, options) for path in options.c_files]
    async with AsyncExitStack() as stack:
        sandbox = await stack.enter_async_context(Sandbox.open(
            config.sandbox, cache_dir=config.toolchain.resolved_cache_dir()
        ))
        model: Model | None = None
        if options.model_inputs > 0:
            client = await stack.enter_async_context(ModelClient.open(
                config.model, config.client, limiter=anyio.CapacityLimiter(config.client.workers)))
            await client.preflight()
            model = client
        cpu = anyio.CapacityLimiter(max(1, config.run.jobs))
        limits = sandbox.limits(wall_seconds=config.translation.test_timeout,
                                output_bytes=config.translation.output_byte_limit)
        results: list[Generated] = [Generated(path) for path in options.c_files]
        fatal: list[FatalError] = []
        # Files in flight: enough to keep the model's slots and the CPU busy, not the whole folder at once.
        in_flight = anyio.CapacityLimiter(max(1, config.run.jobs) + (config.client.workers if model else 0))

        async def one(result: Generated, own_seeds: list[str]) -> None:
            try:
                async with in_flight:
                    await _one(result, own_seeds, config, options, sandbox, cpu, limits, model)
            except FatalError as exc:  # the model server went away: stop, and say so as it is
                fatal.append(exc)
                tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            for result, own_seeds in zip(results, seeds, strict=True):
                tg.start_soon(one, result, own_seeds)
        if fatal:
            raise fatal[0]
        return results


async def _one(result: Generated, seeds: list[str], config: Config, options: GenerateOptions, sandbox: Sandbox,
               cpu: anyio.CapacityLimiter, limits: Limits, model: Model | None) -> None:
    c_path = result.c_path
    out_dir = options.output or c_path.parent
    task_path = out_dir / f"{c_path.stem}.json"
    samples_path = out_dir / f"{c_path.stem}{SAMPLES_SUFFIX}"
    existing = [p for p in (task_path, samples_path) if await anyio.to_thread.run_sync(p.exists)]
    if existing and not options.force:
        result.skipped = (f"it has tests already ({existing[0]} exists); left as it is (--force replaces them, "
                          f"--output DIR writes elsewhere)")
        return
    try:
        c_source = await anyio.to_thread.run_sync(lambda: c_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        result.error = f"cannot read the C file: {exc}"
        return
    feed: Feed = config.run.feed
    proposed: list[str] = []
    if model is not None:
        proposal = await propose_inputs(model, name=c_path.name, c_source=c_source, feed=feed, examples=seeds,
                                        count=options.model_inputs)
        proposed = [text for text in proposal.inputs if text not in seeds]
        if proposal.problem:
            result.notes.append(f"model proposals: {proposal.problem}")
    if not seeds and not proposed:
        result.error = ("no inputs to record: give seed inputs (--input TEXT, --seeds FILE, or --seeds DIR holding "
                        f"{c_path.stem}{SEEDS_SUFFIX})"
                        + ("" if model is not None else " or ask the model (--model-inputs N)"))
        return
    base = [*seeds, *proposed]
    mutated = mutations(base, feed, options.seed)[: options.mutations * TRIES_PER_INPUT]
    source = {**{t: "mutation" for t in mutated}, **{t: "model" for t in proposed}, **{t: "seed" for t in seeds}}
    oracle, reasons = await judge_inputs(c_source, feed, [*base, *mutated], sandbox=sandbox, cpu=cpu,
                                         limits=limits, cache_dir=config.toolchain.resolved_cache_dir())
    if oracle.note:
        result.error = oracle.note
        return
    kept = [item for item in oracle.inputs if source[item.input] != "mutation"]
    kept += [item for item in oracle.inputs if source[item.input] == "mutation"][: options.mutations]
    for kind in source.values():  # every candidate is judged: the budget is the whole list
        result.tried[kind] = result.tried.get(kind, 0) + 1
    result.rejected = dict(oracle.rejected)
    for item in kept:
        result.kept[source[item.input]] = result.kept.get(source[item.input], 0) + 1
    result.rejected_seeds = [(i, text, REASONS.get(reasons[text], reasons[text]))
                             for i, text in enumerate(seeds) if text in reasons]
    if not kept:
        result.error = "no input was kept (every one was rejected), so no tests were written"
        return
    if all(not item.output for item in kept):
        result.notes.append("the C program printed nothing on every kept input: these tests prove little "
                            "(a batch run reports them as tests that do not exercise the program)")
    samples = [{"input": item.input, "output": item.output} for item in kept]
    try:
        await anyio.to_thread.run_sync(_write_json, samples_path, samples)
        await anyio.to_thread.run_sync(_write_json, task_path, test_task(samples_path.name, len(samples), feed))
    except OSError as exc:
        result.error = f"cannot write the tests into {out_dir}: {exc.strerror or exc}"
        return
    result.task_path, result.samples_path = task_path, samples_path


def describe(result: Generated) -> list[str]:
    """What the CLI prints for one C file."""
    name = result.c_path
    lines: list[str] = []
    tried = sum(result.tried.values())
    if result.skipped is not None:
        lines.append(f"{name}: skipped: {result.skipped}")
    elif result.ok:
        kept = sum(result.kept.values())
        parts = ", ".join(f"{count} {kind}" for kind, count in result.kept.items())
        rejected = sum(result.rejected.values())
        why = "; ".join(f"{count} {reason}" for reason, count in sorted(result.rejected.items()))
        lines.append(f"{name}: {kept} tests ({parts}) from {tried} inputs tried"
                     + (f", {rejected} rejected ({why})" if rejected else "")
                     + f" -> {result.task_path}, {result.samples_path}")
    else:
        lines.append(f"{name}: no tests written: {result.error}")
    for index, text, reason in result.rejected_seeds:
        shown = text if len(text) <= 40 else text[:37] + "..."
        lines.append(f"  seed input {index} {shown!r} not used: {reason}")
    lines.extend(f"  note: {note}" for note in result.notes)
    return lines
