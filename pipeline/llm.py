"""The model client: one pooled ``AsyncOpenAI`` per run, talking to a self-hosted vLLM server.

Use :meth:`ModelClient.open` once per run, call :meth:`ModelClient.preflight` before any task, then
:meth:`ModelClient.complete` from as many tasks as you like; the client bounds the requests in flight itself.

Every openai/httpx2 error is converted here, once, into :mod:`pipeline.errors` (the words come from
:mod:`pipeline.llm_errors`):

* connection refused, connection dropped, no answer, an answer not finished within ``request_timeout`` ->
  :class:`~pipeline.errors.ServerUnreachable` (retried); each says which of these happened
* 408, 409, 429, 5xx, a 200 whose body is not JSON -> :class:`~pipeline.errors.ServerBusy` (retried,
  honouring Retry-After)
* 400 context overflow (vLLM 0.32's wording and older servers') -> :class:`~pipeline.errors.ContextOverflow`
  naming the part that is too long (the prompt alone, max_tokens alone, or the two together); other 400/422 ->
  :class:`~pipeline.errors.RequestFailed` (never retried)
* 401/403 and 404 (model not served) -> :class:`~pipeline.errors.ModelUnavailable` (never retried, stops
  the run)

Retries live in :func:`retry_transient` only (the SDK's own retries are off). When a request's retries run
out, the shared health record decides: another request succeeded meanwhile -> the problem is this request's
(RequestFailed); the server has failed for longer than the outage budget -> ModelUnavailable; otherwise the
request waits and starts over, so tasks do not burn their translation attempts on a dead server.

``request_timeout`` bounds each request's whole duration (a server trickling bytes cannot hold it longer).
While requests wait for their answers, one watcher per client (a task :meth:`ModelClient.open` runs for the
client's life) checks that the server still accepts new connections: a vLLM stopped with SIGTERM refuses them
while the requests it had hang, and once that has lasted the outage budget the run stops (ModelUnavailable)
instead of waiting for every hanging request to time out.

Messages and logs show the server URL without credentials (``ModelSettings.public_url``) and never the key.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import random
import select
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import anyio
import httpcore2
import httpx2
import openai

try:  # the SDK's request options (a private module): without them requests go through post(), as create() does
    from openai._models import FinalRequestOptions
except ImportError:  # pragma: no cover - another openai version
    FinalRequestOptions = None  # type: ignore[assignment,misc]
from openai.types.chat import ChatCompletionMessageParam
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)
from tenacity.wait import wait_base

from .config import ClientSettings, ModelSettings, redact_url
from .errors import (
    ContextOverflow,
    ModelUnavailable,
    PipelineError,
    RequestFailed,
    ServerBusy,
    ServerUnreachable,
    TaskFailure,
    TransientError,
)
from .llm_errors import (
    START_HINT,
    connection_reason,
    exception_chain,
    failure_kind,
    max_tokens_overflow_message,
    overflow_kind,
    overflow_message,
    overflow_reason,
    prompt_overflow_message,
    retry_after_seconds,
    secrets_of,
    server_message,
)
from .records import Choice, Completion, Usage
from .scheduling import PriorityLimiter, ServerPriority

log = logging.getLogger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

#: Statuses that mean "come back later": request timeout, lock conflict, rate limit, server errors.
RETRYABLE_STATUSES = frozenset({408, 409, 429})
#: The smallest completion budget worth sending, as an absolute floor and as a share of [VLLM] max_tokens.
MIN_COMPLETION_TOKENS = 256
MIN_COMPLETION_SHARE = 8
#: Preflight tries a refused connection this many times, this far apart, then gives up (no retry storm).
PREFLIGHT_ATTEMPTS = 2
PREFLIGHT_WAIT = 0.5
#: A server message is quoted in errors up to this many characters.
MESSAGE_LIMIT = 500
#: While a request waits, the server's listener is probed this often (a share of the outage budget, bounded).
PROBE_SHARE = 10
PROBE_MIN_INTERVAL = 0.5
PROBE_MAX_INTERVAL = 30.0


@dataclass(frozen=True)
class ServerInfo:
    """What preflight learned about the server."""

    base_url: str
    model: str
    served: tuple[str, ...]
    max_model_len: int | None  # None when the server does not say (not vLLM)
    tokenize: bool  # whether POST {root}/tokenize counts prompt tokens


@dataclass
class ClientStats:
    """Live counters for progress displays. Mutated by the client; read them, do not write them."""

    in_flight: int = 0
    requests_sent: int = 0  # chat requests, including retries
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class _Health:
    """Shared by all requests: when the server last answered a chat request, and since when it has failed."""

    last_success: float | None = None
    failing_since: float | None = None
    refusing_since: float | None = None  # since when probes find new connections refused (None: accepted)

    def success(self, now: float) -> None:
        self.last_success = now
        self.failing_since = None
        self.refusing_since = None

    def failure(self, now: float) -> None:
        if self.failing_since is None:
            self.failing_since = now


@dataclass
class _Call:
    """The running state of one complete() call, across its attempts and retry cycles."""

    purpose: str
    began: float
    requests: int = 0
    queued: float = 0.0
    max_tokens: int | None = None  # decided once, before the first chat request
    first_failure: float | None = None  # when this call first failed; later successes elsewhere blame it
    n: int = 1  # choices asked for (OpenAI/vLLM ``n``; 1: the parameter is not sent)


@dataclass(frozen=True)
class _Reply:
    text: str
    finish_reason: str
    usage: Usage
    choices: tuple[Choice, ...] = ()  # every choice, in index order, when the request asked for several

    def completion(self, call: _Call, now: float) -> Completion:
        return Completion(text=self.text, finish_reason=self.finish_reason, usage=self.usage,
                          seconds=now - call.began, queued_seconds=call.queued, requests=call.requests,
                          choices=self.choices if call.n > 1 else ())


def _reply(choices: Sequence[Choice], usage: Usage) -> _Reply:
    first = choices[0]
    return _Reply(first.text, first.finish_reason, usage, tuple(choices))


@dataclass
class _Progress:
    """How far the request in flight got: set by the HTTP client's response hook and the stream reader."""

    answered: bool = False  # the response head arrived
    parts: int = 0  # stream events read


