"""One connection's sync session: the rules every accord side follows, in one sans-I/O machine.

Theory of operation. :class:`~accord.engine.sync.PeerSync` parses and frames messages; a
:class:`Session` adds the rules on top, so that the relay's client and peer connections, the
terminal's link and the test clients all behave the same without re-implementing them:

- **Opening.** A side *serves* a calendar on a connection once it calls :meth:`Session.open`.
  Opening sends STEP1 (our state vector) unless we already did, and answers every STEP1 the
  other side sent for it with STEP2 (exactly what it misses, from :class:`Documents`). That is
  the whole Yjs sync rule: "answer STEP1 with STEP2, then open the calendar back".
- **Unknown calendars.** The first message for a calendar this side does not serve yields
  :class:`CalendarRequested`; the caller decides (load it, check the token) and calls
  :meth:`Session.open` or :meth:`Session.refuse` before it takes the next event. Events that
  arrived for a calendar that is then refused are dropped, and later messages for it too.
- **Acknowledgements.** Only a side built with ``send_acks=True`` sends ACK, and only through
  :meth:`Session.stored`, which the caller calls once what it received is durable. A relay
  acknowledges terminals; stock Yjs clients do not know ACK, and relays do not acknowledge
  each other (a relay's durability is its own store; peers catch up by state vector after any
  fault, so an ACK would tell a peer nothing it could act on). An empty update is still
  acknowledged: it yields :class:`NothingNew` so the caller can acknowledge it in order with
  what came before. A sync answer that came in pieces is acknowledged once, when what is
  stored covers all of it (the state its first piece announced), never piece by piece.
- **Large answers.** A STEP2 (or a local update) larger than :attr:`Session.piece_bytes`, an
  eighth of the message limit, goes out as pieces (:mod:`~accord.engine.update_pieces`), each
  applicable in turn; the other side is synced when the last one arrives.
- **Awareness.** Presence entries a connection announces are remembered per calendar, so that
  :meth:`Session.awareness_gone` can tell the others when it leaves (as y-websocket's server does).

Bytes in: :meth:`Session.receive`. Bytes out, in order: :meth:`Session.data_to_send`. Events,
one at a time (the caller may refuse a calendar between two): :meth:`Session.next_event`::

    session.receive(message)
    while (event := session.next_event()) is not None:
        await handle(event)                         # may call session.open()/refuse()/stored()
        for data in session.data_to_send():
            await send(data)
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from .errors import CloseCode, LocalProtocolError, TooMuchPresence
from .model import CalendarId
from .protocol import EMPTY_UPDATE, PIECE_MARGIN_BYTES, AwarenessEntry, decode_awareness, encode_awareness, piece_bytes
from .sync import (
    Acknowledged,
    AwarenessQueried,
    AwarenessReceived,
    CalendarRefused,
    CalendarsAnnounced,
    PeerSync,
    StatesAnnounced,
    SyncCompleted,
    SyncRequested,
    UpdateReceived,
)
from .update_pieces import split_update

__all__ = [
    "AUTHORIZATION_HEADER", "RELAY_HEADER", "ROLE_HEADER", "SYNC_PATH", "TERMINAL_HEADER",
    "Acknowledged", "AnswerPending", "AwarenessQueried", "AwarenessReceived", "CalendarRefused", "CalendarRequested", "Documents",
    "Event", "Framing", "NothingNew", "RemoteState", "Session", "StatesAnnounced", "SyncCompleted",
    "UpdateReceived", "bearer", "parse_bearer",
]

SYNC_PATH = "/.accord/v1"  # the multiplexed endpoint (terminals and peer relays)
ROLE_HEADER = "X-Accord-Role"  # terminal | peer
RELAY_HEADER = "X-Accord-Relay"  # a peer relay's id, for logs
TERMINAL_HEADER = "X-Accord-Terminal"  # a terminal's name, for logs
AUTHORIZATION_HEADER = "Authorization"


def bearer(token: str) -> str:
    """The ``Authorization`` header value that carries ``token``."""
    return f"Bearer {token}"


def parse_bearer(value: str | None) -> str | None:
    """The token in an ``Authorization: Bearer ...`` header value, or None."""
    if value and value.lower().startswith("bearer "):
        return value[7:].strip() or None
    return None


MAX_PRESENCE_CLIENTS = 8
"""Presence (awareness) entries one connection may announce per calendar (a browser tab has one)."""
MAX_PRESENCE_STATE = 4096
"""Characters of one presence state (a name, a cursor, a colour)."""

class Framing(enum.StrEnum):
    """``single``: y-websocket, one calendar per connection; ``multiplexed``: accord's own."""

    SINGLE = "single"
    MULTIPLEXED = "multiplexed"


