"""Starting real relays for tests: in-process (``Relay``) or as ``accord relay`` subprocesses."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from accord.relay.process import RelayProcess as _RelayProcess
from accord.relay.server import Relay, RelayConfig


def free_port() -> int:
    """A loopback port nothing listens on right now (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def relay_config(tmp_path: Path, relay_id: str, **kw: object) -> RelayConfig:
    """A loopback relay on a free port with its SQLite file under ``tmp_path``."""
    return RelayConfig(relay_id=relay_id, host="127.0.0.1", port=0, db_path=tmp_path / f"{relay_id}.sqlite",
                       backoff_initial_s=0.05, backoff_max_s=0.5, **kw)  # type: ignore[arg-type]


class RelayProcess(_RelayProcess):
    """``accord relay`` in a child process (see :mod:`accord.relay.process`), with ``kill``."""

    def __init__(self, tmp_path: Path, relay_id: str, *extra: str, port: int = 0, db: str | None = None) -> None:
        super().__init__(tmp_path, relay_id, *extra, port=port, db=db)

    async def kill(self, sig: int = signal.SIGKILL, timeout: float = 15.0) -> int:
        code = await self.stop(sig, timeout)
        assert code is not None
        return code


@asynccontextmanager
async def running(relays: list[RelayProcess]) -> AsyncIterator[list[RelayProcess]]:
    """Start ``relays`` together; kill whatever still runs on the way out."""
    try:
        await asyncio.gather(*(relay.start() for relay in relays))
        yield relays
    finally:
        for relay in relays:
            relay.cleanup()


__all__ = ["Relay", "RelayConfig", "RelayProcess", "free_port", "relay_config", "running"]
