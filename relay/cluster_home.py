"""A relay cluster's home: decides only while its process holds the cluster's home lease.

Every process of a cluster (a shared PostgreSQL store, :mod:`.failover`) may be given the same
``--home`` globs; each runs a :class:`ClusterHome`, which decides nothing until
:meth:`ClusterHome.activate` (its process took the home lease) and stops at once on
:meth:`ClusterHome.step_down`. All of them sign with one cluster home key kept in the store, and
each home record names the process that wrote it, so a takeover is a handover the new holder
signs itself: for a calendar whose record was not written during this very hold of the lease
(by another process, an earlier run or hold of this one, or none), the new holder catches the calendar up with
every row stored before its takeover, then writes the next epoch's record, fenced by the lease
epoch; once it is stored, the holder decides. Every decision it writes is fenced too: the store
refuses it once another process took the lease, so a deposed holder's late verdicts are never
stored, applied or forwarded.

The record **adopts** the previous epoch's verdicts (``adopts = K``, :mod:`accord.engine.authority`):
one small record, whatever the calendar's history, instead of every verdict signed again. That
is safe because one epoch is decided within one hold of the lease by one process (a record is
only taken directly during the hold that wrote it), which numbers its verdicts 1, 2, 3, ... and submits them in that
order through one commit pipeline that retries a failing batch until it is stored or fenced; a
fenced write fences every later one. So the verdicts of an epoch that were ever stored are
exactly serials 1..K, and everything a deposed holder signs or signed and never stored has a
higher serial: it counts nowhere, whoever receives it by whatever path. The new holder checks
that it holds serials 1..K, each naming the digest of the one before, down from the top one,
whose signature it checks (:func:`~accord.engine.decisions.adoption_point`: one signature check
per epoch, not one per verdict); if one
is missing, or verdicts predate serials, it signs the previous epoch's verdicts again in
the same update as the record instead (both stored or neither), as before. A calendar homed by a
member of a cluster from before the shared key (its own ``relay_key:<id>``, still in the store)
is handed over with that key, its verdicts signed again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any

from pycrdt import Doc, Map

from accord.engine.authority import HomeRecord, RelayKey, Verdict, first_home, handover, verdict_digest
from accord.engine.backoff import Backoff
from accord.engine.decisions import DecisionMade, adoption_point, carried_over, carry_over_plan
from accord.engine.errors import NotHome, StorageError
from accord.engine.model import CalendarId
from accord.engine.storage import Fence

from .calendars import CalendarHandle, check_verdicts_off_loop, open_verdicts_off_loop, read_off_loop
from .home import Deciding, Home

log = logging.getLogger(__name__)
CLAIM_RETRY = Backoff(initial_s=0.1, factor=2.0, max_s=2.0, jitter=0.25)
WARM_S = 1.0  # a standby checks the signatures of verdicts that arrived at most this often per calendar


class ClusterHome(Home):
    """A :class:`Home` that decides only between :meth:`activate` and :meth:`step_down` (see
    the module docstring). Set :attr:`fence` (the lease's fence now, None once it is not
    valid), :attr:`catch_up` (the cluster's) and :attr:`fenced` (give the lease up)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.active = False
        self.fence: Callable[[], Fence | None] = lambda: None
        self.catch_up: Callable[[CalendarId], Awaitable[None]] | None = None  # rows other processes stored
        # The key a cluster member had before the shared home key (relay_key:<id>), to hand its calendars over.
        self.member_key: Callable[[str], Awaitable[RelayKey | None]] | None = None
        self.fenced: Callable[[], None] = lambda: None  # the store refused a decision: the lease moved on
        self.checked: Callable[[], None] = lambda: None  # a standby checked verdicts ahead of a takeover
        self.checked_ahead = 0  # verdicts whose signatures this process checked as a standby (for /metrics)
        self._taking: dict[CalendarId, int] = {}  # takeover records submitted, not stored yet (their epochs)
        self._written: dict[CalendarId, int] = {}  # the epoch of the home record written in this hold, per calendar
        self._claims: dict[CalendarId, asyncio.Task[None]] = {}  # claims under way (claim_soon)
        self._warming: dict[CalendarId, asyncio.Task[None]] = {}  # standby signature checks due (_keep_warm)
        self._rewarm: set[CalendarId] = set()  # verdicts arrived while that calendar's check ran: another round
        self._fenced_seen = 0

    def quiet(self) -> list[CalendarId]:
        """The calendars decided here with nothing left to decide or to store: every request in
        the rows applied here is decided and its verdict stored (for the store's decided marks)."""
        return [name for name, deciding in self._deciding.items()
                if deciding.decider.queued == 0 and not deciding.captured and name not in self.pipeline.busy]

    def first_write(self, handle: CalendarHandle) -> None:
        if self._still_active():
            super().first_write(handle)

    async def calendar_loaded(self, handle: CalendarHandle) -> None:
        if self.active and self.is_home_of(handle.name):
            if handle.is_empty():  # taken on its first write (or claimed once rows come from elsewhere)
                self._waiting.add(handle.name)
            else:
                self.claim_soon(handle)
        elif not handle.is_empty():
            self._keep_warm([handle])

    def calendar_unloading(self, handle: CalendarHandle) -> None:
        self._taking.pop(handle.name, None)
        super().calendar_unloading(handle)

    def _take(self, handle: CalendarHandle) -> None:
        super()._take(handle)
        deciding = self._deciding.get(handle.name)
        if deciding is not None:  # its record: written by this run (a first record, or a takeover)
            self._written[handle.name] = deciding.decider.epoch

    def activate(self) -> None:
        """This process holds the home lease now (:attr:`fence` gives its epoch): claim home
        calendars as they load (the caller loads those that may hold work, and passes the ones
        loaded already to :meth:`claim_soon`)."""
        self.active = True

    def step_down(self) -> None:
        """The lease is lost (or in doubt): stop deciding everything at once. Whatever this
        process submitted and has not stored yet is refused by the store if another took over."""
        if not self.active:
            return
        self.active = False
        for task in self._claims.values():
            task.cancel()
        self._claims.clear()
        for name in list(self._deciding):
            self._stop(name)
        self._waiting.clear()
        self._taking.clear()
        # A verdict submitted in this hold may be refused yet leave a serial behind: the next hold
        # writes the next epoch, whose record adopts only what was stored.
        self._written.clear()
        self.not_home.clear()
        log.warning("stepped down as the cluster's home: another process takes over", extra={"relay": self.relay_id})

    def _still_active(self) -> bool:
        """False (after stepping down) once the lease is no longer valid."""
        if self.active and self.fence() is None:
            self.step_down()
        return self.active

    def claim_soon(self, handle: CalendarHandle) -> None:
        """Claim ``handle`` (see :meth:`_claim`) in a task of its own (stepping down cancels it)."""
        if handle.name in self._claims:
            return
        _run_in(self._claims, handle.name, self._claim(handle), f"claim-{handle.name}")

    async def _claim(self, handle: CalendarHandle) -> None:
        attempt = 0
        while self.active and not handle.unloaded:
            try:
                await self._claim_once(handle)
                return
            except StorageError as exc:  # the store is failing: its rows are needed first; try again
                log.warning("home calendar not claimed yet", extra={"calendar": handle.name, "error": str(exc)})
            except Exception:  # a bug: log it; the other calendars go on
                log.exception("home claim error", extra={"calendar": handle.name})
                return
            await asyncio.sleep(CLAIM_RETRY.delay_s(attempt))
            attempt += 1

    def close(self) -> None:
        """Stop claiming and checking (the relay stops)."""
        for task in [*self._claims.values(), *self._warming.values()]:
            task.cancel()
        self._claims.clear()
        self._warming.clear()
        self._rewarm.clear()

    def _keep_warm(self, handles: list[CalendarHandle]) -> None:
        """On a standby: check the signatures of the verdicts that arrived in ``handles``' home
        calendars, off the loop and at most every :data:`WARM_S` per calendar, so that a takeover
        finds them checked (:func:`adoption_point` reads every one; ~55 µs each otherwise), and
        read a large one whole once (off the loop too), so that the decider's first pass over it
        finds every reservation's fields and decision read (a takeover that adopts keeps them)."""
        for handle in handles:
            name = handle.name
            if not self.is_home_of(name):
                continue
            warming = self._warming.get(name)
            if warming is not None and not warming.done():
                self._rewarm.add(name)
            else:
                _run_in(self._warming, name, self._warm(handle), f"warm-{name}")

    async def _warm(self, handle: CalendarHandle) -> None:
        name = handle.name
        try:
            while True:
                self._rewarm.discard(name)
                await asyncio.sleep(WARM_S)
                if handle.unloaded:
                    return
                calendar = handle.replica.calendar
                if count := await check_verdicts_off_loop(calendar):
                    self.checked_ahead += count
                    self.checked()
                await read_off_loop(calendar)
                if name not in self._rewarm:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: log it; the takeover checks what is left itself
            log.exception("standby signature check error", extra={"calendar": handle.name})

    async def _claim_once(self, handle: CalendarHandle) -> None:
        """Decide ``handle`` as the lease holder: catch it up with every row stored before the
        takeover (so that every verdict a replica may have counted is carried over), then take
        it, directly (its record names this process and key) or by a takeover record."""
        name = handle.name
        if name in self._deciding or name in self._taking or name in self._waiting:
            return
        if self.catch_up is not None:
            await self.catch_up(name)
        if handle.unloaded or not self._still_active():
            return
        if handle.is_empty():
            self._waiting.add(name)
            return
        home = handle.replica.calendar.home_record
        if home is not None and self._wrote(home, name):
            await check_verdicts_off_loop(handle.replica.calendar)  # the decider reads every one
            if not handle.unloaded and self._still_active() and name not in self._deciding:
                self._take(handle)
            return
        signer = self.key
        if home is not None and home.public_key != self.key.public:  # a home from before the shared key?
            found = await self.member_key(home.relay_id) if self.member_key is not None else None
            if found is None or found.public != home.public_key:
                self._refuse(handle, NotHome(name, home.relay_id, home.epoch))
                return  # a home outside this cluster: only it can hand the calendar over
            signer = found
        if not handle.unloaded and self._still_active() and handle.replica.calendar.home_record == home:
            await self._take_over(handle, home, signer)

    def _wrote(self, home: HomeRecord, name: CalendarId) -> bool:
        """True if ``home`` is a record written during this hold of the lease (so it may decide under it)."""
        return (home.relay_id == self.relay_id and home.public_key == self.key.public
                and self._written.get(name) == home.epoch)

    async def _take_over(self, handle: CalendarHandle, current: HomeRecord | None, signer: RelayKey) -> None:
        """Write, fenced, the record that makes this process the calendar's home (epoch 1 if it
        has none; else signed by ``signer``, ``current``'s key), adopting the previous home's
        verdicts, or with them signed again in the same update where it cannot (checked and
        signed in a worker thread; see the module docstring)."""
        started = time.perf_counter()
        calendar = handle.replica.calendar
        signed: list[tuple[str, str, Verdict]] = []
        if current is None:
            record, encoded = first_home(handle.name, self.relay_id, self.key)
        else:
            await open_verdicts_off_loop(calendar)  # adoption_point reads every one
            upto = adoption_point(calendar) if signer is self.key and calendar.home_record == current else None
            record, encoded = handover(current, signer, self.relay_id, self.key.public, adopts=upto)
            if upto is None:
                signed = await asyncio.to_thread(self._sign_again, handle.name,
                                                 carry_over_plan(calendar, skip_decided=False), current, record.epoch)
        fence = self.fence()
        moved_on = calendar.home_record != current or handle.name in self._deciding or handle.name in self._taking
        if fence is None or handle.unloaded or moved_on:
            return  # stepped down, or the calendar moved on meanwhile: claimed again if need be
        sink: Doc[Any] = Doc()
        captured: list[bytes] = []
        sink.observe(lambda event: captured.append(event.update))
        homes, verdicts = sink.get("homes", type=Map), sink.get("verdicts", type=Map)
        origin = ("decider", self.relay_id)
        with sink.transaction(origin=origin):
            for entry_key, text, _verdict in signed:
                verdicts[entry_key] = text
            homes[record.entry_key(encoded)] = encoded
        # Once the record is applied, reads of these verdicts under it need no signature check.
        calendar.verifier.remember({(key, text): (verdict, self.key.public, True) for key, text, verdict in signed})
        self._taking[handle.name] = record.epoch
        # The holder's next verdict: serial len + 1, chained to the last one signed again.
        self._serials[handle.name] = (record.epoch, len(signed), verdict_digest(signed[-1][1]) if signed else "")
        log.info("taking over as home", extra={"calendar": handle.name, "epoch": record.epoch,
                                               "previous": current.relay_id if current else "-",
                                               "lease_epoch": fence.epoch, "adopted": record.adopts,
                                               "signed_again": len(signed), "bytes": sum(map(len, captured)),
                                               "ms": round((time.perf_counter() - started) * 1000, 1)})
        for update in captured:
            self.pipeline.submit_withheld(handle, update, origin, fence)

    def _sign_again(self, calendar: str, plan: Any, previous: HomeRecord, epoch: int) -> list[tuple[str, str, Verdict]]:
        """``(entry key, encoded, verdict)`` of every verdict carried over, numbered 1, 2, ... (in
        a worker thread)."""
        out: list[tuple[str, str, Verdict]] = []
        for serial, (_rid, carried, _current) in enumerate(carried_over(calendar, plan, previous, self.relay_id, epoch), 1):
            again = replace(carried, serial=serial, previous=verdict_digest(out[-1][1]) if out else "")
            text = again.sign(self.key)
            out.append((again.entry_key(text), text, again))
        return out

    def batch_stored(self, handles: list[CalendarHandle]) -> None:
        """Decide what just became durable, while the lease holds (and notice a fenced write)."""
        if self.metrics.fenced_writes != self._fenced_seen:  # another process took over the lease
            self._fenced_seen = self.metrics.fenced_writes
            if self.active:
                log.warning("the store refused this home's decisions (fenced): stepping down",
                            extra={"relay": self.relay_id, "fenced": self._fenced_seen})
                self.step_down()
                self.fenced()
        if not self._still_active():
            self._keep_warm(handles)
            return
        now = self.clock()
        for handle in handles:
            name = handle.name
            if name in self._waiting:
                if not handle.is_empty():  # content came from elsewhere: take it as any claim does
                    self._waiting.discard(name)
                    self.claim_soon(handle)
                continue
            if name in self._taking:
                home = handle.replica.calendar.home_record
                if (home is not None and home.relay_id == self.relay_id and home.public_key == self.key.public
                        and home.epoch == self._taking[name]):
                    del self._taking[name]  # the takeover record is stored: decide from now on
                    self._take(handle)
                continue
            deciding = self._deciding.get(name)
            if deciding is None:
                continue
            if not deciding.decider.still_home():  # another epoch's record won (raced first records)
                self._stop(name)
                self.claim_soon(handle)
                continue
            self._record(handle, deciding, deciding.decider.decide_queued(now))

    def _record(self, handle: CalendarHandle, deciding: Deciding, made: list[DecisionMade],
                fence: Fence | None = None) -> None:
        fence = self.fence()
        if fence is None:
            self.step_down()  # the lease went while deciding: these verdicts are not written
            return
        super()._record(handle, deciding, made, fence)


def _run_in(tasks: dict[CalendarId, asyncio.Task[None]], name: CalendarId, work: Coroutine[Any, Any, None],
            label: str) -> None:
    """Run ``work`` in a task kept in ``tasks[name]`` until it ends."""
    task = asyncio.create_task(work, name=label)
    tasks[name] = task

    def done(finished: asyncio.Task[None]) -> None:
        if tasks.get(name) is finished:
            del tasks[name]

    task.add_done_callback(done)
