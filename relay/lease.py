"""A lease in a shared PostgreSQL store: at most one process of a relay cluster holds it.

Theory of operation. A lease is a PostgreSQL session advisory lock held on a **dedicated
session** (never pooled), plus a row in ``accord.leases`` whose ``epoch`` is the fencing token:

1. Every candidate process connects with ``idle_session_timeout`` = ``lease_s`` (and TCP
   keepalives): the server ends a session that sends nothing for ``lease_s``, which releases its
   lock. So a holder that is frozen (SIGSTOP), cut off by a partition or wedged loses the lock
   ``lease_s`` after its last heartbeat at the latest; one that dies or exits loses it at once.
2. A candidate tries ``pg_try_advisory_lock`` every ``retry_s``. Once it has the lock it bumps
   the row's epoch on the same session (``UPDATE ... RETURNING epoch``) and only then reports
   :attr:`Lease.on_acquired` with that epoch. Writes made under the lease carry a
   :class:`~accord.engine.storage.Fence` with it; the store refuses those whose epoch is not the
   row's current one (a deposed holder's late writes: :mod:`accord.engine.storage.postgres`).
3. The holder sends ``SELECT 1`` every ``heartbeat_s``, each under a deadline. It **steps down**
   (:attr:`Lease.on_lost`) on the first heartbeat that fails or times out, or when the session
   ends, then reconnects and is a candidate again. :meth:`Lease.valid` is False once the last
   answered heartbeat is older than ``lease_s - margin_s``, whether or not the heartbeat task ran
   (after a SIGCONT the clock has moved on: the holder knows before its first new heartbeat).
   Stepping down therefore happens before the server can release the lock to anyone else,
   as long as the holder runs; if it does not run, fencing stops its late writes.

Timings (defaults): ``lease_s`` 3 s, heartbeat every 0.5 s with a 1 s deadline, retry every
0.25 s. A killed holder is replaced within about ``retry_s``; a frozen or partitioned one
within about ``lease_s`` plus ``retry_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from accord.engine.storage import Fence

log = logging.getLogger(__name__)
LOCK_NAMESPACE = 0x6163  # the first key of pg_try_advisory_lock(int, int): "ac"; the second is the lease's


@dataclass(slots=True)
class LeaseStats:
    """What ``/metrics`` shows about one lease (counts and ids only)."""

    held: bool = False
    epoch: int = 0  # of the current hold (the last one, once lost)
    acquired: int = 0  # times this process took the lease (each one a takeover)
    lost: int = 0  # times it stepped down


def lock_key(name: str) -> int:
    """The advisory lock's second key for lease ``name`` (stable across processes and runs)."""
    return int(sum(ord(ch) * 31 ** i for i, ch in enumerate(name)) % (2 ** 31))


