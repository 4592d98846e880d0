"""Configuration: defaults < sactor.toml < environment < flags, and one clear error per bad file."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import BY_NAME, SECTIONS, SETTINGS, Config, Setting, load_config
from pipeline.errors import ConfigError
from tests.conftest import Cli

GOOD = """
[general]
llm = "VLLM"
max_translation_attempts = 4
timeout_seconds = 20
command_output_byte_limit = 1000

[VLLM]
base_url = "http://gpu-box:8000/v1"
api_key = "sk-file-secret"
model = "file-model"
max_tokens = 4096
temperature = 0.2

[pipeline]
workers = 16
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sactor.toml"
    path.write_text(text)
    return path


def test_file_values_are_read_with_sactor_names(tmp_path: Path) -> None:
    """SACToR's [general] and [VLLM] keys land in the config."""
    config = load_config(write(tmp_path, GOOD), environ={})
    assert config.model.base_url == "http://gpu-box:8000/v1"
    assert config.model.model == "file-model"
    assert config.model.max_tokens == 4096
    assert config.translation.max_attempts == 4
    assert config.translation.test_timeout == 20.0
    assert config.translation.output_byte_limit == 1000
    assert config.client.workers == 16


def test_environment_overrides_file_and_flags_override_environment(tmp_path: Path) -> None:
    """Precedence: file < VLLM_* environment < flags."""
    env = {"VLLM_BASE_URL": "http://env-host:9000/v1", "VLLM_MODEL": "env-model", "VLLM_API_KEY": "env-key"}
    config = load_config(write(tmp_path, GOOD), environ=env)
    assert (config.model.base_url, config.model.model, config.model.api_key) == (
        "http://env-host:9000/v1", "env-model", "env-key")
    config = load_config(write(tmp_path, GOOD), environ=env, flags={"model": "flag-model", "workers": 3})
    assert config.model.model == "flag-model"
    assert config.model.base_url == "http://env-host:9000/v1"
    assert config.client.workers == 3


def test_defaults_without_any_file(tmp_path: Path) -> None:
    """No file at all is fine: built-in defaults."""
    config = load_config(None, environ={}, default_path=tmp_path / "absent.toml")
    assert config.model.base_url.endswith("/v1")
    assert config.translation.max_attempts == 6
    assert config.translation.test_timeout == 60.0
    assert config.translation.output_byte_limit == 40_000


def test_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    """--config naming a file that does not exist fails with the path."""
    with pytest.raises(ConfigError, match=r"nope\.toml: configuration file not found"):
        load_config(tmp_path / "nope.toml", environ={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param('[VLLM]\nmodle = "x"\n', r"\[VLLM\] unknown key 'modle'\. Did you mean 'model'\?", id="typo-key"),
        pytest.param('[pipline]\nworkers = 2\n', r"unknown section \[pipline\]\. Did you mean 'pipeline'\?",
                     id="typo-section"),
        pytest.param('[VLLM]\nmax_tokens = "lots"\n', r"\[VLLM\] max_tokens must be a whole number, not str 'lots'",
                     id="type"),
        pytest.param('[pipeline]\nworkers = 0\n', r"\[pipeline\] workers = 0 must be greater than zero",
                     id="zero-limit"),
        pytest.param('[general]\ntimeout_seconds = -5\n', r"\[general\] timeout_seconds = -5.0 must be greater",
                     id="negative-limit"),
        pytest.param('[VLLM]\nbase_url = "http://localhost:8000"\n',
                     r"must end with /v1.*use 'http://localhost:8000/v1'", id="no-v1"),
        pytest.param('[general]\nllm = "OpenAI"\n', r"\[general\] llm = 'OpenAI' is not supported", id="backend"),
        pytest.param('[VLLM\nmodel = 1\n', r"not valid TOML", id="syntax"),
    ],
)
def test_bad_files_give_one_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    """Each bad file fails with a message naming the file, the key and the fix."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(path, environ={})
    assert str(path) in str(info.value)


def test_sactor_sections_we_do_not_use_are_noticed_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A user's full SACToR file works: [litellm] and [logging] get one notice each."""
    path = write(tmp_path, GOOD + '\n[litellm]\nmodel = "gpt"\n\n[logging]\nlevel = "info"\n')
    with caplog.at_level(logging.INFO, logger="pipeline.config"):
        config = load_config(path, environ={})
    assert config.model.model == "file-model"
    notices = [r.getMessage() for r in caplog.records]
    assert sum("[litellm]" in n for n in notices) == 1
    assert sum("[logging]" in n for n in notices) == 1


