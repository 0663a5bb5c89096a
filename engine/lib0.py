"""Reading lib0, the binary encoding under every Yjs wire format: the engine's one varint decoder.

lib0 (``decoding.js`` in https://github.com/dmonad/lib0) writes unsigned integers as varuints
(7 bits a byte, low bits first, the high bit set on every byte but the last), signed ones as
varints (the same with a sign bit), strings and byte arrays behind a varuint length, and
JSON-like values as ``any`` (a type byte, then the payload); :mod:`engine.protocol` and
:mod:`engine.yjs_update` read all of them here. Each reader takes the bytes and a position and
returns what it read with the position after it. To stay cheap on the relay's hot path they
raise plain built-in errors, which each caller words as its own ``MalformedMessage``:
``IndexError`` when the data ends early, ``OverflowError`` for a varint over 64 bits,
``UnicodeDecodeError`` for a string that is not UTF-8, ``ValueError`` for an unknown ``any`` type.
"""

from __future__ import annotations

import struct

MAX_VARINT_BYTES = 10  # 64 bits at 7 bits a byte; longer ones are refused (Yrs would read 11)
_MAX_SHIFT = 7 * (MAX_VARINT_BYTES - 1)

# lib0 ``any`` type bytes.
_UNDEFINED, _NULL, _INTEGER, _FLOAT32, _FLOAT64, _BIGINT, _FALSE, _TRUE = 127, 126, 125, 124, 123, 122, 121, 120
ANY_STRING, _OBJECT, _ARRAY, _BYTES = 119, 118, 117, 116
_FIXED_SIZES = {_UNDEFINED: 0, _NULL: 0, _FALSE: 0, _TRUE: 0, _FLOAT32: 4, _FLOAT64: 8, _BIGINT: 8}


def read_var_uint(data: bytes, pos: int) -> tuple[int, int]:
    """The varuint at ``pos``: ``(value, position after it)``.

    Raises:
        IndexError: the data ends inside the varuint.
        OverflowError: the varuint is longer than :data:`MAX_VARINT_BYTES`.
    """
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    value = byte & 0x7F
    shift = 7
    while True:
        pos += 1
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos + 1
        shift += 7
        if shift > _MAX_SHIFT:
            raise OverflowError("varint longer than 64 bits")


def skip_varint(data: bytes, pos: int) -> int:
    """The position after the varint or varuint at ``pos`` (both end at the first byte under 0x80).

    Raises:
        IndexError: the data ends inside the varint.
        OverflowError: the varint is longer than :data:`MAX_VARINT_BYTES`.
    """
    first = pos
    while data[pos] & 0x80:
        pos += 1
    pos += 1
    if pos - first > MAX_VARINT_BYTES:
        raise OverflowError("varint longer than 64 bits")
    return pos


def read_var_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    """The length-prefixed byte array (lib0 ``varUint8Array``) at ``pos``: ``(bytes, position after it)``.

    Raises:
        IndexError: the data ends inside the length or before the announced bytes.
        OverflowError: the length is longer than :data:`MAX_VARINT_BYTES`.
    """
    length = data[pos]
    if length < 0x80:  # inlined: most lengths are short
        pos += 1
    else:
        length, pos = read_var_uint(data, pos)
    end = pos + length
    if end > len(data):
        raise IndexError("byte array runs past the end")
    return data[pos:end], end


def read_var_string(data: bytes, pos: int) -> tuple[str, int]:
    """The length-prefixed UTF-8 string (lib0 ``varString``) at ``pos``: ``(text, position after it)``.

    Raises:
        IndexError, OverflowError: as :func:`read_var_bytes`.
        UnicodeDecodeError: the bytes are not UTF-8.
    """
    raw, pos = read_var_bytes(data, pos)
    return raw.decode(), pos


def skip_var_bytes(data: bytes, pos: int) -> int:
    """The position after the length-prefixed byte array or string at ``pos``.

    Raises:
        IndexError, OverflowError: as :func:`read_var_bytes`.
    """
    length, pos = read_var_uint(data, pos)
    pos += length
    if pos > len(data):
        raise IndexError("byte array runs past the end")
    return pos


