"""The vLLM simulator, specified through real HTTP (httpx2, raw sockets), real rustc and a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from pipeline.prompts import first_prompt
from pipeline.records import STAGE_SPECS
from pipeline.simulator import FaultPlan, LoadModel, RequestRecord, SimConfig, Simulator

REPO = Path(__file__).resolve().parents[1]
MODEL = "sim-model"
SYSTEM = {"role": "system", "content": "You translate C to Rust."}
Served = tuple[Simulator, str]


# ------------------------------------------------------------------------------------------------ helpers


def unidiomatic_prompt(name: str) -> str:
    return f"Translate the C program {name} into Rust.\n```c\nint main(void) {{ return 0; }}\n```\n"


def idiomatic_prompt(name: str) -> str:
    return (f"Make this verified translation of {name} idiomatic.\n```rust\nfn main() {{}}\n```\n"
            "Keep the behaviour.")


def conversation(first_user: str, attempt: int = 1) -> list[dict[str, str]]:
    """The messages of a request at ``attempt``: each earlier attempt left an answer and a feedback."""
    messages = [SYSTEM, {"role": "user", "content": first_user}]
    for n in range(1, attempt):
        messages += [{"role": "assistant", "content": f"answer {n}"},
                     {"role": "user", "content": f"attempt {n} failed to compile"}]
    return messages


def chat(client: httpx2.Client, messages: list[dict[str, str]], **extra: Any) -> httpx2.Response:
    return client.post("/chat/completions", json={"model": MODEL, "messages": messages, **extra})


def content_of(response: httpx2.Response) -> str:
    assert response.status_code == 200, response.text
    text = response.json()["choices"][0]["message"]["content"]
    assert isinstance(text, str)
    return text


def rust_block(text: str) -> str:
    match = re.search(r"^```rust\n(.*?)^```", text, re.S | re.M)
    assert match, f"no rust block in {text!r}"
    return match.group(1)


def client_for(base_url: str, timeout: float = 10.0) -> httpx2.Client:
    return httpx2.Client(base_url=base_url, timeout=timeout, trust_env=False)


@pytest.fixture
def answers(tmp_path: Path) -> Path:
    """A canned-answer directory with attempts, stages, match strings and header options."""
    root = tmp_path / "answers"
    files = {
        "fib/unidiomatic-1.md": "fib: unidiomatic attempt 1",
        "fib/unidiomatic-2.md": "fib: unidiomatic attempt 2",
        "fib/idiomatic-1.md": "fib: idiomatic attempt 1",
        "sum/unidiomatic-1.md": "sum: unidiomatic attempt 1",
        "checksum/unidiomatic-1.md": "checksum: unidiomatic attempt 1",
        "custom/match.txt": "TASK-ALPHA\n",
        "custom/unidiomatic-1.md": "custom: unidiomatic attempt 1",
        "cut/unidiomatic-1.md": '<!-- sim: {"finish_reason": "length"} -->\nfn main() { println!("cut',
        "busy/unidiomatic-1.md": '<!-- sim: {"fault": "503", "fault_times": 1} -->\nbusy: served',
        "broken/unidiomatic-1.md": '<!-- sim: {"fault": "malformed"} -->\nbroken: never seen whole',
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def sim_url(answers: Path) -> Iterator[Served]:
    sim = Simulator(SimConfig(answers_dir=answers, max_model_len=2000))
    with sim.running() as base_url:
        yield sim, base_url


# ------------------------------------------------------------------------------------- plain endpoints


def test_models_lists_the_served_model_with_its_context_length() -> None:
    """GET /v1/models answers vLLM's model card, including max_model_len; /health is 200 and empty."""
    with Simulator(SimConfig(model="org/coder", max_model_len=4096)).running() as url, client_for(url) as c:
        card = c.get("/models").json()
        health = c.get(url.removesuffix("/v1") + "/health")
    assert card["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"], m["root"], m["max_model_len"]) for m in card["data"]] == [
        ("org/coder", "model", "vllm", "org/coder", 4096)]
    assert (health.status_code, health.content) == (200, b"")


@pytest.mark.parametrize(("payload", "count"), [
    pytest.param({"prompt": "abcdefghi"}, 3, id="prompt-ceil-len-over-4"),
    pytest.param({"prompt": ""}, 0, id="empty-prompt"),
    pytest.param({"messages": [{"role": "system", "content": "abcd"}, {"role": "user", "content": "abcde"}]},
                 (1 + 4) + (2 + 4), id="messages-plus-4-each"),
])
def test_tokenize_counts_with_the_documented_rule(payload: dict[str, Any], count: int) -> None:
    """POST /tokenize returns count, max_model_len and that many token ids."""
    with Simulator(SimConfig(max_model_len=1234)).running() as url, client_for(url) as c:
        answer = c.post(url.removesuffix("/v1") + "/tokenize", json={"model": MODEL, **payload}).json()
    assert (answer["count"], answer["max_model_len"], len(answer["tokens"])) == (count, 1234, count)


def test_tokenize_can_be_switched_off() -> None:
    """With tokenize=False, /tokenize is 404 as on a server that lacks it."""
    with Simulator(SimConfig(tokenize=False)).running() as url, client_for(url) as c:
        response = c.post(url.removesuffix("/v1") + "/tokenize", json={"model": MODEL, "prompt": "x"})
    assert response.status_code == 404


