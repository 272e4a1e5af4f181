# -*- test-case-name: tests.test_rtmp_amf0 -*-
"""
AMF0 encoding and decoding, pure Python, no I/O.

Python mapping (Python: AMF0 marker, AMF0 type):

  - C{float}, C{int}: 0, number (IEEE 754 double; ints become floats)
  - C{bool}: 1, boolean
  - C{str}: 2 / 12, string; long string when > 65535 UTF-8 bytes
  - C{dict}: 3, anonymous object (keys must be C{str})
  - C{None}: 5, null
  - L{UNDEFINED}: 6, undefined
  - L{ECMAArray}: 8, ECMA array (a C{dict} subclass)
  - C{list}, C{tuple}: 10, strict array (decodes to C{list})

A decoded value is an L{AMFValue}.

Decoding also accepts date (11, decoded as a C{float} of milliseconds since
the epoch, the time zone is ignored), XML document (15, decoded as C{str})
and the "unsupported" marker (13, decoded as L{UNDEFINED}).  References
(7), typed objects (16), the AMF3 switch (17) and the reserved markers
(4 movieclip, 14 recordset, >17) raise L{RTMPProtocolError}, as does
any malformed or truncated input, invalid UTF-8, nesting deeper than
L{MAX_DEPTH} or a container with more than L{MAX_ELEMENTS}
entries.  Decoding never raises anything else.

Encoding raises C{TypeError} for values outside the mapping and
C{ValueError} for unencodable ones (an object key over 65535 bytes, nesting
deeper than L{MAX_DEPTH}, which includes cycles, an integer too large
for a double, a string with lone surrogates).

Tolerances: an ECMA array's count is ignored (encoders get it wrong), its
properties are read up to the end marker; an ECMA array that runs to the end
of the data without its end marker is accepted.
"""

from __future__ import annotations

from struct import Struct
from typing import Union

from tokengate.rtmp.errors import RTMPProtocolError

__all__ = [
    "AMFValue",
    "ECMAArray",
    "MAX_DEPTH",
    "MAX_ELEMENTS",
    "RTMPProtocolError",
    "UNDEFINED",
    "decode_all",
    "decode_one",
    "encode",
]

#: At most this many containers may be nested in one value.
MAX_DEPTH = 32
#: A single object, ECMA array or strict array may hold at most this many
#: entries.
MAX_ELEMENTS = 65536

NUMBER = 0x00
BOOLEAN = 0x01
STRING = 0x02
OBJECT = 0x03
MOVIECLIP = 0x04
NULL = 0x05
UNDEFINED_MARKER = 0x06
REFERENCE = 0x07
ECMA_ARRAY = 0x08
OBJECT_END = 0x09
STRICT_ARRAY = 0x0A
DATE = 0x0B
LONG_STRING = 0x0C
UNSUPPORTED = 0x0D
RECORDSET = 0x0E
XML_DOCUMENT = 0x0F
TYPED_OBJECT = 0x10
AVMPLUS = 0x11

_F64 = Struct(">d")
_U16 = Struct(">H")
_U32 = Struct(">I")
_NUMBER_HEAD = Struct(">Bd")
_DATE = Struct(">dh")
_END = b"\x00\x00\x09"


class _Undefined:
    """
    The type of L{UNDEFINED}; there is exactly one instance.
    """

    __slots__ = ()
    _instance: "_Undefined | None" = None

    def __new__(cls) -> "_Undefined":
        if cls._instance is None:
            cls._instance = object.__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "UNDEFINED"


#: The AMF0 C{undefined} value (marker 6), distinct from C{None} (null).
UNDEFINED = _Undefined()

#: A decoded AMF0 value (a recursive alias mypy can check); an object is a
#: C{dict}, an ECMA array an L{ECMAArray}.
AMFValue = Union[None, bool, float, str, _Undefined, list["AMFValue"], dict[str, "AMFValue"]]

#: What the decoder reads.
_Buffer = Union[bytes, bytearray, memoryview]