class Documents(Protocol):
    """What a session needs from the side's documents."""

    def state_vector(self, calendar: CalendarId) -> bytes:
        """The calendar's encoded state vector (only asked for calendars the side serves)."""
        ...

    def diff(self, calendar: CalendarId, state_vector: bytes) -> bytes:
        """Everything a replica at ``state_vector`` misses (raises MalformedMessage on garbage)."""
        ...


# ---- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CalendarRequested:
    """The other side sent something for a calendar this side does not serve on this connection:
    call :meth:`Session.open` or :meth:`Session.refuse` before taking the next event."""

    calendar: CalendarId


@dataclass(frozen=True, slots=True)
class RemoteState:
    """The other side's state vector for a calendar this side serves (from its STEP1, which
    the session answers itself): a terminal compares it with what the relay acknowledged
    before, to notice a relay restored from an older copy."""

    calendar: CalendarId
    state_vector: bytes


@dataclass(frozen=True, slots=True)
class NothingNew:
    """The other side sent an empty update (its sync reply had nothing for us); with acks on,
    call :meth:`Session.stored` once everything received before it is durable."""

    calendar: CalendarId


@dataclass(frozen=True, slots=True)
class AnswerPending:
    """A sync answer too large for one piece, left to the caller to cut (a session made with
    ``cut_elsewhere``): cut ``diff`` with :func:`~accord.engine.update_pieces.split_update` into
    pieces of :attr:`Session.piece_bytes` where it does not stall other work (a worker thread),
    then send :meth:`Session.answer_frames` before anything queued for the connection since."""

    calendar: CalendarId
    diff: bytes
    state_vector: bytes  # this side's, when it answered


Event = (
    CalendarRequested
    | AnswerPending
    | RemoteState
    | NothingNew
    | UpdateReceived
    | SyncCompleted
    | AwarenessReceived
    | AwarenessQueried
    | Acknowledged
    | CalendarRefused
    | StatesAnnounced
)


class _Serving(enum.Enum):
    REQUESTED = "requested"  # CalendarRequested emitted, no answer yet
    OPEN = "open"
    REFUSED = "refused"