def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    """Two requests on one socket get two answers; 'Connection: close' then closes it."""
    with Simulator().running() as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            body = json.dumps({"model": MODEL, "prompt": "abcd"}).encode()
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (len(body), body))
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
    health, tokenized = received.split(b"HTTP/1.1 ")[1:]
    assert health.startswith(b"200 OK\r\n") and b"connection: keep-alive" in health
    assert tokenized.startswith(b"200 OK\r\n") and b"connection: close" in tokenized
    assert json.loads(tokenized.split(b"\r\n\r\n", 1)[1])["count"] == 1


# --------------------------------------------------------------------------------------- canned answers


@pytest.mark.parametrize(("first_user", "attempt", "expected"), [
    pytest.param(unidiomatic_prompt("fib.c"), 1, "fib: unidiomatic attempt 1", id="unidiomatic-attempt-1"),
    pytest.param(unidiomatic_prompt("fib.c"), 2, "fib: unidiomatic attempt 2", id="unidiomatic-attempt-2"),
    pytest.param(unidiomatic_prompt("fib.c"), 5, "fib: unidiomatic attempt 2", id="beyond-last-gets-last"),
    pytest.param(idiomatic_prompt("fib.c"), 1, "fib: idiomatic attempt 1", id="rust-fence-means-idiomatic"),
    pytest.param(idiomatic_prompt("fib.c"), 3, "fib: idiomatic attempt 1", id="idiomatic-beyond-last"),
    pytest.param(unidiomatic_prompt("checksum.c"), 1, "checksum: unidiomatic attempt 1",
                 id="longest-match-wins"),
    pytest.param(unidiomatic_prompt("sum.c"), 1, "sum: unidiomatic attempt 1", id="shorter-key-alone"),
    pytest.param(unidiomatic_prompt("TASK-ALPHA"), 1, "custom: unidiomatic attempt 1", id="match-txt"),
])
def test_canned_answer_is_chosen_by_key_stage_and_attempt(
    sim_url: Served, first_user: str, attempt: int, expected: str
) -> None:
    """The first user message picks the key and stage; assistant messages count the attempt."""
    sim, url = sim_url
    with client_for(url) as c:
        text = content_of(chat(c, conversation(first_user, attempt), max_tokens=100))
    assert text == expected
    (record,) = sim.chat_requests
    assert (record.answer_key, record.attempt) == (expected.split(":")[0], attempt)
    assert record.stage == expected.split()[1]


@pytest.mark.parametrize("stage", list(STAGE_SPECS))
def test_every_declared_stage_is_told_apart_by_its_real_first_request(tmp_path: Path, stage: str) -> None:
    """Stage detection follows the declarations (records.STAGE_SPECS, prompts.FIRST_REQUESTS): the pipeline's own
    first request of each declared stage gets that stage's canned answer, for a first and a later attempt."""
    root = tmp_path / "answers"
    (root / "fib").mkdir(parents=True)
    for name in STAGE_SPECS:
        for attempt in (1, 2):
            (root / "fib" / f"{name}-{attempt}.md").write_text(f"{name} {attempt}", encoding="utf-8")
    first = first_prompt(stage, name="fib.c", c_source="int main(void) { return 0; }\n",  # type: ignore[arg-type]
                         rust_source="fn main() {}\n")
    assert f"\n```{STAGE_SPECS[stage].quotes}\n" in first  # the fence the declaration promises
    sim = Simulator(SimConfig(answers_dir=root))
    with sim.running() as url, client_for(url) as c:
        texts = [content_of(chat(c, conversation(first, attempt), max_tokens=100)) for attempt in (1, 2)]
    assert texts == [f"{stage} 1", f"{stage} 2"]
    assert [(r.stage, r.attempt) for r in sim.chat_requests] == [(stage, 1), (stage, 2)]


@pytest.mark.parametrize(("marker", "folder", "label"), [
    pytest.param("Function-level item: ", "functions", "is_even+is_odd", id="functions"),
    pytest.param("Global-level item: ", "globals", "SORT_KEYS", id="globals"),
    pytest.param("Idiomatic function-level item: ", "idiomatic-functions", "sum", id="idiomatic-functions"),
])
def test_function_level_requests_are_answered_by_marker_line_folder_and_attempt(
    tmp_path: Path, marker: str, folder: str, label: str
) -> None:
    """A marker line picks answers_dir/KEY/FOLDER/LABEL-N.md (N = assistant turns + 1, the last file repeats),
    even when the prompt quotes Rust; a label without files gets the refusal naming the expected path."""
    root = tmp_path / "answers"
    (root / "calc" / folder).mkdir(parents=True)
    for attempt in (1, 2):
        (root / "calc" / folder / f"{label}-{attempt}.md").write_text(f"{label} {attempt}", encoding="utf-8")
    first = f"Instructions.\n\n{marker}{label}\nTranslate it, of the program `calc.c`.\n```rust\nstruct T;\n```\n"
    missing = first.replace(f"{marker}{label}", f"{marker}other")
    sim = Simulator(SimConfig(answers_dir=root))
    with sim.running() as url, client_for(url) as c:
        texts = [content_of(chat(c, conversation(first, attempt), max_tokens=100)) for attempt in (1, 2, 3)]
        refusal = content_of(chat(c, conversation(missing), max_tokens=100))
    assert texts == [f"{label} 1", f"{label} 2", f"{label} 2"]
    assert str(root / "calc" / folder / "other-1.md") in refusal
    assert [(r.stage, r.attempt) for r in sim.chat_requests][:3] == [(f"{folder}/{label}", n) for n in (1, 2, 3)]


