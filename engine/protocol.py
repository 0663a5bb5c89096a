"""The wire format: y-websocket messages, accord's multiplexed framing, and state vectors.

**y-websocket** (one calendar per connection, the calendar is the URL path)::

    message      = varuint type, body
    type 0 SYNC  = varuint subtype (0 step 1 | 1 step 2 | 2 update), varbytes payload
    type 1 AWARENESS = varbytes awareness update
    type 2 AUTH  = varuint 0 (permission denied), varstring reason
    type 3 QUERY_AWARENESS = (empty)

**accord multiplexed framing** (terminals and peer relays; many calendars on one
connection), in the style of Hocuspocus: every message is prefixed with the calendar name::

    frame        = varstring calendar, message

with three accord message types besides the y-websocket ones:

- ``100 ACK``: varbytes state vector. "Everything covered by this state vector is durably
  stored on my side." A receiver sends it after its store committed the updates it got.
  The sender compares it with its own state vector to know what is saved on the other side.
- ``101 CALENDARS``: varuint count, then that many varstring names (frame calendar is empty).
  Peers announce which calendars they hold so that the other side can open them.
- ``102 REFUSED``: varuint close code, varstring reason: one calendar of a multiplexed
  connection was refused (e.g. outside the token's globs); the connection stays open.
- ``103 STEP2_PART``: varbytes state vector, varbytes update: one piece of a sync answer too
  large for one message (:mod:`engine.update_pieces`); the last piece is an ordinary STEP2.
  The state vector is the sender's when it answered: once the receiver holds it, it holds the
  whole answer. A y-websocket connection gets the same pieces as SYNC_UPDATEs, then the STEP2.
- ``104 STATES``: varuint count, then that many (varstring name, varbytes state vector) pairs
  (frame calendar is empty). Peers send the stored state vectors of the calendars they hold,
  in batches, at link-up; the other side opens only the calendars whose vectors differ.

Every decoder here raises :class:`MalformedMessage` for truncated or garbage input and
:class:`MessageTooLarge` for input over the limit; nothing is half-decoded.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

from .errors import InvalidCalendarName, MalformedMessage, MessageTooLarge
from .lib0 import read_var_bytes, read_var_uint
from .model import CalendarId, check_calendar_name

DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
PIECES_PER_MESSAGE = 8  # a sync answer's pieces are this many times smaller than the message limit
PIECE_MARGIN_BYTES = 4096  # room for a piece's framing (calendar name, state vector) under that share
MIN_PIECE_BYTES = 4096
EMPTY_UPDATE = b"\x00\x00"
EMPTY_STATE_VECTOR = b"\x00"


class MessageType(enum.IntEnum):
    """Top-level message types (y-websocket's, then accord's own from 100)."""

    SYNC = 0
    AWARENESS = 1
    AUTH = 2
    QUERY_AWARENESS = 3
    ACK = 100
    CALENDARS = 101
    REFUSED = 102
    STEP2_PART = 103
    STATES = 104


class SyncType(enum.IntEnum):
    """Sub-types of a SYNC message."""

    STEP1 = 0
    STEP2 = 1
    UPDATE = 2


@dataclass(frozen=True, slots=True)
class SyncStep1:
    """"Here is my state vector; send me what I miss.\""""

    state_vector: bytes


@dataclass(frozen=True, slots=True)
class SyncStep2:
    """The reply to a step 1: everything the asker missed, as one update."""

    update: bytes


@dataclass(frozen=True, slots=True)
class SyncStep2Part:
    """One piece of a step 2 too large for one message; more follow, the last as a :class:`SyncStep2`.
    ``state_vector`` is the sender's when it answered (the receiver holds it all once it holds that)."""

    state_vector: bytes
    update: bytes


@dataclass(frozen=True, slots=True)
class SyncUpdate:
    """An incremental update, sent as it happens."""

    update: bytes


@dataclass(frozen=True, slots=True)
class Awareness:
    """An awareness (presence) update; relayed, never stored."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class QueryAwareness:
    """A request for the current awareness states."""


@dataclass(frozen=True, slots=True)
class AuthDenied:
    """y-websocket's permission-denied message."""

    reason: str


@dataclass(frozen=True, slots=True)
class Ack:
    """Durable acknowledgement: the sender has stored everything this state vector covers."""

    state_vector: bytes


