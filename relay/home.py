"""The home's decisions: for the calendars this relay is home to, book or reject pending requests.

A :class:`~accord.engine.decisions.Decider` is made for each home calendar when it loads (it
decides every pending request then, oldest first) and after each stored batch decides the
requests that just became durable here, in arrival order: terminal clocks drift, arrival order
at the home does not. Decisions are the relay's own writes: they go through the commit pipeline
like any update, so they are stored before anyone sees them.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from accord.engine.decisions import Decider, DecisionMade
from accord.engine.model import CalendarId

from .calendars import CalendarHandle, matches
from .metrics import Metrics
from .pipeline import CommitPipeline

log = logging.getLogger(__name__)


class Home:
    """Decides bookings for the calendars matching ``globs``.

    Plug :meth:`calendar_loaded`, :meth:`calendar_unloading` and :meth:`batch_stored` into the
    calendar set's and the pipeline's hooks.
    """

    def __init__(self, relay_id: str, globs: list[str], pipeline: CommitPipeline, metrics: Metrics, *,
                 hold_ttl_s: float | None = None) -> None:
        self.relay_id = relay_id
        self.globs = globs
        self.pipeline = pipeline
        self.metrics = metrics
        self.hold_ttl = timedelta(seconds=hold_ttl_s) if hold_ttl_s else None
        self._deciders: dict[CalendarId, Decider] = {}

    def is_home_of(self, calendar: str) -> bool:
        """True if this relay decides bookings of ``calendar``."""
        return matches(calendar, self.globs)

    async def calendar_loaded(self, handle: CalendarHandle) -> None:
        if not self.is_home_of(handle.name):
            return
        decider = self._deciders[handle.name] = Decider(handle.replica.calendar, self.relay_id, self.hold_ttl)
        self._record(handle, decider.decide_all_pending(datetime.now(UTC)))

    def calendar_unloading(self, handle: CalendarHandle) -> None:
        decider = self._deciders.pop(handle.name, None)
        if decider is not None:
            decider.close()

    def batch_stored(self, handles: list[CalendarHandle]) -> None:
        """Decide the requests that just became durable here."""
        now = datetime.now(UTC)
        for handle in handles:
            decider = self._deciders.get(handle.name)
            if decider is not None:
                self._record(handle, decider.decide_queued(now))

    def _record(self, handle: CalendarHandle, made: list[DecisionMade]) -> None:
        for decision in made:
            self.metrics.decisions[str(decision.outcome)] += 1
            log.info("booking decided", extra={"calendar": handle.name, "reservation": decision.reservation_id,
                                               "outcome": str(decision.outcome), "reason": decision.reason or "-",
                                               "conflict_with": decision.conflict_with or "-"})
        self.pipeline.submit_local(handle)  # decisions (and the home marker) are stored, then forwarded