def test_answer_key_appears_only_in_a_later_user_message_is_not_matched(sim_url: Served) -> None:
    """Only the FIRST user message identifies the task; with nothing matching, the answer is prose."""
    sim, url = sim_url
    messages = [*conversation(unidiomatic_prompt("other.c")), {"role": "user", "content": "fib.c"}]
    with client_for(url) as c:
        text = content_of(chat(c, messages, max_tokens=200))
    assert text.startswith("I could not find") and "```" not in text
    assert sim.chat_requests[0].answer_key is None


def test_header_finish_reason_length_sends_the_answer_as_truncated(sim_url: Served) -> None:
    """A sim header is removed from the answer and its finish_reason is used."""
    _, url = sim_url
    with client_for(url) as c:
        answer = chat(c, conversation(unidiomatic_prompt("cut.c")), max_tokens=100).json()
    assert answer["choices"][0]["message"]["content"] == 'fn main() { println!("cut'
    assert answer["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(("key", "first_status", "second_status"), [
    pytest.param("busy", 503, 200, id="fault-times-1-then-served"),
    pytest.param("broken", 200, 200, id="fault-every-time"),
])
def test_header_fault_applies_to_that_answer(
    sim_url: Served, key: str, first_status: int, second_status: int
) -> None:
    """A header fault applies each time the answer is served, or only fault_times times."""
    sim, url = sim_url
    with client_for(url) as c:
        responses = [chat(c, conversation(unidiomatic_prompt(f"{key}.c")), max_tokens=100) for _ in range(2)]
    assert [r.status_code for r in responses] == [first_status, second_status]
    faults = [r.fault for r in sim.chat_requests]
    if key == "busy":
        assert faults == ["503", None]
        assert content_of(responses[1]) == "busy: served"
    else:
        assert faults == ["malformed", "malformed"]
        for response in responses:
            with pytest.raises(json.JSONDecodeError):
                json.loads(response.content)


def test_answer_longer_than_max_tokens_is_cut_with_finish_reason_length(sim_url: Served) -> None:
    """An answer over max_tokens keeps max_tokens * 4 characters and finishes with 'length'."""
    sim, url = sim_url
    with client_for(url) as c:
        answer = chat(c, conversation(unidiomatic_prompt("fib.c")), max_tokens=3).json()
    assert answer["choices"][0]["message"]["content"] == "fib: unidiom"
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 3
    assert answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"] + 3
    assert sim.chat_requests[0].finish_reason == "length"


# ------------------------------------------------------------------------------------------- directives


def directive_prompt(stdout: str, **plan: Any) -> str:
    spec = json.dumps({"id": "t42", "stdout": stdout, **plan})
    return f"Translate this C program.\n```c\n// @sim {spec}\nint main(void) {{ return 0; }}\n```\n"


def compile_and_run(source: str, workdir: Path) -> tuple[int, str, str]:
    """Compile with rustc --edition 2021; return (-1, '', stderr) on a compile error, else run it."""
    src = workdir / "main.rs"
    src.write_text(source, encoding="utf-8")
    built = subprocess.run(
        ["rustc", "--edition", "2021", "-o", str(workdir / "main"), str(src)],
        capture_output=True, text=True, timeout=120, start_new_session=True, check=False,
    )
    if built.returncode != 0:
        return -1, "", built.stderr
    ran = subprocess.run([str(workdir / "main")], capture_output=True, text=True, timeout=30,
                         start_new_session=True, check=False, stdin=subprocess.DEVNULL)
    return ran.returncode, ran.stdout, ran.stderr


TRICKY_STDOUT = 'He said "hi" \\ {x} {} é\ttab\nsecond line'


@pytest.mark.parametrize(("outcome", "exit_code", "prints_stdout"), [
    pytest.param("pass", 0, True, id="pass-prints-stdout"),
    pytest.param("unsafe", 0, True, id="unsafe-passes-too"),
    pytest.param("test_fail", 1, False, id="test-fail-exits-1"),
    pytest.param("compile_error", -1, False, id="compile-error"),
])
def test_directive_programs_behave_as_their_outcome_says(
    tmp_path: Path, outcome: str, exit_code: int, prints_stdout: bool
) -> None:
    """Directive code really compiles with rustc and prints `stdout` (with println!) only when it should."""
    with Simulator().running() as url, client_for(url) as c:
        text = content_of(chat(c, conversation(directive_prompt(TRICKY_STDOUT, unidiomatic=[outcome])),
                               max_tokens=2000))
    source = rust_block(text)
    assert '"t42"' in source
    assert ("unsafe {" in source) == (outcome == "unsafe")
    code, stdout, stderr = compile_and_run(source, tmp_path)
    assert code == exit_code, stderr
    assert (stdout == TRICKY_STDOUT + "\n") == prints_stdout


