"""What a model server's answers and failures mean, in words a user can act on.

Pure functions the model client (:mod:`pipeline.llm`) converts errors with: which part of a request a 400 says is
too long (vLLM 0.32's wording and older servers'), whether a connection was never made, dropped or left
unanswered, how long a Retry-After asks to wait, and what must never appear in a message (the API key, the
credentials of the server URL). No I/O here.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping

import httpx2
import openai

from .config import ModelSettings

START_HINT = "is vLLM running? start it with scripts/start_vllm.sh, or fix [VLLM] base_url"
OVERFLOW_FIX = "lower [VLLM] max_tokens or start vLLM with a larger --max-model-len"

PROMPT_FIX = (
    "this task's prompt is too long for the model: start vLLM with a larger --max-model-len (MAX_MODEL_LEN=) "
    "or leave the task out; lowering [VLLM] max_tokens cannot help"
)
MAX_TOKENS_FIX = "lower [VLLM] max_tokens below the context length, or start vLLM with a larger --max-model-len"


def overflow_message(max_tokens: int, prompt: int, context: int) -> str:
    """The ContextOverflow message when prompt + max_tokens do not fit: the two ways to fix it."""
    return (
        f"max_tokens {max_tokens} + prompt {prompt} exceeds the model's context of {context}: {OVERFLOW_FIX}"
    )


def prompt_overflow_message(prompt: int | None, context: int | None, *, at_least: bool = False) -> str:
    """The ContextOverflow message when the prompt alone does not fit (``at_least``: the count is a bound)."""
    count = "" if prompt is None else f" ({'at least ' if at_least else ''}{prompt} tokens)"
    limit = f"the model's context of {context} tokens" if context else "the model's context"
    return f"the prompt alone{count} does not fit {limit}: {PROMPT_FIX}"


def max_tokens_overflow_message(max_tokens: int | None, context: int | None) -> str:
    """The ContextOverflow message when max_tokens alone is larger than the whole context."""
    asked = f" {max_tokens}" if max_tokens is not None else ""
    limit = f" of {context} tokens" if context else ""
    return f"[VLLM] max_tokens{asked} is larger than the model's whole context{limit}: {MAX_TOKENS_FIX}"


def retry_after_seconds(headers: httpx2.Headers) -> float | None:
    """Seconds the server asked us to wait (retry-after-ms, or Retry-After as seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        seconds = email.utils.mktime_tz(parsed) - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def server_message(exc: openai.APIError) -> str:
    """The human part of an error body: vLLM's {"message"} or OpenAI's {"error": {"message"}}."""
    body = exc.body
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, Mapping) else inner
        if isinstance(message, str) and message:
            return message
        if isinstance(body.get("message"), str):
            return str(body["message"])
    if isinstance(body, str) and body.strip():
        return body.strip()
    return exc.message


def connection_reason(exc: BaseException) -> str:
    """Why a connection failed, from the innermost cause (httpx2 wraps the OSError a few times)."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            break
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, ConnectionResetError):
            return "connection reset by the server"
        if isinstance(seen, httpx2.RemoteProtocolError):
            return "the server closed the connection without answering"
        seen = seen.__cause__ or seen.__context__
    text = str(exc.__cause__ or exc)
    return text or type(exc).__name__


def failure_kind(exc: BaseException) -> str:
    """What went wrong with a connection: "connect" (never connected), "timeout" (connected, no answer in
    time) or "dropped" (connected, then the connection broke), from the httpx2 error under the openai one."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            break
        if isinstance(seen, (httpx2.ConnectError, httpx2.ConnectTimeout, ConnectionRefusedError)):
            return "connect"
        if isinstance(seen, (httpx2.ReadTimeout, httpx2.WriteTimeout)):
            return "timeout"
        if isinstance(seen, (httpx2.RemoteProtocolError, httpx2.ReadError, httpx2.WriteError,
                             ConnectionResetError)):
            return "dropped"
        seen = seen.__cause__ or seen.__context__
    return "timeout" if isinstance(exc, openai.APITimeoutError) else "connect"


def overflow_kind(message: str) -> str | None:
    """Which part of a request a server's 400 says is too long: "prompt", "max_tokens", "both", or None.

    Knows vLLM 0.32's wording ("at least N input tokens", "max_tokens must be at least 1",
    "cannot be greater than max_model_len") and older servers' ("N in the messages, M in the completion",
    "N tokens in the messages", "'max_tokens' ... is too large").
    """
    low = message.lower()
    if "cannot be greater than max_model_len" in low or "cannot be greater than max_total_tokens" in low:
        return "max_tokens"
    if re.search(r"at least \d+ input tokens", low) or "max_tokens must be at least 1" in low:
        return "prompt"
    if "in the messages" in low and "in the completion" not in low:
        return "prompt"
    if "context length" in low or "max_model_len" in low or ("max_tokens" in low and "too large" in low):
        return "both"
    return None


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes, innermost last (at most ten)."""
    out: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(out) < 10:
        out.append(seen)
        seen = seen.__cause__ or seen.__context__
    return out


def secrets_of(model: ModelSettings) -> tuple[str, ...]:
    """What must never appear in a message: the API key, and the password and user:password of the URL."""
    secrets: list[str] = []
    key = model.api_key
    if key and key != "EMPTY" and len(key) >= 4:
        secrets.append(key)
    authority = model.base_url.partition("://")[2].partition("/")[0]
    if "@" in authority:
        userinfo = authority.rpartition("@")[0]
        secrets.append(userinfo)
        password = userinfo.partition(":")[2]
        if len(password) >= 4:
            secrets.append(password)
    return tuple(sorted(secrets, key=len, reverse=True))


def first_int(pattern: str, text: str) -> int | None:
    found = re.search(pattern, text)
    return int(found.group(1)) if found else None


def overflow_reason(
    message: str, *, max_tokens: int | None, prompt: int | None, known_context: int | None
) -> str:
    """Which part of a request a server's overflow 400 says is too long, with the matching fix.

    Reads vLLM 0.32's wording and older servers'; ``max_tokens``, ``prompt`` and ``known_context`` (what the
    client sent and knows) fill in numbers the message leaves out.
    """
    kind = overflow_kind(message)
    context = (
        first_int(r"maximum context length is (\d+)", message)
        or first_int(r"max_model_len=(?:max_total_tokens=)?(\d+)", message)
        or known_context
    )
    if kind == "max_tokens":
        return max_tokens_overflow_message(first_int(r"max_tokens=(\d+)", message) or max_tokens, context)
    if kind == "prompt":
        bound = first_int(r"at least (\d+) input tokens", message)
        if bound is not None:
            return prompt_overflow_message(bound, context, at_least=True)
        counted = first_int(r"requested (\d+) tokens in the messages", message)
        if counted is not None:
            return prompt_overflow_message(counted, context)
        # "max_tokens must be at least 1, got 0": the prompt takes the whole context.
        return prompt_overflow_message(context, context, at_least=True)
    prompt = (
        first_int(r"\((\d+) in the messages", message)
        or first_int(r"has (\d+) input tokens", message)
        or prompt
    )
    asked = (
        first_int(r"(\d+) in the completion", message)
        or first_int(r"is too large: (\d+)", message)
        or max_tokens
    )
    if context is not None and prompt is not None and prompt >= context:
        return prompt_overflow_message(prompt, context)
    if context is None or prompt is None or asked is None:
        return f"the prompt and max_tokens do not fit the model's context: {message}: {OVERFLOW_FIX}"
    return overflow_message(asked, prompt, context)
