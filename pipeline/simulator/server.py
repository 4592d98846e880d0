"""The simulator server: vLLM's OpenAI-compatible endpoints over :mod:`.wire`, with load and faults.

Structured concurrency (anyio): every connection is a task of the server's task group, cancelled when
:meth:`Simulator.serve` ends; while a request is generated, a child task of the request's own task group watches
for the client leaving (:class:`_Watch`). asyncio's stream server only accepts connections and hands them over.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import json
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import answers as answers_mod
from .model import (
    COMPAT_LEGACY,
    CONNECTION_FAULTS,
    NO_FAULT,
    POLICY_PRIORITY,
    STATUS_CLIENT_GONE,
    STATUS_FAULTS,
    STATUS_NO_RESPONSE,
    RequestRecord,
    SimConfig,
)
from .tokens import CHARS_PER_TOKEN, content_text, fake_token_ids, message_tokens, text_tokens
from .wire import LAST_CHUNK, Connection, HttpError, Request, chunk, full_response, response_head

log = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"
#: Tokens per streamed content chunk: vLLM 0.32 sends one, older servers "a few".
STREAM_CHUNK_TOKENS = 1
LEGACY_STREAM_CHUNK_TOKENS = 4
#: vLLM 0.32's error types: "Bad Request" for a body that fails schema validation (param: the field's location),
#: "BadRequestError" for a valid body whose values are refused (param: the field). Older servers: the latter only.
SCHEMA_ERROR_TYPE = "Bad Request"
VALUE_ERROR_TYPE = "BadRequestError"

_FAULT_ERRORS = {
    "500": ("Simulated internal server error.", "InternalServerError"),
    "502": ("Simulated bad gateway: the upstream model server did not answer.", "BadGateway"),
    "503": ("The server is overloaded, please retry later (simulated).", "ServiceUnavailableError"),
    "429": ("Too many requests, please retry later (simulated).", "RateLimitError"),
}


def _error_body(message: str, err_type: str, code: int, *, legacy: bool = False, param: str | None = None) -> bytes:
    """vLLM's error shape: nested under "error" (0.32), or flat with "object": "error" (older servers)."""
    if legacy:
        return _json({"object": "error", "message": message, "type": err_type, "param": param, "code": code})
    return _json({"error": {"message": message, "type": err_type, "param": param, "code": code}})