class ECMAArray(dict[str, AMFValue]):
    """
    A C{dict} that encodes as an AMF0 ECMA array (marker 8), as used by
    C{onMetaData}.  Keys must be C{str}.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"ECMAArray({dict.__repr__(self)})"


# ---------------------------------------------------------------- encoding


def encode(*values: object) -> bytes:
    """
    Encode C{values} one after the other, as in a command or data message.
    """
    out: list[bytes] = []
    for value in values:
        _encode(value, out, 0)
    return b"".join(out)


def _encode_key(key: object, out: list[bytes]) -> None:
    if not isinstance(key, str):
        raise TypeError(f"AMF0 object keys must be str, not {type(key).__name__}")
    raw = key.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("AMF0 object key longer than 65535 bytes")
    out.append(_U16.pack(len(raw)))
    out.append(raw)


def _encode(value: object, out: list[bytes], depth: int) -> None:
    if value is None:
        out.append(b"\x05")
    elif value is True:
        out.append(b"\x01\x01")
    elif value is False:
        out.append(b"\x01\x00")
    elif isinstance(value, float):
        out.append(_NUMBER_HEAD.pack(NUMBER, value))
    elif isinstance(value, int):
        try:
            number = float(value)
        except OverflowError:
            raise ValueError("integer too large for an AMF0 number") from None
        out.append(_NUMBER_HEAD.pack(NUMBER, number))
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        if len(raw) <= 0xFFFF:
            out.append(b"\x02" + _U16.pack(len(raw)))
        elif len(raw) <= 0xFFFFFFFF:
            out.append(b"\x0c" + _U32.pack(len(raw)))
        else:
            raise ValueError("string too long for AMF0")
        out.append(raw)
    elif value is UNDEFINED:
        out.append(b"\x06")
    elif isinstance(value, dict):
        if depth >= MAX_DEPTH:
            raise ValueError("AMF0 value nested too deeply (or cyclic)")
        if isinstance(value, ECMAArray):
            out.append(b"\x08" + _U32.pack(len(value) & 0xFFFFFFFF))
        else:
            out.append(b"\x03")
        for key, item in value.items():
            _encode_key(key, out)
            _encode(item, out, depth + 1)
        out.append(_END)
    elif isinstance(value, (list, tuple)):
        if depth >= MAX_DEPTH:
            raise ValueError("AMF0 value nested too deeply (or cyclic)")
        if len(value) > 0xFFFFFFFF:
            raise ValueError("strict array too long for AMF0")
        out.append(b"\x0a" + _U32.pack(len(value)))
        for item in value:
            _encode(item, out, depth + 1)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as AMF0")


# ---------------------------------------------------------------- decoding


def decode_all(data: _Buffer) -> list[AMFValue]:
    """
    Decode every value in C{data}, which must hold whole values only.

    @raise RTMPProtocolError: on any malformed input.
    """
    values: list[AMFValue] = []
    offset = 0
    end = len(data)
    while offset < end:
        value, offset = _decode(data, offset, end, 0)
        values.append(value)
    return values


def decode_one(buf: _Buffer, offset: int = 0) -> tuple[AMFValue, int]:
    """
    Decode one value of C{buf} (bytes, bytearray or memoryview) starting at
    C{offset}.

    @return: C{(value, offset just past the value)}.
    @raise RTMPProtocolError: on any malformed or truncated input.
    """
    end = len(buf)
    if offset < 0 or offset >= end:
        raise RTMPProtocolError("AMF0: no data to decode")
    return _decode(buf, offset, end, 0)


def _short(what: str) -> RTMPProtocolError:
    return RTMPProtocolError(f"AMF0: truncated {what}")


def _text(buf: _Buffer, start: int, stop: int) -> str:
    try:
        return str(buf[start:stop], "utf-8")
    except UnicodeDecodeError:
        raise RTMPProtocolError("AMF0: invalid UTF-8 in string") from None


def _decode(buf: _Buffer, o: int, end: int, depth: int) -> tuple[AMFValue, int]:
    # The caller guarantees o < end.
    marker = buf[o]
    o += 1
    if marker == NUMBER:
        if o + 8 > end:
            raise _short("number")
        return _F64.unpack_from(buf, o)[0], o + 8
    if marker == STRING:
        if o + 2 > end:
            raise _short("string length")
        n = (buf[o] << 8) | buf[o + 1]
        o += 2
        if o + n > end:
            raise _short("string")
        return _text(buf, o, o + n), o + n
    if marker == OBJECT or marker == ECMA_ARRAY:
        if depth >= MAX_DEPTH:
            raise RTMPProtocolError("AMF0: values nested too deeply")
        if marker == ECMA_ARRAY:
            if o + 4 > end:
                raise _short("ECMA array count")
            o += 4  # the count is advisory; read up to the end marker
            result: dict[str, AMFValue] = ECMAArray()
        else:
            result = {}
        return _decode_properties(buf, o, end, depth, result)
    if marker == BOOLEAN:
        if o >= end:
            raise _short("boolean")
        return buf[o] != 0, o + 1
    if marker == NULL:
        return None, o
    if marker == UNDEFINED_MARKER or marker == UNSUPPORTED:
        return UNDEFINED, o
    if marker == STRICT_ARRAY:
        if depth >= MAX_DEPTH:
            raise RTMPProtocolError("AMF0: values nested too deeply")
        if o + 4 > end:
            raise _short("strict array count")
        count = _U32.unpack_from(buf, o)[0]
        o += 4
        if count > MAX_ELEMENTS:
            raise RTMPProtocolError(f"AMF0: strict array of {count} elements")
        if count > end - o:  # every element takes at least one byte
            raise _short("strict array")
        items: list[AMFValue] = []
        for _ in range(count):
            if o >= end:
                raise _short("strict array")
            item, o = _decode(buf, o, end, depth + 1)
            items.append(item)
        return items, o
    if marker == LONG_STRING or marker == XML_DOCUMENT:
        if o + 4 > end:
            raise _short("long string length")
        n = _U32.unpack_from(buf, o)[0]
        o += 4
        if n > end - o:
            raise _short("long string")
        return _text(buf, o, o + n), o + n
    if marker == DATE:
        if o + 10 > end:
            raise _short("date")
        return _DATE.unpack_from(buf, o)[0], o + 10
    if marker == REFERENCE:
        raise RTMPProtocolError("AMF0: references are not supported")
    if marker == TYPED_OBJECT:
        raise RTMPProtocolError("AMF0: typed objects are not supported")
    if marker == AVMPLUS:
        raise RTMPProtocolError("AMF0: AMF3 values are not supported")
    if marker == OBJECT_END:
        raise RTMPProtocolError("AMF0: object end marker outside an object")
    raise RTMPProtocolError(f"AMF0: unknown or reserved marker {marker}")


def _decode_properties(
    buf: _Buffer, o: int, end: int, depth: int, result: dict[str, AMFValue]
) -> tuple[dict[str, AMFValue], int]:
    ecma = type(result) is ECMAArray
    count = 0
    while True:
        if o + 2 > end:
            if ecma and o == end:
                # Tolerate an ECMA array cut off without its end marker.
                return result, o
            raise _short("object key")
        n = (buf[o] << 8) | buf[o + 1]
        o += 2
        if n == 0:
            if o >= end:
                raise _short("object")
            if buf[o] == OBJECT_END:
                return result, o + 1
            key = ""
        else:
            if o + n > end:
                raise _short("object key")
            key = _text(buf, o, o + n)
            o += n
            if o >= end:
                raise _short("object value")
        count += 1
        if count > MAX_ELEMENTS:
            raise RTMPProtocolError("AMF0: object with too many properties")
        value, o = _decode(buf, o, end, depth + 1)
        result[key] = value
