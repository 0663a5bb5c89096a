"""A throwaway PostgreSQL server for the tests: started once per session, one database per test.

:class:`PostgresServer` runs the image's own binaries (``/usr/lib/postgresql/*/bin``, or
``initdb`` on PATH): ``initdb`` into a temporary directory, then ``pg_ctl start`` on a unix socket
in that directory and on ``127.0.0.1`` at a free port. PostgreSQL refuses to run as root, so as
root it runs as a system user (``pgtest``, created once). fsync is off: a test server never
survives a power cut, and nothing here measures durability against one (the relay still commits
with ``synchronous_commit=on`` on its own sessions).

Without binaries the tests that need the server skip, saying why; with ``ACCORD_REQUIRE_POSTGRES=1``
(CI, ``.ci/run``) they fail instead.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REQUIRE_ENV = "ACCORD_REQUIRE_POSTGRES"
SYSTEM_USER = "pgtest"
START_TIMEOUT_S = 60


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_binaries() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres`` (newest version), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: [int(x) for x in p.split("/")[4].split(".")
                                                                                 if x.isdigit()])
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class PostgresServer:
    """One running server; :meth:`start`, :meth:`database`, :meth:`stop`."""

    root: Path
    binaries: Path
    fsync: bool = False  # off for tests; benchmarks turn it on
    port: int = 0
    _databases: int = field(default=0, init=False)

    @property
    def socket_dir(self) -> Path:
        return self.root

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL of ``database`` over TCP on 127.0.0.1."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run_as(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
                           check=True, capture_output=True)
        shutil.chown(self.root, SYSTEM_USER)
        return ["runuser", "-u", SYSTEM_USER, "--"]

    def start(self) -> None:
        """initdb and start; raises RuntimeError with the server's log if it does not come up."""
        run_as = self._run_as()
        data = self.root / "data"
        subprocess.run([*run_as, str(self.binaries / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                        "-E", "UTF8", "--no-locale", "--no-sync"], check=True, capture_output=True,
                       timeout=START_TIMEOUT_S)
        self.port = _free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} -c max_connections=300"
        if not self.fsync:
            options += " -c fsync=off -c full_page_writes=off"
        started = subprocess.run([*run_as, str(self.binaries / "pg_ctl"), "-D", str(data), "-l",
                                  str(self.root / "server.log"), "-o", options, "-w", "-t", str(START_TIMEOUT_S),
                                  "start"], capture_output=True, timeout=START_TIMEOUT_S + 10)
        if started.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace") if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {started.stderr.decode(errors='replace')}\n{log[-2000:]}")

    def database(self) -> str:
        """Create a fresh, empty database; return its URL."""
        self._databases += 1
        name = f"t{self._databases}"
        subprocess.run([str(self.binaries / "psql"), "-h", str(self.root), "-p", str(self.port), "-U", "postgres",
                        "-d", "postgres", "-q", "-v", "ON_ERROR_STOP=1", "-c", f"CREATE DATABASE {name}"],
                       check=True, capture_output=True, timeout=30)
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (immediate mode: nothing of a test server needs a checkpoint) and delete its files."""
        data = self.root / "data"
        if (data / "postmaster.pid").exists():
            subprocess.run([*self._run_as(), str(self.binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                            "stop"], capture_output=True, timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


def required() -> bool:
    """True if a missing server must fail the tests rather than skip them (CI)."""
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


@contextlib.contextmanager
def running_server(*, fsync: bool = False) -> Iterator[PostgresServer]:
    """Start a server for the duration of the block (``fsync``: durable settings, for benchmarks).

    Raises:
        PostgresMissing: no binaries on this machine.
    """
    binaries = find_binaries()
    if binaries is None or not (binaries / "pg_ctl").exists():
        raise PostgresMissing("no PostgreSQL server binaries (looked in /usr/lib/postgresql/*/bin and PATH); "
                              "install Debian's `postgresql` package to run these tests")
    root = Path(tempfile.mkdtemp(prefix="accord-pg-"))
    os.chmod(root, 0o755)  # the server runs as its own user: it must enter the directory
    server = PostgresServer(root, binaries, fsync)
    try:
        server.start()
        yield server
    finally:
        server.stop()
