"""Run ``accord relay`` as a child process: for the demo, benchmarks and fault-injection tests.

The child writes its bound port to a port file once it listens, so callers can ask for
``--port 0`` and still learn the port; a restart reuses the port it got the first time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class RelayProcess:
    """One ``accord relay`` child with its SQLite file and log in ``folder``.

    Args:
        folder: where ``<relay_id>.sqlite``, ``.log`` and ``.port`` go.
        relay_id: the relay's ``--id``.
        extra: more ``accord relay`` arguments, given on every start.
        db: ``--db`` value (default ``folder/<relay_id>.sqlite``; ``:memory:`` for none).
    """

    def __init__(self, folder: Path, relay_id: str, *extra: str, db: str | None = None, port: int = 0) -> None:
        self.folder = folder
        self.relay_id = relay_id
        self.extra = list(extra)
        self.db = db or str(folder / f"{relay_id}.sqlite")
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = folder / f"{relay_id}.log"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, *extra: str, timeout_s: float = 20.0) -> RelayProcess:
        """Start (or restart on the same port) and wait until it listens.

        Raises:
            RuntimeError: the relay exited or did not listen within ``timeout_s`` (the message
                carries the end of its log).
        """
        port_file = self.folder / f"{self.relay_id}.port"
        port_file.unlink(missing_ok=True)
        args = [sys.executable, "-m", "accord", "relay", "--id", self.relay_id, "--port", str(self.port),
                "--db", self.db, "--port-file", str(port_file), *self.extra, *extra]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout_s
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"relay {self.relay_id} did not start; end of {self.log_path}:\n{tail}")
            await asyncio.sleep(0.02)
        self.port = int(port_file.read_text())
        return self

    async def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int | None:
        """Send ``sig`` (SIGTERM: graceful) and wait for the exit; SIGKILL after ``timeout_s``."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise TimeoutError(f"relay {self.relay_id} ignored signal {sig}; killed")
            await asyncio.sleep(0.02)
        return self.proc.returncode

    def cleanup(self) -> None:
        """Kill the child if it still runs (for ``finally`` blocks)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