@dataclass(frozen=True, slots=True)
class Calendars:
    """The calendars a peer holds (and may share)."""

    names: tuple[CalendarId, ...]


@dataclass(frozen=True, slots=True)
class Refused:
    """One calendar of a multiplexed connection was refused."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class States:
    """Stored state vectors of calendars a peer holds: ``(name, state vector)`` pairs."""

    entries: tuple[tuple[CalendarId, bytes], ...]


MAX_STATES = 100_000  # entries in one STATES message (senders batch far fewer)

Message = (
    SyncStep1 | SyncStep2 | SyncStep2Part | SyncUpdate | Awareness | QueryAwareness | AuthDenied | Ack | Calendars
    | Refused | States
)


# ---- primitives ------------------------------------------------------------------------------


def write_var_uint(value: int) -> bytes:
    """lib0 variable-length unsigned integer."""
    if value < 0x80:
        return _SMALL_UINTS[value]
    if value < 0x4000:  # two bytes: the length of most updates
        return bytes((0x80 | (value & 0x7F), value >> 7))
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_UINTS = [bytes((i,)) for i in range(0x80)]


def write_var_bytes(data: bytes) -> bytes:
    """lib0 length-prefixed bytes."""
    return write_var_uint(len(data)) + data


def write_var_string(text: str) -> bytes:
    """lib0 length-prefixed UTF-8 string."""
    return write_var_bytes(text.encode())


class Reader:
    """A cursor over one message; every read checks bounds and raises MalformedMessage."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def var_uint(self) -> int:
        try:
            value, self.pos = read_var_uint(self.data, self.pos)
        except IndexError:
            raise MalformedMessage("truncated message: a number runs past the end") from None
        except OverflowError:
            raise MalformedMessage("malformed message: a number is longer than 64 bits") from None
        return value

    def var_bytes(self) -> bytes:
        try:
            chunk, self.pos = read_var_bytes(self.data, self.pos)
        except (IndexError, OverflowError):
            length = self.var_uint()  # raises if the length itself is bad
            raise MalformedMessage(f"truncated message: {length} bytes announced, {len(self.data) - self.pos} left") from None
        return chunk

    def var_string(self) -> str:
        try:
            return self.var_bytes().decode()
        except UnicodeDecodeError:
            raise MalformedMessage("malformed message: a string is not valid UTF-8") from None

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk


# ---- messages --------------------------------------------------------------------------------


def encode(message: Message) -> bytes:
    """One message in y-websocket framing (no calendar prefix)."""
    return b"".join(_parts(message))


def _parts(message: Message) -> tuple[bytes, ...]:
    """``message`` encoded in pieces to be joined once: a sync answer's update can be megabytes,
    and each ``+`` would copy it again."""
    match message:
        case SyncStep1(state_vector):
            return b"\x00\x00", write_var_uint(len(state_vector)), state_vector
        case SyncStep2(update):
            return b"\x00\x01", write_var_uint(len(update)), update
        case SyncUpdate(update):
            return b"\x00\x02", write_var_uint(len(update)), update
        case SyncStep2Part(state_vector, update):
            return write_var_uint(MessageType.STEP2_PART), write_var_bytes(state_vector), write_var_uint(len(update)), update
    return (_encode_small(message),)


def _encode_small(message: Message) -> bytes:
    match message:
        case Awareness(payload):
            return b"\x01" + write_var_bytes(payload)
        case QueryAwareness():
            return b"\x03"
        case AuthDenied(reason):
            return b"\x02\x00" + write_var_string(reason)
        case Ack(state_vector):
            return write_var_uint(MessageType.ACK) + write_var_bytes(state_vector)
        case Calendars(names):
            return write_var_uint(MessageType.CALENDARS) + write_var_uint(len(names)) + b"".join(
                write_var_string(n) for n in names
            )
        case Refused(code, reason):
            return write_var_uint(MessageType.REFUSED) + write_var_uint(code) + write_var_string(reason)
        case States(entries):
            return write_var_uint(MessageType.STATES) + write_var_uint(len(entries)) + b"".join(
                write_var_string(name) + write_var_bytes(sv) for name, sv in entries
            )
    raise TypeError(f"not a message: {message!r}")


def encode_framed(calendar: str, message: Message) -> bytes:
    """One message in accord's multiplexed framing."""
    return b"".join((frame_prefix(calendar), *_parts(message)))


