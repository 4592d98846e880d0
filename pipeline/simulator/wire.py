"""A small HTTP/1.1 server layer over asyncio streams: requests in, bytes out, keep-alive.

The bytes go through asyncio's streams (not anyio's socket streams) because a response sent before a close must
reach the client: ``StreamWriter.close()`` flushes and then sends FIN, while anyio's ``SocketStream.aclose()``
aborts the transport and drops what is still buffered. All concurrency around it is anyio (see :mod:`.server`).

Enough of HTTP/1.1 for OpenAI clients: request bodies by Content-Length (chunked bodies are accepted too),
``Expect: 100-continue``, persistent connections (HTTP/1.1 default, ``Connection: close`` honoured), responses
with Content-Length or chunked transfer encoding (for server-sent events).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from http import HTTPStatus

import anyio

HEAD_LIMIT = 64 * 1024
BODY_LIMIT = 64 * 1024 * 1024
_READ_SIZE = 64 * 1024


class HttpError(Exception):
    """A request that cannot be parsed; answer with ``status`` and close the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Request:
    """One parsed request. Header names are lower-case."""

    method: str
    target: str
    path: str
    version: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


def reason(status: int) -> str:
    """The standard reason phrase for ``status`` ("Unknown" for unusual codes)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def response_head(status: int, headers: list[tuple[str, str]], *, keep_alive: bool) -> bytes:
    """The status line and headers of a response, with the Connection header set from ``keep_alive``."""
    lines = [f"HTTP/1.1 {status} {reason(status)}", "server: pipeline-simulator"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append("connection: keep-alive" if keep_alive else "connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def full_response(
    status: int,
    body: bytes,
    *,
    content_type: str | None = "application/json",
    headers: list[tuple[str, str]] | None = None,
    keep_alive: bool = True,
) -> bytes:
    """A complete response with a Content-Length body."""
    all_headers = list(headers or [])
    if content_type is not None:
        all_headers.append(("content-type", content_type))
    all_headers.append(("content-length", str(len(body))))
    return response_head(status, all_headers, keep_alive=keep_alive) + body


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked-encoding body (``data`` must not be empty)."""
    return f"{len(data):x}\r\n".encode("ascii") + data + b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"


class Connection:
    """One client connection: reads requests in order, writes responses, notices when the client leaves.

    Reading is buffered here (not only in the StreamReader) so that :meth:`wait_client_gone` may read ahead
    while a request is being served without losing the bytes of a pipelined next request.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._buf = bytearray()
        self.peer_closed = False

    async def _fill(self) -> bool:
        if self.peer_closed:
            return False
        try:
            data = await self._reader.read(_READ_SIZE)
        except (ConnectionError, OSError):
            data = b""
        if not data:
            self.peer_closed = True
            return False
        self._buf += data
        return True

    async def _read_until(self, delimiter: bytes, limit: int) -> bytes | None:
        start = 0
        while True:
            at = self._buf.find(delimiter, start)
            if at >= 0:
                out = bytes(self._buf[: at + len(delimiter)])
                del self._buf[: at + len(delimiter)]
                return out
            if len(self._buf) > limit:
                raise HttpError(431, "request head too large")
            start = max(0, len(self._buf) - len(delimiter) + 1)
            if not await self._fill():
                return None

    async def _read_exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            if not await self._fill():
                raise HttpError(400, "connection closed in the middle of the request body")
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def read_request(self) -> Request | None:
        """The next request, or None when the client closed the connection between requests.

        Raises HttpError for a malformed request (the caller answers it and closes).
        """
        # RFC 9112 lets a server ignore empty lines before a request line.
        while self._buf[:2] == b"\r\n":
            del self._buf[:2]
        head = await self._read_until(b"\r\n\r\n", HEAD_LIMIT)
        if head is None:
            if self._buf.strip():
                raise HttpError(400, "connection closed in the middle of the request head")
            return None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise HttpError(400, f"malformed request line {lines[0]!r}")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise HttpError(400, f"malformed header line {line!r}")
            key = name.lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep_alive = "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens
        if headers.get("expect", "").lower() == "100-continue":
            await self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await self._read_body(headers)
        path = target.split("?", 1)[0]
        return Request(method.upper(), target, path, version, headers, body, keep_alive)

    async def _read_body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = bytearray()
            while True:
                line = await self._read_until(b"\r\n", HEAD_LIMIT)
                if line is None:
                    raise HttpError(400, "connection closed in a chunked body")
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise HttpError(400, "malformed chunk size") from None
                if size == 0:
                    # Trailers (ignored) end with an empty line.
                    while await self._read_until(b"\r\n", HEAD_LIMIT) not in (None, b"\r\n"):
                        pass
                    return bytes(body)
                if len(body) + size > BODY_LIMIT:
                    raise HttpError(413, "request body too large")
                body += await self._read_exactly(size)
                if await self._read_exactly(2) != b"\r\n":
                    raise HttpError(400, "malformed chunk")
        length_text = headers.get("content-length")
        if length_text is None:
            return b""
        try:
            length = int(length_text)
        except ValueError:
            raise HttpError(400, f"bad Content-Length {length_text!r}") from None
        if length < 0:
            raise HttpError(400, f"bad Content-Length {length_text!r}")
        if length > BODY_LIMIT:
            raise HttpError(413, "request body too large")
        return await self._read_exactly(length)

    async def wait_client_gone(self) -> None:
        """Return when the client closes its side of the connection; reads ahead into the buffer meanwhile."""
        while len(self._buf) <= BODY_LIMIT:
            if not await self._fill():
                return
        # A client that floods us while we answer is not leaving; stop reading and never return.
        await anyio.sleep_forever()

    async def send(self, data: bytes) -> None:
        """Write ``data`` and wait until it is handed to the OS. Raises ConnectionError if the client left."""
        if self._writer.is_closing():
            raise ConnectionResetError("connection closed")
        self._writer.write(data)
        await self._writer.drain()

    def shut(self) -> None:
        """Start closing the connection now (FIN, no response), from outside its handler."""
        if not self._writer.is_closing():
            self._writer.close()

    async def close(self) -> None:
        """Close the connection (FIN, no response) and wait for the transport to finish."""
        if not self._writer.is_closing():
            self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()