def _json(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


def _seconds_header(value: float) -> str:
    if value == int(value):
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")


T = TypeVar("T")
_Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
#: Worker threads for the simulator's blocking file work (answer files, the request log), kept apart from the
#: default pool so that a client in the same event loop never waits for them (or they for it).
_FILE_THREADS = 8


class _Closed(Exception):
    """The client went away (or must be cut off); the connection is to be closed without more output."""


class _Watch:
    """Notices a client leaving while its request is served: :meth:`run` reads ahead on the connection (so a
    pipelined next request is kept) in a child task of the request's task group (see ``Simulator._watched``)."""

    def __init__(self) -> None:
        self.gone = anyio.Event()
        self._waits: set[anyio.CancelScope] = set()

    async def run(self, conn: Connection) -> None:
        await conn.wait_client_gone()
        self.gone.set()
        for scope in self._waits:
            scope.cancel()

    async def unless_gone(self, work: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Await ``work(*args)`` unless the client leaves first (then cancel it and raise _Closed)."""
        if self.gone.is_set():
            raise _Closed
        with anyio.CancelScope() as scope:
            self._waits.add(scope)
            try:
                await work(*args)
            finally:
                self._waits.discard(scope)
        if scope.cancelled_caught:
            raise _Closed


class _Slots:
    """The generation slots and vLLM's waiting queue: a request takes all its slots (one per choice) at once, and
    freed slots go to the waiting requests by (priority, arrival), smallest first; with FCFS every priority is 0:
    arrival order. The head of the queue waits for enough slots (nobody passes it). A request whose client left
    while it waited gives its place up, and gives back slots handed to it as it left.
    """

    def __init__(self, capacity: int) -> None:
        self._free = capacity
        #: (priority, arrival, slots wanted, go, [granted, gone])
        self._waiting: list[tuple[int, int, int, anyio.Event, list[bool]]] = []
        self._arrivals = itertools.count()

    async def acquire(self, count: int, priority: int) -> None:
        if not self._waiting and self._free >= count:
            self._free -= count
            return
        go, state = anyio.Event(), [False, False]
        heapq.heappush(self._waiting, (priority, next(self._arrivals), count, go, state))
        try:
            await go.wait()
        except BaseException:
            if state[0]:
                self.release(count)
            else:
                state[1] = True
                self._grant()
            raise

    def release(self, count: int) -> None:
        self._free += count
        self._grant()

    def _grant(self) -> None:
        while self._waiting:
            _priority, _arrival, count, go, state = self._waiting[0]
            if not state[1]:
                if count > self._free:
                    return
                self._free -= count
                state[0] = True
                go.set()
            heapq.heappop(self._waiting)


@dataclass
class _Draft:
    """A request's record while it is being served (mutable; frozen into a RequestRecord at the end)."""

    id: int
    method: str
    path: str
    arrival: float
    start: float | None = None
    fault: str | None = None
    stream: bool = False
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    answer_key: str | None = None
    stage: str | None = None
    attempt: int | None = None
    body: Any = None
    max_tokens: int | None = None
    n: int = 1
    committed: bool = False
    watch: _Watch | None = None  # set while something already watches for the client leaving
    keep_alive: bool = True  # what the client asked for (HTTP/1.1 default, or Connection: close)


class Simulator:
    """An OpenAI/vLLM-compatible HTTP server with canned answers, a load model and injected faults.

    Use :meth:`running` from synchronous code (server in a background thread) or :meth:`serve` inside an
    event loop. Both yield the base URL ``http://127.0.0.1:PORT/v1``. A request's record is in
    :attr:`requests` (and in the log file) before the last byte of its response is sent.
    """

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self._book = answers_mod.AnswerBook(self.config.answers_dir)
        self._records: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        faults = self.config.faults
        self._script = deque(faults.script)
        self._rng = random.Random(faults.seed)
        self._serving = False
        self._base_url: str | None = None
        self._slots: _Slots | None = None
        self._threads: anyio.CapacityLimiter | None = None
        self._log_file: IO[str] | None = None
        self._log_lock: anyio.Lock | None = None
        self._legacy = self.config.compat == COMPAT_LEGACY
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._server: asyncio.Server | None = None
        self._stopping: anyio.Event | None = None
        self._idle: set[Connection] = set()

    # ----------------------------------------------------------------------------------------------- records

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of every request answered so far (or cut off), in arrival order (by id).

        A request appears once its response is decided, just before its last byte is sent; requests still
        queued or generating are not listed yet.
        """
        with self._lock:
            return sorted(self._records, key=lambda r: r.id)

    @property
    def chat_requests(self) -> list[RequestRecord]:
        """Only the POST /v1/chat/completions records."""
        return [r for r in self.requests if r.path == CHAT_PATH and r.method == "POST"]

    def reset_log(self) -> None:
        """Forget the in-memory records (ids, the fault script position and the log file are kept)."""
        with self._lock:
            self._records.clear()

    @property
    def base_url(self) -> str | None:
        """The base URL while serving, else None."""
        return self._base_url

    def stop_accepting(self) -> None:
        """Behave as vLLM after SIGTERM: refuse new connections, leave requests in flight hanging.

        The listener closes (a new connection is refused), idle keep-alive connections are closed, and every
        request in flight, or arriving on a connection already open, never gets an answer: it hangs until the
        client gives up or the simulator stops. Safe to call from any thread, and more than once.
        """
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._stop_accepting_now()
        else:
            loop.call_soon_threadsafe(self._stop_accepting_now)

    def _stop_accepting_now(self) -> None:
        if self._stopping is None or self._stopping.is_set():
            return
        log.info("simulator: shutting down: new connections are refused, requests in flight hang")
        self._stopping.set()
        if self._server is not None:
            self._server.close()
        for conn in list(self._idle):
            conn.shut()
        self._idle.clear()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop_accepting` ran (or a ``shutdown`` fault fired)."""
        return self._stopping is not None and self._stopping.is_set()

    # -------------------------------------------------------------------------------------------- lifecycle

    @contextlib.contextmanager
    def running(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve in a background thread with its own event loop; yield the base URL; stop on exit.

        Raises RuntimeError if already serving, OSError if the port cannot be bound.
        """
        with anyio.from_thread.start_blocking_portal() as portal, \
                portal.wrap_async_context_manager(self.serve(host, port)) as url:
            yield url

    @contextlib.asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serve on the running event loop; yield the base URL; stop (cutting open connections) on exit.

        Raises RuntimeError if already serving, OSError if the port cannot be bound or the answers directory
        cannot be read.
        """
        if self._serving:
            raise RuntimeError("this Simulator is already serving")
        self._serving = True
        try:
            threads = self._threads = anyio.CapacityLimiter(_FILE_THREADS)
            if self.config.answers_dir is not None:
                await anyio.to_thread.run_sync(self._book.scan, limiter=threads)
            if self.config.log_path is not None:
                self._log_file = await anyio.to_thread.run_sync(self._open_log, limiter=threads)
            self._log_lock = anyio.Lock()
            self._stopping = anyio.Event()
            self._slots = _Slots(self.config.load.capacity)
            arrivals, accepted = anyio.create_memory_object_stream[_Streams](math.inf)
            with arrivals, accepted:
                # A deep backlog: benchmarks open hundreds of connections at once.
                server = await asyncio.start_server(
                    functools.partial(self._arrive, arrivals), host, port, backlog=1024)
                self._server = server
                # The stream server is asyncio's, so the loop is too (anyio's from-thread token needs anyio 4.8).
                self._loop, self._loop_thread = asyncio.get_running_loop(), threading.get_ident()
                bound = server.sockets[0].getsockname()[1]
                shown = f"[{host}]" if ":" in host else host
                self._base_url = f"http://{shown}:{bound}/v1"
                log.info("simulator listening on %s", self._base_url)
                error: BaseException | None = None
                async with anyio.create_task_group() as connections:
                    connections.start_soon(self._serve_connections, accepted, connections)
                    try:
                        yield self._base_url
                    except BaseException as exc:  # the caller's; re-raised below, not wrapped in a group
                        error = exc
                    finally:
                        server.close()
                        # Open connections (idle keep-alive, stalls, generations) end with the server.
                        connections.cancel_scope.cancel()
                for _reader, writer in _drain(accepted):
                    writer.transport.abort()
                if error is not None:
                    raise error
                await server.wait_closed()
        finally:
            self._base_url = None
            self._serving = False
            self._loop = None
            self._loop_thread = None
            self._server = None
            self._idle.clear()
            if self._log_file is not None:
                log_file, self._log_file = self._log_file, None
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(log_file.close)

    def _open_log(self) -> IO[str]:
        assert self.config.log_path is not None
        self.config.log_path.parent.mkdir(parents=True, exist_ok=True)
        return self.config.log_path.open("a", encoding="utf-8")

    # --------------------------------------------------------------------------------------------- plumbing

    @staticmethod
    def _arrive(arrivals: MemoryObjectSendStream[_Streams], reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter) -> None:
        """asyncio's callback for a new connection (a plain function, so asyncio starts no task for it)."""
        try:
            arrivals.send_nowait((reader, writer))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            writer.transport.abort()  # the server is ending

    async def _serve_connections(self, accepted: MemoryObjectReceiveStream[_Streams], connections: TaskGroup) -> None:
        async for reader, writer in accepted:
            connections.start_soon(self._handle, reader, writer)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer)
        cut = False
        try:
            if self.stopping:
                # Accepted in the instant before the listener closed: a stopping server drops it.
                conn.shut()
                return
            while True:
                self._idle.add(conn)
                try:
                    request = await conn.read_request()
                except HttpError as exc:
                    body = _error_body(str(exc), "BadRequestError", exc.status, legacy=self._legacy)
                    await conn.send(full_response(exc.status, body, keep_alive=False))
                    break
                finally:
                    self._idle.discard(conn)
                if request is None:
                    break
                keep_alive = await self._dispatch(conn, request)
                if not (keep_alive and request.keep_alive) or self.stopping:
                    break
        except (_Closed, ConnectionError, OSError):
            pass
        except anyio.get_cancelled_exc_class():
            # Only serve() cancels connections, to stop: cut them off rather than wait for the client.
            cut = True
            writer.transport.abort()
            raise
        finally:
            if not cut:
                await conn.close()

    def _next_fault(self) -> str | None:
        """The fault of the next chat request in arrival order (script first, then the seeded rate)."""
        with self._lock:
            if self._script:
                kind = self._script.popleft()
                return None if kind == NO_FAULT else kind
            faults = self.config.faults
            if faults.rate > 0 and self._rng.random() < faults.rate:
                return self._rng.choice(faults.kinds)
            return None

    async def _commit(self, draft: _Draft, status: int) -> None:
        """Freeze ``draft`` into a record, publish it and append it to the log (once per request)."""
        if draft.committed:
            return
        draft.committed = True
        end = time.monotonic()
        start = draft.start if draft.start is not None else min(draft.arrival, end)
        record = RequestRecord(
            id=draft.id, method=draft.method, path=draft.path, arrival=draft.arrival, start=start, end=end,
            status=status, fault=draft.fault, stream=draft.stream, model=draft.model,
            prompt_tokens=draft.prompt_tokens, completion_tokens=draft.completion_tokens,
            finish_reason=draft.finish_reason, answer_key=draft.answer_key, stage=draft.stage,
            attempt=draft.attempt, body=draft.body if self.config.record_bodies else None,
            max_tokens=draft.max_tokens, n=draft.n,
        )
        with self._lock:
            self._records.append(record)
        if self._log_file is not None and self._log_lock is not None:
            line = record.to_json(with_body=self.config.record_bodies) + "\n"
            async with self._log_lock:
                await anyio.to_thread.run_sync(self._write_log, line, limiter=self._threads)

    def _write_log(self, line: str) -> None:
        log_file = self._log_file
        if log_file is not None:
            log_file.write(line)
            log_file.flush()

    async def _reply(
        self, conn: Connection, draft: _Draft, status: int, body: bytes, *,
        content_type: str | None = "application/json", headers: list[tuple[str, str]] | None = None,
        keep_alive: bool = True,
    ) -> bool:
        keep_alive = keep_alive and draft.keep_alive
        await self._hang_if_stopping(conn, draft)
        await self._commit(draft, status)
        await conn.send(full_response(status, body, content_type=content_type, headers=headers,
                                      keep_alive=keep_alive))
        return keep_alive

    async def _hang_if_stopping(self, conn: Connection, draft: _Draft) -> None:
        """A stopping server never answers: wait until the client leaves (or the server ends), then _Closed."""
        if not self.stopping:
            return
        try:
            if draft.watch is not None:
                await draft.watch.gone.wait()
            else:
                await conn.wait_client_gone()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._commit(draft, STATUS_NO_RESPONSE)
            raise
        await self._commit(draft, STATUS_CLIENT_GONE)
        raise _Closed

    async def _error(
        self, conn: Connection, draft: _Draft, status: int, message: str, err_type: str, param: str | None = None
    ) -> bool:
        body = _error_body(message, err_type, status, legacy=self._legacy, param=param)
        return await self._reply(conn, draft, status, body)

    async def _schema_error(self, conn: Connection, draft: _Draft, field: str, problem: str) -> bool:
        """A 400 for a body that fails schema validation (vLLM 0.32: type "Bad Request", param "body.FIELD")."""
        if self._legacy:
            return await self._error(conn, draft, 400, f"{field}: {problem}", VALUE_ERROR_TYPE)
        location = f"body.{field}" if field else "body"
        message = f"1 validation error for ChatCompletionRequest\n{field or 'body'}\n  {problem}"
        return await self._error(conn, draft, 400, message, SCHEMA_ERROR_TYPE, location)

    @staticmethod
    async def _watched(conn: Connection, draft: _Draft, body: Callable[[_Watch], Awaitable[T]]) -> T:
        """``body(watch)`` while a child task watches for the client leaving. A client that left, or a send that
        failed, ends as _Closed, raised once the watcher is gone (outside the task group, so unwrapped)."""
        results: list[T] = []
        async with anyio.create_task_group() as tg:
            watch = draft.watch = _Watch()
            tg.start_soon(watch.run, conn)
            try:
                results.append(await body(watch))
            except (_Closed, ConnectionError, OSError):
                pass
            finally:
                draft.watch = None
                tg.cancel_scope.cancel()
        if not results:
            raise _Closed
        return results[0]

    # ----------------------------------------------------------------------------------------------- routes

    async def _dispatch(self, conn: Connection, request: Request) -> bool:
        """Serve one request; return False when the connection must close afterwards."""
        with self._lock:
            rid = next(self._ids)
        draft = _Draft(rid, request.method, request.path, time.monotonic(), keep_alive=request.keep_alive)
        routes = {
            "/health": ("GET", self._health),
            "/v1/models": ("GET", self._models),
            "/version": ("GET", self._version),
            CHAT_PATH: ("POST", self._chat),
        }
        if self.config.tokenize:
            routes["/tokenize"] = ("POST", self._tokenize)
        route = routes.get(request.path)
        if self.config.api_key is not None and request.path.startswith("/v1") and (
                request.headers.get("authorization") != f"Bearer {self.config.api_key}"):
            # vLLM's --api-key middleware: every /v1 route, whatever its method, and a string body.
            return await self._reply(conn, draft, 401, _json({"error": "Unauthorized"}))
        if route is None:
            return await self._reply(conn, draft, 404, _json({"detail": "Not Found"}))
        method, handler = route
        if request.method != method:
            return await self._reply(conn, draft, 405, _json({"detail": "Method Not Allowed"}),
                                     headers=[("allow", method)])
        return await handler(conn, request, draft)

    async def _health(self, conn: Connection, request: Request, draft: _Draft) -> bool:
        return await self._reply(conn, draft, 200, b"", content_type=None)

    async def _version(self, conn: Connection, request: Request, draft: _Draft) -> bool:
        return await self._reply(conn, draft, 200, _json({"version": "0.0.0+simulator"}))

    async def _models(self, conn: Connection, request: Request, draft: _Draft) -> bool:
        name = self.config.model
        card = {
            "id": name, "object": "model", "created": int(time.time()), "owned_by": "vllm", "root": name,
            "parent": None, "max_model_len": self.config.max_model_len,
        }
        return await self._reply(conn, draft, 200, _json({"object": "list", "data": [card]}))

    def _parse_body(self, request: Request, draft: _Draft) -> tuple[dict[str, Any] | None, str | None]:
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            return None, f"Invalid JSON body: {exc}"
        if self.config.record_bodies:
            draft.body = body
        if not isinstance(body, dict):
            return None, "The request body must be a JSON object."
        model = body.get("model")
        draft.model = model if isinstance(model, str) else None
        return body, None

    def _unknown_model(self, body: dict[str, Any]) -> str | None:
        model = body.get("model")
        if model is None or model == self.config.model:
            return None
        if self._legacy:
            return f"The model `{model}` does not exist."
        return f"The model `{model}` does not exist. Valid aliases: {self.config.model}."

    async def _tokenize(self, conn: Connection, request: Request, draft: _Draft) -> bool:
        body, problem = self._parse_body(request, draft)
        if body is None:
            return await self._schema_error(conn, draft, "", problem or "bad request")
        if (missing := self._unknown_model(body)) is not None:
            return await self._error(conn, draft, 404, missing, "NotFoundError")
        messages = body.get("messages")
        prompt = body.get("prompt")
        if isinstance(messages, list):
            count = message_tokens(messages)
            seed = "".join(content_text(m.get("content")) for m in messages[:1] if isinstance(m, dict))
        elif isinstance(prompt, str):
            count = text_tokens(prompt)
            seed = prompt
        else:
            return await self._schema_error(conn, draft, "prompt", "Give either 'prompt' (a string) or 'messages' "
                                            "(a list).")
        draft.prompt_tokens = count
        answer = {"count": count, "max_model_len": self.config.max_model_len,
                  "tokens": fake_token_ids(count, seed)}
        return await self._reply(conn, draft, 200, _json(answer))

    async def _chat(self, conn: Connection, request: Request, draft: _Draft) -> bool:
        fault = self._next_fault()
        draft.fault = fault
        body, problem = self._parse_body(request, draft)
        messages: list[Any] = []
        if body is not None:
            draft.stream = body.get("stream") is True
            raw_messages = body.get("messages")
            if isinstance(raw_messages, list):
                messages = raw_messages
                draft.prompt_tokens = message_tokens(messages)
                draft.stage = answers_mod.detect_stage(answers_mod.first_user_text(messages))
                draft.attempt = answers_mod.detect_attempt(messages)
        if fault in STATUS_FAULTS or fault in CONNECTION_FAULTS:
            return await self._fault_now(conn, draft, fault)

        # Validation in vLLM's order: body shape (400), model (404), sampling parameters and context (400).
        if body is None:
            return await self._schema_error(conn, draft, "", problem or "bad request")
        if not isinstance(body.get("messages"), list) or not messages:
            return await self._schema_error(conn, draft, "messages", "Input should be a non-empty list")
        if (missing := self._unknown_model(body)) is not None:
            return await self._error(conn, draft, 404, missing, "NotFoundError")
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)):
            return await self._schema_error(conn, draft, "max_tokens", "Input should be a valid integer")
        temperature = body.get("temperature")
        if isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature < 0:
            return await self._error(conn, draft, 400, f"temperature must be non-negative, got {temperature}.",
                                     VALUE_ERROR_TYPE, "temperature")
        if max_tokens is not None and max_tokens < 1:
            return await self._error(conn, draft, 400, f"max_tokens must be at least 1, got {max_tokens}.",
                                     VALUE_ERROR_TYPE, "max_tokens")
        n = body.get("n")
        n = 1 if n is None else n
        if not isinstance(n, int) or isinstance(n, bool):
            return await self._schema_error(conn, draft, "n", "Input should be a valid integer")
        if n < 1:
            return await self._error(conn, draft, 400, f"n must be at least 1, got {n}.", VALUE_ERROR_TYPE, "n")
        greedy = isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature < 1e-5
        if n > 1 and greedy:
            # vLLM's SamplingParams: greedy sampling would give n identical answers.
            return await self._error(conn, draft, 400, f"n must be 1 when using greedy sampling, got {n}.",
                                     VALUE_ERROR_TYPE)
        draft.n = n
        priority = body.get("priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool):
            return await self._schema_error(conn, draft, "priority", "Input should be a valid integer")
        if priority != 0 and self._legacy and self.config.scheduling_policy != POLICY_PRIORITY:
            # Older vLLM (its V0 engine) refused it; 0.32 accepts it and ignores it.
            return await self._error(conn, draft, 400, f"Got priority {priority} but Priority scheduling is not "
                                     f"enabled.", VALUE_ERROR_TYPE)
        if self.config.scheduling_policy != POLICY_PRIORITY:
            priority = 0
        refusal = self._context_refusal(message_tokens(messages), max_tokens)
        if isinstance(refusal, tuple):
            return await self._error(conn, draft, 400, refusal[0], VALUE_ERROR_TYPE, refusal[1])
        max_tokens = draft.max_tokens = refusal

        def choose() -> list[answers_mod.Answer]:
            return [self._book.choose(messages, choice) for choice in range(1, n + 1)]

        try:
            answers = await anyio.to_thread.run_sync(choose, limiter=self._threads)
            answer = answers[0]
        except OSError as exc:
            log.error("simulator: cannot read a canned answer: %s", exc)
            return await self._error(conn, draft, 500, f"simulator: cannot read a canned answer: {exc}",
                                     "InternalServerError")
        draft.answer_key = answer.key
        draft.stage = answer.stage  # a function-level request's folder and label ("functions/sum")
        if fault is None and answer.fault is not None:
            fault = draft.fault = answer.fault
            if fault in STATUS_FAULTS or fault in CONNECTION_FAULTS:
                return await self._fault_now(conn, draft, fault)

        outputs: list[tuple[str, str]] = []
        for each in answers:
            text, finish = each.text, each.finish_reason
            if fault == "length":
                text, finish = text[: len(text) // 2], "length"
            elif fault == "abort":
                text, finish = text[: len(text) // 3], "abort"
            if text_tokens(text) > max_tokens:
                text, finish = text[: max_tokens * CHARS_PER_TOKEN], "length"
            outputs.append((text, finish))
        # Usage as vLLM reports it: the prompt once, the completion tokens of every choice.
        draft.completion_tokens = sum(text_tokens(text) for text, _ in outputs)
        draft.finish_reason = outputs[0][1]
        longest = max(text_tokens(text) for text, _ in outputs)

        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        assert self._slots is not None
        slots = self._slots
        # The n sequences of a request decode side by side, one sequence slot each (see LoadModel).
        wanted = min(n, self.config.load.capacity)
        held = [0]

        async def take_slots() -> None:
            await slots.acquire(wanted, priority)
            held[0] = wanted

        async def generate(watch: _Watch) -> bool:
            try:
                if draft.stream:
                    # Like vLLM (a streaming response), the headers go out at once, before queueing.
                    await conn.send(response_head(200, [
                        ("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"),
                        ("transfer-encoding", "chunked")], keep_alive=draft.keep_alive))
                await watch.unless_gone(take_slots)
                draft.start = time.monotonic()
                if draft.stream:
                    await self._stream(conn, draft, watch, outputs, include_usage, fault == "malformed")
                    return draft.keep_alive
                await watch.unless_gone(anyio.sleep, self.config.load.service_time(draft.prompt_tokens or 0, longest))
                if fault == "malformed":
                    full = self._completion(draft, outputs)
                    return await self._reply(conn, draft, 200, full[: max(1, len(full) // 2)])
                return await self._reply(conn, draft, 200, self._completion(draft, outputs))
            finally:
                if held[0]:
                    slots.release(held[0])

        try:
            return await self._watched(conn, draft, generate)
        except _Closed:
            await self._commit(draft, STATUS_CLIENT_GONE)
            raise

    def _context_refusal(self, prompt: int, max_tokens: int | None) -> tuple[str, str | None] | int:
        """The 400 (message, param) when the prompt and max_tokens do not fit, else the completion budget to use.

        vLLM 0.32 refuses a prompt over the context (without counting it all), a max_tokens above the context,
        and a prompt that leaves no token; otherwise it lowers max_tokens to what the context leaves. Older
        servers refused prompt + max_tokens over the context, with both counts.
        """
        limit = self.config.max_model_len
        if self._legacy:
            if max_tokens is None:
                if prompt >= limit:
                    return (f"This model's maximum context length is {limit} tokens. However, you requested "
                            f"{prompt} tokens in the messages, Please reduce the length of the messages.", None)
                return limit - prompt
            if prompt + max_tokens > limit:
                return (f"This model's maximum context length is {limit} tokens. However, you requested "
                        f"{prompt + max_tokens} tokens ({prompt} in the messages, {max_tokens} in the "
                        "completion). Please reduce the length of the messages or completion.", None)
            return max_tokens
        if max_tokens is not None and max_tokens > limit:
            return (f"max_tokens={max_tokens} cannot be greater than max_model_len={limit}. Please request fewer "
                    "output tokens.", "max_tokens")
        if prompt > limit:
            # vLLM 0.32 stops tokenizing one token past the context, so it never knows the whole count.
            return (f"This model's maximum context length is {limit} tokens. However, your request has at "
                    f"least {limit + 1} input tokens. Please reduce the length of the input messages.",
                    "input_tokens")
        budget = limit - prompt if max_tokens is None else min(max_tokens, limit - prompt)
        if budget < 1:
            return f"max_tokens must be at least 1, got {budget}.", "max_tokens"
        return budget

    async def _fault_now(self, conn: Connection, draft: _Draft, fault: str) -> bool:
        """Apply a fault that replaces the generation: an error status, a drop, a stall, a trickle, a shutdown."""
        if fault in STATUS_FAULTS:
            message, err_type = _FAULT_ERRORS[fault]
            retry_after = _seconds_header(self.config.faults.retry_after)
            headers = [("retry-after", retry_after)] if fault == "429" else []
            body = _error_body(message, err_type, int(fault), legacy=self._legacy)
            return await self._reply(conn, draft, int(fault), body, headers=headers)
        if fault == "shutdown":
            self._stop_accepting_now()
            await self._hang_if_stopping(conn, draft)
        if fault == "trickle":
            await self._trickle(conn, draft)
        if fault == "stall":
            async def stall(watch: _Watch) -> None:
                await watch.unless_gone(anyio.sleep, self.config.faults.stall_seconds)

            with contextlib.suppress(_Closed):
                await self._watched(conn, draft, stall)
        await self._commit(draft, STATUS_NO_RESPONSE)
        raise _Closed

    async def _trickle(self, conn: Connection, draft: _Draft) -> None:
        """Send a short answer's head at once, then its body one byte per trickle_interval; never finishes early."""
        body = self._completion(draft, [("A trickled answer.", "stop")])
        await conn.send(response_head(200, [("content-type", "application/json"),
                                            ("content-length", str(len(body)))], keep_alive=False))

        async def trickle(watch: _Watch) -> None:
            for at in range(len(body)):
                await watch.unless_gone(anyio.sleep, self.config.faults.trickle_interval)
                await conn.send(body[at: at + 1])

        try:
            await self._watched(conn, draft, trickle)
        except _Closed:
            await self._commit(draft, STATUS_CLIENT_GONE)
            raise
        await self._commit(draft, 200)
        raise _Closed

    def _completion(self, draft: _Draft, outputs: list[tuple[str, str]]) -> bytes:
        prompt = draft.prompt_tokens or 0
        completion = draft.completion_tokens or 0
        return _json({
            "id": f"chatcmpl-sim-{draft.id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.config.model,
            "choices": [{
                "index": index,
                "message": {"role": "assistant", "content": text, "tool_calls": []},
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": None,
            } for index, (text, finish) in enumerate(outputs)],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
        })

    async def _stream(
        self, conn: Connection, draft: _Draft, watch: _Watch, outputs: list[tuple[str, str]],
        include_usage: bool, malformed: bool,
    ) -> None:
        """Send the choices' texts as server-sent events, paced by the load model; _Closed if the client leaves.

        Several choices (``n``) advance side by side: each step sends the next piece of every choice not yet
        done, as vLLM's batch decodes them together."""
        load = self.config.load
        created = int(time.time())
        base = {"id": f"chatcmpl-sim-{draft.id}", "object": "chat.completion.chunk", "created": created,
                "model": self.config.model}

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return chunk(b"data: " + _json({**base, "choices": choices, **extra}) + b"\n\n")

        def delta(index: int, content: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {"index": index, "delta": content, "logprobs": None, "finish_reason": finish_reason}

        # Chunks are due on a schedule from the slot's start, so the per-chunk overhead does not add up and
        # the whole stream takes the same service time as a plain answer.
        due = (draft.start or time.monotonic()) + load.service_time(draft.prompt_tokens or 0, 0)
        if due > time.monotonic():
            await watch.unless_gone(anyio.sleep, due - time.monotonic())
        await self._hang_if_stopping(conn, draft)
        for index in range(len(outputs)):
            await conn.send(event([delta(index, {"role": "assistant", "content": ""})]))
        step = (LEGACY_STREAM_CHUNK_TOKENS if self._legacy else STREAM_CHUNK_TOKENS) * CHARS_PER_TOKEN
        longest = max(len(text) for text, _ in outputs)
        for at in range(0, longest, step):
            pieces = [(index, text[at: at + step], finish, at + step >= len(text))
                      for index, (text, finish) in enumerate(outputs) if at < len(text)]
            due += load.decode_per_token * max(text_tokens(piece) for _, piece, _, _ in pieces)
            if due > time.monotonic():
                await anyio.sleep(due - time.monotonic())
            if watch.gone.is_set():
                raise _Closed
            await self._hang_if_stopping(conn, draft)
            if malformed and at >= longest // 2:
                spoilt = b'data: {"id": "chatcmpl-sim-' + str(draft.id).encode() + b'", "choi\n\n'
                await conn.send(chunk(spoilt))
                break
            for index, piece, finish, last in pieces:
                # vLLM 0.32 puts finish_reason on the last content chunk; older servers sent an empty one after.
                done = not self._legacy and last and not malformed
                await conn.send(event([delta(index, {"content": piece}, finish if done else None)]))
        if malformed and not longest:
            await conn.send(chunk(b"data: {not json\n\n"))
        for index, (text, finish) in enumerate(outputs):
            if self._legacy or not text or malformed:
                await conn.send(event([delta(index, {} if self._legacy else {"content": ""}, finish)]))
        if include_usage:
            prompt = draft.prompt_tokens or 0
            completion = draft.completion_tokens or 0
            await conn.send(event([], usage={"prompt_tokens": prompt, "completion_tokens": completion,
                                             "total_tokens": prompt + completion}))
        await self._commit(draft, 200)
        await conn.send(chunk(b"data: [DONE]\n\n") + LAST_CHUNK)


def _drain(accepted: MemoryObjectReceiveStream[_Streams]) -> Iterator[_Streams]:
    """Connections accepted but never served (the server ended first)."""
    while True:
        try:
            yield accepted.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            return
