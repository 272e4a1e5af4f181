"""
AMF0 encoding and decoding: exact bytes, round trips, limits, and the rule
that malformed input raises RTMPProtocolError and nothing else.
"""

from __future__ import annotations

import math
import struct

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tokengate.rtmp import amf0
from tokengate.rtmp.amf0 import (
    MAX_DEPTH,
    MAX_ELEMENTS,
    UNDEFINED,
    ECMAArray,
    decode_all,
    decode_one,
    encode,
)
from tokengate.rtmp.core import RTMPProtocolError


def same(a, b) -> bool:
    """
    Equal, and of the same AMF0 kinds all the way down (ECMAArray is not a
    plain dict, a list is not a tuple, UNDEFINED is not None).
    """
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


leaves = (
    st.none()
    | st.just(UNDEFINED)
    | st.booleans()
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
)
keys = st.text(max_size=8)
values = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(keys, children, max_size=4)
    | st.dictionaries(keys, children, max_size=4).map(ECMAArray),
    max_leaves=20,
)


class ExactBytesTests(SynchronousTestCase):
    """
    Encodings checked byte for byte against the AMF0 specification.
    """

    def test_number(self):
        self.assertEqual(encode(1.0), b"\x00" + struct.pack(">d", 1.0))
        self.assertEqual(encode(3), b"\x00" + struct.pack(">d", 3.0))

    def test_boolean(self):
        self.assertEqual(encode(True, False), b"\x01\x01\x01\x00")

    def test_string(self):
        self.assertEqual(encode("connect"), b"\x02\x00\x07connect")
        self.assertEqual(encode("é"), b"\x02\x00\x02\xc3\xa9")

    def test_long_string(self):
        text = "x" * 65536
        self.assertEqual(encode(text), b"\x0c\x00\x01\x00\x00" + text.encode())
        self.assertEqual(encode("x" * 65535)[:3], b"\x02\xff\xff")

    def test_object(self):
        self.assertEqual(
            encode({"app": "App"}),
            b"\x03\x00\x03app\x02\x00\x03App\x00\x00\x09",
        )

    def test_null_undefined(self):
        self.assertEqual(encode(None, UNDEFINED), b"\x05\x06")

    def test_ecma_array(self):
        self.assertEqual(
            encode(ECMAArray(width=320.0)),
            b"\x08\x00\x00\x00\x01\x00\x05width\x00"
            + struct.pack(">d", 320.0)
            + b"\x00\x00\x09",
        )

    def test_strict_array(self):
        self.assertEqual(
            encode([None, True]), b"\x0a\x00\x00\x00\x02\x05\x01\x01"
        )
        self.assertEqual(encode((None,)), b"\x0a\x00\x00\x00\x01\x05")

    def test_several(self):
        self.assertEqual(
            encode("_result", 1, None),
            b"\x02\x00\x07_result\x00" + struct.pack(">d", 1.0) + b"\x05",
        )


