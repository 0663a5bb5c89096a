"""The sync protocol of one connection, as a sans-I/O state machine.

Theory of operation. Either side may *open* a calendar by sending SYNC_STEP1 with its state
vector; the other side answers with SYNC_STEP2 (exactly what the opener misses) and, as a
rule, opens the calendar in the other direction too. After that both sides send SYNC_UPDATE
messages with incremental updates as they happen. A receiver that has durably stored the
updates it got answers with ACK (its state vector after the commit), which is how a
terminal learns that its changes are "saved on the relay".

:class:`PeerSync` holds the per-calendar state of one connection (opened, synced, what the
other side acknowledged) and turns bytes into :class:`Event` objects and messages into bytes.
It never touches a document, a socket, a clock or a store; the relay and terminal pump
bytes through it and act on the events::

    for event in sync.receive(data):        # bytes in
        ...                                 # apply updates, persist, reply
    await send(sync.update(calendar, u))    # bytes out

A step 2 too large for one message goes as pieces (:mod:`engine.update_pieces`): STEP2_PART
messages, then a STEP2 with the last piece (:meth:`PeerSync.step2_parts`); stock y-websocket
clients get the pieces as SYNC_UPDATEs before the STEP2, which they know. Either way the
receiver sees one :class:`UpdateReceived` per piece (``step2`` set) and :class:`SyncCompleted`
only after the last, and :meth:`PeerSync.holds_answer` tells whether everything a STEP2_PART
announced is covered by a state vector (a relay acknowledges the pieces only then).

Two framings: single-calendar (y-websocket; ``PeerSync(calendar="clinic-1")``) and
multiplexed (accord; ``PeerSync()``), where every message names its calendar.
A message that cannot be parsed raises :class:`RemoteProtocolError` and leaves the state
untouched, so the caller can close that connection with the error's close code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import CloseCode, LocalProtocolError
from .model import CalendarId, check_calendar_name
from .protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Ack,
    AuthDenied,
    Awareness,
    Calendars,
    Message,
    QueryAwareness,
    Refused,
    States,
    SyncStep1,
    SyncStep2,
    SyncStep2Part,
    SyncUpdate,
    covers,
    decode,
    decode_framed,
    decode_state_vector,
    encode,
    encode_framed,
    encode_framed_update,
    split_update_frame,
)

# ---- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SyncRequested:
    """The other side sent its state vector: answer with :meth:`PeerSync.step2`."""

    calendar: CalendarId
    state_vector: bytes


@dataclass(frozen=True, slots=True)
class UpdateReceived:
    """An update to apply (``step2`` is True for the answer to our step 1)."""

    calendar: CalendarId
    update: bytes
    step2: bool


@dataclass(frozen=True, slots=True)
class SyncCompleted:
    """The first step 2 for a calendar we opened arrived: we have what the other side had."""

    calendar: CalendarId


@dataclass(frozen=True, slots=True)
class AwarenessReceived:
    """Presence data to relay to the calendar's other clients."""

    calendar: CalendarId
    payload: bytes


@dataclass(frozen=True, slots=True)
class AwarenessQueried:
    """The other side asks for current awareness states."""

    calendar: CalendarId


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """The other side durably stored everything covered by ``clocks``."""

    calendar: CalendarId
    state_vector: bytes
    clocks: dict[int, int]


@dataclass(frozen=True, slots=True)
class CalendarsAnnounced:
    """The other side holds these calendars."""

    names: tuple[CalendarId, ...]


@dataclass(frozen=True, slots=True)
class StatesAnnounced:
    """The other side's stored state vectors of some calendars it holds (a peer, at link-up)."""

    entries: tuple[tuple[CalendarId, bytes], ...]


@dataclass(frozen=True, slots=True)
class CalendarRefused:
    """The other side refused one calendar (code and reason as in a close frame)."""

    calendar: CalendarId
    code: int
    reason: str