class Lease:
    """One process's claim on lease ``name`` in the store at ``url`` (see the module docstring).

    Set :attr:`on_acquired` (called with the new epoch, on the loop, once the bump committed)
    and :attr:`on_lost` (called once per hold, as soon as the hold is in doubt), then
    :meth:`start`; :meth:`close` releases the lock (another process takes over at once).
    """

    @classmethod
    def lasting(cls, url: str, name: str, holder: str, lease_s: float) -> Lease:
        """A lease of ``lease_s`` with the default proportions: a heartbeat every sixth of it,
        each with a third of it to answer, and a third of it as the safety margin."""
        return cls(url, name, holder, lease_s=lease_s, heartbeat_s=lease_s / 6, heartbeat_timeout_s=lease_s / 3,
                   margin_s=lease_s / 3)

    def __init__(self, url: str, name: str, holder: str, *, lease_s: float = 3.0, heartbeat_s: float = 0.5,
                 heartbeat_timeout_s: float = 1.0, retry_s: float = 0.25, margin_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if heartbeat_s + heartbeat_timeout_s > lease_s - margin_s:
            raise ValueError("a lease must outlast a heartbeat and its deadline by the margin")
        self.url = url
        self.name = name
        self.holder = holder
        self.lease_s = lease_s
        self.heartbeat_s = heartbeat_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.retry_s = retry_s
        self.margin_s = margin_s
        self.clock = clock
        self.stats = LeaseStats()
        self.on_acquired: Callable[[int], None] = lambda _epoch: None
        self.on_lost: Callable[[], None] = lambda: None
        self.session_pid = 0  # the lock session's server process (for operators and tests)
        self._last_ok = 0.0  # clock() when the last answered heartbeat (or the bump) was sent
        self._task: asyncio.Task[None] | None = None
        self._conn: Any = None

    @property
    def fence(self) -> Fence | None:
        """The fence for writes under this lease now, or None when it is not (validly) held."""
        return Fence(self.name, self.stats.epoch) if self.valid() else None

    def valid(self) -> bool:
        """True while this process holds the lease and its last heartbeat is recent enough that
        the server cannot have released the lock yet."""
        return self.stats.held and self.clock() - self._last_ok < self.lease_s - self.margin_s

    def drop(self) -> None:
        """Give the lease up now (its session ends; this process is a candidate again)."""
        if self._conn is not None:
            self._conn.terminate()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"lease-{self.name}")

    async def close(self) -> None:
        """Stop; a held lease is released (its session closes) and reported lost."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        import asyncpg

        settings = {"application_name": f"accord-lease-{self.name}",
                    "idle_session_timeout": str(int(self.lease_s * 1000)),
                    "tcp_keepalives_idle": "1", "tcp_keepalives_interval": "1", "tcp_keepalives_count": "2",
                    "tcp_user_timeout": str(int(self.lease_s * 1000))}
        while True:
            conn: asyncpg.Connection | None = None
            lost = asyncio.Event()
            try:
                async with asyncio.timeout(self.lease_s):
                    conn = await asyncpg.connect(self.url, server_settings=settings)
                self._conn = conn
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                self.session_pid = conn.get_server_pid()
                await self._acquire(conn, lost)
                await self._hold(conn, lost)
            except asyncio.CancelledError:
                raise
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                if self.stats.held:
                    log.warning("lease lost; stepping down", extra={"lease": self.name, "epoch": self.stats.epoch,
                                                                     "error": str(exc)})
                else:
                    log.debug("lease session failed", extra={"lease": self.name, "error": str(exc)})
            except Exception:  # a bug: log it, step down, try again (never hold a lease nobody heartbeats)
                log.exception("lease error", extra={"lease": self.name})
            finally:
                self._step_down()
                self._conn = None
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(self.retry_s)

    async def _acquire(self, conn: Any, lost: asyncio.Event) -> None:
        """Return holding the lock with the epoch bumped; raise if the session fails first."""
        while True:
            async with asyncio.timeout(self.heartbeat_timeout_s):
                if await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_NAMESPACE, lock_key(self.name)):
                    break
            await _unless_lost(lost, self.retry_s)
        sent = self.clock()
        async with asyncio.timeout(self.heartbeat_timeout_s):
            epoch = await conn.fetchval(
                "INSERT INTO accord.leases AS l (name, epoch, holder, since) VALUES ($1, 1, $2, now()) "
                "ON CONFLICT (name) DO UPDATE SET epoch = l.epoch + 1, holder = excluded.holder, since = now() "
                "RETURNING epoch", self.name, self.holder)
        self._last_ok = sent
        self.stats.held, self.stats.epoch = True, int(epoch)
        self.stats.acquired += 1
        log.info("lease taken", extra={"lease": self.name, "epoch": self.stats.epoch, "relay": self.holder})
        self.on_acquired(self.stats.epoch)

    async def _hold(self, conn: Any, lost: asyncio.Event) -> None:
        """Heartbeat until the session fails (raises) or ends."""
        while True:
            await _unless_lost(lost, self.heartbeat_s)
            if not self.valid():  # the loop stalled (or the process was stopped): the server may have let go
                raise TimeoutError(f"no heartbeat for {self.clock() - self._last_ok:.1f} s")
            sent = self.clock()
            async with asyncio.timeout(self.heartbeat_timeout_s):
                await conn.fetchval("SELECT 1")
            self._last_ok = sent

    def _step_down(self) -> None:
        if self.stats.held:
            self.stats.held = False
            self.stats.lost += 1
            log.info("lease released", extra={"lease": self.name, "epoch": self.stats.epoch, "relay": self.holder})
            self.on_lost()

    def render(self) -> list[str]:
        """Prometheus lines for ``/metrics``."""
        label = f'{{lease="{self.name}"}}'
        return [
            "# HELP accord_lease_held 1 while this process holds the lease (and its heartbeat is recent).",
            "# TYPE accord_lease_held gauge",
            f"accord_lease_held{label} {int(self.valid())}",
            "# HELP accord_lease_epoch The lease epoch (fencing token) of this process's current or last hold.",
            "# TYPE accord_lease_epoch gauge",
            f"accord_lease_epoch{label} {self.stats.epoch}",
            "# HELP accord_lease_takeovers_total Times this process took the lease.",
            "# TYPE accord_lease_takeovers_total counter",
            f"accord_lease_takeovers_total{label} {self.stats.acquired}",
            "# HELP accord_lease_step_downs_total Times this process stepped down (lost the lease).",
            "# TYPE accord_lease_step_downs_total counter",
            f"accord_lease_step_downs_total{label} {self.stats.lost}",
        ]


async def _unless_lost(lost: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``; raise ConnectionError at once if the session ends meanwhile."""
    try:
        async with asyncio.timeout(seconds):
            await lost.wait()
    except TimeoutError:
        return
    raise ConnectionError("lease session ended")
