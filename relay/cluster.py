"""Cross-process fan-out: relay processes sharing one PostgreSQL store behave as one relay.

Every process stores what its own clients and peers send (the commit pipeline, unchanged) and
its store sends one NOTIFY per commit (:mod:`accord.engine.storage.postgres`). :class:`Cluster`
is the receiving side, one per process:

- A dedicated connection LISTENs on the store's channel (never pooled, never in a transaction:
  a listener inside a transaction would pin PostgreSQL's notification queue). A notice names the
  committing process and each calendar's new last seq; notices from this process, and for
  calendars this process has not loaded, are ignored.
- For each loaded calendar the cluster keeps ``applied``: every row up to it is in this
  process's replica. Own commits move it directly (the store's commit hook, before the append
  returns). Another process's commit usually carries its rows in the notice: when they start
  right after ``applied`` (and no fetch of the calendar is under way) they are applied at once,
  with no query. Otherwise (rows too large for a notice, a notice missed, a gap) the cluster
  fetches ``seq > applied`` in seq order (the store's per-calendar counter makes that exact: no
  holes, commit order), skips its own rows among them, applies the rest to the replica. Either
  way each change goes to
  :meth:`CommitPipeline.deliver_stored`: forwarded to this process's clients and peers like a
  peer's committed update, never stored, admitted or acknowledged again. The pipeline's batch
  hooks then run, so the home (if this process decides the calendar) decides what just arrived.
- A calendar this process is home of (:attr:`Cluster.wants`) is loaded when another process
  writes it, so the home decides bookings made on any process (loading decides every pending one).
- A lost LISTEN connection (asyncpg's termination callback, or a failed heartbeat: a
  ``SELECT 1`` every ``heartbeat_s`` under a deadline, for a server that went silent) is
  reconnected with backoff; once it LISTENs again, every loaded calendar is caught up from its
  ``applied`` seq (notices sent while it was away are lost; the log is not). A poll every
  ``poll_s`` compares the stored heads with ``applied`` as a last line of defence.

``/metrics`` (:meth:`Cluster.render`): notices received (and how many carried rows applied
from the notice itself), rows applied from other processes,
catch-ups (and why), the lag from a notice to its rows being forwarded, LISTEN reconnects.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from accord.engine.authority import RelayKey
from accord.engine.backoff import Backoff
from accord.engine.errors import MalformedMessage, StorageError
from accord.engine.model import CalendarId
from accord.engine.storage import Storage

from .calendars import CalendarHandle, CalendarSet
from .metrics import Histogram
from .notice import Notice
from .pipeline import CommitPipeline

log = logging.getLogger(__name__)
CLUSTER_ORIGIN = "cluster"  # the transaction origin of rows another process stored
FETCH_ROWS = 1000
LAG_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
RECONNECT = Backoff(initial_s=0.05, factor=2.0, max_s=2.0, jitter=0.25)


@dataclass(slots=True)
class ClusterStats:
    """What ``/metrics`` shows about the fan-out (counts only)."""

    notices: int = 0
    carried: int = 0  # notices whose rows were applied from the notice itself, with no fetch
    rows_applied: int = 0
    catch_ups: dict[str, int] = field(default_factory=lambda: {"load": 0, "reconnect": 0, "poll": 0, "gap": 0, "home": 0})
    reconnects: int = 0
    listening: bool = False
    lag_seconds: Histogram = field(default_factory=lambda: Histogram(LAG_BUCKETS_S, [0] * (len(LAG_BUCKETS_S) + 1)))


class Cluster:
    """One relay process's part in a cluster on a :class:`PostgresStorage` (see the module docstring).

    Plug :meth:`calendar_loaded` and :meth:`calendar_unloading` into the calendar set's hooks;
    :meth:`start` after the pipeline starts, :meth:`close` before the store closes.
    """

    def __init__(self, storage: Any, calendars: CalendarSet, pipeline: CommitPipeline, notice: Notice, *,
                 heartbeat_s: float = 1.0, poll_s: float = 10.0, reconnect: Backoff = RECONNECT) -> None:
        self.storage = storage  # a PostgresStorage (typed loosely: asyncpg is an optional dependency)
        self.calendars = calendars
        self.pipeline = pipeline
        self.notice = notice
        self.heartbeat_s = heartbeat_s
        self.poll_s = poll_s
        self.reconnect = reconnect
        self.stats = ClusterStats()
        self.applied: dict[CalendarId, int] = {}
        self._own: dict[CalendarId, dict[int, int]] = {}  # own commits above applied: first -> last
        self._due: dict[CalendarId, str] = {}  # calendars to fetch, with why (a catch-up reason or "notice")
        self._heard: dict[CalendarId, float] = {}  # when the oldest unserved notice for it arrived
        self._wake = asyncio.Event()
        self._fetching: dict[CalendarId, asyncio.Lock] = {}  # one catch-up per calendar at a time
        self._tasks: list[asyncio.Task[None]] = []
        self.listen_pid = 0  # the LISTEN session's server process (for operators and tests)
        # Calendars this process must load when another process writes them (the home decides them).
        self.wants: Callable[[CalendarId], bool] = lambda _name: False
        storage.commit_hooks.append(self._committed_here)

    async def start(self) -> None:
        """Start listening (returns once the first LISTEN is in place) and fetching."""
        listening = asyncio.Event()
        self._tasks = [asyncio.create_task(self._listen(listening), name="cluster-listen"),
                       asyncio.create_task(self._fetch_loop(), name="cluster-fetch")]
        async with asyncio.timeout(30):
            await listening.wait()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # ---- calendar-set hooks ---------------------------------------------------------------------

    async def calendar_loaded(self, handle: CalendarHandle) -> None:
        """Follow a calendar that just loaded: its rows cover up to ``last_seq`` (the set reads
        the length before the rows); anything committed since is fetched now."""
        self.applied[handle.name] = handle.last_seq
        self._own[handle.name] = {}
        self._mark(handle.name, "load")

    def calendar_unloading(self, handle: CalendarHandle) -> None:
        self.applied.pop(handle.name, None)
        self._fetching.pop(handle.name, None)
        self._own.pop(handle.name, None)
        self._due.pop(handle.name, None)
        self._heard.pop(handle.name, None)

    # ---- own commits and notices ----------------------------------------------------------------

    def _committed_here(self, ranges: dict[CalendarId, tuple[int, int]]) -> None:
        for name, (first, last) in ranges.items():
            own = self._own.get(name)
            if own is not None:
                own[first] = last
                self._advance(name, self.applied[name])

    def _advance(self, name: CalendarId, applied: int) -> None:
        """Set ``applied`` and move it over own commits that follow it."""
        own = self._own[name]
        while applied + 1 in own:
            applied = own.pop(applied + 1)
        for first in [f for f in own if f <= applied]:
            del own[first]
        self.applied[name] = applied

    def _heard_notice(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        from accord.engine.storage.postgres import parse_notice

        self.stats.notices += 1
        if payload.startswith(self.storage.instance + "\n"):
            return  # this process's own commit (its rows are in memory): not worth decoding
        try:
            notice = parse_notice(payload)
        except ValueError:
            log.warning("unreadable cluster notice ignored", extra={"bytes": len(payload)})
            return
        if notice.heads is None:  # too many calendars to name: check every loaded one
            for name in self.applied:
                self._mark(name, "notice")
            return
        for name, seq in notice.heads.items():
            if name in self.applied and seq > self.applied[name]:
                rows = notice.rows.get(name)
                if rows is None or not self._take_carried(name, seq - len(rows) + 1, rows):
                    self._mark(name, "notice")
            elif name not in self.applied and self.wants(name):
                self._mark(name, "home")

    def _take_carried(self, name: CalendarId, first: int, rows: list[bytes]) -> bool:
        """Apply the rows ``first``.. a notice carried, if nothing is missing before them and no
        fetch of the calendar is queued or running (it would apply them too); False: fetch."""
        after = self.applied[name]
        handle = self.calendars.loaded.get(name)
        lock = self._fetching.get(name)
        if first > after + 1 or handle is None or name in self._due or (lock is not None and lock.locked()):
            return False
        self._take(handle, [(seq, data) for seq, data in enumerate(rows, first) if seq > after])
        self.stats.carried += 1
        self.stats.lag_seconds.observe(0.0)
        return True

    def _take(self, handle: CalendarHandle, rows: list[tuple[int, bytes]]) -> None:
        """Apply and forward another process's rows (in seq order, all above ``applied``), then
        run the pipeline's batch hooks for them.

        They do not count towards this process's compaction (``rows_in_log``, ``log_bytes``): the
        process that wrote them does, so a calendar written on several processes is compacted
        about as often as on one, instead of by every process that holds it each time the log
        grows (each compaction encodes and stores the whole document)."""
        for seq, data in rows:
            self._apply(handle, data)
            handle.last_seq = max(handle.last_seq, seq)
        if rows:
            self._advance(handle.name, max(self.applied.get(handle.name, 0), rows[-1][0]))
            for hook in self.pipeline.batch_hooks:
                hook([handle])
            self.notice.notify()

    def _mark(self, name: CalendarId, why: str) -> None:
        if why != "notice":
            self.stats.catch_ups[why] = self.stats.catch_ups.get(why, 0) + 1
        self._due.setdefault(name, why)
        self._heard.setdefault(name, time.perf_counter())
        self._wake.set()

    # ---- fetching -------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._due:
                name = next(iter(self._due))
                del self._due[name]
                heard = self._heard.pop(name, None)
                try:
                    if name not in self.applied:  # a home calendar another process wrote: load it to decide
                        await self.calendars.get(name)
                        continue  # loading caught it up (calendar_loaded marks it)
                    await self.catch_up(name)
                except StorageError as exc:  # the store is failing: try again on the next notice or poll
                    log.warning("cluster fetch failed", extra={"calendar": name, "error": str(exc)})
                    continue
                except Exception:  # a bug: log it, keep fanning out the other calendars
                    log.exception("cluster fetch error", extra={"calendar": name})
                    continue
                if heard is not None:
                    self.stats.lag_seconds.observe(time.perf_counter() - heard)

    async def catch_up(self, name: CalendarId) -> None:
        """Apply and forward every row of ``name`` another process committed after ``applied``
        (returns once this process holds every row committed before the call).

        Raises:
            StorageError: the rows could not be read.
        """
        lock = self._fetching.setdefault(name, asyncio.Lock())
        async with lock:
            await self._catch_up(name)

    async def _catch_up(self, name: CalendarId) -> None:
        while name in self.applied:
            after = self.applied[name]
            rows = await self.storage.rows_after(name, after, FETCH_ROWS)
            handle = self.calendars.loaded.get(name)
            if handle is None or name not in self.applied:
                return  # unloaded meanwhile
            if rows and rows[0].seq != after + 1:
                # Rows below were compacted into a snapshot (its seq is the compaction point): fine,
                # the snapshot holds them; counted, since it costs a full-state apply.
                self.stats.catch_ups["gap"] += 1
            # this process's own rows are in memory already
            self._take(handle, [(row.seq, row.data) for row in rows if row.origin != self.storage.instance])
            if rows:
                self._advance(name, max(self.applied.get(name, 0), rows[-1].seq))
            if len(rows) < FETCH_ROWS:
                return

    def _apply(self, handle: CalendarHandle, data: bytes) -> None:
        try:
            change = handle.replica.apply(data, origin=CLUSTER_ORIGIN)
        except MalformedMessage as exc:  # stored by another process, so it passed its admission: a bug
            log.error("stored row does not apply", extra={"calendar": handle.name, "error": str(exc)})
            return
        self.stats.rows_applied += 1
        if change is not None:
            self.pipeline.deliver_stored(handle, change)

    # ---- the LISTEN connection ------------------------------------------------------------------

    async def _listen(self, listening: asyncio.Event) -> None:
        import asyncpg

        from accord.engine.storage.postgres import CHANNEL

        attempt = 0
        first = True
        while True:
            lost = asyncio.Event()
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.storage.url, server_settings={"application_name": "accord-listen"})
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._heard_notice)
                self.listen_pid = conn.get_server_pid()
                self.stats.listening = True
                self.notice.notify()
                attempt = 0
                listening.set()
                if not first:  # notices sent while away are lost: the log is not
                    for name in list(self.applied):
                        self._mark(name, "reconnect")
                    log.info("cluster LISTEN reconnected; catching up",
                             extra={"calendars": len(self.applied), "reconnects": self.stats.reconnects})
                first = False
                await self._heartbeat(conn, lost)
            except asyncio.CancelledError:
                raise
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                log.warning("cluster LISTEN connection lost; reconnecting", extra={"error": str(exc)})
            finally:
                self.stats.listening = False
                self.notice.notify()
                if conn is not None:
                    conn.terminate()
            self.stats.reconnects += 1
            await asyncio.sleep(self.reconnect.delay_s(attempt))
            attempt += 1

    async def _heartbeat(self, conn: Any, lost: asyncio.Event) -> None:
        """Return when the connection is lost (or stops answering); poll heads meanwhile."""
        polled = time.monotonic()
        while not lost.is_set():
            try:
                async with asyncio.timeout(self.heartbeat_s):
                    await lost.wait()
                return
            except TimeoutError:
                pass
            async with asyncio.timeout(self.heartbeat_s):
                await conn.fetchval("SELECT 1")
            if time.monotonic() - polled >= self.poll_s:
                polled = time.monotonic()
                await self._poll()

    async def _poll(self) -> None:
        try:
            heads = await self.storage.heads(list(self.applied))
        except StorageError as exc:
            log.warning("cluster poll failed", extra={"error": str(exc)})
            return
        for name, head in heads.items():
            if name in self.applied and head > self.applied[name] and name not in self._due:
                self._mark(name, "poll")

    # ---- metrics --------------------------------------------------------------------------------

    def render(self) -> str:
        """Prometheus lines for ``/metrics``."""
        stats = self.stats
        lines = [
            "# HELP accord_cluster_listening 1 while the LISTEN connection to the shared store is up.",
            "# TYPE accord_cluster_listening gauge",
            f"accord_cluster_listening {int(stats.listening)}",
            "# HELP accord_cluster_notices_total Commit notices received from the shared store.",
            "# TYPE accord_cluster_notices_total counter",
            f"accord_cluster_notices_total {stats.notices}",
            "# HELP accord_cluster_notices_carried_total Notices whose rows were applied from the notice, with no query.",
            "# TYPE accord_cluster_notices_carried_total counter",
            f"accord_cluster_notices_carried_total {stats.carried}",
            "# HELP accord_cluster_rows_applied_total Rows other relay processes stored, applied and forwarded here.",
            "# TYPE accord_cluster_rows_applied_total counter",
            f"accord_cluster_rows_applied_total {stats.rows_applied}",
            "# HELP accord_cluster_catch_ups_total Calendars caught up from their last applied seq, by reason.",
            "# TYPE accord_cluster_catch_ups_total counter",
        ]
        lines += [f'accord_cluster_catch_ups_total{{reason="{why}"}} {n}' for why, n in sorted(stats.catch_ups.items())]
        lines += [
            "# HELP accord_cluster_listen_reconnects_total LISTEN connections lost and made again.",
            "# TYPE accord_cluster_listen_reconnects_total counter",
            f"accord_cluster_listen_reconnects_total {stats.reconnects}",
        ]
        lines += stats.lag_seconds.render("accord_cluster_notify_lag_seconds", "From a commit notice to its rows forwarded here.")
        return "\n".join(lines) + "\n"


async def stored_member_key(storage: Storage, relay_id: str) -> RelayKey | None:
    """The key :func:`member_key` keeps for ``relay_id``, if it ever made one (None otherwise)."""
    stored = await storage.get_meta(f"relay_key:{relay_id}")
    return RelayKey.from_bytes(bytes.fromhex(stored)) if stored else None


async def member_key(storage: Storage, relay_id: str) -> RelayKey:
    """This process's signing key in a shared store: kept under its own relay id
    (``relay_key:<id>``), since the processes of a cluster start together and a single
    ``relay_key`` entry would be made by several of them at once, each keeping its own."""
    stored = await stored_member_key(storage, relay_id)
    if stored is not None:
        return stored
    key = RelayKey.generate()
    await storage.set_meta(f"relay_key:{relay_id}", key.to_bytes().hex())
    return key


def cluster_for(storage: Storage, calendars: CalendarSet, pipeline: CommitPipeline, notice: Notice) -> Cluster | None:
    """A :class:`Cluster` if ``storage`` is shared by relay processes (a PostgreSQL store), else None."""
    try:
        from accord.engine.storage.postgres import PostgresStorage
    except ImportError:  # no asyncpg: no PostgreSQL store either
        return None
    if not isinstance(storage, PostgresStorage):
        return None
    return Cluster(storage, calendars, pipeline, notice)


