"""A small HTTP/1.1 server for the FHIR facade (``--fhir-port``).

Why a second port: websockets' HTTP parser serves the websocket handshake only. It reads no
request body (``Request.parse`` refuses any ``Content-Length`` but 0 with "unsupported request
body", and ``Transfer-Encoding`` with NotImplementedError), so POST, PUT and PATCH with a FHIR
resource can never reach ``process_request`` on the relay's main port. This server reads what
FHIR writes need and nothing more: one request at a time per connection (keep-alive), a body
given by ``Content-Length`` (chunked bodies get 411), bounded header and body sizes, a deadline
on every read. With TLS it uses the relay's certificate context (reloaded on SIGHUP like the
main port's). Reads (GET) are also answered on the main port through the same handler.
"""

from __future__ import annotations

import asyncio
import http
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 100


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request: method, target (path and query), headers (lower-case names), body."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass(slots=True)
class HttpResponse:
    """One answer."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class BadRequest(Exception):
    """The bytes are not an HTTP/1.1 request this server reads."""

    def __init__(self, status: http.HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class HttpServer:
    """Serve ``handler`` on a port (see the module docstring).

    Args:
        handler: turns a request into a response (never raises for bad input; a raise is a 500).
        max_body_bytes: larger bodies get 413.
        timeout_s: deadline for reading one request (and for an idle keep-alive connection).
        max_connections: more are answered 503 and closed.
    """

    def __init__(self, handler: Handler, *, max_body_bytes: int = 1 << 20, timeout_s: float = 10.0,
                 max_connections: int = 256) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        """Listen; :attr:`port` is the bound port afterwards."""
        self._server = await asyncio.start_server(self._serve, host, port, ssl=tls, limit=MAX_HEADER_BYTES,
                                                  ssl_handshake_timeout=self.timeout_s if tls else None)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and end the open connections."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._open):
            task.cancel()
        await asyncio.gather(*self._open, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._open.add(task)
        try:
            if len(self._open) > self.max_connections:
                await _write(writer, HttpResponse(503, b"too many connections\n"), keep=False)
                return
            while True:
                try:
                    async with asyncio.timeout(self.timeout_s):
                        request = await self._read(reader)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                except BadRequest as exc:
                    await _write(writer, HttpResponse(int(exc.status), f"{exc}\n".encode()), keep=False)
                    return
                if request is None:
                    return
                try:
                    response = await self.handler(request)
                except Exception:
                    log.exception("FHIR request failed", extra={"method": request.method})
                    response = HttpResponse(500, b"internal error\n")
                keep = request.headers.get("connection", "").lower() != "close"
                await _write(writer, response, keep=keep)
                if not keep:
                    return
        except (ConnectionError, ssl.SSLError):
            return
        finally:
            self._open.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass

    async def _read(self, reader: asyncio.StreamReader) -> HttpRequest | None:
        try:
            line = await reader.readline()
        except (asyncio.LimitOverrunError, ValueError):
            raise BadRequest(http.HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long") from None
        if not line:
            return None
        parts = line.decode("latin-1").rstrip("\r\n").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise BadRequest(http.HTTPStatus.BAD_REQUEST, "not an HTTP/1.1 request line")
        method, target, _version = parts
        headers: dict[str, str] = {}
        size = 0
        while True:
            try:
                raw = await reader.readline()
            except (asyncio.LimitOverrunError, ValueError):
                raise BadRequest(http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "header too long") from None
            size += len(raw)
            if raw in (b"\r\n", b"\n", b""):
                break
            if size > MAX_HEADER_BYTES or len(headers) >= MAX_HEADERS:
                raise BadRequest(http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "headers too large")
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep:
                raise BadRequest(http.HTTPStatus.BAD_REQUEST, "malformed header line")
            headers[name.strip().lower()] = value.strip()
        if "transfer-encoding" in headers:
            raise BadRequest(http.HTTPStatus.LENGTH_REQUIRED, "send the body with Content-Length, not chunked")
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise BadRequest(http.HTTPStatus.BAD_REQUEST, "Content-Length is not a number")
        length = int(length_text)
        if length > self.max_body_bytes:
            raise BadRequest(http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                             f"body of {length} bytes; the limit is {self.max_body_bytes}")
        body = await reader.readexactly(length) if length else b""
        return HttpRequest(method.upper(), target, headers, body)


async def _write(writer: asyncio.StreamWriter, response: HttpResponse, *, keep: bool) -> None:
    try:
        phrase = http.HTTPStatus(response.status).phrase
    except ValueError:
        phrase = "Status"
    headers = {"Content-Length": str(len(response.body)), "X-Content-Type-Options": "nosniff",
               **response.headers, "Connection": "keep-alive" if keep else "close"}
    head = f"HTTP/1.1 {response.status} {phrase}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    writer.write(head.encode("latin-1") + response.body)
    await writer.drain()