class RoundTripTests(SynchronousTestCase):
    def assertRoundTrip(self, value, expected=None):
        expected = value if expected is None else expected
        decoded = decode_all(encode(value))
        self.assertEqual(len(decoded), 1)
        self.assertTrue(same(decoded[0], expected), (decoded[0], expected))

    def test_every_type(self):
        self.assertRoundTrip(2.5)
        self.assertRoundTrip(-0.0)
        self.assertRoundTrip(float("inf"))
        self.assertRoundTrip(7, 7.0)
        self.assertRoundTrip(True)
        self.assertRoundTrip(False)
        self.assertRoundTrip("")
        self.assertRoundTrip("StreamId?token=T")
        self.assertRoundTrip("ü" * 40000)  # 80000 bytes: a long string
        self.assertRoundTrip({})
        self.assertRoundTrip({"a": 1.0, "": "empty key", "b": {"c": None}})
        self.assertRoundTrip(None)
        self.assertRoundTrip(UNDEFINED)
        self.assertRoundTrip(ECMAArray())
        self.assertRoundTrip(ECMAArray(duration=0.0, encoder="Lavf59.27.100"))
        self.assertRoundTrip([])
        self.assertRoundTrip([1.0, "two", [None, UNDEFINED], {"k": ECMAArray()}])
        self.assertRoundTrip((1.0, 2.0), [1.0, 2.0])

    def test_nan(self):
        self.assertTrue(math.isnan(decode_all(encode(float("nan")))[0]))

    @given(st.lists(values, max_size=4))
    def test_property_round_trip(self, items):
        decoded = decode_all(encode(*items))
        self.assertTrue(same(decoded, items), (decoded, items))

    @given(st.lists(values, min_size=1, max_size=4))
    def test_decode_one_offsets(self, items):
        data = encode(*items)
        offset = 0
        for item in items:
            value, end = decode_one(data, offset)
            self.assertTrue(same(value, item))
            self.assertEqual(end - offset, len(encode(item)))
            offset = end
        self.assertEqual(offset, len(data))

    def test_decode_one_accepts_buffers(self):
        data = b"junk" + encode("abc", 1.0)
        for buf in (data, bytearray(data), memoryview(data)):
            self.assertEqual(decode_one(buf, 4), ("abc", 10))

    def test_undefined_is_a_singleton(self):
        import copy
        import pickle

        self.assertIs(copy.deepcopy(UNDEFINED), UNDEFINED)
        self.assertIs(pickle.loads(pickle.dumps(UNDEFINED)), UNDEFINED)
        self.assertIs(type(UNDEFINED)(), UNDEFINED)
        self.assertFalse(UNDEFINED)
        self.assertEqual(repr(UNDEFINED), "UNDEFINED")


class DecodeOnlyTests(SynchronousTestCase):
    def test_date(self):
        data = b"\x0b" + struct.pack(">dh", 1_700_000_000_000.0, 60)
        self.assertEqual(decode_all(data), [1_700_000_000_000.0])

    def test_xml_document(self):
        self.assertEqual(decode_all(b"\x0f\x00\x00\x00\x03<a>"), ["<a>"])

    def test_unsupported_marker(self):
        self.assertEqual(decode_all(b"\x0d"), [UNDEFINED])

    def test_boolean_nonzero(self):
        self.assertEqual(decode_all(b"\x01\x07"), [True])

    def test_ecma_array_count_ignored(self):
        data = b"\x08\x00\x00\x00\x63\x00\x01a\x05\x00\x00\x09"
        self.assertTrue(same(decode_all(data), [ECMAArray(a=None)]))

    def test_ecma_array_without_end_marker(self):
        data = b"\x08\x00\x00\x00\x01\x00\x01a\x05"
        self.assertTrue(same(decode_all(data), [ECMAArray(a=None)]))

    def test_object_without_end_marker(self):
        self.assertRaises(RTMPProtocolError, decode_all, b"\x03\x00\x01a\x05")

    def test_empty_key_value(self):
        self.assertEqual(decode_all(b"\x03\x00\x00\x05\x00\x00\x09"), [{"": None}])


