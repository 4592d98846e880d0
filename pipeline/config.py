"""Settings: built-in defaults < sactor.toml (or --config FILE) < environment < job file < command-line flags.

The result is one frozen :class:`Config`, checked value by value as it is read. Every problem raises
:class:`~pipeline.errors.ConfigError` whose message names where the value came from (the file and key, the
environment variable, the job file's key or the flag) and the fix.

One table, :data:`SETTINGS`, declares each setting once: its place in :class:`Config`, its type, its file key,
flag, environment variable, whether a job file may set it, and its limits. Keys, flags, variables, job keys and
validation all derive from it.

The file is SACToR-compatible: ``[general]`` and ``[VLLM]`` use SACToR's names; what SACToR has no name for
lives in our own sections ``[pipeline]``, ``[differential]``, ``[toolchain]`` and ``[sandbox]``. Whatever else
a SACToR file carries (``[litellm]``, ``[test_runner]``, provider sections, ``[general] encoding`` ...) is
listed once as ignored. Our own sections are strict: an unknown key there is an error with a suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .task import Feed

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_MESSAGE = (
    "You are an expert C and Rust programmer. You translate C programs into Rust programs that behave "
    "identically: the same output bytes, the same exit codes, the same handling of arguments and standard input."
)


def redact_url(url: str) -> str:
    """``url`` with any credentials (``http://user:pass@host``) replaced by ``***``: the form to log or store."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    if "@" not in authority:
        return url
    return f"{scheme}://***@{authority.rpartition('@')[2]}{slash}{path}"


@dataclass(frozen=True)
class Endpoint:
    """One of several model servers (``[VLLM] base_url`` as a list, or a ``[[VLLM.endpoints]]`` table).

    Empty ``model`` and ``api_key`` mean ``[VLLM] model`` and ``[VLLM] api_key``; ``workers`` (None) means
    this endpoint's share of ``--workers`` by ``weight``.
    """

    base_url: str
    model: str = ""
    api_key: str = field(default="", repr=False)
    weight: float = 1.0
    workers: int | None = None

    @property
    def public_url(self) -> str:
        return redact_url(self.base_url)


@dataclass(frozen=True)
class ModelSettings:
    """Where the model is and how we sample it (``[VLLM]``).

    ``base_url`` is the first (or only) server; ``endpoints`` lists every server when there are several
    (empty: just ``base_url``, the one-server run).
    """

    base_url: str = "http://localhost:8000/v1"
    api_key: str = field(default="EMPTY", repr=False)
    model: str = "Qwen/Qwen2.5-Coder-7B-Instruct"
    max_tokens: int = 8192
    temperature: float = 0.0
    backend: str = "VLLM"
    endpoints: tuple[Endpoint, ...] = ()
    equivalent_models: bool = False  # endpoints naming other models serve the same weights

    @property
    def public_url(self) -> str:
        """``base_url`` without credentials: the only form of it that logs, messages and summaries show."""
        return redact_url(self.base_url)


@dataclass(frozen=True)
class TranslationSettings:
    """What one task's stages do (SACToR's ``[general]`` names)."""

    max_attempts: int = 6
    test_timeout: float = 60.0
    output_byte_limit: int = 40_000
    system_message: str = DEFAULT_SYSTEM_MESSAGE
    num_tests: int | None = None  # None: every test
    idiomatic: bool = True
    #: Generated inputs per task on which the translation must agree with the C program (0: off); see
    #: :mod:`pipeline.differential`. 20 costs about a second of CPU per task once (gcc, the C runs, cached) and
    #: 20 short runs per attempt that passed the shipped tests.
    differential: int = 20
    #: Inputs the model is asked for once per task, before the oracle is built (0: none asked); the C program
    #: judges them like the mutations (:func:`pipeline.proposals.propose_inputs`). One more request per task.
    differential_model_inputs: int = 0
    #: Choices asked for per chat request of a stage (vLLM's ``n``: one prefill, n decodes); they are verified side
    #: by side and the first that verifies is kept (:mod:`pipeline.candidates`). Needs a temperature above 0.
    candidates: int = 1
    #: Whole file, one function (or recursion group) at a time, or chosen per program by size ("auto"); see
    #: docs/function_level.md.
    granularity: str = "auto"
    #: A program whose whole-file unidiomatic stage failed is translated again function by function.
    function_fallback: bool = False


@dataclass(frozen=True)
class ClientSettings:
    """How we talk to the server (``[pipeline]``): concurrency, timeouts, retries, outage budget."""

    workers: int = 8
    request_timeout: float = 600.0
    connect_timeout: float = 10.0
    retry_attempts: int = 6
    retry_deadline: float = 900.0
    retry_max_wait: float = 30.0
    outage_budget: float = 300.0
    context_margin: int = 32
    stream: bool = False
    #: vLLM's request ``priority`` from the client's own order (:func:`pipeline.scheduling.server_priority`):
    #: "auto" sends it unless the server refuses it, "on" refuses to run without it, "off" never sends it.
    request_priority: str = "auto"


def default_jobs() -> int:
    """``--jobs`` when not given: twice the CPU cores. A slot is held only while its compile or test process
    lives, but each start and exit waits for the event loop, and a test run lasts 10-20 ms: with one slot per
    core, fewer than two processes were alive 9% of the time on 2 cores (compile-bound bench, #16); with two
    per core, 2%."""
    return min(2 * (os.cpu_count() or 1), MAX_JOBS)


@dataclass(frozen=True)
class RunSettings:
    """How the batch runs locally (``[pipeline]``): compile/test parallelism, discovery options."""

    jobs: int = field(default_factory=default_jobs)
    feed: Feed = "stdin"  # for sample-list JSON files: "stdin" or "args"
    executor: str = "local"  # where builds and tests run: "local" (this machine) or "ray" (a Ray cluster)
    ray_address: str = ""  # the Ray cluster of executor "ray"; empty: start a local Ray instance on 127.0.0.1


@dataclass(frozen=True)
class ToolchainSettings:
    """The Rust toolchain (``[toolchain]``)."""

    rustc: str = "rustc"
    clippy_driver: str = "clippy-driver"
    edition: str = "2021"
    libc_source: str = ""  # empty: find Debian's librust-libc-dev under /usr/share/cargo/registry
    cache_dir: str = ""  # empty: $XDG_CACHE_HOME/c2rust-batch or ~/.cache/c2rust-batch
    compile_cache: bool = True  # false: every build runs rustc (benchmarks); the libc rlib is still cached
    compile_timeout: float = 120.0
    compile_memory_mb: int = 4096
    clippy: bool = True

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "c2rust-batch"


@dataclass(frozen=True)
class SandboxSettings:
    """Limits for running untrusted translated programs (``[sandbox]``)."""

    strict: bool = False
    memory_mb: int = 1024
    cpu_seconds: int = 30
    max_processes: int = 64
    max_file_mb: int = 64
    open_files: int = 256
    network: bool = False
    helper: str = "auto"  # auto: the compiled helper when gcc builds it, else Python; compiled; python
    scratch_dir: str = ""  # empty: TMPDIR when set, else /dev/shm when it is a roomy tmpfs, else /tmp


@dataclass(frozen=True)
class Config:
    """Everything a run needs to know, frozen. Build it with :func:`load_config`."""

    model: ModelSettings = field(default_factory=ModelSettings)
    translation: TranslationSettings = field(default_factory=TranslationSettings)
    client: ClientSettings = field(default_factory=ClientSettings)
    run: RunSettings = field(default_factory=RunSettings)
    toolchain: ToolchainSettings = field(default_factory=ToolchainSettings)
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    source: str = "built-in defaults"

    def public(self) -> dict[str, Any]:
        """The configuration as plain data without secrets, for summaries and logs."""
        data = dataclasses.asdict(self)
        data["model"].pop("api_key", None)
        data["model"]["base_url"] = self.model.public_url
        if self.model.endpoints:
            data["model"]["endpoints"] = [
                {"base_url": e.public_url, "model": e.model or self.model.model, "weight": e.weight,
                 "workers": e.workers} for e in self.model.endpoints
            ]
        else:  # a one-server run's summary stays as it was
            del data["model"]["endpoints"], data["model"]["equivalent_models"]
        return data


# --------------------------------------------------------------------------------------------------------
# The table of settings


@dataclass(frozen=True)
class Setting:
    """One setting: its place in :class:`Config`, its name in every source, and the values it accepts.

    ``name`` is the field of ``group`` and also the setting's key in a job file and the CLI's dest. A valued
    flag is ``flag``; ``switches`` are flags that set a fixed value (``--no-idiomatic`` sets False).
    """

    group: str
    name: str
    kind: type
    section: str
    key: str
    flag: str | None = None
    switches: tuple[tuple[str, Any, str], ...] = ()  # (flag, value it sets, help)
    env: str | None = None
    job: bool = False
    panel: str = ""  # where the CLI lists the flag: "server" or "translation"
    help: str = ""
    metavar: str = ""
    optional: bool = False  # None allowed (absent means "all" or "default")
    positive: bool = False
    low: float | None = None
    high: float | None = None  # refused above
    cap: int | None = None  # lowered to this, with a warning
    choices: tuple[str, ...] = ()
    secret: bool = False  # never shown in a message
    rule: Callable[[Any], str | None] | None = None  # extra check: what is wrong, with the fix, or None
    many: bool = False  # a list in files, a repeated flag, comma-separated in the environment

    @property
    def file_key(self) -> str:
        return f"[{self.section}] {self.key}"


SUPPORTED_BACKENDS = ("VLLM",)
WEEK = 7 * 24 * 3600.0
#: More requests in flight than any single vLLM server schedules (its --max-num-seqs defaults to 256);
#: each one also keeps two tasks in flight, so an absurd value would only cost memory.
MAX_WORKERS = 1024
#: Compile and test processes at once: far beyond any machine's cores, short of a fork bomb.
MAX_JOBS = 256
EXECUTORS = ("local", "ray")
#: Choices per request: each one holds a sequence slot of the server (vLLM's --max-num-seqs) while it decodes.
MAX_CANDIDATES = 16
GRANULARITIES = ("auto", "file", "function")
REQUEST_PRIORITIES = ("auto", "on", "off")


def _base_url_rule(value: str) -> str | None:
    url = value.rstrip("/")
    if not url.startswith(("http://", "https://")):
        return "must start with http:// or https://"
    if not url.endswith("/v1"):
        return f"must end with /v1, where vLLM serves its OpenAI routes: use {redact_url(url + '/v1')!r}"
    return None


def _backend_rule(value: str) -> str | None:
    if value in SUPPORTED_BACKENDS:
        return None
    return ("is not supported: this tool talks to an OpenAI-compatible vLLM server; set llm = \"VLLM\" and "
            "fill in [VLLM]")


def _not_empty(value: str) -> str | None:
    return "is empty: name the model the server serves (see `check`)" if not value.strip() else None



def _s(group: str, name: str, kind: type, section: str, key: str | None = None, **kw: Any) -> Setting:
    return Setting(group, name, kind, section, key or name, **kw)


#: Every setting, once. Flags, environment variables, file keys, job keys and checks all come from here.
SETTINGS: tuple[Setting, ...] = (
    # [general]: SACToR's names
    _s("model", "backend", str, "general", "llm", rule=_backend_rule),
    _s("translation", "max_attempts", int, "general", "max_translation_attempts", flag="--max-attempts",
       job=True, panel="translation", positive=True, high=1000,
       help="attempts per stage (SACToR's max_translation_attempts)"),
    _s("translation", "test_timeout", float, "general", "timeout_seconds", flag="--test-timeout", job=True,
       panel="translation", positive=True, high=WEEK, help="seconds per test command (default 60)"),
    _s("translation", "output_byte_limit", int, "general", "command_output_byte_limit", positive=True,
       high=1 << 30),
    _s("translation", "system_message", str, "general"),
    _s("translation", "num_tests", int, "general", flag="--num-tests", job=True, panel="translation",
       optional=True, positive=True, help="use the first N tests of each task (default: all)"),
    _s("translation", "idiomatic", bool, "general", job=True, panel="translation",
       switches=(("--no-idiomatic", False, "stop after the unidiomatic stage"),)),
    # [VLLM]: each key also has the environment variable VLLM_<KEY>
    _s("model", "base_url", str, "VLLM", flag="--base-url", env="VLLM_BASE_URL", job=True, panel="server",
       rule=_base_url_rule, metavar="URL", many=True,
       help="OpenAI-compatible base URL ending in /v1, e.g. http://localhost:8000/v1; repeat it for several "
            "servers of the same model"),
    _s("model", "equivalent_models", bool, "VLLM", env="VLLM_EQUIVALENT_MODELS", job=True, panel="server",
       switches=(("--equivalent-models", True, "servers that name their model differently serve the same "
                  "weights (otherwise such a run is refused)"),)),
    _s("model", "api_key", str, "VLLM", flag="--api-key", env="VLLM_API_KEY", panel="server", secret=True,
       metavar="KEY", help="API key, if the server wants one (never printed; other users see command lines: prefer "
            "VLLM_API_KEY)"),
    _s("model", "model", str, "VLLM", flag="--model", env="VLLM_MODEL", job=True, panel="server",
       rule=_not_empty, metavar="NAME", help="model name as the server serves it"),
    _s("model", "max_tokens", int, "VLLM", flag="--max-tokens", env="VLLM_MAX_TOKENS", job=True,
       panel="server", positive=True, high=10_000_000, help="cap on generated tokens per request"),
    _s("model", "temperature", float, "VLLM", flag="--temperature", env="VLLM_TEMPERATURE", job=True,
       panel="server", metavar="T", low=0.0, high=2.0, help="sampling temperature, 0 to 2 (default 0)"),
    # [pipeline]: ours
    _s("client", "workers", int, "pipeline", flag="--workers", job=True, panel="translation", positive=True,
       cap=MAX_WORKERS, help="model requests in flight (default 8)"),
    _s("client", "request_timeout", float, "pipeline", flag="--request-timeout", job=True, panel="server",
       positive=True, high=WEEK, help="seconds one request may take"),
    _s("client", "connect_timeout", float, "pipeline", positive=True, high=WEEK),
    _s("client", "retry_attempts", int, "pipeline", positive=True, high=1000),
    _s("client", "retry_deadline", float, "pipeline", positive=True, high=WEEK),
    _s("client", "retry_max_wait", float, "pipeline", positive=True, high=WEEK),
    _s("client", "outage_budget", float, "pipeline", flag="--outage-budget", job=True, panel="server",
       positive=True, high=WEEK, help="seconds the server may be unreachable before the run stops"),
    _s("client", "context_margin", int, "pipeline", low=0, high=1_000_000),
    _s("client", "stream", bool, "pipeline", job=True, panel="server",
       switches=(("--stream", True, "stream answers (SSE)"),)),
    _s("client", "request_priority", str, "pipeline", flag="--request-priority", env="C2RUST_REQUEST_PRIORITY",
       job=True, panel="server", choices=REQUEST_PRIORITIES, metavar="auto|on|off",
       help="send vLLM's request priority (the task with the most work left first) for a server started with "
            "--scheduling-policy priority: auto (default) sends it unless the server refuses it, on stops the run "
            "when the server refuses it, off never sends it"),
    _s("translation", "candidates", int, "pipeline", flag="--candidates", env="C2RUST_CANDIDATES", job=True,
       panel="translation", positive=True, high=MAX_CANDIDATES, metavar="N",
       help="answers asked for per request (vLLM's n: the prompt is computed once), verified side by side; the "
            "first that verifies is kept (default 1; needs --temperature above 0)"),
    _s("run", "jobs", int, "pipeline", flag="--jobs", job=True, panel="translation", positive=True,
       cap=MAX_JOBS, help="compile and test processes at once (default: twice the CPU cores)"),
    _s("run", "feed", str, "pipeline", job=True, panel="translation", choices=("stdin", "args"), switches=(
        ("--feed-as-stdin", "stdin", "for sample-list JSON files: give the input on stdin (default)"),
        ("--feed-as-args", "args", "for sample-list JSON files: give the input as arguments"),
    )),
    # [differential]: the C program as oracle
    _s("translation", "differential", int, "differential", "inputs", flag="--differential",
       env="C2RUST_DIFFERENTIAL", job=True,
       panel="translation", low=0, high=10_000,
       switches=(("--no-differential", 0, "do not compare with the C program on generated inputs"),),
       help="generated inputs per task on which the translation must agree with the C program "
            "(default 20; 0 or --no-differential: off)"),
    _s("translation", "differential_model_inputs", int, "differential", "model_inputs",
       flag="--differential-model-inputs", env="C2RUST_DIFFERENTIAL_MODEL_INPUTS", job=True, panel="translation",
       low=0, high=100, metavar="N",
       help="ask the model once per task for N test inputs, judged by the C program like the generated ones "
            "(default 0: none asked; one more request per task)"),
    _s("translation", "granularity", str, "pipeline", flag="--granularity", env="C2RUST_GRANULARITY", job=True,
       panel="translation", choices=GRANULARITIES, metavar="auto|file|function",
       help="translate each program whole, one function at a time, or choose by its size against the server's "
            "max_model_len (default auto: whole unless it cannot fit)"),
    _s("translation", "function_fallback", bool, "pipeline", env="C2RUST_FUNCTION_FALLBACK", job=True,
       panel="translation", switches=(
           ("--function-fallback", True, "when the whole-file unidiomatic stage fails, translate the program "
            "again function by function"),
           ("--no-function-fallback", False, "no function-level second try (default)"))),
    _s("run", "executor", str, "pipeline", flag="--executor", job=True, panel="translation", choices=EXECUTORS,
       metavar="local|ray", help="where builds and tests run: this machine (default) or a Ray cluster "
       "(pip install -e '.[ray]')"),
    _s("run", "ray_address", str, "pipeline", flag="--ray-address", job=True, panel="translation",
       metavar="ADDR", help="the Ray cluster of --executor ray, e.g. 10.0.0.1:6379 (default: start a local "
       "Ray instance)"),
    # [toolchain]
    _s("toolchain", "rustc", str, "toolchain", rule=_not_empty),
    _s("toolchain", "clippy_driver", str, "toolchain"),
    _s("toolchain", "edition", str, "toolchain", choices=("2015", "2018", "2021", "2024")),
    _s("toolchain", "libc_source", str, "toolchain"),
    _s("toolchain", "cache_dir", str, "toolchain", flag="--cache-dir", panel="translation", metavar="DIR",
       help="where the libc rlib and the compile cache live"),
    _s("toolchain", "compile_cache", bool, "toolchain"),
    _s("toolchain", "compile_timeout", float, "toolchain", positive=True, high=WEEK),
    _s("toolchain", "compile_memory_mb", int, "toolchain", positive=True, high=1 << 20),
    _s("toolchain", "clippy", bool, "toolchain"),
    # [sandbox]
    _s("sandbox", "strict", bool, "sandbox", job=True, panel="translation", switches=(
        ("--strict-sandbox", True, "refuse to run when full isolation is not available"),)),
    _s("sandbox", "memory_mb", int, "sandbox", positive=True, high=1 << 20),
    _s("sandbox", "cpu_seconds", int, "sandbox", positive=True, high=int(WEEK)),
    _s("sandbox", "max_processes", int, "sandbox", positive=True, high=1 << 22),
    _s("sandbox", "max_file_mb", int, "sandbox", positive=True, high=1 << 20),
    _s("sandbox", "open_files", int, "sandbox", positive=True, high=1 << 20),
    _s("sandbox", "network", bool, "sandbox"),
    _s("sandbox", "helper", str, "sandbox", env="C2RUST_SANDBOX_HELPER", choices=("auto", "compiled", "python")),
    _s("sandbox", "scratch_dir", str, "sandbox", env="C2RUST_SCRATCH_DIR"),
)
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
BY_FILE_KEY: dict[tuple[str, str], Setting] = {(s.section, s.key): s for s in SETTINGS}
#: Sections whose every key is ours: strict.
OWN_SECTIONS = ("VLLM", "pipeline", "differential", "toolchain", "sandbox")
SECTIONS = ("general", *OWN_SECTIONS)
#: Settings a job file may set (by name), besides the CLI's own job keys (the corpus paths).
JOB_SETTINGS = tuple(s.name for s in SETTINGS if s.job)

#: What SACToR's sactor.toml may carry (its sactor.default.toml, past and present) that this tool does not read.
SACTOR_SECTIONS = (
    "test_runner", "test_generator", "verifier", "logging", "litellm", "OpenAI", "AzureOpenAI", "DeepSeek",
    "Anthropic", "Google", "Ollama", "CustomModel",
)
SACTOR_GENERAL_KEYS = (
    "max_verifier_harness_attempts", "unidiomatic_fallback_c2rust", "unidiomatic_fallback_c2rust_fix_attempts",
    "const_global_max_translation_len", "max_llm_input_tokens", "encoding", "model",
)
CONFIG_ENV = "SACTOR_CONFIG"  # SACToR's variable naming the settings file

# --------------------------------------------------------------------------------------------------------
# Checking one value from one source

_KIND_NAMES = {int: ("a whole number", "8"), float: ("a number", "60"), str: ("text", '"text"'),
               bool: ("true or false", "true")}
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_INT_TEXT = re.compile(r"[+-]?[0-9][0-9_]*")


@dataclass(frozen=True)
class Source:
    """Where a value came from, to name it in messages: a file key, a job key, a variable or a flag."""

    kind: str  # "file", "job", "env", "flag"
    path: Path | None = None

    def label(self, setting: Setting, flag: str | None = None) -> str:
        if self.kind == "file":
            return f"{self.path}: {setting.file_key}"
        if self.kind == "job":
            return f"{self.path}: [job] {setting.name}"
        if self.kind == "env":
            return f"environment variable {setting.env}"
        return flag or setting.flag or setting.name

    @property
    def textual(self) -> bool:
        return self.kind in ("env", "flag")

    @property
    def sep(self) -> str:
        return "=" if self.kind == "env" else " " if self.kind == "flag" else " = "


def _show(setting: Setting, value: Any) -> str:
    if setting.secret:
        return "'***'"
    if setting.name == "base_url" and isinstance(value, (list, tuple)):
        return repr([redact_url(v) if isinstance(v, str) else v for v in value])
    if setting.name == "base_url" and isinstance(value, str):
        return repr(redact_url(value))
    return repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def check_value(setting: Setting, value: Any, source: Source, *, flag: str | None = None) -> Any:
    """``value`` as ``setting`` holds it (converted from text for flags and variables), or ConfigError.

    The error names ``source`` and says what to write instead. Values above ``setting.cap`` come back
    lowered to it, with a warning. A ``many`` setting also takes a list (or comma-separated text): several
    values come back as a tuple, one as itself.
    """
    if setting.many:
        items = value if isinstance(value, (list, tuple)) else (
            [part.strip() for part in value.split(",")] if source.textual and isinstance(value, str) else [value])
        if not items or (source.textual and not all(items)):
            raise ConfigError(f"{source.label(setting, flag)} names no value (or an empty one between commas): "
                              f"give one or more, e.g. http://host-a:8000/v1,http://host-b:8000/v1")
        checked = [_check_one(setting, item, source, flag=flag) for item in items]
        if len(set(checked)) < len(checked):
            raise ConfigError(f"{source.label(setting, flag)} names the same value twice: list each server once")
        return checked[0] if len(checked) == 1 else tuple(checked)
    return _check_one(setting, value, source, flag=flag)


def _check_one(setting: Setting, value: Any, source: Source, *, flag: str | None = None) -> Any:
    where = source.label(setting, flag)
    shown = f"{where}{source.sep}{_show(setting, value)}"
    kind_name, example = _KIND_NAMES[setting.kind]
    if source.textual and isinstance(value, str) and setting.kind is not str:
        text = value.strip()
        if setting.kind is bool and text.lower() in _TRUE + _FALSE:
            value = text.lower() in _TRUE
        elif setting.kind is int and _INT_TEXT.fullmatch(text):
            value = int(text)
        elif setting.kind is float:
            try:
                value = float(text)
            except ValueError:
                raise ConfigError(f"{shown} is not {kind_name}: write it like {example}") from None
        else:
            raise ConfigError(f"{shown} is not {kind_name}: write it like {example}")
        shown = f"{where}{source.sep}{_show(setting, value)}"
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        bool: isinstance(value, bool),
    }[setting.kind]
    if not ok:
        raise ConfigError(
            f"{where} must be {kind_name}, not {type(value).__name__} {_show(setting, value)}: write it like "
            f"{example}"
        )
    if setting.kind is float:
        value = float(value)
        shown = f"{where}{source.sep}{_show(setting, value)}"
        if not math.isfinite(value):
            raise ConfigError(f"{shown} must be a finite number{_range_text(setting)}")
    if setting.kind in (int, float):
        if setting.positive and value <= 0:
            raise ConfigError(f"{shown} must be greater than zero"
                              + ("; leave it out to use all" if setting.optional else ""))
        if setting.low is not None and value < setting.low:
            raise ConfigError(f"{shown} must be at least {setting.low:g}{_range_text(setting)}")
        if setting.high is not None and value > setting.high:
            raise ConfigError(f"{shown} must be at most {setting.high:g}")
        if setting.cap is not None and value > setting.cap:
            log.warning("%s is more than %d; using %d", shown, setting.cap, setting.cap)
            value = setting.cap
    if setting.choices and value not in setting.choices:
        raise ConfigError(f"{shown} must be one of {', '.join(repr(c) for c in setting.choices)}")
    if setting.rule is not None:
        problem = setting.rule(value)
        if problem:
            raise ConfigError(f"{shown} {problem}")
    return value