@dataclass(eq=False)
class _InFlight:
    """A chat request waiting for its answer, as the listener watch sees it: stopped (and why) by cancelling
    ``scope``."""

    purpose: str
    scope: anyio.CancelScope
    stopped: ModelUnavailable | None = None


#: The request in flight in this task (the response hook runs in the task that sent the request).
_PROGRESS: ContextVar[_Progress | None] = ContextVar("pipeline_llm_progress", default=None)


async def _mark_answered(response: httpx2.Response) -> None:
    progress = _PROGRESS.get()
    if progress is not None:
        progress.answered = True


class _HttpClient(openai.DefaultAsyncHttpxClient):
    """httpx2's AsyncClient with the SDK's defaults, merging a request's URL and headers once, not per request.

    The SDK hands httpx2 the same URL string and header list for every chat request; httpx2 parses the one and
    merges and normalises the other anew each time (a tenth of a request's CPU, bench/README.md, issue 16
    http). A request with nothing else to merge (no params, cookies, data, files, json or extensions: every
    request of the SDK's) reuses the URL and merged headers built for the same strings; the request itself
    (Host, Content-Length, body, timeout) is built per request as httpx2 builds it. Any other request goes
    through httpx2 as is.
    """

    #: Distinct (URL, headers) pairs kept: chat, /models and /tokenize, with their timeouts.
    MEMO_SIZE = 16
    #: httpx2's own merge steps (private): without them, every request goes through httpx2 as is.
    _MERGES = all(hasattr(httpx2.AsyncClient, name) for name in ("_merge_url", "_merge_headers"))

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._memo: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[httpx2.URL, httpx2.Headers]] = {}
        # What the merge depends on besides the arguments: the client's base URL (replaced, never changed in
        # place) and default headers (which may be changed in place).
        self._memo_base: httpx2.URL | None = None
        self._memo_defaults: tuple[tuple[bytes, bytes], ...] = ()

    def build_request(  # type: ignore[override]  # the same parameters as httpx2's
        self,
        method: str,
        url: httpx2.URL | str,
        *,
        content: Any = None,
        data: Any = None,
        files: Any = None,
        json: Any = None,
        params: Any = None,
        headers: Any = None,
        cookies: Any = None,
        timeout: Any = httpx2.USE_CLIENT_DEFAULT,
        extensions: Any = None,
    ) -> httpx2.Request:
        if not (self._MERGES and isinstance(url, str) and isinstance(headers, list) and data is None and files is None
                and json is None and params is None and cookies is None and extensions is None
                and not self.params and not self.cookies):
            return super().build_request(
                method, url, content=content, data=data, files=files, json=json, params=params, headers=headers,
                cookies=cookies, timeout=timeout, extensions=extensions)
        defaults = tuple(self.headers.raw)
        if self.base_url is not self._memo_base or defaults != self._memo_defaults:
            self._memo.clear()
            self._memo_base, self._memo_defaults = self.base_url, defaults
        key = (url, tuple(headers))
        merged = self._memo.get(key)
        if merged is None:
            if len(self._memo) >= self.MEMO_SIZE:
                self._memo.clear()
            merged = self._memo[key] = (self._merge_url(url), httpx2.Headers(self._merge_headers(headers)))
        limits = self.timeout if timeout is httpx2.USE_CLIENT_DEFAULT else httpx2.Timeout(timeout)
        # httpx2.Request copies the headers before adding Host and Content-Length: the memo stays as it is.
        return httpx2.Request(method, merged[0], content=content, headers=merged[1],
                              extensions={"timeout": limits.as_dict()})


