"""Reading Yjs v1 updates without applying them (engine.yjs_update.UpdateReader): every content
kind to the right clock, exactly as Yrs reads it, and every construct Yjs and Yrs read differently
refused."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText, get_state, merge_updates

from accord.engine.errors import MalformedMessage
from accord.engine.protocol import decode_state_vector
from accord.engine.replica import Replica
from accord.engine.yjs_update import Struct, UpdateReader

NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def read(data: bytes) -> list[Struct]:
    """Every struct of ``data`` (and its delete set read to the end)."""
    return list(UpdateReader(data).structs())


def ends(data: bytes) -> dict[int, int]:
    """Per client, the clock after its last struct in ``data``."""
    reader = UpdateReader(data)
    for _struct in reader.structs():
        pass
    return {client: span[1] for client, span in reader.spans.items()}


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\x01", b"\xff\xff\xff", b"\x01\x01\x05\x00\x1f", b"\x00\x00\x00", b"\x01" + b"\x80" * 20, b"\x00\x01"],
)
def test_garbage_is_malformed(garbage: bytes) -> None:
    with pytest.raises(MalformedMessage):
        read(garbage)


def test_every_truncation_of_an_update_is_malformed() -> None:
    replica = Replica("clinic-1", actor="desk", client_id=7)
    replica.calendar.book(resource="room-1", start="2026-12-01T09:00Z", end="2026-12-01T09:30Z", patient="p",
                          now=NOW)
    update = replica.full_state()
    for cut in range(len(update)):
        with pytest.raises(MalformedMessage):
            read(update[:cut])
    assert read(b"\x00\x00") == []


def every_content_kind() -> list[bytes]:
    """Updates with every struct and content kind pycrdt produces (and GC/Skip structs)."""
    doc = Doc(client_id=3)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    doc["t"] = text = Text()
    text += "héllo 😀 wörld"  # UTF-16 length differs from characters and bytes
    text.format(1, 4, {"bold": True})
    text.insert_embed(2, {"img": "x.png"})
    doc["a"] = array = Array()
    array.append({"x": [1, 2.5, -7, 2**40, None, True, False, b"\x00\x01", {"deep": {"er": [1]}}]})
    array.append(b"raw")
    array.extend([1, "two", 3.0])
    array.append(Map({"k": "v"}))
    doc["x"] = fragment = XmlFragment()
    fragment.children.append(XmlElement("p", {"class": "c"}, [XmlText("hi")]))
    doc["m"] = nested = Map()
    nested["sub"] = Doc()
    nested["gone"] = Map({"a": 1, "b": Map({"c": 2})})
    del nested["gone"]  # its children become GC structs in the full state
    del array[0]
    skipping = merge_updates(updates[0], updates[2])  # a gap in client 3's clocks: a Skip struct
    return [*updates, doc.get_update(), skipping]


def test_decoder_reads_every_content_kind_to_the_right_clock() -> None:
    *incremental, full, skipping = every_content_kind()
    replay = Doc()
    for update in incremental:
        replay.apply_update(update)
        assert_clocks_match(update, replay)
    assert ends(full) == decode_state_vector(get_state(full))
    assert 3 in ends(skipping)


def assert_clocks_match(update: bytes, replay: Doc) -> None:
    """The decoder ends each client's structs where Yrs says that client's clock is now."""
    state = decode_state_vector(replay.get_state())
    for client, end in ends(update).items():
        assert end == state[client]


def any_item(content: bytes) -> bytes:
    """client 9, clock 0: one item in root array "arr" with the given info byte and content."""
    return bytes([1, 1, 9, 0]) + content[:1] + bytes([1, 3]) + b"arr" + content[1:] + bytes([0])


@pytest.mark.parametrize(
    ("content", "why"),
    [
        # Yrs reads legacy JSON content with one string more than Yjs writes.
        (bytes([0x02, 2, 3]) + b'"a"' + bytes([1]) + b"1", "json"),
        # Yjs reads a hook name after an XML hook type ref, Yrs does not.
        (bytes([0x07, 5, 1]) + b"h", "xml hook"),
        # Content ref 24: Yjs has none, Yrs masks it to 8 (any).
        (bytes([0x18, 1, 0x77, 1]) + b"x", "ref 24"),
        # ref 0 with a flag: GC for Yjs, an item for Yrs.
        (bytes([0x20, 1]), "flagged gc"),
    ],
)
def test_constructs_yjs_and_yrs_read_differently_are_refused(content: bytes, why: str) -> None:
    with pytest.raises(MalformedMessage):
        read(any_item(content))


def test_an_unusual_parent_info_is_refused() -> None:
    # parent info 2: an ID for Yjs and Yrs alike, but no encoder writes it
    update = bytes([1, 1, 9, 0, 0x28, 2, 5, 0, 1]) + b"k" + bytes([1, 0x77, 1]) + b"x" + bytes([0])
    with pytest.raises(MalformedMessage):
        read(update)


def test_a_parent_id_varint_over_ten_bytes_is_refused_like_every_other_varint() -> None:
    def nested_item(parent_client: bytes) -> bytes:
        """client 9, clock 0: ``k = "x"`` in the map whose item is (parent_client, 0)."""
        return bytes([1, 1, 9, 0, 0x28, 0]) + parent_client + bytes([0, 1]) + b"k" + bytes([1, 0x77, 1]) + b"x" + bytes([0])

    padded = b"\x85" + b"\x80" * 8 + b"\x00"  # 5 in 10 bytes: a 64-bit varint, if a wasteful one
    assert len(read(nested_item(padded))) == 1
    with pytest.raises(MalformedMessage, match="longer than 64 bits"):  # Yrs would still read 11 bytes
        read(nested_item(padded[:-1] + b"\x80\x00"))


def test_hand_encoded_any_item_matches_yrs() -> None:
    update = any_item(bytes([0x08, 2, 0x77, 1]) + b"x" + bytes([0x7D, 0xC1, 0x01]))  # ["x", -65]
    doc = Doc()
    doc.apply_update(update)
    assert doc.get("arr", type=Array).to_py() == ["x", -65.0]
    assert decode_state_vector(doc.get_state()) == {9: 2} == ends(update)


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**31), 2**31) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["set", "text", "push", "del"]), st.text(max_size=4), values), max_size=15))
def test_decoded_clocks_match_the_document_state(ops: list[tuple[str, str, Any]]) -> None:
    doc = Doc(client_id=4)
    root = doc.get("m", type=Map)
    text = doc.get("t", type=Text)
    array = doc.get("a", type=Array)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for kind, key, value in ops:
        if kind == "set":
            root[key or "k"] = value
        elif kind == "text":
            text.insert(0, key or "ü😀")  # at 0: pycrdt mis-encodes inserts after non-ASCII
        elif kind == "push":
            array.append(value)
        elif kind == "del" and len(array):
            del array[0]
    replay = Doc()
    for update in updates:
        replay.apply_update(update)
        assert_clocks_match(update, replay)
    full = doc.get_update()
    assert ends(full) == decode_state_vector(get_state(full))
