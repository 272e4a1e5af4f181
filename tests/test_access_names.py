"""
Tests for L{tokengate.access.names}: one grammar for every protocol.
"""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tokengate.access.names import MAX_STREAM_ID, isValidAppName, isValidStreamId
from tokengate.srt.streamid import BadStreamId, parse_stream_id

BAD = ["", "..", ".", ".hidden", "a b", "a/b", "x%00y", "x\x00y", "x\n", "caf\u00e9",
       "a" * (MAX_STREAM_ID + 1), "<svg>", "a?b", "a\\b", "\u0661"]
GOOD = ["cam1", "stream.1", "a", "A-b_c.d", "a" * MAX_STREAM_ID, "-x", "_"]


class GrammarTests(SynchronousTestCase):
    def test_good(self) -> None:
        for s in GOOD:
            self.assertTrue(isValidStreamId(s), s)

    def test_bad(self) -> None:
        for s in BAD + [None, 3, b"cam"]:
            self.assertFalse(isValidStreamId(s), repr(s))

    def test_appNames(self) -> None:
        self.assertTrue(isValidAppName("LiveApp"))
        for s in ["", "a.b", "..", "a" * 65, "Live App", "x\n"]:
            self.assertFalse(isValidAppName(s), repr(s))

    @given(st.text(min_size=1, max_size=140))
    def test_acceptedIsSafeAsAPathPart(self, s: str) -> None:
        if isValidStreamId(s):
            self.assertFalse(s.startswith("."))
            self.assertTrue(s.isascii() and s.isprintable())
            self.assertNotIn("/", s)

    def test_srtUsesTheGrammar(self) -> None:
        """
        SRT ids are checked after percent-decoding, with the same grammar.
        """
        self.assertEqual(parse_stream_id("LiveApp/cam.1,token=t").stream_id, "cam.1")
        for raw in ["LiveApp/a%20b", "LiveApp/x%00y", "LiveApp/..", "LiveApp/%2Ehidden",
                    "LiveApp/caf%C3%A9", "LiveApp/" + "a" * 400, "Live%0AApp/x",
                    "#!::r=LiveApp/%1B,m=publish"]:
            self.assertRaises(BadStreamId, parse_stream_id, raw)