@pytest.mark.parametrize(("stage_prompt", "attempt", "marker"), [
    pytest.param(directive_prompt("1", unidiomatic=["compile_error", "pass"]), 1, "not a number", id="u-1"),
    pytest.param(directive_prompt("1", unidiomatic=["compile_error", "no_code"]), 2, None, id="u-2-no-code"),
    pytest.param(directive_prompt("1", unidiomatic=["compile_error", "unsafe"]), 7, "unsafe {",
                 id="last-repeats"),
    pytest.param(directive_prompt("1", unidiomatic=["no_code"], idiomatic=["test_fail"])
                 + "\n```rust\nfn main() {}\n```", 1, "process::exit(1)", id="idiomatic-list"),
])
def test_directive_outcome_follows_stage_and_attempt(
    stage_prompt: str, attempt: int, marker: str | None
) -> None:
    """The outcome is list[attempt - 1] of the request's stage; the last one repeats."""
    with Simulator().running() as url, client_for(url) as c:
        text = content_of(chat(c, conversation(stage_prompt, attempt), max_tokens=2000))
    if marker is None:
        assert "```" not in text
    else:
        assert marker in rust_block(text)


def test_directive_pads_to_tokens_and_truncates() -> None:
    """'tokens' sets the completion size; 'truncated' sends half an answer with finish_reason length."""
    with Simulator().running() as url, client_for(url) as c:
        full = chat(c, conversation(directive_prompt("7", tokens=300)), max_tokens=2000).json()
        other = chat(c, conversation(directive_prompt("7", tokens=300).replace("t42", "t43")),
                     max_tokens=2000).json()
        cut = chat(c, conversation(directive_prompt("7", tokens=300, unidiomatic=["truncated"])),
                   max_tokens=2000).json()
    assert 285 <= full["usage"]["completion_tokens"] <= 315
    assert full["choices"][0]["message"]["content"] != other["choices"][0]["message"]["content"]
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["choices"][0]["message"]["content"] == full["choices"][0]["message"]["content"][:len(
        full["choices"][0]["message"]["content"]) // 2]


# ------------------------------------------------------------------------------------------ validation
# vLLM 0.32 is the default; "legacy" is the older behaviour users still run. Each row of docs/vllm-protocol.md
# names the test here that pins it.

COMPATS = [pytest.param("0.32", id="vllm-0.32"), pytest.param("legacy", id="legacy")]


def error_of(response: httpx2.Response, compat: str) -> dict[str, Any]:
    """The error object of a response, checking the body shape of ``compat`` on the way."""
    body = response.json()
    if compat == "legacy":
        assert body["object"] == "error", body
        return {k: v for k, v in body.items() if k != "object"}
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return dict(body["error"])


@pytest.mark.parametrize(("compat", "message"), [
    pytest.param("0.32", "The model `gpt-9` does not exist. Valid aliases: sim-model.", id="vllm-0.32"),
    pytest.param("legacy", "The model `gpt-9` does not exist.", id="legacy"),
])
def test_unknown_model_is_404_naming_the_served_alias(compat: str, message: str) -> None:
    """A model the server does not serve: 404 NotFoundError; 0.32 ends with 'Valid aliases: NAME.'"""
    with Simulator(SimConfig(compat=compat)).running() as url, client_for(url) as c:
        response = c.post("/chat/completions", json={"model": "gpt-9", "messages": conversation("hi")})
    assert response.status_code == 404
    assert error_of(response, compat) == {"message": message, "type": "NotFoundError", "param": None,
                                          "code": 404}


def test_error_bodies_are_nested_in_0_32_and_flat_in_legacy() -> None:
    """The same fault: {"error": {message, type, param, code}} from 0.32, {"object": "error", ...} from legacy."""
    bodies = {}
    for compat in ("0.32", "legacy"):
        sim = Simulator(SimConfig(compat=compat, faults=FaultPlan(script=("503",))))
        with sim.running() as url, client_for(url) as c:
            bodies[compat] = chat(c, conversation("x"), max_tokens=5).json()
    assert bodies["0.32"] == {"error": {
        "message": "The server is overloaded, please retry later (simulated).",
        "type": "ServiceUnavailableError", "param": None, "code": 503}}
    assert bodies["legacy"] == {"object": "error", **bodies["0.32"]["error"]}


LIMIT = 100
PROMPT_54 = [{"role": "user", "content": "x" * 200}]  # 50 + 4 tokens


@pytest.mark.parametrize(("compat", "messages", "max_tokens", "status", "expect"), [
    pytest.param("0.32", PROMPT_54, 60, 200, 46, id="0.32-prompt-plus-max-tokens-over-is-shortened"),
    pytest.param("0.32", PROMPT_54, 46, 200, 46, id="0.32-exactly-fits"),
    pytest.param("0.32", [{"role": "user", "content": "x" * 400}], 10, 400,
                 "This model's maximum context length is 100 tokens. However, your request has at least 101 "
                 "input tokens. Please reduce the length of the input messages.", id="0.32-prompt-alone-over"),
    pytest.param("0.32", [{"role": "user", "content": "x" * 384}], 10, 400,
                 "max_tokens must be at least 1, got 0.", id="0.32-prompt-exactly-max-model-len"),
    pytest.param("0.32", PROMPT_54, 101, 400,
                 "max_tokens=101 cannot be greater than max_model_len=100. Please request fewer output tokens.",
                 id="0.32-max-tokens-over-max-model-len"),
    pytest.param("legacy", PROMPT_54, 60, 400,
                 "This model's maximum context length is 100 tokens. However, you requested 114 tokens (54 in "
                 "the messages, 60 in the completion). Please reduce the length of the messages or completion.",
                 id="legacy-prompt-plus-max-tokens-over-is-400"),
    pytest.param("legacy", PROMPT_54, 46, 200, 46, id="legacy-exactly-fits"),
])
def test_context_limits(
    compat: str, messages: list[dict[str, str]], max_tokens: int, status: int, expect: int | str,
) -> None:
    """0.32 shortens max_tokens to what the context leaves (finish_reason length); legacy refuses with a 400.

    0.32's refusals are type BadRequestError with param "input_tokens" (the prompt) or "max_tokens".
    """
    sim = Simulator(SimConfig(max_model_len=LIMIT, compat=compat))
    with sim.running() as url, client_for(url) as c:
        response = chat(c, messages, max_tokens=max_tokens)
    assert response.status_code == status, response.text
    if status == 400:
        param = None if compat == "legacy" else "input_tokens" if "input tokens" in str(expect) else "max_tokens"
        assert error_of(response, compat) == {"message": expect, "type": "BadRequestError", "param": param,
                                              "code": 400}
        return
    assert sim.chat_requests[0].max_tokens == expect
    assert response.json()["usage"]["completion_tokens"] <= expect


def test_0_32_cuts_an_answer_at_the_shortened_max_tokens() -> None:
    """A long answer asked with prompt + max_tokens over the context ends at the context with finish length."""
    messages = [{"role": "user", "content": directive_prompt("long", tokens=400)}]
    sim = Simulator(SimConfig(max_model_len=200))
    with sim.running() as url, client_for(url) as c:
        response = chat(c, messages, max_tokens=190)
    answer = response.json()
    prompt = answer["usage"]["prompt_tokens"]
    assert prompt + 190 > 200
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 200 - prompt == sim.chat_requests[0].max_tokens


@pytest.mark.parametrize("compat", COMPATS)
def test_prompt_alone_over_the_context_is_400_and_absent_max_tokens_fills_the_rest(compat: str) -> None:
    """Without max_tokens, a prompt over max_model_len is refused; a smaller one may use the rest."""
    with Simulator(SimConfig(max_model_len=50, compat=compat)).running() as url, client_for(url) as c:
        refused = chat(c, [{"role": "user", "content": "x" * 188}])  # 47 + 4 = 51 tokens
        fits = chat(c, [{"role": "user", "content": "fib.c"}])  # 2 + 4 tokens
    assert refused.status_code == 400
    assert error_of(refused, compat)["message"].startswith("This model's maximum context length is 50 tokens.")
    assert fits.json()["choices"][0]["finish_reason"] == "length"  # the refusal prose is about 60 tokens
    assert fits.json()["usage"]["completion_tokens"] == 50 - 6


X = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize("compat", COMPATS)
@pytest.mark.parametrize(("body", "kind", "param"), [
    pytest.param(b"{not json", "schema", "body", id="invalid-json"),
    pytest.param(b"[1, 2]", "schema", "body", id="not-an-object"),
    pytest.param(json.dumps({"model": MODEL}).encode(), "schema", "body.messages", id="no-messages"),
    pytest.param(json.dumps({"model": MODEL, "messages": "hello"}).encode(), "schema", "body.messages",
                 id="messages-not-a-list"),
    pytest.param(json.dumps({"model": MODEL, "messages": X, "max_tokens": "many"}).encode(), "schema",
                 "body.max_tokens", id="max-tokens-wrong-type"),
    pytest.param(json.dumps({"model": MODEL, "messages": X, "max_tokens": 0}).encode(), "value", "max_tokens",
                 id="max-tokens-0"),
    pytest.param(json.dumps({"model": MODEL, "messages": X, "temperature": -0.5}).encode(), "value",
                 "temperature", id="negative-temperature"),
])
def test_malformed_chat_request_is_400(body: bytes, kind: str, param: str, compat: str) -> None:
    """Bodies vLLM rejects get a 400. 0.32: a schema failure is type "Bad Request", param the field's location,
    a "validation error" message; a refused value is "BadRequestError", param the field. Legacy: BadRequestError."""
    with Simulator(SimConfig(compat=compat)).running() as url, client_for(url) as c:
        response = c.post("/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = error_of(response, compat)
    if compat == "legacy":
        assert error["type"] == "BadRequestError"
    elif kind == "schema":
        assert (error["type"], error["param"]) == ("Bad Request", param)
        assert "validation error" in error["message"]
    else:
        assert (error["type"], error["param"]) == ("BadRequestError", param)
    if param == "temperature":
        assert error["message"].startswith("temperature must be non-negative")


def test_api_key_guards_every_v1_route_but_not_health_or_tokenize() -> None:
    """With api_key, /v1/* answers 401 {"error": "Unauthorized"} (a string) without the key; others stay open."""
    sim = Simulator(SimConfig(api_key="sk-sim-key"))
    with sim.running() as url, client_for(url) as c:
        root = url.removesuffix("/v1")
        refused = [c.get("/models"), chat(c, conversation("x"), max_tokens=5), c.get("/nowhere"),
                   c.get("/models", headers={"authorization": "Bearer wrong"})]
        opened = [c.get(f"{root}/health"), c.post(f"{root}/tokenize", json={"model": MODEL, "prompt": "x"})]
        allowed = c.get("/models", headers={"authorization": "Bearer sk-sim-key"})
    assert [(r.status_code, r.json()) for r in refused] == [(401, {"error": "Unauthorized"})] * 4
    assert [r.status_code for r in opened] == [200, 200]
    assert allowed.status_code == 200
    assert sim.chat_requests[0].status == 401


def test_tokenize_count_is_the_prompt_tokens_of_a_chat_request() -> None:
    """/tokenize of chat messages counts the chat template too: the same count the chat's usage reports."""
    messages = conversation(unidiomatic_prompt("fib"), attempt=2)
    with Simulator().running() as url, client_for(url) as c:
        counted = c.post(url.removesuffix("/v1") + "/tokenize", json={"model": MODEL, "messages": messages})
        answered = chat(c, messages, max_tokens=5)
    text_only = sum(-(-len(m["content"]) // 4) for m in messages)
    assert counted.json()["count"] == answered.json()["usage"]["prompt_tokens"] > text_only


# ------------------------------------------------------------------------------------------- streaming


def read_sse(response: httpx2.Response) -> list[Any]:
    events: list[Any] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


@pytest.mark.parametrize(("compat", "tokens_per_chunk"), [
    pytest.param("0.32", 1, id="vllm-0.32"), pytest.param("legacy", 4, id="legacy")])
def test_streaming_chunks_reassemble_to_the_same_answer_and_carry_usage(compat: str, tokens_per_chunk: int) -> None:
    """SSE deltas join to the plain text, then a usage chunk with choices [], then [DONE].

    vLLM 0.32 sends one token per chunk and finish_reason on the last content chunk; older servers sent a few
    tokens per chunk and finish_reason on an empty chunk after the content.
    """
    sim = Simulator(SimConfig(compat=compat))
    messages = conversation(directive_prompt("streamed", tokens=120))
    with sim.running() as url, client_for(url) as c:
        whole = chat(c, messages, max_tokens=500).json()
        payload = {"model": MODEL, "messages": messages, "max_tokens": 500, "stream": True,
                   "stream_options": {"include_usage": True}}
        with c.stream("POST", "/chat/completions", json=payload) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = read_sse(response)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e["choices"]]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [e["choices"][0]["delta"]["content"] for e in chunks[1:] if e["choices"][0]["delta"].get("content")]
    assert max(len(piece) for piece in content) == 4 * tokens_per_chunk
    finishes = [e["choices"][0]["finish_reason"] for e in chunks]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    last_delta = chunks[-1]["choices"][0]["delta"]
    if compat == "0.32":
        assert last_delta["content"] == content[-1], "finish_reason rides on the last content chunk"
    else:
        assert last_delta == {}, "older servers sent finish_reason on an empty chunk"
    assert events[-2]["choices"] == [] and events[-2]["usage"] == whole["usage"]
    assert [r.stream for r in sim.chat_requests] == [False, True]


def test_streaming_without_include_usage_has_no_usage_chunk() -> None:
    """The usage chunk is sent only when stream_options.include_usage is true."""
    payload = {"model": MODEL, "messages": conversation("hello"), "max_tokens": 10, "stream": True}
    with Simulator().running() as url, client_for(url) as c, c.stream("POST", "/chat/completions",
                                                                      json=payload) as response:
        events = read_sse(response)
    assert all(e["choices"] for e in events[:-1])
    assert events[-2]["choices"][0]["finish_reason"] == "length"


# ------------------------------------------------------------------------------------------ load model


async def test_capacity_one_queues_the_second_request_fifo() -> None:
    """With capacity 1 and 0.2 s per generation, the second request starts after the first ends."""
    sim = Simulator(SimConfig(load=LoadModel(capacity=1, latency=0.2)))
    async with sim.serve() as url, httpx2.AsyncClient(base_url=url, timeout=10, trust_env=False) as c:
        body = {"model": MODEL, "messages": conversation("hello"), "max_tokens": 5}
        responses = await asyncio.gather(*(c.post("/chat/completions", json=body) for _ in range(2)))
    assert [r.status_code for r in responses] == [200, 200]
    first, second = sorted(sim.chat_requests, key=lambda r: r.start)
    assert first.end - first.start >= 0.2
    assert second.start >= first.end
    assert second.queued >= 0.15


def test_client_leaving_before_its_answer_is_recorded_as_499_and_frees_its_place() -> None:
    """A client that disconnects while queued or generating is recorded as 499; the slot keeps working."""
    sim = Simulator(SimConfig(load=LoadModel(capacity=1, latency=0.4)))
    body = json.dumps({"model": MODEL, "messages": conversation("queued"), "max_tokens": 5}).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    request = head + body
    with sim.running() as url, client_for(url, timeout=3) as c:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as first:
            first.sendall(request)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as leaving:
                leaving.sendall(request)
            deadline = time.monotonic() + 5
            while 499 not in [r.status for r in sim.chat_requests] and time.monotonic() < deadline:
                time.sleep(0.01)
            assert first.recv(65536).startswith(b"HTTP/1.1 200 OK")
        assert chat(c, conversation("after"), max_tokens=5).status_code == 200
    assert sorted(r.status for r in sim.chat_requests) == [200, 200, 499]


# --------------------------------------------------------------------------------------------- faults

FAULT_CASES = [
    pytest.param("500", id="500"),
    pytest.param("502", id="502"),
    pytest.param("503", id="503"),
    pytest.param("429", id="429-retry-after"),
    pytest.param("drop", id="drop"),
    pytest.param("stall", id="stall"),
    pytest.param("length", id="length"),
    pytest.param("malformed", id="malformed"),
]


@pytest.mark.parametrize("kind", FAULT_CASES)
def test_scripted_fault_hits_the_first_request_and_ok_passes_the_next(kind: str) -> None:
    """script=(KIND, "ok") faults the first chat request as KIND and leaves the second alone."""
    faults = FaultPlan(script=(kind, "ok"), retry_after=0.05, stall_seconds=0.3)
    sim = Simulator(SimConfig(faults=faults))
    messages = conversation(directive_prompt("fine", tokens=50))
    with sim.running() as url, client_for(url) as c:
        began = time.monotonic()
        try:
            faulted: httpx2.Response | None = chat(c, messages, max_tokens=500)
        except httpx2.TransportError:
            faulted = None
        waited = time.monotonic() - began
        normal = chat(c, messages, max_tokens=500)
    first, second = sorted(sim.chat_requests, key=lambda r: r.id)
    assert (second.status, second.fault, normal.json()["choices"][0]["finish_reason"]) == (200, None, "stop")
    assert first.fault == kind
    if kind in ("drop", "stall"):
        assert faulted is None and first.status == 0
        assert (waited >= 0.3) == (kind == "stall")
        return
    assert faulted is not None and faulted.status_code == first.status
    if kind in ("500", "502", "503", "429"):
        assert faulted.status_code == int(kind)
        assert error_of(faulted, "0.32")["code"] == int(kind)
        assert faulted.headers.get("retry-after") == ("0.05" if kind == "429" else None)
    elif kind == "length":
        whole = content_of(normal)
        assert faulted.json()["choices"][0]["message"]["content"] == whole[: len(whole) // 2]
        assert faulted.json()["choices"][0]["finish_reason"] == "length"
    else:
        assert faulted.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(faulted.content)


def test_trickle_sends_the_head_at_once_then_one_byte_per_interval() -> None:
    """A 'trickle' answer: the head at once, then a byte per interval, so every read is short but the whole is slow."""
    sim = Simulator(SimConfig(faults=FaultPlan(script=("trickle",), trickle_interval=0.2)))
    with sim.running() as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        with _raw_chat(port, "x") as sock:
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(1)
            began = time.monotonic()
            body = b""
            while time.monotonic() - began < 1.0:
                body += sock.recv(65536)
        deadline = time.monotonic() + 5
        while not sim.chat_requests and time.monotonic() < deadline:
            time.sleep(0.01)
    assert head.startswith(b"HTTP/1.1 200 OK")
    length = int(re.search(rb"content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    assert length > 100
    assert 2 <= len(body) <= 1.0 / 0.2 + 2, "about one byte per interval"
    assert sim.chat_requests[0].fault == "trickle" and sim.chat_requests[0].status == 499


def _raw_chat(port: int, content: str) -> socket.socket:
    body = json.dumps({"model": MODEL, "messages": conversation(content), "max_tokens": 5}).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
                 + body)
    return sock


@pytest.mark.parametrize("how", [pytest.param("method", id="stop_accepting"),
                                 pytest.param("fault", id="shutdown-fault")])
def test_a_stopping_server_refuses_new_connections_while_requests_in_flight_hang(how: str) -> None:
    """As vLLM after SIGTERM: connecting is refused, idle keep-alive connections close, open requests hang."""
    script = ("ok", "shutdown") if how == "fault" else ()
    sim = Simulator(SimConfig(load=LoadModel(capacity=4, latency=0.3), faults=FaultPlan(script=script)))
    with sim.running() as url, client_for(url) as idle:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        assert idle.get("/models").status_code == 200  # leaves an idle keep-alive connection
        in_flight = _raw_chat(port, "in flight")
        time.sleep(0.1)
        if how == "method":
            sim.stop_accepting()
        else:
            _raw_chat(port, "triggers the shutdown").close()
        deadline = time.monotonic() + 5
        while not sim.stopping and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
        with pytest.raises(httpx2.TransportError):
            idle.get("/models")
        in_flight.settimeout(0.8)
        with pytest.raises(TimeoutError):
            in_flight.recv(65536)  # the generation (0.3 s) finished long ago; no answer comes
        in_flight.close()
        deadline = time.monotonic() + 5
        while len(sim.chat_requests) < 2 - (how == "method") and time.monotonic() < deadline:
            time.sleep(0.01)
    statuses = {r.body["messages"][1]["content"]: r.status for r in sim.chat_requests}
    assert statuses["in flight"] == 499


def fault_sequence(seed: int, n: int = 16) -> list[str | None]:
    sim = Simulator(SimConfig(faults=FaultPlan(rate=0.5, kinds=("500", "503", "429"), seed=seed,
                                               retry_after=0)))
    with sim.running() as url, client_for(url) as c:
        for _ in range(n):
            chat(c, conversation("x"), max_tokens=5)
    return [r.fault for r in sorted(sim.chat_requests, key=lambda r: r.id)]


def test_seeded_fault_rate_is_reproducible() -> None:
    """The same seed faults the same requests with the same kinds; another seed differs."""
    first, again, other = fault_sequence(7), fault_sequence(7), fault_sequence(8)
    assert first == again
    assert first != other
    assert None in first and {"500", "503", "429"} & set(first)


# ------------------------------------------------------------------------------------ records and logs


@pytest.mark.parametrize("record_bodies", [pytest.param(True, id="with-bodies"),
                                           pytest.param(False, id="without-bodies")])
def test_jsonl_log_has_one_line_per_request(tmp_path: Path, record_bodies: bool) -> None:
    """Every request, whatever its route or status, is one JSON line matching the in-memory record."""
    log_path = tmp_path / "logs" / "requests.jsonl"
    config = SimConfig(log_path=log_path, record_bodies=record_bodies, faults=FaultPlan(script=("503",)))
    sim = Simulator(config)
    with sim.running() as url, client_for(url) as c:
        c.get(url.removesuffix("/v1") + "/health")
        c.get("/models")
        chat(c, conversation("one"), max_tokens=5)
        chat(c, conversation("two"), max_tokens=5)
        c.get("/nowhere")
    lines = sorted((json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines()),
                   key=lambda d: int(d["id"]))
    records = sim.requests
    assert len(lines) == len(records) == 5
    assert [(d["id"], d["path"], d["status"]) for d in lines] == [(r.id, r.path, r.status) for r in records]
    assert [d["status"] for d in lines] == [200, 200, 503, 200, 404]
    assert ("body" in lines[3]) == record_bodies
    if record_bodies:
        assert lines[3]["body"]["messages"][1]["content"] == "two"
        assert RequestRecord(**lines[3]) == records[3]
    else:
        assert records[3].body is None


def test_reset_log_forgets_records() -> None:
    """reset_log() empties the in-memory records; new requests are recorded again."""
    sim = Simulator()
    with sim.running() as url, client_for(url) as c:
        c.get("/models")
        sim.reset_log()
        chat(c, conversation("x"), max_tokens=5)
    assert [r.path for r in sim.requests] == ["/v1/chat/completions"]


# ------------------------------------------------------------------------------------------------- CLI


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        line = b""
        deadline = time.monotonic() + timeout
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                raise TimeoutError(f"no line from the simulator, got {line!r}")
            byte = os.read(proc.stdout.fileno(), 1)
            if not byte:
                break
            line += byte
    return line


@contextlib.contextmanager
def simulator_process(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m pipeline.simulator ARGS` in its own session, killed with its group if still running at the end."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.simulator", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_cli_prints_the_listening_line_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    """`python -m pipeline.simulator --port 0` prints one line when ready and stops cleanly on SIGTERM."""
    log_path = tmp_path / "cli.jsonl"
    with simulator_process("--port", "0", "--model", "cli-model", "--max-model-len", "512",
                           "--log", str(log_path)) as proc:
        line = read_line(proc, timeout=20).decode()
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+/v1)\n", line)
        assert match, line
        with client_for(match.group(1)) as c:
            assert c.get("/models").json()["data"][0]["max_model_len"] == 512
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert stdout == b""
    assert len(log_path.read_text().splitlines()) == 1


def test_a_stopped_simulator_restarts_on_the_same_port() -> None:
    """running(port=P) rebinds the old port, so a test can stage an outage; records and ids carry on."""
    sim = Simulator()
    with sim.running() as url, client_for(url) as c:
        c.get("/models")
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with client_for(url) as c, pytest.raises(httpx2.ConnectError):
        c.get("/models")
    with sim.running(port=port) as again, client_for(again) as c:
        assert c.get("/models").status_code == 200
    assert again == url
    assert [r.id for r in sim.requests] == [1, 2]


def test_cli_on_sigterm_hang_refuses_connections_until_a_second_signal(tmp_path: Path) -> None:
    """`--on-sigterm hang`: the first SIGTERM closes the listener as vLLM does; the second one exits 0."""
    with simulator_process("--port", "0", "--on-sigterm", "hang", "--compat", "legacy") as proc:
        url = read_line(proc, timeout=20).decode().split()[-1]
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        with client_for(url) as c:
            assert c.get("/models").status_code == 200
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        refused = False
        while not refused and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                time.sleep(0.05)
            except ConnectionRefusedError:
                refused = True
        assert refused and proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