def _readable(sock: socket.socket | None) -> bool:
    """Whether a read would return at once (data, or the end of a connection the server closed), as httpcore2
    asks it of an idle connection; a socket gone counts as readable (so the connection is dropped)."""
    fd = -1 if sock is None else sock.fileno()
    if fd < 0:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class _Stream(httpcore2.AsyncNetworkStream):
    """httpcore2's network stream, its socket looked up once. Each time the connection pool hands out or takes
    back a connection, it asks every idle one whether its socket is readable; anyio's stream builds its whole
    table of attributes to find the socket for each such question (a tenth of a request's CPU with 16 idle
    keep-alive connections, bench/README.md, issue 16 http). Everything else is the wrapped stream's."""

    def __init__(self, inner: httpcore2.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket: socket.socket | None = inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore2.AsyncNetworkStream:
        return _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return _readable(self._socket)
        if info == "socket":
            return self._socket
        return self._inner.get_extra_info(info)


class _Backend(httpcore2.AsyncNetworkBackend):
    """httpcore2's network backend, its streams wrapped in :class:`_Stream`."""

    def __init__(self, inner: httpcore2.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: Any = None) -> _Stream:
        return _Stream(await self._inner.connect_tcp(host, port, timeout=timeout, local_address=local_address,
                                                     socket_options=socket_options))

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> _Stream:
        return _Stream(await self._inner.connect_unix_socket(path, timeout=timeout, socket_options=socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _wrap_streams(http: httpx2.AsyncClient) -> None:
    """Give the client's own connection pool (not a proxy's, from the environment) :class:`_Backend`. httpx2 has
    no setting for it: when its transport is not the pool expected, the client is left as it is."""
    pool = getattr(getattr(http, "_transport", None), "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if type(pool) is httpcore2.AsyncConnectionPool and isinstance(backend, httpcore2.AsyncNetworkBackend):
        pool._network_backend = _Backend(backend)


class _wait_backoff_or_retry_after(wait_base):
    """Jittered exponential backoff capped at ``max_wait``, never shorter than the server's Retry-After."""

    def __init__(self, max_wait: float, *, retry_after_cap: float) -> None:
        self.backoff = wait_exponential_jitter(multiplier=0.5, max=max_wait, jitter=min(1.0, max_wait))
        self.retry_after_cap = retry_after_cap

    def __call__(self, retry_state: RetryCallState) -> float:
        delay = float(self.backoff(retry_state))
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        if isinstance(exc, ServerBusy) and exc.retry_after is not None:
            # The server knows when it will have room; asking sooner only earns another refusal.
            delay = max(delay, min(exc.retry_after, self.retry_after_cap))
        return delay


async def retry_transient(
    fn: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    deadline: float,
    max_wait: float,
    sleep: Sleep = anyio.sleep,
    what: str = "request",
) -> T:
    """Call ``fn`` until it returns, retrying only :class:`~pipeline.errors.TransientError`.

    The one place that retries. Stops after ``attempts`` calls or ``deadline`` seconds, waiting a jittered
    exponential backoff capped at ``max_wait`` (at least the server's Retry-After) through ``sleep``.
    Raises the last TransientError when retries run out; any other error at once.

    The first attempt runs outside tenacity, so a request answered at once costs no retry machinery; a first
    transient failure is handed to tenacity as its attempt 1 (the same waits, logs and deadline as if tenacity
    had run it).
    """
    started = time.monotonic()
    try:
        return await fn()
    except TransientError as exc:
        if attempts <= 1:
            raise
        first: TransientError | None = exc

    async def again() -> T:
        nonlocal first
        if first is not None:
            failed, first = first, None
            raise failed
        return await fn()

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        # INFO, not WARNING: during an outage every task retries; the outage itself is logged as a warning.
        log.info(
            "%s: attempt %d failed (%s); retrying in %.1f s",
            what,
            state.attempt_number,
            exc,
            state.upcoming_sleep,
        )

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(TransientError),
        # The deadline counts from the first attempt's start, which tenacity did not see.
        stop=stop_after_attempt(attempts) | stop_after_delay(max(0.0, deadline - (time.monotonic() - started))),
        wait=_wait_backoff_or_retry_after(max_wait, retry_after_cap=deadline),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await again()
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover


def estimate_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    """A deliberately high prompt token count for servers without /tokenize: len/3 plus 8 per message."""
    return sum(math.ceil(len(m.get("content", "")) / 3) + 8 for m in messages)


class ModelClient:
    """The run's connection to the model server. Build it with :meth:`open`, never directly."""

    def __init__(
        self,
        openai_client: openai.AsyncOpenAI,
        model: ModelSettings,
        client: ClientSettings,
        *,
        limiter: PriorityLimiter | anyio.CapacityLimiter,
        sleep: Sleep,
        clock: Clock,
    ) -> None:
        self._openai = openai_client
        self._model = model
        self._settings = client
        self._limiter = limiter
        self._sleep = sleep
        self._clock = clock
        self._health = _Health()
        self._info: ServerInfo | None = None
        #: The server URL as messages and logs show it: without credentials.
        self.base_url = model.public_url.rstrip("/")
        #: vLLM serves /tokenize at the server root, not under /v1 (credentials kept: requests need them).
        self._root_url = model.base_url.rstrip("/").removesuffix("/v1")
        self.root_url = redact_url(self._root_url)
        self._secrets = secrets_of(model)
        self._probe_lock = anyio.Lock()
        #: The chat requests waiting for their answers, watched by :meth:`_watch_listener` (run by :meth:`open`).
        self._in_flight: set[_InFlight] = set()
        self._probe_at: float | None = None
        self._probe_result: str | None = None
        self.stats = ClientStats()
        #: Whether requests to this server carry vLLM's priority ([pipeline] request_priority), learned per server.
        self._priority = ServerPriority(client.request_priority, self.base_url)
        #: The options of every non-streamed chat request but its body, built once: what ``post()`` would build
        #: from the route (made absolute here as the SDK makes it) and bearer auth.
        self._chat_options = _chat_options(openai_client)

    def __repr__(self) -> str:
        return f"ModelClient(base_url={self.base_url!r}, model={self._model.model!r})"

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        model: ModelSettings,
        client: ClientSettings,
        *,
        limiter: PriorityLimiter | anyio.CapacityLimiter | None = None,
        sleep: Sleep = anyio.sleep,
        clock: Clock = time.monotonic,
    ) -> AsyncIterator[ModelClient]:
        """Open the run's one AsyncOpenAI client (pool sized to ``client.workers``) and close it on exit.

        ``limiter`` bounds the requests in flight (default: ``client.workers``), tasks under way first.
        ``sleep`` and ``clock`` are what retries wait with and what the outage budget is measured by; tests
        pass fakes.
        """
        timeout = httpx2.Timeout(client.request_timeout, connect=client.connect_timeout)
        http = _HttpClient(
            limits=httpx2.Limits(max_connections=client.workers, max_keepalive_connections=client.workers),
            timeout=timeout,
            event_hooks={"response": [_mark_answered]},
        )
        _wrap_streams(http)
        try:
            oa = openai.AsyncOpenAI(
                api_key=model.api_key or "EMPTY",
                base_url=model.base_url,
                max_retries=0,  # retry_transient is in charge; nothing retries twice
                timeout=timeout,
                http_client=http,
            )
            llm = cls(
                oa,
                model,
                client,
                limiter=limiter or PriorityLimiter(client.workers),
                sleep=sleep,
                clock=clock,
            )
            # One listener watch for the client's life, not a task per request (bench/README.md, issue 16 http).
            failure: BaseException | None = None
            async with anyio.create_task_group() as watch:
                watch.start_soon(llm._watch_listener)
                try:
                    yield llm
                except BaseException as exc:  # raised below as it is, not inside the task group's exception group
                    failure = exc
                finally:
                    watch.cancel_scope.cancel()
            if failure is not None:
                raise failure
        finally:
            with anyio.CancelScope(shield=True):
                await http.aclose()

    # ----------------------------------------------------------------------------------------------
    # error conversion: the boundary

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text[:MESSAGE_LIMIT]

    def _convert(
        self, exc: Exception, *, route: str, max_tokens: int | None = None, prompt: int | None = None,
        timeout: float | None = None,
    ) -> PipelineError:
        """One openai/httpx2/JSON error -> the pipeline error that says what to do about it."""
        url = self.base_url
        if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
            return ServerUnreachable(self._connection_message(exc, route=route, timeout=timeout))
        if isinstance(exc, openai.APIResponseValidationError):
            return ServerBusy(
                f"{route}: the server at {url} sent a malformed answer (HTTP {exc.status_code})",
                status=exc.status_code,
            )
        if isinstance(exc, openai.APIStatusError):
            return self._convert_status(exc, route=route, max_tokens=max_tokens, prompt=prompt)
        if isinstance(exc, openai.APIError):  # an error event inside a stream
            return ServerBusy(
                f"{route}: the server at {url} reported an error mid-answer: "
                f"{self._redact(server_message(exc))}"
            )
        if isinstance(exc, json.JSONDecodeError):
            return ServerBusy(f"{route}: the server at {url} answered with a body that is not valid JSON")
        return RequestFailed(
            f"{route}: unexpected error from the client library: {type(exc).__name__}: "
            f"{self._redact(str(exc))}"
        )

    def _connection_message(
        self, exc: BaseException, *, route: str, timeout: float | None = None, partial: bool = False
    ) -> str:
        """Says which failure it was: never connected, connected but no answer, or connection dropped."""
        url = self.base_url
        kind = failure_kind(exc)
        if kind == "timeout":
            limit = timeout if timeout is not None else self._settings.request_timeout
            return (
                f"{route}: the server at {url} accepted the connection but sent no answer within {limit:g} s "
                f"([pipeline] request_timeout): it may be overloaded or stuck"
            )
        if kind == "dropped":
            when = "in the middle of its answer" if partial else "before answering"
            return (
                f"{route}: the server at {url} dropped the connection {when} "
                f"({self._redact(connection_reason(exc))})"
            )
        if isinstance(exc, openai.APITimeoutError) or any(
            isinstance(e, httpx2.ConnectTimeout) for e in exception_chain(exc)
        ):
            return (
                f"{route}: cannot connect to {url}: no answer to the connection within "
                f"{self._settings.connect_timeout:g} s (timed out)"
            )
        return f"{route}: cannot connect to {url}: {self._redact(connection_reason(exc))}"

    def _convert_status(
        self, exc: openai.APIStatusError, *, route: str, max_tokens: int | None, prompt: int | None
    ) -> PipelineError:
        status = exc.status_code
        message = self._redact(server_message(exc))
        url = self.base_url
        if status in RETRYABLE_STATUSES or status >= 500:
            return ServerBusy(
                f"{route}: the server at {url} answered HTTP {status}: {message}",
                status=status,
                retry_after=retry_after_seconds(exc.response.headers),
            )
        if status in (401, 403):
            return ModelUnavailable(
                f"the server at {url} refused the API key (HTTP {status}): set [VLLM] api_key or "
                f"VLLM_API_KEY to the key vLLM was started with (--api-key)"
            )
        if status == 404:
            return ModelUnavailable(
                f"the server at {url} answered HTTP 404 for {route}: {message}: "
                f"check [VLLM] base_url and [VLLM] model"
            )
        if status == 400 and overflow_kind(message) is not None:
            return ContextOverflow(self._overflow_from_server(message, max_tokens=max_tokens, prompt=prompt))
        return RequestFailed(
            f"{route}: the server refused the request (HTTP {status}): {message}", status=status
        )

    def _overflow_from_server(self, message: str, *, max_tokens: int | None, prompt: int | None) -> str:
        known = self._info.max_model_len if self._info is not None else None
        return overflow_reason(message, max_tokens=max_tokens, prompt=prompt, known_context=known)
    async def _model_not_served(self, exc: openai.NotFoundError) -> ModelUnavailable:
        """A 404 on the chat route: say which models the server does serve."""
        try:
            served, _ = await self._list_models()
        except PipelineError as listing:
            return ModelUnavailable(
                f"model {self._model.model} is not served by {self.base_url} (HTTP 404: "
                f"{self._redact(server_message(exc))}); listing the served models failed too: {listing}"
            )
        if self._model.model in served:
            return ModelUnavailable(
                f"the server at {self.base_url} answered HTTP 404 for chat/completions: "
                f"{self._redact(server_message(exc))}"
            )
        return self._not_served_error(served)

    def _not_served_error(self, served: Sequence[str]) -> ModelUnavailable:
        listing = ", ".join(served) if served else "no models"
        return ModelUnavailable(
            f"model {self._model.model} is not served by {self.base_url}; the server serves: {listing}: "
            f"set [VLLM] model (or --model) to one of them"
        )

    # ----------------------------------------------------------------------------------------------
    # preflight

    async def _list_models(self) -> tuple[tuple[str, ...], dict[str, int]]:
        """GET /models once: the served ids and, where vLLM says it, each one's max_model_len."""
        try:
            page = await self._openai.models.list(timeout=self._short_timeout())
            served: list[str] = []
            lengths: dict[str, int] = {}
            for entry in page.data:
                served.append(str(entry.id))
                length = (entry.model_extra or {}).get("max_model_len")
                if isinstance(length, int) and not isinstance(length, bool) and length > 0:
                    lengths[str(entry.id)] = length
        except (openai.OpenAIError, json.JSONDecodeError) as exc:
            raise self._convert(exc, route="GET /models", timeout=self._short_timeout().read) from exc
        except (AttributeError, TypeError) as exc:  # a 200 that is not a model list
            raise ServerBusy(
                f"GET /models: the server at {self.base_url} sent a malformed model list"
            ) from exc
        return tuple(served), lengths

    def _short_timeout(self) -> httpx2.Timeout:
        return httpx2.Timeout(
            min(self._settings.request_timeout, 60.0), connect=self._settings.connect_timeout
        )

    async def preflight(self) -> ServerInfo:
        """Check the server before any task: model served, its context length, whether /tokenize exists.

        Tries a refused connection only :data:`PREFLIGHT_ATTEMPTS` times. Raises ModelUnavailable with the
        reason and the fix (not running, wrong key, model not served).
        """
        try:
            served, lengths = await retry_transient(
                self._list_models,
                attempts=PREFLIGHT_ATTEMPTS,
                deadline=self._settings.connect_timeout * 3,
                max_wait=PREFLIGHT_WAIT,
                sleep=self._sleep,
                what="preflight",
            )
        except ServerUnreachable as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            if failure_kind(cause) != "connect":
                # It accepted the connection: something listens there, but does not answer as vLLM would.
                raise ModelUnavailable(
                    f"{exc}; is vLLM still loading the model, or is another program listening there? "
                    f"check [VLLM] base_url"
                ) from exc
            if any(isinstance(e, httpx2.ConnectTimeout) for e in exception_chain(cause)):
                reason = f"no answer to the connection within {self._settings.connect_timeout:g} s (timed out)"
            else:
                reason = self._redact(connection_reason(cause))
            raise ModelUnavailable(f"cannot connect to {self.base_url}: {reason}; {START_HINT}") from exc
        except ServerBusy as exc:
            raise ModelUnavailable(
                f"the model server is not ready: {exc}; wait until vLLM has loaded the model and try again"
            ) from exc
        except ModelUnavailable as exc:
            if isinstance(exc.__cause__, openai.NotFoundError):
                raise ModelUnavailable(
                    f"{self.base_url} does not serve the OpenAI API (GET /models answered HTTP 404): "
                    f"check [VLLM] base_url (vLLM serves it under /v1)"
                ) from exc
            raise
        except PipelineError as exc:
            raise ModelUnavailable(f"preflight failed: {exc}") from exc
        if self._model.model not in served:
            raise self._not_served_error(served)
        tokenize, tokenize_len = await self._probe_tokenize()
        await self._priority.probe(functools.partial(self._chat_once, [{"role": "user", "content": "ready"}], 1, 1))
        info = ServerInfo(
            base_url=self.base_url,
            model=self._model.model,
            served=served,
            max_model_len=lengths.get(self._model.model, tokenize_len),
            tokenize=tokenize,
        )
        log.info(
            "model server %s serves %s (max_model_len %s, /tokenize %s)",
            self.base_url,
            info.model,
            info.max_model_len or "unknown",
            "available" if tokenize else "not available",
        )
        self._info = info
        return info

    async def _probe_tokenize(self) -> tuple[bool, int | None]:
        try:
            data = await self._tokenize([{"role": "user", "content": "ready"}])
        except PipelineError as exc:
            log.info(
                "POST %s/tokenize is not usable (%s): prompt tokens will be estimated", self.root_url, exc
            )
            return False, None
        if data is None:
            return False, None
        length = data.get("max_model_len")
        return True, length if isinstance(length, int) and length > 0 else None

    async def _tokenize(self, messages: Sequence[Mapping[str, str]]) -> dict[str, Any] | None:
        """POST {root}/tokenize. None when the server has no such route (404/405) or answers oddly."""
        try:
            data = await self._openai.post(
                f"{self._root_url}/tokenize",
                cast_to=object,
                body={"model": self._model.model, "messages": [dict(m) for m in messages]},
                options={"timeout": self._short_timeout(), "security": {"bearer_auth": True}},
            )
        except openai.APIStatusError as exc:
            if exc.status_code in (404, 405, 501):
                return None
            raise self._convert(exc, route="POST /tokenize") from exc
        except (openai.OpenAIError, json.JSONDecodeError) as exc:
            raise self._convert(exc, route="POST /tokenize", timeout=self._short_timeout().read) from exc
        if not isinstance(data, dict) or not isinstance(data.get("count"), int):
            return None
        return cast(dict[str, Any], data)

    # ----------------------------------------------------------------------------------------------
    # completion

    async def _count_prompt(self, messages: Sequence[Mapping[str, str]]) -> tuple[int, str]:
        if self._info is not None and self._info.tokenize:
            data = await self._tokenize(messages)
            if data is not None:
                return int(data["count"]), "counted by /tokenize"
        return estimate_tokens(messages), "estimated"

    async def _completion_budget(self, messages: Sequence[Mapping[str, str]]) -> int:
        """max_tokens for this prompt: the configured value, lowered to what the context leaves.

        Raises ContextOverflow (before anything is sent) when less than the floor would be left.
        """
        configured = self._model.max_tokens
        context = self._info.max_model_len if self._info is not None else None
        if context is None:
            return configured
        # A byte-level tokenizer never makes more tokens than UTF-8 bytes: when even that bound leaves room for
        # the configured max_tokens, counting exactly (a /tokenize round trip per request) changes nothing.
        bound = sum(len(m.get("content", "").encode()) + 8 for m in messages)
        if bound + configured + self._settings.context_margin <= context:
            return configured
        prompt, how = await self._count_prompt(messages)
        budget = min(configured, context - prompt - self._settings.context_margin)
        floor = min(configured, max(MIN_COMPLETION_TOKENS, configured // MIN_COMPLETION_SHARE))
        if budget < 1:
            raise ContextOverflow(f"{prompt_overflow_message(prompt, context)} (prompt tokens {how})")
        if budget < floor:
            raise ContextOverflow(f"{overflow_message(configured, prompt, context)} (prompt tokens {how})")
        return budget

    async def complete(
        self, messages: Sequence[Mapping[str, str]], *, purpose: str = "", n: int = 1
    ) -> Completion:
        """Send one chat request and return the model's answer; safe to call from many tasks at once. ``n`` > 1
        asks for that many choices in one request (they share the prompt's prefill on vLLM).

        Call :meth:`preflight` first: it supplies the context length for the max_tokens budget (without it,
        the configured max_tokens is sent as is and only the server's 400 reports an overflow).
        Raises ContextOverflow (prompt too long), RequestFailed (refused, or retries ran out while the server
        answered others), ModelUnavailable (model gone, key refused, outage budget spent).
        """
        call = _Call(purpose=purpose or "chat", began=self._clock(), n=n)
        settings = self._settings
        while True:
            try:
                reply = await retry_transient(
                    lambda: self._attempt(call, messages),
                    attempts=settings.retry_attempts,
                    deadline=settings.retry_deadline,
                    max_wait=settings.retry_max_wait,
                    sleep=self._sleep,
                    what=call.purpose,
                )
                break
            except TransientError as exc:
                try:
                    await self._after_exhausted(call, exc)
                except TaskFailure as failed:
                    failed.requests = call.requests
                    raise
            except TaskFailure as exc:
                exc.requests = call.requests  # llm_stat counts every request sent, refused ones too
                raise
        self.stats.prompt_tokens += reply.usage.prompt_tokens
        self.stats.completion_tokens += reply.usage.completion_tokens
        return reply.completion(call, self._clock())

    async def attempt(
        self, messages: Sequence[Mapping[str, str]], *, purpose: str = "", n: int = 1
    ) -> Completion:
        """One chat request: no retry, no waiting out an outage. For a pool of servers
        (:mod:`pipeline.endpoints`), which sends a failed request to another server instead.

        Raises TransientError when this server failed the request; TaskFailure and ModelUnavailable as
        :meth:`complete` does.
        """
        call = _Call(purpose=purpose or "chat", began=self._clock(), n=n)
        try:
            reply = await self._attempt(call, messages)
        except TaskFailure as exc:
            exc.requests = call.requests
            raise
        self.stats.prompt_tokens += reply.usage.prompt_tokens
        self.stats.completion_tokens += reply.usage.completion_tokens
        return reply.completion(call, self._clock())

    async def _after_exhausted(self, call: _Call, exc: TransientError) -> None:
        """Retries ran out: blame this request, stop the run, or wait out the outage (returns to retry)."""
        now = self._clock()
        health = self._health
        # Blame this request only if the server answered another one after this one started failing. (A
        # success between this call's start and its first failure says nothing: the request may have been
        # waiting for a slot when the server went away.)
        failed_from = call.first_failure if call.first_failure is not None else call.began
        if health.last_success is not None and health.last_success >= failed_from:
            raise RequestFailed(
                f"{call.purpose}: gave up after {call.requests} requests while the server answered "
                f"others: {exc}",
                status=exc.status if isinstance(exc, ServerBusy) else None,
            ) from exc
        down_since = health.failing_since if health.failing_since is not None else call.began
        down_for = now - down_since
        budget = self._settings.outage_budget
        if down_for >= budget:
            raise ModelUnavailable(
                f"the model server at {self.base_url} has not answered for {down_for:.0f} s (outage budget "
                f"{budget:g} s): {exc}; finished work is kept: restart the server and rerun to resume"
            ) from exc
        wait = min(self._settings.retry_max_wait, budget - down_for) * random.uniform(0.8, 1.0)
        log.warning(
            "%s: the model server has not answered for %.0f s; waiting %.1f s before trying again "
            "(outage budget %g s)",
            call.purpose,
            down_for,
            wait,
            budget,
        )
        await self._sleep(max(wait, 0.0))

    async def _attempt(self, call: _Call, messages: Sequence[Mapping[str, str]]) -> _Reply:
        queued_at = self._clock()
        async with self._limiter:
            call.queued += self._clock() - queued_at
            self.stats.in_flight += 1
            try:
                if call.max_tokens is None:
                    call.max_tokens = await self._completion_budget(messages)
                call.requests += 1
                self.stats.requests_sent += 1
                if call.requests > 1:
                    self.stats.retries += 1
                reply = await self._priority.send(functools.partial(self._send, call, messages, call.max_tokens),
                                                  resent=functools.partial(self._resent, call))
            except TransientError:
                now = self._clock()
                self._health.failure(now)
                if call.first_failure is None:
                    call.first_failure = now
                raise
            finally:
                self.stats.in_flight -= 1
        # Only a chat answer proves the server is serving; /tokenize works even when the engine is stuck.
        self._health.success(self._clock())
        return reply

    async def _send(self, call: _Call, messages: Sequence[Mapping[str, str]], max_tokens: int) -> _Reply:
        """One chat request, bounded as a whole by request_timeout, watched for a server that stopped accepting.

        Raises ServerUnreachable when the deadline passes (saying whether any answer had begun), and
        ModelUnavailable when the server has refused new connections for the outage budget meanwhile.
        """
        progress = _Progress()
        failure: Exception | None = None
        reply: _Reply | None = None
        limit = self._settings.request_timeout
        token = _PROGRESS.set(progress)
        try:
            # The request's deadline; the listener watch cancels it too when the server has stopped accepting.
            with anyio.CancelScope(deadline=anyio.current_time() + limit) as scope:
                flight = _InFlight(call.purpose, scope)
                self._in_flight.add(flight)
                try:
                    if self._settings.stream:
                        reply = await self._chat_stream(messages, max_tokens, progress, call.n)
                    else:
                        reply = await self._chat_once(messages, max_tokens, call.n)
                except Exception as exc:  # classified below
                    failure = exc
                finally:
                    self._in_flight.discard(flight)
        finally:
            _PROGRESS.reset(token)
        if flight.stopped is not None:
            raise flight.stopped
        if reply is None and failure is None:  # the scope's deadline cancelled the request
            failure = TimeoutError()
        if isinstance(failure, TimeoutError):
            route = "chat/completions (stream)" if self._settings.stream else "chat/completions"
            if progress.answered or progress.parts:
                # A streamed answer's head comes at once (vLLM sends it before queueing): only events count.
                got = f"sent {progress.parts} events" if progress.parts else "sent its response head"
                raise ServerUnreachable(
                    f"{route}: the server at {self.base_url} {got} but did not finish its answer within "
                    f"{limit:g} s ([pipeline] request_timeout bounds a whole request): it is too slow or stuck"
                ) from failure
            raise ServerUnreachable(
                f"{route}: the server at {self.base_url} accepted the connection but sent no answer within "
                f"{limit:g} s ([pipeline] request_timeout): it may be overloaded or stuck"
            ) from failure
        if failure is not None:
            raise failure
        assert reply is not None
        if any(choice.finish_reason == "abort" for choice in reply.choices):
            # vLLM 0.32 answers the requests in flight this way when told to stop: the answer is partial and
            # says nothing about the program, so it must not spend a translation attempt.
            raise ServerUnreachable(
                f"chat/completions: the server at {self.base_url} aborted the answer (finish_reason=abort): "
                f"it is stopping or restarting"
            )
        return reply

    def _probe_interval(self) -> float:
        share = self._settings.outage_budget / PROBE_SHARE
        return min(PROBE_MAX_INTERVAL, max(PROBE_MIN_INTERVAL, share))

    async def _watch_listener(self) -> None:
        """While requests wait, check that the server still accepts connections; stop them if not.

        A vLLM told to stop (SIGTERM) refuses new connections while the requests it had hang: no error ever
        reaches them. Once new connections have been refused for the outage budget, every waiting request is
        cancelled with ModelUnavailable (finished work is kept; a rerun resumes). One task for the client's
        life (:meth:`open`), awake once an interval.
        """
        interval = self._probe_interval()
        budget = self._settings.outage_budget
        while True:
            # Real time: the watcher watches a real socket, whatever clock the retries use.
            await anyio.sleep(interval)
            if not self._in_flight:
                continue
            health = self._health
            if health.last_success is not None and self._clock() - health.last_success < interval:
                continue  # answers are arriving: the server is serving
            refused = await self._probe_listener(interval)
            if refused is None or health.refusing_since is None:
                continue
            down_for = self._clock() - health.refusing_since
            if down_for < budget:
                continue
            for flight in list(self._in_flight):
                if flight.stopped is None:
                    flight.stopped = ModelUnavailable(
                        f"{flight.purpose}: the model server at {self.base_url} has refused new connections for "
                        f"{down_for:.0f} s ({refused}; outage budget {budget:g} s) while this request still waits "
                        f"for its answer: the server is probably shutting down; finished work is kept: restart the "
                        f"server and rerun to resume"
                    )
                    flight.scope.cancel()

    async def _probe_listener(self, interval: float) -> str | None:
        """Whether a new TCP connection to the server is refused now (the reason) or accepted (None).

        One probe serves every waiting request for half an interval; the result updates the health record.
        """
        async with self._probe_lock:
            now = self._clock()
            if self._probe_at is not None and 0 <= now - self._probe_at < interval / 2:
                return self._probe_result
            url = httpx2.URL(self._root_url)
            port = url.port or (443 if url.scheme == "https" else 80)
            result: str | None = None
            try:
                with anyio.fail_after(self._settings.connect_timeout):
                    stream = await anyio.connect_tcp(url.host, port)
                await stream.aclose()
            except TimeoutError:
                result = f"no answer to a connection within {self._settings.connect_timeout:g} s"
            except OSError as exc:
                refused = any(isinstance(e, ConnectionRefusedError) for e in exception_chain(exc))
                result = "connection refused" if refused or "refused" in str(exc).lower() else str(exc)
            now = self._clock()
            health = self._health
            if result is None:
                health.refusing_since = None
            elif health.refusing_since is None:
                health.refusing_since = now
                log.warning("the model server at %s refuses new connections (%s)", self.base_url, result)
            self._probe_at, self._probe_result = now, result
            return result

    def _resent(self, call: _Call) -> None:
        call.requests += 1
        self.stats.requests_sent += 1

    def _request_args(self, messages: Sequence[Mapping[str, str]], max_tokens: int, n: int) -> dict[str, Any]:
        return {
            "model": self._model.model,
            "messages": cast(list[ChatCompletionMessageParam], [dict(m) for m in messages]),
            "max_tokens": max_tokens,
            "temperature": self._model.temperature,
            **({"n": n} if n != 1 else {}),  # a one-choice request stays as it always was
            **self._priority.body(),  # vLLM's priority, when this server takes it (pipeline.scheduling)
        }

    async def _chat_once(self, messages: Sequence[Mapping[str, str]], max_tokens: int, n: int) -> _Reply:
        route = "chat/completions"
        body = _chat_body(self._request_args(messages, max_tokens, n))
        try:
            # The SDK's raw route (client options, auth and status errors as create() has them) with the body
            # built here: create() would transform the typed parameters and build a pydantic ChatCompletion
            # for every answer, a third of the process's CPU per request (bench/README.md, issue 16). The
            # options are the client's, copied with this body (what post() does, without building them anew).
            if self._chat_options is not None:
                options = self._chat_options.model_copy(update={"json_data": body})
                response = await self._openai.request(httpx2.Response, options)
            else:  # another SDK version: the public route, the same request
                response = await self._openai.post("/chat/completions", cast_to=httpx2.Response, body=body,
                                                   options={"security": {"bearer_auth": True}})
            data = _completion_json(response)
        except openai.NotFoundError as exc:
            raise await self._model_not_served(exc) from exc
        except (openai.OpenAIError, json.JSONDecodeError) as exc:
            raise self._convert(exc, route=route, max_tokens=max_tokens) from exc
        if not isinstance(data, dict):
            raise ServerBusy(f"{route}: the server at {self.base_url} answered with a body that is not JSON")
        try:
            choices, counts = _completion_parts(data)
        except (AttributeError, TypeError, ValueError) as exc:
            raise ServerBusy(f"{route}: the server at {self.base_url} sent a malformed completion") from exc
        if not choices:
            raise ServerBusy(f"{route}: the server at {self.base_url} sent a completion without choices")
        return _reply(choices, counts)

    async def _chat_stream(
        self, messages: Sequence[Mapping[str, str]], max_tokens: int, progress: _Progress, n: int
    ) -> _Reply:
        route = "chat/completions (stream)"
        parts: list[list[str]] = [[] for _ in range(n)]
        finish: list[str | None] = [None] * n
        seen: set[int] = set()  # a server that ignores n sends fewer choices: those it sent count
        counts = Usage()
        try:
            stream = await self._openai.chat.completions.create(
                **self._request_args(messages, max_tokens, n),
                stream=True,
                stream_options={"include_usage": True},
            )
            async with stream:
                async for chunk in stream:
                    progress.parts += 1
                    if chunk.usage is not None:
                        counts = Usage(int(chunk.usage.prompt_tokens), int(chunk.usage.completion_tokens))
                    for choice in chunk.choices or ():
                        index = int(choice.index or 0)
                        if not 0 <= index < n:
                            raise ValueError(f"choice index {index} of {n}")
                        seen.add(index)
                        if choice.delta is not None and choice.delta.content:
                            parts[index].append(choice.delta.content)
                        if choice.finish_reason:
                            finish[index] = str(choice.finish_reason)
        except openai.NotFoundError as exc:
            raise await self._model_not_served(exc) from exc
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            raise ServerUnreachable(self._connection_message(exc, route=route, partial=progress.parts > 0)) from exc
        except httpx2.TransportError as exc:  # the SDK passes errors from inside a stream through unwrapped
            raise ServerUnreachable(self._connection_message(exc, route=route, partial=progress.parts > 0)) from exc
        except (openai.OpenAIError, json.JSONDecodeError) as exc:
            raise self._convert(exc, route=route, max_tokens=max_tokens) from exc
        except (AttributeError, TypeError, ValueError) as exc:
            raise ServerBusy(f"{route}: the server at {self.base_url} sent a malformed stream event") from exc
        if not seen or any(finish[index] is None for index in seen):
            raise ServerUnreachable(
                f"{route}: the stream from {self.base_url} ended before the answer was complete"
            )
        return _reply([Choice("".join(parts[index]), str(finish[index])) for index in sorted(seen)], counts)



#: The order in which ``AsyncCompletions.create`` lays out the fields we send: the same bytes go out either way.
_CREATE_ORDER = ("model", "stream", "messages", "max_tokens", "n", "temperature")
_NOT_JSON = object()


def _chat_options(client: openai.AsyncOpenAI) -> Any:
    """The options ``post("/chat/completions")`` builds, but the body: the route made absolute as the SDK makes it
    and bearer auth; None when this SDK version has no such options (requests then go through ``post``)."""
    if FinalRequestOptions is None or not callable(getattr(client, "request", None)):
        return None
    try:
        base = client.base_url
        return FinalRequestOptions.construct(
            method="post", url=str(base.copy_with(raw_path=base.raw_path + b"chat/completions")), json_data=None,
            content=None, files=None, security={"bearer_auth": True})
    except Exception as exc:  # another SDK version's fields
        log.debug("chat requests go through post(): the SDK's request options differ (%s)", exc)
        return None


def _chat_body(args: Mapping[str, Any]) -> dict[str, Any]:
    """create()'s keyword arguments -> the JSON body a non-streamed create() would send (``extra_body`` merged
    last, as the SDK merges it)."""
    fields = {key: value for key, value in args.items() if key != "extra_body"}
    fields["stream"] = False
    body = {key: fields.pop(key) for key in _CREATE_ORDER if key in fields}
    body.update(fields)
    if args.get("extra_body") is not None:
        body.update(args["extra_body"])
    return body


def _completion_json(response: httpx2.Response) -> Any:
    """The answer's JSON as create() reads it: a JSON content type must parse (JSONDecodeError), any other
    content type is tried as JSON and is otherwise not JSON (the sentinel)."""
    content_type = response.headers.get("content-type", "*").split(";")[0]
    if content_type.endswith("json"):
        return response.json()
    try:
        return response.json()
    except Exception:  # whatever the body is, it is not JSON
        return _NOT_JSON


def _completion_parts(data: Mapping[str, Any]) -> tuple[list[Choice], Usage]:
    """The choices (in index order) and token counts of a chat completion, read as the SDK's lenient model
    reads it (a missing field is None); raises AttributeError, TypeError or ValueError on a malformed one."""
    listed: Any = data.get("choices")
    ordered = sorted(listed, key=lambda c: int(c.get("index") or 0))
    choices = [Choice(c.get("message").get("content") or "", str(c.get("finish_reason") or "stop"))
               for c in ordered]
    usage: Any = data.get("usage")
    # The SDK's usage object is true whatever it holds: an empty one is malformed, a missing one counts nothing.
    if not isinstance(usage, dict) and not usage:
        return choices, Usage()
    prompt: Any = usage.get("prompt_tokens")
    completion: Any = usage.get("completion_tokens")
    return choices, Usage(int(prompt), int(completion))


__all__ = [
    "ClientStats",
    "Completion",
    "ModelClient",
    "ServerInfo",
    "Usage",
    "estimate_tokens",
    "max_tokens_overflow_message",
    "overflow_message",
    "prompt_overflow_message",
    "retry_transient",
]
