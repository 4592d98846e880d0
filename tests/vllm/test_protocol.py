"""What vLLM 0.32 really answers, request by request (raw HTTP, not our client): the rows of docs/vllm-protocol.md.

Each test pins one behaviour the client has to live with and the simulator has to copy; when vLLM changes,
the failing test names the row to update.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from tests.conftest import Corpus, answer
from tests.vllm.conftest import Answers, Server, http, text_of

pytestmark = pytest.mark.timeout(300)


def chat(server: Server, content: str = "hello", **fields: Any) -> tuple[int, Any]:
    body = {"model": server.name, "messages": [{"role": "user", "content": content}], **fields}
    return http("POST", f"{server.base_url}/chat/completions", body)


def error_of(body: Any) -> dict[str, Any]:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict), body
    return error


def test_models_report_max_model_len(vllm: Server) -> None:
    """GET /v1/models lists the served name with its max_model_len (what preflight budgets with)."""
    status, body = http("GET", f"{vllm.base_url}/models")
    assert status == 200
    assert [(m["id"], m["max_model_len"]) for m in body["data"]] == [(vllm.name, vllm.max_model_len)]


def test_error_body_is_an_error_object_with_message_type_param_code(vllm: Server) -> None:
    """Every error is {"error": {"message", "type", "param", "code"}}, code being the HTTP status."""
    status, body = chat(vllm, max_tokens=vllm.max_model_len + 1)
    error = error_of(body)
    assert status == 400
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == 400 and error["param"] == "max_tokens"


def test_prompt_plus_max_tokens_over_the_context_is_shortened_not_refused(vllm: Server) -> None:
    """Prompt + max_tokens over max_model_len: HTTP 200, generation cut at the context, finish_reason length."""
    prompt = vllm.max_model_len - 40
    status, body = chat(vllm, text_of(vllm, prompt), max_tokens=500, ignore_eos=True)
    assert status == 200, body
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["prompt_tokens"] == prompt
    assert body["usage"]["completion_tokens"] == vllm.max_model_len - prompt


def test_prompt_alone_over_the_context_is_a_400_naming_the_input_tokens(vllm: Server) -> None:
    """A prompt longer than max_model_len: 400 "... maximum context length is N ... at least M input tokens"."""
    status, body = chat(vllm, text_of(vllm, vllm.max_model_len + 1), max_tokens=10)
    error = error_of(body)
    assert status == 400
    assert f"maximum context length is {vllm.max_model_len} tokens" in error["message"]
    assert f"at least {vllm.max_model_len + 1} input tokens" in error["message"]
    assert (error["type"], error["param"]) == ("BadRequestError", "input_tokens")


def test_prompt_of_exactly_max_model_len_leaves_max_tokens_zero(vllm: Server) -> None:
    """A prompt of exactly max_model_len tokens: 400 "max_tokens must be at least 1, got 0" (no context words)."""
    status, body = chat(vllm, text_of(vllm, vllm.max_model_len))
    error = error_of(body)
    assert status == 400
    assert error["message"].startswith("max_tokens must be at least 1, got 0")


def test_max_tokens_above_max_model_len_is_a_400(vllm: Server) -> None:
    """max_tokens > max_model_len is refused whatever the prompt: "cannot be greater than max_model_len"."""
    status, body = chat(vllm, max_tokens=vllm.max_model_len + 1)
    error = error_of(body)
    assert status == 400
    assert error["message"].startswith(
        f"max_tokens={vllm.max_model_len + 1} cannot be greater than max_model_len={vllm.max_model_len}"
    )
    assert error["type"] == "BadRequestError"


@pytest.mark.parametrize(("fields", "param"), [
    pytest.param({"max_tokens": "many"}, "body.max_tokens", id="wrong-type"),
    pytest.param({"messages": "hello"}, "body.messages", id="not-a-list"),
])
def test_malformed_request_is_a_400_of_type_bad_request(vllm: Server, fields: dict[str, Any], param: str) -> None:
    """A body that fails schema validation: 400, type "Bad Request", param the field's location."""
    body = {"model": vllm.name, "messages": [{"role": "user", "content": "hi"}], **fields}
    status, answer = http("POST", f"{vllm.base_url}/chat/completions", body)
    error = error_of(answer)
    assert status == 400
    assert (error["type"], error["param"]) == ("Bad Request", param)
    assert "validation error" in error["message"]