class MalformedTests(SynchronousTestCase):
    def assertMalformed(self, data, message=None):
        exc = self.assertRaises(RTMPProtocolError, decode_all, data)
        if message is not None:
            self.assertIn(message, str(exc))

    def test_reference(self):
        self.assertMalformed(b"\x07\x00\x01", "reference")

    def test_typed_object(self):
        self.assertMalformed(b"\x10\x00\x01a\x00\x00\x09", "typed")

    def test_amf3_switch(self):
        self.assertMalformed(b"\x11\x01", "AMF3")

    def test_reserved_and_unknown_markers(self):
        for marker in (4, 9, 14, 18, 0x40, 0xFF):
            self.assertMalformed(bytes([marker]))

    def test_invalid_utf8(self):
        self.assertMalformed(b"\x02\x00\x02\xc3\x28", "UTF-8")
        self.assertMalformed(b"\x03\x00\x01\xff\x05\x00\x00\x09", "UTF-8")
        self.assertMalformed(b"\x0c\x00\x00\x00\x01\x80", "UTF-8")

    def test_truncations(self):
        for data in (
            b"\x00\x00",
            b"\x01",
            b"\x02\x00",
            b"\x02\x00\x05abc",
            b"\x0c\x00\x00\x00",
            b"\x0c\xff\xff\xff\xffab",
            b"\x03",
            b"\x03\x00",
            b"\x03\x00\x00",
            b"\x03\x00\x03ab",
            b"\x03\x00\x01a",
            b"\x08\x00\x00",
            b"\x0a\x00\x00\x00\x02\x05",
            b"\x0b\x00",
        ):
            self.assertMalformed(data)

    def test_decode_one_bad_offset(self):
        self.assertRaises(RTMPProtocolError, decode_one, b"\x05", 1)
        self.assertRaises(RTMPProtocolError, decode_one, b"", 0)
        self.assertRaises(RTMPProtocolError, decode_one, b"\x05", -1)

    def test_depth_limit(self):
        # At most MAX_DEPTH containers may be nested, both ways.
        ok = [[]]
        for _ in range(MAX_DEPTH - 1):
            ok = [ok]
        # the innermost list is at depth MAX_DEPTH: too deep to encode
        self.assertRaises(ValueError, encode, ok)
        inner = []
        for _ in range(MAX_DEPTH - 1):
            inner = [inner]
        self.assertTrue(same(decode_all(encode(inner)), [inner]))
        deeper = b"\x0a\x00\x00\x00\x01" * (MAX_DEPTH + 1) + b"\x05"
        self.assertMalformed(deeper, "deeply")

    def test_deep_nesting_is_not_a_recursion_error(self):
        for unit in (b"\x0a\x00\x00\x00\x01", b"\x03\x00\x01a", b"\x08\x00\x00\x00\x01\x00\x01a"):
            self.assertMalformed(unit * 100_000)

    def test_huge_counts_are_rejected_cheaply(self):
        self.assertMalformed(b"\x0a\xff\xff\xff\xff")
        self.assertMalformed(b"\x0a\x00\x00\x10\x00" + b"\x05" * 10)

    def test_max_elements(self):
        count = MAX_ELEMENTS + 1
        self.assertMalformed(struct.pack(">BI", 10, count) + b"\x05" * count)
        body = b"".join(b"\x00\x01a\x05" for _ in range(count))
        self.assertMalformed(b"\x03" + body + b"\x00\x00\x09", "too many")
        fine = struct.pack(">BI", 10, MAX_ELEMENTS) + b"\x05" * MAX_ELEMENTS
        self.assertEqual(len(decode_all(fine)[0]), MAX_ELEMENTS)

    @given(values)
    def test_every_truncation_is_malformed(self, value):
        data = encode(value)
        for cut in range(1, len(data)):
            try:
                decode_all(data[:cut])
            except RTMPProtocolError:
                pass
            else:
                # Only a cut ECMA array at a property boundary may decode.
                self.assertIn(b"\x08", data)

    @given(st.binary(max_size=300))
    def test_garbage_raises_only_protocol_errors(self, data):
        try:
            decode_all(data)
        except RTMPProtocolError:
            pass

    @given(values, st.data())
    def test_mutations_raise_only_protocol_errors(self, value, data):
        raw = bytearray(encode(value))
        for _ in range(data.draw(st.integers(1, 4))):
            index = data.draw(st.integers(0, len(raw) - 1))
            raw[index] = data.draw(st.integers(0, 255))
        try:
            decode_all(bytes(raw))
        except RTMPProtocolError:
            pass


class EncodeErrorTests(SynchronousTestCase):
    def test_unsupported_types(self):
        for value in (b"bytes", object(), {1: "int key"}, {1.5}):
            self.assertRaises(TypeError, encode, value)

    def test_key_too_long(self):
        self.assertRaises(ValueError, encode, {"k" * 65536: None})

    def test_cycle(self):
        cyclic: list = []
        cyclic.append(cyclic)
        self.assertRaises(ValueError, encode, cyclic)
        loop: dict = {}
        loop["self"] = loop
        self.assertRaises(ValueError, encode, loop)

    def test_huge_int(self):
        self.assertRaises(ValueError, encode, 10**400)

    def test_lone_surrogate(self):
        self.assertRaises(ValueError, encode, "\ud800")

    def test_module_exports(self):
        self.assertIs(amf0.RTMPProtocolError, RTMPProtocolError)