def skip_any(data: bytes, pos: int) -> int:
    """The position after the lib0 ``any`` value at ``pos`` (lib0 ``readAny``).

    Iterative, since the sender chooses the nesting depth: objects are (varstring key, any) pairs,
    arrays a varuint count of values.

    Raises:
        IndexError, OverflowError: as :func:`read_var_bytes`.
        ValueError: an unknown type byte.
    """
    size = len(data)
    frames: list[list[int]] = [[0, 1]]  # [is_object, values left]
    while frames:
        frame = frames[-1]
        if frame[1] == 0:
            frames.pop()
            continue
        frame[1] -= 1
        if frame[0]:
            pos = skip_var_bytes(data, pos)
        kind = data[pos]
        pos += 1
        fixed = _FIXED_SIZES.get(kind)
        if fixed is not None:
            pos += fixed
        elif kind == _INTEGER:
            pos = skip_varint(data, pos)
        elif kind in (ANY_STRING, _BYTES):
            pos = skip_var_bytes(data, pos)
        elif kind in (_OBJECT, _ARRAY):
            length, pos = read_var_uint(data, pos)
            frames.append([kind == _OBJECT, length])
        else:
            raise ValueError(f"unknown value type {kind}")
        if pos > size:
            raise IndexError("value runs past the end")
    return pos


def read_var_int(data: bytes, pos: int) -> tuple[int, int]:
    """The signed varint (lib0 ``readVarInt``: a sign bit and 6 value bits in the first byte) at ``pos``.

    Raises:
        IndexError, OverflowError: as :func:`read_var_uint`.
    """
    first = pos
    byte = data[pos]
    value = byte & 0x3F
    negative = byte & 0x40
    shift = 6
    while byte & 0x80:
        pos += 1
        if pos - first >= MAX_VARINT_BYTES:
            raise OverflowError("varint longer than 64 bits")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        shift += 7
    return (-value if negative else value), pos + 1


def read_any(data: bytes, pos: int) -> tuple[object, int]:
    """The lib0 ``any`` value at ``pos`` as Python data: ``(value, position after it)``.

    ``undefined`` and ``null`` read as None, integers and bigints as int, floats as float,
    strings as str, byte arrays as bytes, objects as dict and arrays as list. Iterative, like
    :func:`skip_any`, since the sender chooses the nesting depth.

    Raises:
        IndexError, OverflowError, UnicodeDecodeError: as :func:`read_var_string`.
        ValueError: an unknown type byte.
    """
    top: list[object] = []
    containers: list[list[object] | dict[str, object]] = [top]
    left = [1]  # values still to read into each open container
    while containers:
        if left[-1] == 0:
            containers.pop()
            left.pop()
            continue
        left[-1] -= 1
        container = containers[-1]
        key = ""
        if isinstance(container, dict):
            key, pos = read_var_string(data, pos)
        kind = data[pos]
        pos += 1
        value: object
        fixed = _FIXED_SIZES.get(kind)
        if fixed is not None:
            if pos + fixed > len(data):
                raise IndexError("value runs past the end")
            value = _read_fixed(kind, data, pos)
            pos += fixed
        elif kind == _INTEGER:
            value, pos = read_var_int(data, pos)
        elif kind == ANY_STRING:
            value, pos = read_var_string(data, pos)
        elif kind == _BYTES:
            value, pos = read_var_bytes(data, pos)
        elif kind in (_OBJECT, _ARRAY):
            count, pos = read_var_uint(data, pos)
            nested: list[object] | dict[str, object] = {} if kind == _OBJECT else []
            containers.append(nested)
            left.append(count)
            value = nested
        else:
            raise ValueError(f"unknown value type {kind}")
        if isinstance(container, dict):
            container[key] = value
        else:
            container.append(value)
    return top[0], pos


def _read_fixed(kind: int, data: bytes, pos: int) -> object:
    """A fixed-size ``any`` value (its bytes are known to be there)."""
    if kind == _FLOAT64:
        return struct.unpack_from(">d", data, pos)[0]
    if kind == _FLOAT32:
        return struct.unpack_from(">f", data, pos)[0]
    if kind == _BIGINT:
        return struct.unpack_from(">q", data, pos)[0]
    if kind in (_TRUE, _FALSE):
        return kind == _TRUE
    return None  # undefined, null
