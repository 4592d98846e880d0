"""Settings: built-in defaults < sactor.toml (or --config FILE) < environment < command-line flags.

The result is one frozen :class:`Config`, validated once at start-up. Every problem raises
:class:`~pipeline.errors.ConfigError` whose message names the file, the key and the fix.

The file is SACToR-compatible: ``[general]`` and ``[VLLM]`` use SACToR's names; what SACToR has no name for
lives in our own sections ``[pipeline]``, ``[toolchain]`` and ``[sandbox]``. SACToR sections we do not use
(``[litellm]``, ``[logging]``, other providers) produce one notice each and are otherwise ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import sys
from collections.abc import Mapping
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

SUPPORTED_BACKENDS = ("VLLM",)
#: SACToR sections that a user's file may carry; we read none of them.
IGNORED_SECTIONS = (
    "litellm", "logging", "OpenAI", "AzureOpenAI", "Anthropic", "Google", "DeepSeek", "Ollama",
    "test_generator", "verifier", "CustomModel",
)
ENV_OVERRIDES = {"VLLM_BASE_URL": "base_url", "VLLM_API_KEY": "api_key", "VLLM_MODEL": "model"}

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
class ModelSettings:
    """Where the model is and how we sample it (``[VLLM]``)."""

    base_url: str = "http://localhost:8000/v1"
    api_key: str = field(default="EMPTY", repr=False)
    model: str = "Qwen/Qwen2.5-Coder-7B-Instruct"
    max_tokens: int = 8192
    temperature: float = 0.0
    backend: str = "VLLM"

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
    num_tests: int | None = None
    idiomatic: bool = True


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


@dataclass(frozen=True)
class RunSettings:
    """How the batch runs locally (``[pipeline]``): compile/test parallelism, discovery options."""

    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    feed: Feed = "stdin"  # for sample-list JSON files: "stdin" or "args"


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
        return data


# (section, key in file) -> (settings group, field name, type). Types: int, float, str, bool, "int?".
_KEYS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("general", "llm"): ("model", "backend", "str"),
    ("general", "max_translation_attempts"): ("translation", "max_attempts", "int"),
    ("general", "timeout_seconds"): ("translation", "test_timeout", "float"),
    ("general", "command_output_byte_limit"): ("translation", "output_byte_limit", "int"),
    ("general", "system_message"): ("translation", "system_message", "str"),
    ("general", "num_tests"): ("translation", "num_tests", "int?"),
    ("general", "idiomatic"): ("translation", "idiomatic", "bool"),
    ("VLLM", "base_url"): ("model", "base_url", "str"),
    ("VLLM", "api_key"): ("model", "api_key", "str"),
    ("VLLM", "model"): ("model", "model", "str"),
    ("VLLM", "max_tokens"): ("model", "max_tokens", "int"),
    ("VLLM", "temperature"): ("model", "temperature", "float"),
    ("pipeline", "workers"): ("client", "workers", "int"),
    ("pipeline", "request_timeout"): ("client", "request_timeout", "float"),
    ("pipeline", "connect_timeout"): ("client", "connect_timeout", "float"),
    ("pipeline", "retry_attempts"): ("client", "retry_attempts", "int"),
    ("pipeline", "retry_deadline"): ("client", "retry_deadline", "float"),
    ("pipeline", "retry_max_wait"): ("client", "retry_max_wait", "float"),
    ("pipeline", "outage_budget"): ("client", "outage_budget", "float"),
    ("pipeline", "context_margin"): ("client", "context_margin", "int"),
    ("pipeline", "stream"): ("client", "stream", "bool"),
    ("pipeline", "jobs"): ("run", "jobs", "int"),
    ("pipeline", "feed"): ("run", "feed", "str"),
    ("toolchain", "rustc"): ("toolchain", "rustc", "str"),
    ("toolchain", "clippy_driver"): ("toolchain", "clippy_driver", "str"),
    ("toolchain", "edition"): ("toolchain", "edition", "str"),
    ("toolchain", "libc_source"): ("toolchain", "libc_source", "str"),
    ("toolchain", "cache_dir"): ("toolchain", "cache_dir", "str"),
    ("toolchain", "compile_cache"): ("toolchain", "compile_cache", "bool"),
    ("toolchain", "compile_timeout"): ("toolchain", "compile_timeout", "float"),
    ("toolchain", "compile_memory_mb"): ("toolchain", "compile_memory_mb", "int"),
    ("toolchain", "clippy"): ("toolchain", "clippy", "bool"),
    ("sandbox", "strict"): ("sandbox", "strict", "bool"),
    ("sandbox", "memory_mb"): ("sandbox", "memory_mb", "int"),
    ("sandbox", "cpu_seconds"): ("sandbox", "cpu_seconds", "int"),
    ("sandbox", "max_processes"): ("sandbox", "max_processes", "int"),
    ("sandbox", "max_file_mb"): ("sandbox", "max_file_mb", "int"),
    ("sandbox", "open_files"): ("sandbox", "open_files", "int"),
    ("sandbox", "network"): ("sandbox", "network", "bool"),
}
_SECTIONS = sorted({s for s, _ in _KEYS})
#: Settings that must be strictly positive.
_POSITIVE = {
    "max_attempts", "test_timeout", "output_byte_limit", "max_tokens", "workers", "request_timeout",
    "connect_timeout", "retry_attempts", "retry_deadline", "outage_budget", "jobs", "compile_timeout",
    "compile_memory_mb", "memory_mb", "cpu_seconds", "max_processes", "max_file_mb", "open_files",
    "num_tests", "retry_max_wait",
}
#: Flag name (as the CLI stores it) -> (group, field). Only flags that were given are passed in.
FLAG_FIELDS: dict[str, tuple[str, str]] = {
    "base_url": ("model", "base_url"),
    "api_key": ("model", "api_key"),
    "model": ("model", "model"),
    "max_tokens": ("model", "max_tokens"),
    "temperature": ("model", "temperature"),
    "workers": ("client", "workers"),
    "jobs": ("run", "jobs"),
    "num_tests": ("translation", "num_tests"),
    "max_attempts": ("translation", "max_attempts"),
    "test_timeout": ("translation", "test_timeout"),
    "request_timeout": ("client", "request_timeout"),
    "outage_budget": ("client", "outage_budget"),
    "feed": ("run", "feed"),
    "strict_sandbox": ("sandbox", "strict"),
    "stream": ("client", "stream"),
    "idiomatic": ("translation", "idiomatic"),
    "cache_dir": ("toolchain", "cache_dir"),
}


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def _coerce(where: str, value: Any, kind: str) -> Any:
    optional = kind.endswith("?")
    kind = kind.rstrip("?")
    if optional and value in (None, 0, ""):
        return None
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
    }[kind]
    if not ok:
        example = {"int": "8", "float": "60.0", "str": '"text"', "bool": "true"}[kind]
        raise ConfigError(
            f"{where} must be {'an' if kind == 'int' else 'a'} {kind}, not {type(value).__name__} {value!r}: "
            f"write it like {example}"
        )
    return float(value) if kind == "float" else value


def read_config_file(path: Path, *, explicit: bool) -> dict[str, dict[str, Any]]:
    """Parse and check a sactor.toml. Returns {group: {field: value}} for the keys it sets.

    Raises ConfigError for a missing explicit file, bad TOML, unknown keys and wrong types.
    """
    if not path.exists():
        if explicit:
            raise ConfigError(f"{path}: configuration file not found: check the --config path")
        return {}
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}): fix the syntax at that line") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file ({exc.strerror})") from exc
    values: dict[str, dict[str, Any]] = {}
    for section, body in raw.items():
        if section in IGNORED_SECTIONS:
            log.info("%s: section [%s] is SACToR's and not used by this tool; ignoring it", path, section)
            continue
        if section not in _SECTIONS:
            raise ConfigError(
                f"{path}: unknown section [{section}].{_suggest(section, _SECTIONS + list(IGNORED_SECTIONS))}"
                f" Known sections: {', '.join('[' + s + ']' for s in _SECTIONS)}"
            )
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: '{section}' must be a table ([{section}]), not a value")
        known = [k for s, k in _KEYS if s == section]
        for key, value in body.items():
            if (section, key) not in _KEYS:
                raise ConfigError(
                    f"{path}: [{section}] unknown key '{key}'.{_suggest(key, known)}"
                    f" Keys of [{section}]: {', '.join(sorted(known))}"
                )
            group, name, kind = _KEYS[(section, key)]
            values.setdefault(group, {})[name] = _coerce(f"{path}: [{section}] {key}", value, kind)
    return values


def _file_key(group: str, name: str) -> str:
    for (section, key), (g, n, _) in _KEYS.items():
        if (g, n) == (group, name):
            return f"[{section}] {key}"
    return f"{group}.{name}"


def _validate(config: Config, where: str) -> None:
    for group_field in dataclasses.fields(config):
        group = getattr(config, group_field.name)
        if not dataclasses.is_dataclass(group):
            continue
        for f in dataclasses.fields(group):
            value = getattr(group, f.name)
            if f.name in _POSITIVE and value is not None and value <= 0:
                raise ConfigError(
                    f"{where}: {_file_key(group_field.name, f.name)} = {value} must be greater than zero"
                )
    m = config.model
    if m.backend not in SUPPORTED_BACKENDS:
        raise ConfigError(
            f"{where}: [general] llm = {m.backend!r} is not supported: this tool talks to an OpenAI-compatible "
            f"vLLM server; set llm = \"VLLM\" and fill in [VLLM]"
        )
    url = m.base_url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: [VLLM] base_url = {m.base_url!r} must start with http:// or https://")
    if not url.endswith("/v1"):
        raise ConfigError(
            f"{where}: [VLLM] base_url = {m.base_url!r} must end with /v1, where vLLM serves its OpenAI routes: "
            f"use {url + '/v1'!r}"
        )
    if not m.model:
        raise ConfigError(f"{where}: [VLLM] model is empty: name the model the server serves (see `check`)")
    if not 0.0 <= m.temperature <= 2.0:
        raise ConfigError(f"{where}: [VLLM] temperature = {m.temperature} must be between 0 and 2")
    if config.run.feed not in ("stdin", "args"):
        raise ConfigError(f"{where}: [pipeline] feed = {config.run.feed!r} must be \"stdin\" or \"args\"")
    if config.toolchain.edition not in ("2015", "2018", "2021", "2024"):
        raise ConfigError(f"{where}: [toolchain] edition = {config.toolchain.edition!r} is not a Rust edition")


def _apply(config: Config, overrides: Mapping[str, Mapping[str, Any]]) -> Config:
    groups = {g: dataclasses.replace(getattr(config, g), **vals) for g, vals in overrides.items() if vals}
    return dataclasses.replace(config, **groups)


def load_config(
    path: Path | None = None,
    *,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    default_path: Path = Path("sactor.toml"),
) -> Config:
    """Build the run's Config from defaults, the file, the environment and flags (later wins).

    ``path`` is the --config value (a missing one is an error); without it ``default_path`` is read if it exists.
    ``flags`` holds only the flags the user gave, keyed as in :data:`FLAG_FIELDS`.
    Raises ConfigError with the file, key and fix.
    """
    environ = os.environ if environ is None else environ
    file = path if path is not None else default_path
    config = Config()
    file_values = read_config_file(file, explicit=path is not None)
    where = str(file) if file_values or path is not None else "configuration"
    config = _apply(config, file_values)
    env_values = {f: environ[k] for k, f in ENV_OVERRIDES.items() if environ.get(k)}
    if env_values:
        config = _apply(config, {"model": env_values})
    flag_values: dict[str, dict[str, Any]] = {}
    for name, value in (flags or {}).items():
        if value is None:
            continue
        group, fld = FLAG_FIELDS[name]
        flag_values.setdefault(group, {})[fld] = value
    config = _apply(config, flag_values)
    sources = [where if file_values else None, "environment" if env_values else None,
               "flags" if flag_values else None]
    config = dataclasses.replace(config, source=" < ".join(s for s in ["defaults", *sources] if s))
    _validate(config, where)
    return config
