"""Several model servers: the routing policy (a fake clock, no I/O) and the settings that name the servers."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest

from pipeline.config import Config, ModelSettings, load_config
from pipeline.endpoints import STREAK_LIMIT, EndpointState, Router, capacities
from pipeline.engine import settings_fingerprint
from pipeline.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def router(*weights: float, capacity: int = 100, budget: float = 60.0) -> tuple[Router, Clock]:
    clock = Clock()
    states = [EndpointState(f"http://s{i}/v1", w, capacity) for i, w in enumerate(weights)]
    return Router(states, budget=budget, clock=clock, probe_first=1.0, probe_cap=8.0), clock


def test_requests_in_flight_follow_the_weights() -> None:
    """With a weight-2 and a weight-1 server, two of every three requests in flight go to the first."""
    r, _ = router(2.0, 1.0)
    picks = Counter(r.pick() for _ in range(30))
    assert picks == {0: 20, 1: 10}


def test_the_least_busy_server_per_weight_gets_the_next_request() -> None:
    """A finished request frees its server, which then takes the next one."""
    r, _ = router(1.0, 1.0)
    assert [r.pick(), r.pick()] == [0, 1]
    r.finished(1)
    assert r.pick() == 1


def test_a_full_server_takes_no_more_and_none_is_picked_when_all_are_full() -> None:
    """Capacity bounds each server's requests in flight."""
    r, _ = router(1.0, 1.0, capacity=1)
    assert {r.pick(), r.pick()} == {0, 1}
    assert r.pick() is None


def test_capacity_is_workers_split_by_weight_unless_an_endpoint_says() -> None:
    """--workers 12 over weights 2:1 gives 8 and 4; an endpoint's own workers wins."""
    from pipeline.config import ClientSettings, Endpoint

    model = ModelSettings(endpoints=(Endpoint("http://a/v1", weight=2), Endpoint("http://b/v1")))
    config = Config(model=model, client=ClientSettings(workers=12))
    assert capacities(config) == [8, 4]
    model = dataclasses.replace(model, endpoints=(*model.endpoints, Endpoint("http://c/v1", workers=3)))
    assert capacities(dataclasses.replace(config, model=model)) == [8, 4, 3]


def test_a_refused_connection_takes_a_server_out_at_once_and_others_take_its_requests() -> None:
    """Out of service: no request goes there until it is back."""
    r, _ = router(1.0, 1.0)
    assert r.failed(0, "connection refused", at_once=True)
    assert {r.pick() for _ in range(5)} == {1}


def test_a_streak_of_server_errors_takes_a_server_out_and_an_answer_resets_it() -> None:
    """STREAK_LIMIT failures in a row take it out; a success in between starts the count again."""
    r, _ = router(1.0, 1.0)
    for _ in range(STREAK_LIMIT - 1):
        assert not r.failed(0, "HTTP 503")
    r.succeeded(0, 10, 5)
    for _ in range(STREAK_LIMIT - 1):
        assert not r.failed(0, "HTTP 503")
    assert r.failed(0, "HTTP 503")
    assert not r.states[0].up


def test_a_server_out_is_probed_with_a_growing_backoff_and_put_back() -> None:
    """Probes come due after 1 s, then 2 s, 4 s (capped); a good probe puts it back and counts the time out."""
    r, clock = router(1.0, 1.0)
    r.take_out(0, "connection refused")
    assert r.claim_probe() is None
    waits = []
    for _ in range(4):
        start = clock.now
        while (index := r.claim_probe()) is None:
            clock.now += 0.5
        assert index == 0
        assert r.claim_probe() is None  # one probe at a time
        waits.append(clock.now - start)
        r.probe_failed(0, "connection refused")
    assert waits == [1.0, 2.0, 4.0, 8.0]
    clock.now += 8.0
    assert r.claim_probe() == 0
    r.back_in(0)
    assert r.states[0].up and r.out_of_service(0) == pytest.approx(clock.now - 1000.0)
    assert {r.pick() for _ in range(2)} == {0, 1}


def test_the_run_stops_only_when_every_server_has_failed_for_the_budget() -> None:
    """One server still answering keeps the run going however long the other is down."""
    r, clock = router(1.0, 1.0, budget=60.0)
    r.take_out(0, "connection refused")
    clock.now += 600
    assert not r.exhausted()
    r.failed(1, "connection refused", at_once=True)
    clock.now += 59
    assert not r.exhausted()
    clock.now += 1
    assert r.exhausted()