def _range_text(setting: Setting) -> str:
    if setting.positive:
        return " greater than zero"
    if setting.low is not None and setting.high is not None:
        return f" between {setting.low:g} and {setting.high:g}"
    return ""


# --------------------------------------------------------------------------------------------------------
# Sources


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def read_toml(path: Path, what: str, hint: str) -> dict[str, Any]:
    """Parse a TOML file (UTF-8, a BOM allowed), or raise ConfigError naming ``path`` and the fix.

    ``what`` names the file in messages ("configuration file", "job file"); ``hint`` says what named it.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found: check {hint}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a {what}: check {hint}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror})") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}): save the {what} as UTF-8"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}): fix the syntax at that line") from exc


def read_config_file(path: Path, *, explicit: bool, hint: str = "the --config path") -> dict[str, Any]:
    """Parse and check a sactor.toml. Returns {setting name: value} for the keys it sets.

    Raises ConfigError for a missing explicit file, bad encoding or TOML, unknown keys of our sections, wrong
    types and bad values. SACToR's keys and sections that we do not read are logged once, as ignored.
    """
    if not explicit and not path.exists():
        return {}
    raw = read_toml(path, "configuration file", hint)
    source = Source("file", path)
    values: dict[str, Any] = {}
    ignored: list[str] = []
    for section, body in raw.items():
        if section not in SECTIONS:
            close = _suggest(section, SECTIONS)
            if section not in SACTOR_SECTIONS and close:
                raise ConfigError(f"{path}: unknown section [{section}].{close} Known sections: "
                                  f"{', '.join('[' + s + ']' for s in SECTIONS)}")
            ignored.append(f"[{section}]")
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: '{section}' must be a table ([{section}]), not a value")
        skipped: list[str] = []
        for key, value in body.items():
            if (section, key) == ("VLLM", "endpoints"):
                if "base_url" in body:
                    raise ConfigError(f"{path}: [VLLM] base_url and [[VLLM.endpoints]] both name servers: keep "
                                      f"one (a base_url inside each [[VLLM.endpoints]] table)")
                values["base_url"] = read_endpoint_tables(value, path)
                continue
            setting = BY_FILE_KEY.get((section, key))
            if setting is None:
                known = [s.key for s in SETTINGS if s.section == section]
                close = _suggest(key, known)
                # Our sections are strict; [general] is SACToR's, so only a near-miss of a key we read is an error.
                if section in OWN_SECTIONS or (close and key not in SACTOR_GENERAL_KEYS):
                    raise ConfigError(f"{path}: [{section}] unknown key '{key}'.{close}"
                                      f" Keys of [{section}]: {', '.join(sorted(known))}")
                skipped.append(key)
                continue
            values[setting.name] = check_value(setting, value, source)
        if skipped:
            ignored.append(f"[{section}] {', '.join(skipped)}")
    if ignored:
        log.info("%s: not used by this tool (SACToR's settings), ignored: %s", path, "; ".join(ignored))
    if values.get("api_key") not in (None, "", "EMPTY"):
        _warn_if_readable(path)
    return values


def _warn_if_readable(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & 0o004:
        log.warning("%s holds [VLLM] api_key and other users can read it: chmod 600 %s (or set VLLM_API_KEY "
                    "instead)", path, path)


def read_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings given by environment variables (empty ones count as unset)."""
    source = Source("env")
    return {s.name: check_value(s, environ[s.env], source) for s in SETTINGS if s.env and environ.get(s.env)}