class Session:
    """The sync session of one connection (see the module docstring).

    Args:
        documents: the side's documents.
        calendar: for the single framing, the one calendar the connection carries; None for multiplexed.
        send_acks: acknowledge stored updates to the other side (a relay, towards terminals).
        max_message_bytes: larger incoming messages raise :class:`MessageTooLarge`; sync answers
            and local updates larger than an eighth of it are sent in pieces that size.
    """

    def __init__(self, documents: Documents, *, calendar: str | None = None, send_acks: bool = False,
                 max_message_bytes: int | None = None, cut_elsewhere: bool = False) -> None:
        self.documents = documents
        self.sync = PeerSync(calendar) if max_message_bytes is None else PeerSync(calendar, max_message_bytes=max_message_bytes)
        self.framing = Framing.MULTIPLEXED if calendar is None else Framing.SINGLE
        # A stock y-websocket client takes messages of any size (browsers and Node's ws set no
        # practical limit): pieces as large as this side's own limit, so most answers go whole.
        # Terminals and peers may have an eighth of this side's limit: pieces that size.
        self.piece_bytes = (self.sync.max_message_bytes - PIECE_MARGIN_BYTES if self.framing is Framing.SINGLE
                            else piece_bytes(self.sync.max_message_bytes))
        self.send_acks = send_acks
        self.cut_elsewhere = cut_elsewhere  # large answers become AnswerPending events
        self._serving: dict[CalendarId, _Serving] = {}
        self._asked: dict[CalendarId, bytes] = {}  # STEP1s to answer once the calendar opens
        self._events: deque[Event] = deque()
        self._out: list[bytes] = []
        self._awareness: dict[CalendarId, dict[int, int]] = {}  # announced presence client -> clock

    @property
    def single(self) -> CalendarId | None:
        """The one calendar of a single-framing connection, else None."""
        return self.sync.single

    @property
    def messages_in(self) -> int:
        """Messages received so far."""
        return self.sync.messages_in

    @property
    def bytes_in(self) -> int:
        """Bytes received so far."""
        return self.sync.bytes_in

    @property
    def largest_in(self) -> int:
        """Bytes of the largest message received so far."""
        return self.sync.largest_in

    # ---- bytes in ------------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Take one websocket message; its events come out of :meth:`next_event`.

        Raises:
            RemoteProtocolError: malformed, unknown or oversized (or bad awareness); the session
                state is unchanged and the caller closes the connection with the error's code.
        """
        for event in self.sync.receive(data):
            self._take(event)

    def _take(self, event: object) -> None:
        match event:
            case UpdateReceived(calendar, update):
                if self._admit(calendar):
                    if update == EMPTY_UPDATE:
                        if self.send_acks:
                            self._events.append(NothingNew(calendar))
                    else:
                        self._events.append(event)
            case SyncRequested(calendar, state_vector):
                if self._admit(calendar):
                    self._events.append(RemoteState(calendar, state_vector))
                    if self._serving[calendar] is _Serving.OPEN:
                        self._answer(calendar, state_vector)
                    else:
                        self._asked[calendar] = state_vector
            case AwarenessReceived(calendar, payload):
                if self._admit(calendar):
                    self._remember_awareness(calendar, payload)
                    self._events.append(event)
            case SyncCompleted(calendar) | AwarenessQueried(calendar) | Acknowledged(calendar):
                if self._serving.get(calendar) is _Serving.OPEN:
                    self._events.append(event)  # type: ignore[arg-type]
            case CalendarsAnnounced(names):
                for name in names:
                    if self._admit(name) and self._serving[name] is _Serving.OPEN:
                        self._open_back(name)
            case StatesAnnounced():
                self._events.append(event)  # the caller compares them with its own
            case CalendarRefused(calendar):
                self._serving.pop(calendar, None)
                self._asked.pop(calendar, None)
                self._events.append(event)  # type: ignore[arg-type]

    def _admit(self, calendar: CalendarId) -> bool:
        """True if events for ``calendar`` go on (asking the caller first if it is unknown)."""
        serving = self._serving.get(calendar)
        if serving is None:
            self._serving[calendar] = _Serving.REQUESTED
            self._events.append(CalendarRequested(calendar))
            return True
        return serving is not _Serving.REFUSED

    def _remember_awareness(self, calendar: CalendarId, payload: bytes) -> None:
        announced = self._awareness.setdefault(calendar, {})
        for entry in decode_awareness(payload):  # MalformedMessage: the caller closes with 1007
            if entry.state == "null":
                announced.pop(entry.client, None)
                continue
            if len(entry.state) > MAX_PRESENCE_STATE:
                raise TooMuchPresence(f"a presence state is limited to {MAX_PRESENCE_STATE} characters")
            announced[entry.client] = entry.clock
            if len(announced) > MAX_PRESENCE_CLIENTS:
                raise TooMuchPresence(f"one connection announces at most {MAX_PRESENCE_CLIENTS} presence "
                                      "entries per calendar")

    def next_event(self) -> Event | None:
        """The next event, or None when there is none left."""
        return self._events.popleft() if self._events else None

    # ---- decisions of the caller ------------------------------------------------------------------

    def open(self, calendar: str) -> None:
        """Serve ``calendar`` on this connection: send STEP1 unless already sent, and answer
        every STEP1 the other side sent for it."""
        name = CalendarId(calendar)
        if self.single is not None and name != self.single:
            raise LocalProtocolError(f"this connection carries {self.single!r}, not {name!r}")
        self._serving[name] = _Serving.OPEN
        self._open_back(name)
        asked = self._asked.pop(name, None)
        if asked is not None:
            self._answer(name, asked)

    def refuse(self, calendar: str, code: CloseCode, reason: str) -> None:
        """Refuse ``calendar``: tell the other side, drop its queued events and later messages.

        On a single-framing connection the caller closes the connection instead (y-websocket
        has no per-calendar refusal); the refusal frame is still sent for accord-aware readers.
        """
        name = CalendarId(calendar)
        self._serving[name] = _Serving.REFUSED
        self._asked.pop(name, None)
        self._events = deque(e for e in self._events if getattr(e, "calendar", None) != name)
        self._out.append(self.sync.refuse(name, int(code), reason))

    def forget(self, calendar: str) -> None:
        """This side stopped serving ``calendar`` (e.g. unloaded it): the next message for it
        asks again, and opening it again sends a fresh STEP1."""
        name = CalendarId(calendar)
        self._serving.pop(name, None)
        self._asked.pop(name, None)
        self.sync.calendars.pop(name, None)

    def resync(self, calendar: str) -> None:
        """Ask again for everything this side lacks of ``calendar`` (a fresh STEP1): after an
        update was dropped because what it builds on has not arrived, the other side's STEP2
        answer carries both, in one piece."""
        name = CalendarId(calendar)
        if self._serving.get(name) is _Serving.OPEN:
            self._out.append(self.sync.step1(name, self.documents.state_vector(name)))

    def stored(self, calendar: str, state_vector: bytes) -> None:
        """Everything received for ``calendar`` up to ``state_vector`` is durable on this side:
        acknowledge it, if this session sends acks and still serves the calendar, and all of a
        sync answer that came in pieces is covered (else a later call acknowledges it)."""
        name = CalendarId(calendar)
        if self.send_acks and self._serving.get(name) is _Serving.OPEN and self.sync.holds_answer(name, state_vector):
            self._out.append(self.sync.ack(name, state_vector))

    # ---- bytes out --------------------------------------------------------------------------------

    def update(self, calendar: str, update: bytes) -> bytes:
        """Frame one incremental update for this connection (the caller sends it)."""
        return self.sync.update(calendar, update)

    def send_update(self, calendar: str, update: bytes) -> None:
        """Queue one incremental update for :meth:`data_to_send` (in pieces, if it is larger than
        :attr:`piece_bytes`)."""
        if len(update) <= self.piece_bytes:
            self._out.append(self.sync.update(calendar, update))
            return
        self._out.extend(self.sync.update(calendar, piece) for piece in split_update(update, self.piece_bytes))

    def send_states(self, entries: list[tuple[CalendarId, bytes]]) -> None:
        """Queue one batch of stored state vectors for :meth:`data_to_send` (a relay, to a peer)."""
        self._out.append(self.sync.states(entries))

    def awareness(self, calendar: str, payload: bytes) -> bytes:
        """Frame presence data for this connection."""
        return self.sync.awareness(calendar, payload)

    def awareness_gone(self) -> list[tuple[CalendarId, bytes]]:
        """For each calendar, the presence payload that clears every client this connection
        announced (to broadcast to the others when it closes)."""
        gone = []
        for calendar, announced in self._awareness.items():
            if announced:
                entries = [AwarenessEntry(client, clock + 1, "null") for client, clock in announced.items()]
                gone.append((calendar, encode_awareness(entries)))
        return gone

    def data_to_send(self) -> list[bytes]:
        """Messages to write, oldest first (each call returns what was queued since the last)."""
        out, self._out = self._out, []
        return out

    # ---- state ------------------------------------------------------------------------------------

    def serves(self, calendar: str) -> bool:
        """True if this side serves ``calendar`` on this connection."""
        return self._serving.get(CalendarId(calendar)) is _Serving.OPEN

    def served(self) -> list[CalendarId]:
        """Every calendar this side serves on this connection."""
        return [name for name, serving in self._serving.items() if serving is _Serving.OPEN]

    def is_synced(self, calendar: str) -> bool:
        """True once the other side's STEP2 for ``calendar`` arrived."""
        return self.sync.is_synced(calendar)

    def acked(self, calendar: str) -> dict[int, int]:
        """What the other side acknowledged for ``calendar`` (``{client: clock}``)."""
        found = self.sync.calendars.get(CalendarId(calendar))
        return dict(found.acked) if found else {}

    def _open_back(self, calendar: CalendarId) -> None:
        if not self.sync.state(calendar).opened:
            self._out.append(self.sync.step1(calendar, self.documents.state_vector(calendar)))

    def _answer(self, calendar: CalendarId, state_vector: bytes) -> None:
        diff = self.documents.diff(calendar, state_vector)
        if self.cut_elsewhere and len(diff) > self.piece_bytes:
            self._events.append(AnswerPending(calendar, diff, self.documents.state_vector(calendar)))
            return
        self._out.extend(self.answer_frames(calendar, split_update(diff, self.piece_bytes),
                                            self.documents.state_vector(calendar)))

    def answer_frames(self, calendar: str, pieces: list[bytes], state_vector: bytes) -> list[bytes]:
        """The messages of a sync answer cut into ``pieces`` (one STEP2 if there is one piece),
        announcing ``state_vector``, this side's when it answered (see :class:`AnswerPending`)."""
        name = CalendarId(calendar)
        if len(pieces) == 1:
            return [self.sync.step2(name, pieces[0])]
        return self.sync.step2_parts(name, pieces, state_vector)
