"""The websocket pieces the relay and the terminal share: the outbox pump and the reconnect loop.

:class:`Outbox` is every connection's way out: a bounded queue and one writer task that takes
everything queued at once and writes it with a single socket write, so a busy connection costs
one system call per batch, not one per message; an idle one writes each message at once
without a task round trip. A full outbox means a slow consumer: :meth:`Outbox.send` returns
False and the owner closes the connection (it resyncs by state vector when it comes back);
nothing is dropped silently. (Merging queued updates with ``pycrdt.merge_updates`` was
measured too: it cost more relay CPU than it saved, because frames are encoded once per
broadcast and shared, while a merge is per connection.)

:func:`keep_connected` runs one connection after another with capped exponential backoff and
jitter (:class:`~accord.engine.backoff.Backoff`) until it is stopped: the relay's outbound peer
links and the terminal's link to its relay.

:func:`client_tls_context` is how both verify a ``wss://`` relay (the system's CA store, or one
CA file), and :func:`tls_problem` names what went wrong when verification fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from websockets.asyncio.connection import Connection as WebSocket
from websockets.exceptions import ConnectionClosed
from websockets.protocol import Side, State

from accord.engine.backoff import Backoff
from accord.engine.errors import AccordError

log = logging.getLogger(__name__)
MAX_BATCH = 256  # messages taken from the outbox per write round
LARGE_PAYLOAD_BYTES = 256 * 1024  # a message this large is written after its header, not joined to it
_SHORT_HEADS = [bytes((0x82, length)) for length in range(126)]  # FIN + binary, unmasked, 7-bit length


def binary_frame_head(length: int) -> bytes:
    """The header of an unfragmented, unmasked binary websocket frame of ``length`` payload
    bytes (RFC 6455 section 5.2): what a server sends, on a connection without extensions."""
    if length < 126:
        return _SHORT_HEADS[length]
    if length < 65536:
        return b"\x82\x7e" + length.to_bytes(2, "big")
    return b"\x82\x7f" + length.to_bytes(8, "big")


class Outbox:
    """A bounded outbox and its writer for one websocket.

    Args:
        websocket: the open connection.
        max_messages: queued messages before :meth:`send` reports a slow consumer.
        label: for logs.

    Run :meth:`run` as a task for the connection's lifetime (cancel it at the end).
    """

    def __init__(self, websocket: WebSocket, *, max_messages: int, label: str = "") -> None:
        self.websocket = websocket
        self.label = label
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=max_messages)
        self._writing = False  # the writer holds a batch: direct writes would overtake it
        self.bytes_out = 0

    def send(self, data: bytes) -> bool:
        """Write ``data`` now if nothing is queued, else queue it; False if the outbox is full."""
        if not self._writing and self.queue.empty() and self._write_now([data]):
            self.bytes_out += len(data)
            return True
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            return False
        self.bytes_out += len(data)
        return True

    def send_all(self, messages: list[bytes]) -> bool:
        """:meth:`send` each of ``messages`` in order (with one socket write if nothing is
        queued); False as soon as the outbox is full."""
        if len(messages) > 1 and not self._writing and self.queue.empty() and self._write_now(messages):
            self.bytes_out += sum(len(data) for data in messages)
            return True
        return all(self.send(data) for data in messages)

    async def run(self) -> None:
        """Write queued messages until the connection closes."""
        try:
            while True:
                batch = [await self.queue.get()]
                self._writing = True
                while len(batch) < MAX_BATCH and not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                if not self._write_now(batch):
                    for data in batch:
                        await self.websocket.send(data)
                self._writing = False
        except ConnectionClosed:
            return

    def _write_now(self, messages: list[bytes]) -> bool:
        """Frame and write ``messages`` with one socket write if the connection is plainly open
        and the transport is not pushing back; False means: go the slow, awaiting way.

        This is the pattern websockets documents for ``send_context`` (frame with the protocol
        object, then write what it has to send), without a context manager per message: that
        overhead measured about a quarter of the relay's CPU when each update goes to dozens
        of clients. On the server side of a connection without extensions (the relay's clients:
        it negotiates no compression) a binary frame is a fixed header and the payload itself,
        so the frames are put together here, without websockets' per-frame object and checks;
        a client's frames are masked, so clients go through the protocol object.
        """
        websocket = self.websocket
        protocol = websocket.protocol
        if protocol.state is not State.OPEN or websocket.transport.is_closing() or websocket.paused:
            return False
        try:
            if protocol.side is Side.SERVER and not protocol.extensions and not protocol.expect_continuation_frame \
                    and not protocol.debug:
                parts = protocol.data_to_send()  # whatever websockets queued first (normally nothing)
                for data in messages:
                    parts += (binary_frame_head(len(data)), data)
                if len(messages) == 1 and len(messages[0]) >= LARGE_PAYLOAD_BYTES:
                    for part in parts:  # a sync answer of megabytes: not copied once more to join it
                        websocket.transport.write(part)
                else:
                    websocket.transport.write(b"".join(parts))
                return True
            for data in messages:
                protocol.send_binary(data)
            websocket.transport.write(b"".join(protocol.data_to_send()))
        except Exception:  # an unexpected protocol state: let websockets' own send() report it
            log.debug("direct write failed; falling back", extra={"conn": self.label}, exc_info=True)
            return False
        return True


async def keep_connected(
    connect_once: Callable[[], Awaitable[None]],
    backoff: Backoff,
    *,
    wake: asyncio.Event,
    stopping: Callable[[], bool],
    on_failure: Callable[[BaseException], None],
    stable_session_s: float = 5.0,
) -> None:
    """Run ``connect_once`` again and again, waiting ``backoff`` between tries, until ``stopping()``.

    ``connect_once`` returns when a session ends normally and raises when it could not connect
    or was refused; ``on_failure`` sees every exception except cancellation (log it, record it).
    A session that lasted ``stable_session_s`` resets the backoff; one dropped at once does not.
    Setting ``wake`` skips the current wait (e.g. the network is back, or the owner is closing).
    """
    loop = asyncio.get_running_loop()
    failures = 0
    while not stopping():
        started = loop.time()
        try:
            await connect_once()
            failures = 0 if loop.time() - started >= stable_session_s else failures + 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # top of the loop: the owner classifies and logs
            failures += 1
            on_failure(exc)
        if stopping():
            break
        wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(backoff.delay_s(max(0, failures - 1))):
                await wake.wait()


def client_tls_context(ca_file: str | Path | None = None) -> ssl.SSLContext:
    """The TLS context for connecting to a ``wss://`` relay: certificates and host names are
    verified against the system's CA store or, given ``ca_file`` (PEM, one or more CA
    certificates), against that file only (a private CA).

    Raises:
        AccordError: ``ca_file`` cannot be read or holds no certificate.
    """
    if ca_file is None:
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    except FileNotFoundError:
        raise AccordError(f"CA file {ca_file} does not exist; give the PEM file of the CA that signed "
                          "the relay's certificate") from None
    except ssl.SSLError as exc:
        raise AccordError(f"CA file {ca_file} holds no usable PEM certificate ({exc.reason or exc.strerror})") from None
    except OSError as exc:
        raise AccordError(f"cannot read CA file {ca_file}: {exc.strerror or exc}") from None
    return context


def tls_problem(exc: BaseException) -> str | None:
    """One line naming why a TLS connection attempt failed, or None if ``exc`` is no TLS failure.

    Certificate failures say what OpenSSL found (``certificate has expired``, ``self-signed
    certificate in certificate chain``, ``Hostname mismatch, ...``); other handshake failures name
    the alert (``WRONG_VERSION_NUMBER``: the other side does not speak TLS).
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate rejected: {(exc.verify_message or exc.reason or '').rstrip('.')}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc.strerror or type(exc).__name__})"
    return None


def is_hostname_mismatch(exc: BaseException) -> bool:
    """The certificate is valid but names another host (OpenSSL's host and IP mismatch codes)."""
    return isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_code in (62, 64)