def read_job_settings(job: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The settings of a job file's ``[job]`` table (only names in :data:`JOB_SETTINGS`), checked."""
    source = Source("job", path)
    return {name: check_value(BY_NAME[name], value, source) for name, value in job.items()}


def read_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The settings given as flags, keyed by setting name (None: not given), checked."""
    source = Source("flag")
    out: dict[str, Any] = {}
    for name, value in flags.items():
        if value is None:
            continue
        setting = BY_NAME[name]
        flag = setting.flag or next((f for f, v, _ in setting.switches if v == value), None)
        out[name] = check_value(setting, value, source, flag=flag)
    return out


ENDPOINT_KEYS = ("base_url", "model", "api_key", "weight", "workers")


def read_endpoint_tables(tables: Any, path: Path) -> tuple[Endpoint, ...]:
    """The ``[[VLLM.endpoints]]`` tables of ``path``, checked; ConfigError naming the table and key."""
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{path}: [VLLM] endpoints must be one or more [[VLLM.endpoints]] tables, each with "
                          f"base_url (and optionally model, api_key, weight, workers)")
    source = Source("file", path)
    out: list[Endpoint] = []
    for number, table in enumerate(tables, start=1):
        where = f"{path}: [[VLLM.endpoints]] #{number}"
        unknown = sorted(set(table) - set(ENDPOINT_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key '{unknown[0]}'.{_suggest(unknown[0], ENDPOINT_KEYS)} Keys: "
                              f"{', '.join(ENDPOINT_KEYS)}")
        if "base_url" not in table:
            raise ConfigError(f"{where} has no base_url: add base_url = \"http://HOST:8000/v1\"")
        url = _check_one(BY_NAME["base_url"], table["base_url"], source)
        model = _check_one(BY_NAME["model"], table["model"], source) if "model" in table else ""
        key = _check_one(BY_NAME["api_key"], table["api_key"], source) if "api_key" in table else ""
        weight = table.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight <= 1000:
            raise ConfigError(f"{where}: weight = {weight!r} must be a number greater than 0 (at most 1000), e.g. "
                              f"2 for a server twice as fast")
        workers = table.get("workers")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                    or not 0 < workers <= MAX_WORKERS):
            raise ConfigError(f"{where}: workers = {workers!r} must be a whole number from 1 to {MAX_WORKERS} "
                              f"(this server's requests in flight)")
        out.append(Endpoint(url, model, key, float(weight), workers))
    if len({e.base_url.rstrip("/") for e in out}) < len(out):
        raise ConfigError(f"{path}: two [[VLLM.endpoints]] tables name the same base_url: list each server once")
    return tuple(out)


def _servers(value: Any) -> dict[str, Any]:
    """A ``base_url`` value (one URL, several, or endpoint tables) as the ModelSettings fields it sets."""
    if isinstance(value, tuple):
        endpoints = tuple(v if isinstance(v, Endpoint) else Endpoint(v) for v in value)
        return {"base_url": endpoints[0].base_url, "endpoints": endpoints}
    return {"base_url": value, "endpoints": ()}


def _check_models(config: Config) -> None:
    model = config.model
    if model.equivalent_models:
        return
    for number, endpoint in enumerate(model.endpoints, start=1):
        if endpoint.model and endpoint.model != model.model:
            raise ConfigError(
                f"[[VLLM.endpoints]] #{number} ({endpoint.public_url}) names model {endpoint.model!r} but the run's "
                f"model is {model.model!r} ([VLLM] model): every server must serve the same model; set [VLLM] "
                f"model, or, if they are the same weights under other names, set [VLLM] equivalent_models = true "
                f"(--equivalent-models)"
            )


def _check_candidates(config: Config) -> None:
    count = config.translation.candidates
    if count > 1 and config.model.temperature <= 0:
        raise ConfigError(
            f"[pipeline] candidates = {count} (--candidates) needs [VLLM] temperature (--temperature) above 0: vLLM "
            f"refuses n > 1 with greedy sampling (temperature 0), whose answers would all be the same; set e.g. "
            f"--temperature 0.7, or --candidates 1"
        )


def _apply(config: Config, values: Mapping[str, Any]) -> Config:
    groups: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        if name == "base_url":
            groups.setdefault("model", {}).update(_servers(value))
            continue
        groups.setdefault(BY_NAME[name].group, {})[name] = value
    replaced = {g: dataclasses.replace(getattr(config, g), **vals) for g, vals in groups.items()}
    return dataclasses.replace(config, **replaced)


def load_config(
    path: Path | None = None,
    *,
    flags: Mapping[str, Any] | None = None,
    job: Mapping[str, Any] | None = None,
    job_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    default_path: Path = Path("sactor.toml"),
    path_hint: str = "the --config path",
) -> Config:
    """Build the run's Config from defaults, the file, the environment, a job file and flags (later wins).

    ``path`` is the --config value (or a job file's ``config``, named by ``path_hint``); a missing one is an
    error. Without it, ``$SACTOR_CONFIG`` names the file, else ``default_path`` is read if it exists.
    ``flags`` and ``job`` are keyed by setting name (see :data:`SETTINGS`).
    Raises ConfigError naming the source of the bad value and the fix.
    """
    environ = os.environ if environ is None else environ
    explicit = path is not None
    if path is None and environ.get(CONFIG_ENV):
        path, explicit, path_hint = Path(environ[CONFIG_ENV]).expanduser(), True, f"${CONFIG_ENV}"
    file = path if path is not None else default_path
    layers = [
        (str(file), read_config_file(file, explicit=explicit, hint=path_hint)),
        ("environment", read_environment(environ)),
        (f"job {job_path}", read_job_settings(job or {}, job_path or Path("job"))),
        ("flags", read_flags(flags or {})),
    ]
    config = Config()
    for _name, values in layers:
        config = _apply(config, values)
    used = [name for name, values in layers if values]
    _check_models(config)
    _check_candidates(config)
    return dataclasses.replace(config, source=" < ".join(["defaults", *used]))
