"""
Tests for L{tokengate.jsonvalue}: the one reader of client JSON and the
typed value checks.
"""

from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tokengate.jsonvalue import (
    MAX_DEPTH,
    MAX_NUMBER_LENGTH,
    JSONError,
    boolValue,
    decimalText,
    floatValue,
    intValue,
    readJSON,
    requireObject,
    stringValue,
    urlValue,
)

#: any JSON value, nested within the default limit
_scalars = (st.none() | st.booleans() | st.integers(-(10**18), 10**18)
            | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
JSON_VALUES = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20,
)


def nested(depth: int, inner: str = "1") -> str:
    """
    C{depth} arrays and objects, alternating, around C{inner}.
    """
    text = inner
    for i in range(depth):
        text = "[" + text + "]" if i % 2 else '{"k":' + text + "}"
    return text


def depthOf(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((depthOf(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depthOf(v) for v in value.values()), default=0)
    return 0


class ReaderTests(SynchronousTestCase):
    def test_values(self) -> None:
        self.assertEqual(readJSON(b'{"a":[1,-2.5,"x",true,null]}'),
                         {"a": [1, -2.5, "x", True, None]})
        self.assertEqual(readJSON('"\\ud83d\\ude00"'), "\U0001F600")
        self.assertEqual(readJSON(b'"[[[[{{{"'), "[[[[{{{")

    def test_depth(self) -> None:
        """
        Nesting up to the limit is read; one more is refused, and a
        100,000-deep array is refused by the linear scan (no
        RecursionError), brackets inside strings not counted.
        """
        self.assertEqual(depthOf(readJSON(nested(MAX_DEPTH))), MAX_DEPTH)
        for text in (nested(MAX_DEPTH + 1), "[" * 100_000 + "]" * 100_000,
                     "[" * 100_000, '{"a":' * 60_000):
            e = self.assertRaises(JSONError, readJSON, text)
            self.assertIn("deeper than", str(e))
        self.assertEqual(readJSON(nested(3, json.dumps("[" * 1000))), {"k": [{"k": "[" * 1000}]})
        self.assertEqual(depthOf(readJSON(nested(5), maxDepth=5)), 5)
        self.assertRaises(JSONError, readJSON, nested(6), maxDepth=5)

    def test_numbers(self) -> None:
        for text in ("9" * 5000, "9" * (MAX_NUMBER_LENGTH + 1), "1e999", "-1e999",
                     "NaN", "Infinity", "-Infinity", "[NaN]", "0." + "1" * 50):
            self.assertRaises(JSONError, readJSON, text)
        self.assertEqual(readJSON("9" * MAX_NUMBER_LENGTH), int("9" * MAX_NUMBER_LENGTH))

    def test_refused(self) -> None:
        for data in (b"\xff\xfe", b"\xef\xbb\xbf{}", b"", b"{nope", b"[1,", b'{"a":1,"a":2}',
                     b'"\\ud800"', b'["\\udc00x"]', b'{"\\ud800":1}', b'"a\x00b"', b"'x'",
                     '"\\"' * 10_000, "\u00b2"):
            self.assertRaises(JSONError, readJSON, data)

    @given(JSON_VALUES)
    def test_anyJSON(self, value: object) -> None:
        """
        Any JSON text within the limits reads back as its value.
        """
        self.assertEqual(readJSON(json.dumps(value)), value)

    @given(st.binary(max_size=200) | st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")))
    def test_anyBytes(self, data: bytes) -> None:
        """
        Any bytes give a value or a JSONError, nothing else.
        """
        try:
            readJSON(data)
        except JSONError:
            pass

    @given(st.text(alphabet='[]{}",:\\1a ', max_size=300))
    def test_anyBrackets(self, text: str) -> None:
        """
        Texts made of brackets, quotes and escapes: a value within the depth
        limit or a JSONError, whatever json.loads would have done.
        """
        try:
            value = readJSON(text, maxDepth=4)
        except JSONError:
            return
        self.assertLessEqual(depthOf(value), 4)

    @given(st.integers(1, 3000), st.sampled_from(["[", '{"a":', '[{"b":']))
    def test_tooDeepRefused(self, depth: int, opener: str) -> None:
        text = opener * depth
        closer = "".join({"[": "]", '{"a":': "}", '[{"b":': "}]"}[opener] for _ in range(depth))
        levels = depth * (2 if opener == '[{"b":' else 1)
        if levels > MAX_DEPTH:
            self.assertRaises(JSONError, readJSON, text + "1" + closer)
        else:
            self.assertEqual(depthOf(readJSON(text + "1" + closer)), levels)


class ValueTests(SynchronousTestCase):
    def test_object(self) -> None:
        self.assertEqual(requireObject({"a": 1}, "Token"), {"a": 1})
        e = self.assertRaises(JSONError, requireObject, [1], "Token")
        self.assertEqual((str(e), e.field, e.kind), ("Token must be a JSON object", None, "json"))

    def test_bool(self) -> None:
        self.assertIs(boolValue(False, "x"), False)
        for bad in (0, 1, "true", None):
            e = self.assertRaises(JSONError, boolValue, bad, "webRTCEnabled")
            self.assertEqual((e.field, e.kind), ("webRTCEnabled", "field"))

    def test_int(self) -> None:
        self.assertEqual(intValue(5, "n", 1, 5), 5)
        for bad in (0, 6, True, 2.0, "3", None):
            e = self.assertRaises(JSONError, intValue, bad, "n", 1, 5)
            self.assertEqual(str(e), "n must be an integer from 1 to 5")

    def test_float(self) -> None:
        self.assertEqual(floatValue(2, "f", 0.5, 60), 2.0)
        for bad in (math.inf, math.nan, -math.inf, 0.4, 61, True, "2"):
            self.assertRaises(JSONError, floatValue, bad, "f", 0.5, 60)

    def test_string(self) -> None:
        self.assertEqual(stringValue("abc", "s", 3), "abc")
        for bad in ("abcd", "a\nb", "a\x1bb", "a\x85", 3, None):
            self.assertRaises(JSONError, stringValue, bad, "s", 3)
        self.assertEqual(stringValue("a\tb", "s", 3, allowControl=True), "a\tb")

    def test_url(self) -> None:
        for good in ("http://127.0.0.1:8080/jwks", "https://idp.example.com/.well-known/jwks.json",
                     "https://[::1]/k?x=1"):
            self.assertEqual(urlValue(good, "jwksURL"), good)
        for bad in ("", "ftp://a/b", "http://", "http:///x", "//a/b", "http://a b/",
                    "http://a:99999/", "http://a/\u00e9", "http://a/" + "x" * 2048, None, 5):
            e = self.assertRaises(JSONError, urlValue, bad, "jwksURL")
            self.assertEqual((str(e), e.field), ("jwksURL must be an http or https URL", "jwksURL"))

    def test_decimalText(self) -> None:
        self.assertEqual(decimalText("60", "hlsTime", 1, 60), 60)
        self.assertEqual(decimalText("007", "n", 0, 999), 7)
        for bad in ("\u00b2", "\u0663", "9" * 5000, "9" * 400, "61", "0", "-1", "+1", " 1",
                    "1 ", "1.0", "", "0x10", None, 5):
            e = self.assertRaises(JSONError, decimalText, bad, "hlsTime", 1, 60)
            self.assertEqual(str(e), "hlsTime must be an integer from 1 to 60")


class OneReaderTests(SynchronousTestCase):
    #: modules that parse JSON the server wrote itself, and why that is not
    #: client input
    SERVER_AUTHORED = {
        "apps.py": "its own apps.json",
        "access/sessions.py": "avatar ids it serialized itself",
        "access/revocation.py": "revocation events of the other nodes, size-capped, "
                                "RecursionError caught",
        "web/sessions.py": "session credentials, parsed only after their MAC is checked",
        "media/recorder/journal.py": "a recording's own config file",
        "access/subscriberstores.py": "subscriber records and events it stored itself "
                                      "(SQLite rows, Redis values)",
    }

    def test_everyClientDocumentThroughTheReader(self) -> None:
        """
        json.loads/json.load appear only in readJSON and in modules that
        parse server-authored JSON: client JSON has one reader.
        """
        import ast
        import os

        root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "tokengate")
        found = set()
        for base, _, files in os.walk(root):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(base, name)
                rel = os.path.relpath(path, root).replace(os.sep, "/")
                tree = ast.parse(open(path, encoding="utf-8").read())
                for node in ast.walk(tree):
                    if (isinstance(node, ast.Attribute) and node.attr in ("loads", "load")
                            and isinstance(node.value, ast.Name) and node.value.id == "json"):
                        found.add(rel)
        self.assertEqual(found - {"jsonvalue.py"}, set(self.SERVER_AUTHORED))