def test_api_key_is_never_shown(tmp_path: Path) -> None:
    """The key stays out of repr and of the public (summary) view."""
    config = load_config(write(tmp_path, GOOD), environ={})
    assert "sk-file-secret" not in repr(config)
    assert "sk-file-secret" not in str(config.public())


def test_bad_flag_value_is_rejected(tmp_path: Path) -> None:
    """A zero --workers is refused like a zero in the file."""
    with pytest.raises(ConfigError, match="--workers 0 must be greater than zero"):
        load_config(None, environ={}, flags={"workers": 0}, default_path=tmp_path / "absent.toml")


def _other_value(setting: Setting, default: Any) -> Any:
    if setting.choices:
        return next(c for c in setting.choices if c != default)
    if setting.kind is bool:
        return not default
    if setting.kind is int:
        return 2 if default is None else min(default + 1, setting.cap or default + 1)
    if setting.kind is float:
        return 0.5 if setting.high is not None and setting.high <= 2 else default + 0.5
    return "http://gpu:8000/v1" if setting.name == "base_url" else f"x-{setting.name}"


@pytest.mark.parametrize("source", ["file", "environment", "job", "flag"])
def test_every_setting_reaches_the_config_from_each_source_the_table_gives_it(tmp_path: Path, source: str) -> None:
    """One table declares each setting; its file key, variable, job key and flag all land in the same field."""
    defaults = Config()
    wanted: dict[str, Any] = {}
    for s in SETTINGS:
        if s.name == "backend":
            continue
        if (source == "environment" and not s.env) or (source == "job" and not s.job) or \
                (source == "flag" and not (s.flag or s.switches)):
            continue
        default = getattr(getattr(defaults, s.group), s.name)
        wanted[s.name] = s.switches[-1][1] if source == "flag" and s.switches else _other_value(s, default)
    assert wanted
    absent = tmp_path / "absent.toml"
    if source == "file":
        lines = []
        for section in SECTIONS:
            lines.append(f"[{section}]")
            lines += [f"{s.key} = {json.dumps(wanted[s.name])}" for s in SETTINGS if s.section == section
                      and s.name in wanted]
        config = load_config(write(tmp_path, "\n".join(lines) + "\n"), environ={})
    elif source == "environment":
        config = load_config(None, environ={BY_NAME[n].env or "": str(v) for n, v in wanted.items()},
                             default_path=absent)
    elif source == "job":
        config = load_config(None, environ={}, job=wanted, job_path=tmp_path / "j.toml", default_path=absent)
    else:
        config = load_config(None, environ={}, flags={n: v if isinstance(v, bool) or n == "feed" else str(v)
                                                      for n, v in wanted.items()}, default_path=absent)
    got = {n: getattr(getattr(config, BY_NAME[n].group), n) for n in wanted}
    assert got == wanted


def test_sactor_config_variable_names_the_file(cli: Cli, tmp_path: Path) -> None:
    """$SACTOR_CONFIG (SACToR's variable) picks the settings file; a missing one is named by the variable."""
    result = cli("check", env={"SACTOR_CONFIG": str(tmp_path / "gone.toml")})
    assert result.returncode == 2, result.output
    assert "gone.toml: configuration file not found: check $SACTOR_CONFIG" in result.stderr
    (tmp_path / "mine.toml").write_text('[VLLM]\nbase_url = "http://localhost:8000"\n')
    result = cli("check", env={"SACTOR_CONFIG": str(tmp_path / "mine.toml")})
    assert result.returncode == 2, result.output
    assert "mine.toml: [VLLM] base_url = 'http://localhost:8000' must end with /v1" in result.stderr
