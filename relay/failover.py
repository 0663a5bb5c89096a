"""What one process of a relay cluster does for all of them, failing over: the home role
(:class:`HomeFailover`) and the outbound peer links (:class:`PeeringFailover`).

Every process of a cluster (one PostgreSQL store, :mod:`.cluster`) may be started with the same
``--home`` globs. One **home lease** per cluster (:class:`~accord.relay.lease.Lease` named
``home``) says which of them decides: the holder decides every calendar matching its globs;
the others stand by (their :class:`~accord.relay.cluster_home.ClusterHome` decides nothing).
One lease for the whole cluster, not one per glob or calendar: give every process the same
globs. All of them sign with the cluster's home key (``home_key`` in the store's meta table,
made by the first process), so any holder can hand each calendar over to itself.

On taking the lease (its epoch bumped in the store, see :mod:`.lease`) the new holder loads
every stored calendar matching its globs that may hold undecided requests and claims each one
(:meth:`ClusterHome.claim_soon`): caught up with every row stored before the takeover, a
takeover record adopting the previous holder's verdicts, then every pending booking decided.
Calendars written later (on any process) are loaded and claimed as their commit notices arrive.
Which calendars may hold undecided requests: while it holds the lease, the holder records every
second, for each calendar it decides that is quiet (nothing queued to decide or to store), the
last seq it applied (``accord.decided``, fenced like its decisions); a calendar whose head is
past its mark (or that has none) is loaded at the next takeover, the others once someone uses
them. On losing the lease (a failed heartbeat, the lock session gone, a stalled loop) the
process steps down at once; whatever it still submits is refused by the store (fenced).

``/metrics``: the lease (held, epoch, takeovers, step-downs), the home calendars decided here,
the decisions the store refused as fenced, and the duration of the last takeover.

**Peering** (``--peer``) is held once per cluster the same way: the holder of the ``peering``
lease keeps the outbound links to other channels' relays; when it fails, the next holder opens
them. No fencing is needed there: a link carries CRDT updates, which two links would only
repeat (each side stores and forwards an update once; a redundant one changes nothing).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from accord.engine.authority import RelayKey
from accord.engine.backoff import Backoff
from accord.engine.errors import StorageError
from accord.engine.model import CalendarId

from .calendars import CalendarSet
from .cluster_home import ClusterHome
from .lease import Lease
from .metrics import Metrics
from .notice import Notice

log = logging.getLogger(__name__)
HOME_LEASE = "home"
HOME_KEY = "home_key"
RETRY = Backoff(initial_s=0.1, factor=2.0, max_s=2.0, jitter=0.25)
MARK_S = 1.0  # how often the holder records which calendars it has decided up to where


async def cluster_home_key(storage: Any) -> RelayKey:
    """The signing key every home of the cluster uses (made once, by whichever process is first)."""
    stored = await storage.claim_meta(HOME_KEY, RelayKey.generate().to_bytes().hex())
    return RelayKey.from_bytes(bytes.fromhex(stored))


class HomeFailover:
    """Wires a :class:`Lease` to a :class:`ClusterHome` (see the module docstring)."""

    def __init__(self, lease: Lease, home: ClusterHome, calendars: CalendarSet, storage: Any, metrics: Metrics,
                 notice: Notice, applied: dict[CalendarId, int]) -> None:
        self.lease = lease
        self.applied = applied  # the cluster's: every row up to it is in this process's replica
        self.notice = notice
        self.home = home
        self.calendars = calendars
        self.storage = storage
        self.metrics = metrics
        self.last_takeover_s = 0.0  # from taking the lease to every home calendar loaded and claimed
        self.takeovers_done = 0  # takeovers whose calendars are all loaded and claimed (for tests, tools)
        self.marked: dict[CalendarId, int] = {}  # decided marks recorded in the current hold
        self._task: asyncio.Task[None] | None = None
        self._marking: asyncio.Task[None] | None = None
        lease.on_acquired = self._acquired
        lease.on_lost = self._lost
        home.fence = lambda: lease.fence
        home.fenced = lease.drop  # a write refused under this lease: give it up, take it again if free
        home.checked = notice.notify

    def start(self) -> None:
        self.lease.start()

    async def close(self) -> None:
        """Step down and release the lease (another process takes over at once)."""
        self._cancel()
        await self.lease.close()
        self.home.close()

    def _acquired(self, epoch: int) -> None:
        self._cancel()
        self.home.activate()
        self._task = asyncio.create_task(self._take_over(epoch), name="home-takeover")
        self._marking = asyncio.create_task(self._mark(epoch), name="home-marks")
        self.notice.notify()

    def _lost(self) -> None:
        self._cancel()
        self.home.step_down()
        self.notice.notify()

    def _cancel(self) -> None:
        for task in (self._task, self._marking):
            if task is not None:
                task.cancel()
        self._task = self._marking = None

    async def _take_over(self, epoch: int) -> None:
        started = time.perf_counter()
        attempt = 0
        while self.home.active:
            try:
                stored = await self.storage.undecided()
                names = sorted(name for name in {*self.calendars.loaded, *stored} if self.home.is_home_of(name))
                for name in names:
                    if not self.home.active:
                        return
                    handle = await self.calendars.get(name)  # a calendar loaded now is claimed as it loads
                    self.home.claim_soon(handle)
                break
            except StorageError as exc:
                log.warning("home takeover: store failing; trying again", extra={"error": str(exc)})
                await asyncio.sleep(RETRY.delay_s(attempt))
                attempt += 1
            except Exception:  # a bug: log it and give the lease up, so that another process may do better
                log.exception("home takeover failed; giving the lease up", extra={"lease_epoch": epoch})
                self.lease.drop()
                return
        self.last_takeover_s = time.perf_counter() - started
        self.takeovers_done += 1
        self.notice.notify()
        log.info("home takeover: calendars claimed", extra={"lease_epoch": epoch,
                                                            "ms": round(self.last_takeover_s * 1000, 1)})

    async def _mark(self, epoch: int) -> None:
        """Record, fenced, up to where the quiet calendars are decided (see the module docstring)."""
        written = self.marked = {}
        while True:
            await asyncio.sleep(MARK_S)
            fence = self.lease.fence
            if fence is None or fence.epoch != epoch:
                return
            marks = {name: self.applied[name] for name in self.home.quiet()
                     if name in self.applied and written.get(name) != self.applied[name]}
            if not marks:
                continue
            try:
                if await self.storage.mark_decided(marks, fence):
                    written.update(marks)
                    self.notice.notify()
            except StorageError as exc:  # the next round tries again
                log.warning("decided marks not recorded", extra={"calendars": len(marks), "error": str(exc)})

    def render(self) -> str:
        """Prometheus lines for ``/metrics``."""
        lines = self.lease.render()
        lines += [
            "# HELP accord_home_calendars_deciding Home calendars this process decides now.",
            "# TYPE accord_home_calendars_deciding gauge",
            f"accord_home_calendars_deciding {self.home.deciding_count}",
            "# HELP accord_home_fenced_writes_total Decisions the store refused: written under a lease epoch that had passed.",
            "# TYPE accord_home_fenced_writes_total counter",
            f"accord_home_fenced_writes_total {self.metrics.fenced_writes}",
            "# HELP accord_home_last_takeover_seconds From taking the home lease to every home calendar claimed.",
            "# TYPE accord_home_last_takeover_seconds gauge",
            f"accord_home_last_takeover_seconds {self.last_takeover_s:.6f}",
            "# HELP accord_home_verdicts_checked_ahead_total Verdicts checked as a standby, ahead of a takeover.",
            "# TYPE accord_home_verdicts_checked_ahead_total counter",
            f"accord_home_verdicts_checked_ahead_total {self.home.checked_ahead}",
        ]
        return "\n".join(lines) + "\n"


class PeeringFailover:
    """Outbound peer links held by whichever process of the cluster holds the ``peering`` lease.

    ``open_links`` starts them (the relay's ``--peer`` links); ``close_links`` closes them."""

    def __init__(self, lease: Lease, open_links: Callable[[], None], close_links: Callable[[], Coroutine[Any, Any, None]],
                 notice: Notice) -> None:
        self.lease = lease
        self.open_links = open_links
        self.close_links = close_links
        self.notice = notice
        self._closing: asyncio.Task[None] | None = None
        lease.on_acquired = self._acquired
        lease.on_lost = self._lost

    def start(self) -> None:
        self.lease.start()

    async def close(self) -> None:
        await self.lease.close()
        if self._closing is not None:
            await self._closing

    def _acquired(self, epoch: int) -> None:
        log.info("holding the cluster's peer links", extra={"lease_epoch": epoch})
        if self._closing is not None and not self._closing.done():
            self._closing.add_done_callback(lambda _task: self.open_links())
        else:
            self.open_links()
        self.notice.notify()

    def _lost(self) -> None:
        self._closing = asyncio.create_task(self.close_links(), name="peering-step-down")
        self.notice.notify()

    def render(self) -> str:
        """Prometheus lines for ``/metrics``."""
        return "\n".join(self.lease.render()) + "\n"