# ------------------------------------------------------------------------------------------------ settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sactor.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("source", [
    pytest.param({"environ": {"VLLM_BASE_URL": "http://a:8000/v1, http://b:8000/v1"}}, id="env-commas"),
    pytest.param({"flags": {"base_url": ["http://a:8000/v1", "http://b:8000/v1"]}}, id="repeated-flag"),
    pytest.param({"file": '[VLLM]\nbase_url = ["http://a:8000/v1", "http://b:8000/v1"]\n'}, id="file-list"),
    pytest.param({"file": '[[VLLM.endpoints]]\nbase_url = "http://a:8000/v1"\n'
                          '[[VLLM.endpoints]]\nbase_url = "http://b:8000/v1"\n'}, id="tables"),
])
def test_several_servers_can_be_named_every_way(tmp_path: Path, source: dict[str, object]) -> None:
    """A list in the file, endpoint tables, a repeated --base-url or a comma-separated VLLM_BASE_URL."""
    path = write(tmp_path, str(source.get("file", "")))
    config = load_config(path, environ=source.get("environ", {}), flags=source.get("flags", {}))  # type: ignore[arg-type]
    assert [e.base_url for e in config.model.endpoints] == ["http://a:8000/v1", "http://b:8000/v1"]
    assert config.model.base_url == "http://a:8000/v1"


def test_a_later_source_naming_one_server_replaces_the_files_list(tmp_path: Path) -> None:
    """VLLM_BASE_URL with one URL overrides the file's endpoints: a one-server run."""
    path = write(tmp_path, '[VLLM]\nbase_url = ["http://a:8000/v1", "http://b:8000/v1"]\n')
    config = load_config(path, environ={"VLLM_BASE_URL": "http://c:8000/v1"})
    assert (config.model.base_url, config.model.endpoints) == ("http://c:8000/v1", ())


def test_endpoint_tables_carry_model_key_weight_and_workers(tmp_path: Path) -> None:
    """Each [[VLLM.endpoints]] table may name its own key, weight and workers."""
    path = write(tmp_path, '[VLLM]\nmodel = "m"\n[[VLLM.endpoints]]\nbase_url = "http://a:8000/v1"\nweight = 3\n'
                           'api_key = "key-a"\n[[VLLM.endpoints]]\nbase_url = "http://b:8000/v1"\nworkers = 5\n')
    a, b = load_config(path, environ={}).model.endpoints
    assert (a.weight, a.api_key, a.workers) == (3.0, "key-a", None)
    assert (b.weight, b.workers) == (1.0, 5)


@pytest.mark.parametrize("text, message", [
    pytest.param('[VLLM]\nbase_url = "http://a:8000/v1"\n[[VLLM.endpoints]]\nbase_url = "http://b:8000/v1"\n',
                 "[VLLM] base_url and [[VLLM.endpoints]] both name servers", id="both"),
    pytest.param('[[VLLM.endpoints]]\nmodel = "m"\n', "[[VLLM.endpoints]] #1 has no base_url", id="no-url"),
    pytest.param('[[VLLM.endpoints]]\nbase_url = "http://a:8000/v1"\nweight = 0\n', "#1: weight = 0 must be",
                 id="weight"),
    pytest.param('[[VLLM.endpoints]]\nbase_url = "http://a:8000/v1"\nwieght = 2\n', "Did you mean 'weight'?",
                 id="typo"),
    pytest.param('[VLLM]\nbase_url = ["http://a:8000/v1", "http://a:8000/v1"]\n', "names the same value twice",
                 id="duplicate"),
    pytest.param('[VLLM]\nbase_url = ["http://a:8000/v1", "http://b:8000"]\n', "must end with /v1",
                 id="bad-url"),
    pytest.param('[VLLM]\nmodel = "m"\n[[VLLM.endpoints]]\nbase_url = "http://a:8000/v1"\n[[VLLM.endpoints]]\n'
                 'base_url = "http://b:8000/v1"\nmodel = "n"\n', "set [VLLM] equivalent_models = true",
                 id="other-model"),
])
def test_bad_server_lists_are_refused_naming_the_key_and_the_fix(tmp_path: Path, text: str, message: str) -> None:
    """Each mistake is a ConfigError that names the table or key."""
    with pytest.raises(ConfigError, match=None) as caught:
        load_config(write(tmp_path, text), environ={})
    assert message in str(caught.value)


def test_fingerprint_is_unchanged_for_one_server_and_ignores_the_number_and_order_of_servers(tmp_path: Path) -> None:
    """Reruns after adding, removing or reordering equivalent servers redo no finished task."""
    one = load_config(write(tmp_path, '[VLLM]\nbase_url = "http://a:8000/v1"\nmodel = "m"\n'), environ={})
    assert settings_fingerprint(one) == settings_fingerprint(Config(model=ModelSettings(model="m")))
    two = load_config(write(tmp_path, '[VLLM]\nmodel = "m"\n'), environ={"VLLM_BASE_URL": "http://a:8000/v1,"
                                                                                           "http://b:8000/v1"})
    turned = load_config(write(tmp_path, '[VLLM]\nmodel = "m"\nequivalent_models = true\n[[VLLM.endpoints]]\n'
                                         'base_url = "http://b:8000/v1"\nmodel = "m-copy"\n[[VLLM.endpoints]]\n'
                                         'base_url = "http://a:8000/v1"\n'), environ={})
    assert settings_fingerprint(one) == settings_fingerprint(two) == settings_fingerprint(turned)


def test_a_one_server_summary_config_has_no_endpoint_keys() -> None:
    """One-server users see the same config section as before."""
    assert set(Config().public()["model"]) == {"base_url", "model", "max_tokens", "temperature", "backend"}