def test_negative_temperature_is_a_400(vllm: Server) -> None:
    """temperature < 0: 400 "temperature must be non-negative"."""
    status, body = chat(vllm, temperature=-0.5, max_tokens=4)
    error = error_of(body)
    assert status == 400
    assert error["message"].startswith("temperature must be non-negative")


def test_n_choices_with_greedy_sampling_is_a_400(vllm: Server) -> None:
    """n > 1 with temperature 0: 400 "n must be 1 when using greedy sampling" (what --candidates needs to avoid)."""
    status, body = chat(vllm, n=2, temperature=0, max_tokens=4)
    assert status == 400
    assert "n must be 1 when using greedy sampling" in error_of(body)["message"]


def test_n_choices_share_one_prompt_in_the_usage(vllm: Server) -> None:
    """n = 3 with sampling: choices indexed 0..2; usage counts the prompt once, every choice's completion tokens."""
    status, one = chat(vllm, "count to three", temperature=0.8, max_tokens=6, ignore_eos=True)
    assert status == 200, one
    status, body = chat(vllm, "count to three", n=3, temperature=0.8, max_tokens=6, ignore_eos=True)
    assert status == 200, body
    assert sorted(c["index"] for c in body["choices"]) == [0, 1, 2]
    assert body["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"]
    assert body["usage"]["completion_tokens"] == 3 * 6


def test_wrong_model_is_a_404_listing_valid_aliases(vllm: Server) -> None:
    """An unknown model: 404 NotFoundError whose message ends "Valid aliases: NAME."."""
    status, body = http("POST", f"{vllm.base_url}/chat/completions",
                        {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]})
    error = error_of(body)
    assert status == 404
    assert error["type"] == "NotFoundError"
    assert error["message"].endswith(f"Valid aliases: {vllm.name}.")


def test_tokenize_counts_the_chat_template(vllm: Server) -> None:
    """POST /tokenize with messages counts the template's tokens too, and reports max_model_len."""
    status, body = http("POST", f"{vllm.root_url}/tokenize", {"model": vllm.name, "prompt": "ready"})
    bare = body["count"]
    status, body = http("POST", f"{vllm.root_url}/tokenize",
                        {"model": vllm.name, "messages": [{"role": "user", "content": "ready"}]})
    assert status == 200
    assert body["count"] > bare
    assert body["max_model_len"] == vllm.max_model_len


def test_stream_sends_one_token_per_chunk_then_a_usage_chunk(vllm: Server, corpus: Corpus, answers: Answers) -> None:
    """Streaming: a role chunk, one chunk per token, finish_reason on the last content chunk, usage with no choices."""
    text = answer('fn main() {\n    println!("one token per chunk");\n}\n')
    corpus.add_task("vproto_stream", unidiomatic=[text])
    answers.publish(corpus)
    body = {"model": vllm.name, "messages": [{"role": "user", "content": "Translate vproto_stream.c"}],
            "max_tokens": 6, "stream": True, "stream_options": {"include_usage": True}}
    request = urllib.request.Request(f"{vllm.base_url}/chat/completions", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        lines = response.read().decode().splitlines()
    events = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = chunks[1:-1]
    assert len(content) == 6
    pieces = [c["choices"][0]["delta"]["content"] for c in content]
    assert all(pieces) and text.startswith("".join(pieces))
    assert [c["choices"][0]["finish_reason"] for c in content] == [None] * 5 + ["length"]
    usage = chunks[-1]
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 6
