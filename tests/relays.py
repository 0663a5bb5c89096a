"""Starting real relays for tests: in-process (``Relay``) or as ``accord relay`` subprocesses."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from accord.relay.server import Relay, RelayConfig

ACCORD = [sys.executable, "-m", "accord"]


def relay_config(tmp_path: Path, relay_id: str, **kw: object) -> RelayConfig:
    """A loopback relay on a free port with its SQLite file under ``tmp_path``."""
    return RelayConfig(relay_id=relay_id, host="127.0.0.1", port=0, db_path=tmp_path / f"{relay_id}.sqlite",
                       backoff_initial_s=0.05, backoff_max_s=0.5, **kw)  # type: ignore[arg-type]


class RelayProcess:
    """``accord relay`` in a child process; the port is read back from --port-file."""

    def __init__(self, tmp_path: Path, relay_id: str, *extra: str, port: int = 0) -> None:
        self.tmp_path = tmp_path
        self.relay_id = relay_id
        self.extra = list(extra)
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = tmp_path / f"{relay_id}.log"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 15.0) -> RelayProcess:
        port_file = self.tmp_path / f"{self.relay_id}.port"
        port_file.unlink(missing_ok=True)
        args = [*ACCORD, "relay", "--id", self.relay_id, "--port", str(self.port),
                "--db", str(self.tmp_path / f"{self.relay_id}.sqlite"), "--port-file", str(port_file), *self.extra]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay {self.relay_id} exited: {self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"relay {self.relay_id} did not start: {self.log_path.read_text()[-2000:]}")
            await asyncio.sleep(0.02)
        self.port = int(port_file.read_text())
        return self

    async def kill(self, sig: int = signal.SIGKILL, timeout: float = 15.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                raise TimeoutError(f"relay {self.relay_id} ignored signal {sig}")
            await asyncio.sleep(0.02)
        return self.proc.returncode

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


__all__ = ["Relay", "RelayConfig", "RelayProcess", "relay_config"]