Event = (
    SyncRequested
    | UpdateReceived
    | SyncCompleted
    | AwarenessReceived
    | AwarenessQueried
    | Acknowledged
    | CalendarsAnnounced
    | StatesAnnounced
    | CalendarRefused
)


@dataclass(slots=True)
class CalendarState:
    """What this connection knows about one calendar."""

    opened: bool = False
    synced: bool = False
    acked: dict[int, int] = field(default_factory=dict)
    # The state vector a STEP2_PART announced, until a state vector covering it was seen.
    answer: dict[int, int] | None = None


class PeerSync:
    """Protocol state of one connection.

    Args:
        calendar: for a y-websocket connection, the one calendar it carries; None for the
            multiplexed framing.
        max_message_bytes: larger messages raise :class:`MessageTooLarge`.
    """

    def __init__(self, calendar: str | None = None, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.single: CalendarId | None = check_calendar_name(calendar) if calendar is not None else None
        self.max_message_bytes = max_message_bytes
        self.calendars: dict[CalendarId, CalendarState] = {}
        self.messages_in = 0
        self.bytes_in = 0
        self.largest_in = 0  # bytes of the largest message received

    # ---- bytes in ----------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[Event]:
        """Parse one websocket message and return what happened.

        Raises:
            RemoteProtocolError: malformed, unknown or oversized message (state unchanged).
        """
        if self.single is None:
            quick = split_update_frame(data, self.max_message_bytes)  # the common case, parsed fast
            if quick is not None:
                size = len(data)  # _count() inlined: the hot path
                self.messages_in += 1
                self.bytes_in += size
                if size > self.largest_in:
                    self.largest_in = size
                return [UpdateReceived(quick[0], quick[1], False)]
        if self.single is not None:
            name: str = self.single
            message: Message = decode(data, max_bytes=self.max_message_bytes)
        else:
            name, message = decode_framed(data, max_bytes=self.max_message_bytes)
        if isinstance(message, SyncStep1):
            decode_state_vector(message.state_vector)  # validate before any state changes
        self._count(data)
        calendar = CalendarId(name)
        match message:
            case SyncUpdate(update):
                return [UpdateReceived(calendar, update, False)]
            case SyncStep1(state_vector):
                return [SyncRequested(calendar, state_vector)]
            case SyncStep2Part(state_vector, update):
                self.state(calendar).answer = decode_state_vector(state_vector)
                return [UpdateReceived(calendar, update, True)]
            case SyncStep2(update):
                state = self.state(calendar)
                events: list[Event] = [UpdateReceived(calendar, update, True)]
                if not state.synced:
                    state.synced = True
                    events.append(SyncCompleted(calendar))
                return events
            case Awareness(payload):
                return [AwarenessReceived(calendar, payload)]
            case QueryAwareness():
                return [AwarenessQueried(calendar)]
            case Ack(state_vector):
                clocks = decode_state_vector(state_vector)
                state = self.state(calendar)
                for client, clock in clocks.items():
                    if clock > state.acked.get(client, 0):
                        state.acked[client] = clock
                return [Acknowledged(calendar, state_vector, dict(state.acked))]
            case Calendars(names):
                return [CalendarsAnnounced(names)]
            case States(entries):
                return [StatesAnnounced(entries)]
            case Refused(code, reason):
                return [CalendarRefused(calendar, code, reason)]
            case AuthDenied(reason):
                return [CalendarRefused(calendar, CloseCode.FORBIDDEN, reason)]
        return []  # pragma: no cover - decode() returns only the types above

    def _count(self, data: bytes) -> None:
        self.messages_in += 1
        self.bytes_in += len(data)
        if len(data) > self.largest_in:
            self.largest_in = len(data)

    # ---- bytes out ---------------------------------------------------------------------------

    def step1(self, calendar: str, state_vector: bytes) -> bytes:
        """Open ``calendar``: ask the other side for what we miss."""
        self.state(self._check(calendar)).opened = True
        return self._frame(calendar, SyncStep1(state_vector))

    def step2(self, calendar: str, update: bytes) -> bytes:
        """Answer a :class:`SyncRequested` with everything the other side misses."""
        return self._frame(self._check(calendar), SyncStep2(update))

    def step2_parts(self, calendar: str, pieces: list[bytes], state_vector: bytes) -> list[bytes]:
        """Answer a :class:`SyncRequested` whose update was cut into ``pieces`` (in order): STEP2_PART
        messages announcing ``state_vector`` (ours when we answered), then a STEP2 with the last
        piece; on a y-websocket connection SYNC_UPDATEs, then the STEP2."""
        name = self._check(calendar)
        if self.single is not None:
            parts = [encode(SyncUpdate(piece)) for piece in pieces[:-1]]
        else:
            parts = [encode_framed(name, SyncStep2Part(state_vector, piece)) for piece in pieces[:-1]]
        return [*parts, self._frame(name, SyncStep2(pieces[-1]))]

    def update(self, calendar: str, update: bytes) -> bytes:
        """An incremental update."""
        if self.single is None:
            return encode_framed_update(calendar, update)  # the hot path of every broadcast
        return self._frame(self._check(calendar), SyncUpdate(update))

    def ack(self, calendar: str, state_vector: bytes) -> bytes:
        """Tell the other side that everything in ``state_vector`` is durably stored here."""
        return self._frame(self._check(calendar), Ack(state_vector))

    def awareness(self, calendar: str, payload: bytes) -> bytes:
        """Relay presence data."""
        return self._frame(self._check(calendar), Awareness(payload))

    def announce(self, names: list[CalendarId] | tuple[CalendarId, ...]) -> bytes:
        """List the calendars this side holds (multiplexed connections only)."""
        if self.single is not None:
            raise LocalProtocolError("a y-websocket connection carries one calendar; nothing to announce")
        return encode_framed("", Calendars(tuple(names)))

    def states(self, entries: list[tuple[CalendarId, bytes]]) -> bytes:
        """Send stored state vectors of calendars this side holds (multiplexed connections only)."""
        if self.single is not None:
            raise LocalProtocolError("a y-websocket connection carries one calendar; nothing to compare")
        return encode_framed("", States(tuple(entries)))

    def refuse(self, calendar: str, code: int, reason: str) -> bytes:
        """Refuse one calendar of a multiplexed connection."""
        if self.single is not None:
            return encode(AuthDenied(reason))
        self.calendars.pop(CalendarId(calendar), None)
        return encode_framed(calendar, Refused(code, reason))

    # ---- state -------------------------------------------------------------------------------

    def state(self, calendar: CalendarId) -> CalendarState:
        """The per-calendar state (created on first use)."""
        found = self.calendars.get(calendar)
        if found is None:
            found = self.calendars[calendar] = CalendarState()
        return found

    def holds_answer(self, calendar: str, state_vector: bytes) -> bool:
        """True unless a STEP2_PART for ``calendar`` announced a state that ``state_vector`` does
        not cover yet (pieces of the answer are still to come, or to be stored); once covered,
        the announcement is forgotten."""
        found = self.calendars.get(CalendarId(calendar))
        if found is None or found.answer is None:
            return True
        if not covers(decode_state_vector(state_vector), found.answer):
            return False
        found.answer = None
        return True

    def is_synced(self, calendar: str) -> bool:
        """True once a step 2 arrived for ``calendar``."""
        found = self.calendars.get(CalendarId(calendar))
        return bool(found and found.synced)

    def _check(self, calendar: str) -> CalendarId:
        if self.single is not None and calendar != self.single:
            raise LocalProtocolError(f"this connection carries {self.single!r}, not {calendar!r}")
        return CalendarId(calendar)

    def _frame(self, calendar: str, message: Message) -> bytes:
        return encode(message) if self.single is not None else encode_framed(calendar, message)