@functools.lru_cache(maxsize=4096)
def frame_prefix(calendar: str) -> bytes:
    """The encoded calendar name that starts every multiplexed frame of ``calendar`` (memoised:
    a connection sends many frames for few calendars)."""
    return write_var_string(calendar)


@functools.lru_cache(maxsize=4096)
def _update_head(calendar: str) -> bytes:
    return frame_prefix(calendar) + b"\x00\x02"  # SYNC, SYNC_UPDATE


def encode_framed_update(calendar: str, update: bytes) -> bytes:
    """``encode_framed(calendar, SyncUpdate(update))`` without the intermediate objects (hot path)."""
    return b"".join((_update_head(calendar), write_var_uint(len(update)), update))


def decode(data: bytes, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    """Parse one y-websocket message.

    Raises:
        MessageTooLarge: ``data`` is longer than ``max_bytes``.
        MalformedMessage: truncated, trailing garbage, or an unknown type.
    """
    check_size(data, max_bytes)
    reader = Reader(data)
    message = _decode_body(reader)
    return message


def decode_framed(data: bytes, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> tuple[str, Message]:
    """Parse one multiplexed frame into ``(calendar, message)``; the calendar may be ``""``
    only for connection-level messages (CALENDARS)."""
    check_size(data, max_bytes)
    reader = Reader(data)
    raw_name = reader.var_bytes()
    message = _decode_body(reader)
    calendar = _calendar_name(raw_name)
    if not calendar and not isinstance(message, Calendars | States):
        raise MalformedMessage("malformed frame: no calendar name")
    return calendar, message


def split_update_frame(data: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> tuple[CalendarId, bytes] | None:
    """``(calendar, update)`` of a well-formed multiplexed SYNC_UPDATE frame, or None.

    The hot path of a relay: the same checks as :func:`decode_framed` for the one message
    that dominates traffic, with fewer calls and objects. It returns None (never raises) for
    anything else, oversized, malformed or another type alike: call :func:`decode_framed`,
    which raises the precise error.
    """
    size = len(data)
    if size > max_bytes or size < 5:
        return None
    end = data[0] + 1  # a calendar name under 128 bytes: one length byte
    if end == 1 or end > 0x80 or size < end + 3 or data[end] != 0 or data[end + 1] != 2:
        return None
    try:
        length, pos = read_var_uint(data, end + 2)
    except (IndexError, OverflowError):
        return None
    if pos + length != size or pos - end > 7:  # the length varint in at most 5 bytes, as ever
        return None
    try:
        name = _calendar_name(data[1:end])
    except MalformedMessage:
        return None
    return CalendarId(name), data[pos:]


@functools.lru_cache(maxsize=4096)
def _calendar_name(raw: bytes) -> str:
    """The calendar name of a frame, validated (``""`` allowed); memoised, since a connection
    carries few calendars. Raises MalformedMessage (errors are not cached)."""
    try:
        name = raw.decode()
    except UnicodeDecodeError:
        raise MalformedMessage("malformed message: a string is not valid UTF-8") from None
    if name:
        try:
            check_calendar_name(name)
        except InvalidCalendarName as exc:
            raise MalformedMessage(str(exc)) from None
    return name


def piece_bytes(max_message_bytes: int) -> int:
    """How large the pieces of a sync answer are for a message limit of ``max_message_bytes``:
    an eighth of it less room for framing (just under 1 MiB at the default 8 MiB), so that a
    receiver whose limit is up to eight times lower still takes them, and applying one piece
    stays short."""
    return max(MIN_PIECE_BYTES, max_message_bytes // PIECES_PER_MESSAGE - PIECE_MARGIN_BYTES)


def check_size(data: bytes, max_bytes: int) -> None:
    """Raise MessageTooLarge if ``data`` exceeds ``max_bytes``."""
    if len(data) > max_bytes:
        raise MessageTooLarge(f"message of {len(data)} bytes exceeds the limit of {max_bytes} bytes")


def _decode_body(reader: Reader) -> Message:
    kind = reader.var_uint()
    message: Message
    if kind == MessageType.SYNC:
        sub = reader.var_uint()
        payload = reader.var_bytes()
        if sub == SyncType.STEP1:
            message = SyncStep1(payload)
        elif sub == SyncType.STEP2:
            message = SyncStep2(payload)
        elif sub == SyncType.UPDATE:
            message = SyncUpdate(payload)
        else:
            raise MalformedMessage(f"unknown sync message type {sub}")
    elif kind == MessageType.AWARENESS:
        message = Awareness(reader.var_bytes())
    elif kind == MessageType.QUERY_AWARENESS:
        message = QueryAwareness()
    elif kind == MessageType.AUTH:
        reader.var_uint()
        message = AuthDenied(reader.var_string())
    elif kind == MessageType.ACK:
        message = Ack(reader.var_bytes())
        decode_state_vector(message.state_vector)
    elif kind == MessageType.CALENDARS:
        count = reader.var_uint()
        if count > 100_000:
            raise MalformedMessage(f"calendar list of {count} entries is too long")
        names = []
        for _ in range(count):
            name = reader.var_string()
            try:
                names.append(check_calendar_name(name))
            except InvalidCalendarName as exc:
                raise MalformedMessage(str(exc)) from None
        message = Calendars(tuple(names))
    elif kind == MessageType.REFUSED:
        message = Refused(reader.var_uint(), reader.var_string())
    elif kind == MessageType.STEP2_PART:
        message = SyncStep2Part(reader.var_bytes(), reader.var_bytes())
        decode_state_vector(message.state_vector)
    elif kind == MessageType.STATES:
        message = _decode_states(reader)
    else:
        raise MalformedMessage(f"unknown message type {kind}")
    if not reader.at_end():
        raise MalformedMessage(f"malformed message: {len(reader.data) - reader.pos} trailing bytes")
    return message


def _decode_states(reader: Reader) -> States:
    count = reader.var_uint()
    if count > MAX_STATES:
        raise MalformedMessage(f"state vector list of {count} entries is too long")
    entries = []
    for _ in range(count):
        name = reader.var_string()
        try:
            check_calendar_name(name)
        except InvalidCalendarName as exc:
            raise MalformedMessage(str(exc)) from None
        state_vector = reader.var_bytes()
        decode_state_vector(state_vector)
        entries.append((CalendarId(name), state_vector))
    return States(tuple(entries))


# ---- state vectors ----------------------------------------------------------------------------


def decode_state_vector(data: bytes) -> dict[int, int]:
    """A Yjs state vector (varuint count, then client/clock pairs) as ``{client: clock}``."""
    reader = Reader(data)
    count = reader.var_uint()
    if count > len(data):
        raise MalformedMessage("malformed state vector: more entries than bytes")
    out: dict[int, int] = {}
    for _ in range(count):
        client = reader.var_uint()
        out[client] = reader.var_uint()
    if not reader.at_end():
        raise MalformedMessage("malformed state vector: trailing bytes")
    return out


def encode_state_vector(clocks: dict[int, int]) -> bytes:
    """Inverse of :func:`decode_state_vector`."""
    return write_var_uint(len(clocks)) + b"".join(
        write_var_uint(client) + write_var_uint(clock) for client, clock in sorted(clocks.items())
    )


def covers(have: dict[int, int], want: dict[int, int]) -> bool:
    """True if state ``have`` includes everything in state ``want``."""
    return all(have.get(client, 0) >= clock for client, clock in want.items())


def missing_count(have: dict[int, int], want: dict[int, int]) -> int:
    """How many operations (clock ticks) ``want`` has that ``have`` lacks."""
    return sum(max(0, clock - have.get(client, 0)) for client, clock in want.items())


# ---- awareness ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    """One client's presence in a y-protocols awareness update (``state`` is JSON text, "null" = gone)."""

    client: int
    clock: int
    state: str


def decode_awareness(payload: bytes) -> list[AwarenessEntry]:
    """The entries of an awareness update (varuint count, then client, clock, JSON state each).

    Raises:
        MalformedMessage: truncated or trailing bytes.
    """
    reader = Reader(payload)
    count = reader.var_uint()
    if count > len(payload):
        raise MalformedMessage("malformed awareness update: more entries than bytes")
    entries = [AwarenessEntry(reader.var_uint(), reader.var_uint(), reader.var_string()) for _ in range(count)]
    if not reader.at_end():
        raise MalformedMessage("malformed awareness update: trailing bytes")
    return entries


def encode_awareness(entries: list[AwarenessEntry]) -> bytes:
    """Inverse of :func:`decode_awareness`."""
    return write_var_uint(len(entries)) + b"".join(
        write_var_uint(e.client) + write_var_uint(e.clock) + write_var_string(e.state) for e in entries
    )
