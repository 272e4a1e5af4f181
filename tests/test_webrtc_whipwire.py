"""
The pure part of WHIP/WHEP (L{tokengate.webrtc.whipwire}): Bearer tokens,
media types, the offer's check, trickle ICE fragments, If-Match, Link
headers and session ids; anything a client sends raises L{WhipError} or
nothing.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tokengate.webrtc.whipwire import (
    MAX_FRAGMENT_CANDIDATES,
    MAX_OFFER,
    WhipError,
    bearerToken,
    checkOffer,
    iceServerLinks,
    ifMatch,
    isMediaType,
    isSessionId,
    newETag,
    newSessionId,
    parseSdpFrag,
)

from tests.whipoffers import CANDIDATE, fragment, offer


class Headers(SynchronousTestCase):
    def test_bearer(self) -> None:
        self.assertEqual(bearerToken("Bearer abc"), "abc")
        self.assertEqual(bearerToken("bearer   abc  "), "abc")
        self.assertEqual(bearerToken("BEARER abc"), "abc")
        self.assertIsNone(bearerToken(None))
        self.assertRaises(WhipError, bearerToken, "Basic dXNlcjpwYXNz")
        self.assertRaises(WhipError, bearerToken, "Bearer")
        self.assertRaises(WhipError, bearerToken, "Bearer   ")
        self.assertRaises(WhipError, bearerToken, "")

    def test_mediaType(self) -> None:
        self.assertTrue(isMediaType("application/sdp", "application/sdp"))
        self.assertTrue(isMediaType("Application/SDP; charset=utf-8", "application/sdp"))
        self.assertFalse(isMediaType("application/json", "application/sdp"))
        self.assertFalse(isMediaType(None, "application/sdp"))
        self.assertFalse(isMediaType("application/sdpx", "application/sdp"))

    def test_ifMatch(self) -> None:
        self.assertIsNone(ifMatch(None, '"a"'))
        self.assertTrue(ifMatch("*", '"a"'))
        self.assertTrue(ifMatch('"a"', '"a"'))
        self.assertTrue(ifMatch('"b", "a"', '"a"'))
        self.assertFalse(ifMatch('"b"', '"a"'))
        self.assertFalse(ifMatch('W/"a"', '"a"'))  # strong comparison

    def test_links(self) -> None:
        links = iceServerLinks([
            {"urls": ["stun:127.0.0.1:3478"]},
            {"urls": ["turn:127.0.0.1:3478?transport=udp", "turns:t.example:5349"],
             "username": "1700000000:tokengate", "credential": 'a"b\\c'},
        ])
        self.assertEqual(links, [
            '<stun:127.0.0.1:3478>; rel="ice-server"',
            '<turn:127.0.0.1:3478?transport=udp>; rel="ice-server"; '
            'username="1700000000:tokengate"; credential="a\\"b\\\\c"; '
            'credential-type="password"',
            '<turns:t.example:5349>; rel="ice-server"; '
            'username="1700000000:tokengate"; credential="a\\"b\\\\c"; '
            'credential-type="password"',
        ])
        self.assertEqual(iceServerLinks([]), [])

    def test_ids(self) -> None:
        ids = {newSessionId() for _ in range(100)}
        self.assertEqual(len(ids), 100)
        for i in ids:
            self.assertTrue(isSessionId(i), i)
            self.assertEqual(len(i), 32)  # 192 bits
        self.assertFalse(isSessionId("x" * 31))
        self.assertFalse(isSessionId("../" + "x" * 29))
        tag = newETag()
        self.assertTrue(tag.startswith('"') and tag.endswith('"'))
        self.assertNotEqual(tag, newETag())


class Offers(SynchronousTestCase):
    def test_publish(self) -> None:
        summary = checkOffer(offer(), publish=True)
        self.assertEqual(summary.kinds, ("audio", "video"))
        self.assertEqual(summary.mids, ("0", "1"))
        self.assertEqual(summary.iceUfrag, "uFrA")
        # VP8 (transcoded) and audio only are publishable
        checkOffer(offer(video="VP8"), publish=True)
        checkOffer(offer(video="AV1", audio="PCMU"), publish=True)

    def test_play(self) -> None:
        checkOffer(offer("recvonly"), publish=False)
        checkOffer(offer("sendrecv"), publish=False)

    def test_refused(self) -> None:
        cases = [
            ("", True), ("hello", True), ("v=1\r\n", True),
            (offer().replace("a=ice-ufrag:uFrA\r\n", ""), True),
            (offer().replace("a=fingerprint:", "a=x-fingerprint:"), True),
            (offer("recvonly"), True),  # a WHIP offer that sends nothing
            (offer("sendonly"), False),  # a WHEP offer that receives nothing
            (offer("recvonly", video="VP8"), False),  # WHEP: H.264 only
            (offer(video="AV1", audio="G722"), True),
            ("v=0\r\n" + "a=x\r\n" * 3000, True),
            ("v=0\r\n" + "m=video 9 UDP 96\r\n" * 9, True),
            ("v=0\r\nnot sdp\r\n", True),
            ("v=0\r\n" + "a=" + "x" * MAX_OFFER, True),
        ]
        for sdp, publish in cases:
            self.assertRaises(WhipError, checkOffer, sdp, publish)

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=400))
    def test_anything(self, text: str) -> None:
        for publish in (True, False):
            try:
                checkOffer("v=0\r\n" + text, publish)
            except WhipError:
                pass


class Fragments(SynchronousTestCase):
    def test_parse(self) -> None:
        frag = parseSdpFrag(fragment())
        self.assertEqual((frag.iceUfrag, frag.icePwd, frag.ended),
                         ("uFrA", "pAsSwOrDpAsSwOrDpAsSwOrD", True))
        self.assertEqual([(c.candidate, c.mid, c.index) for c in frag.candidates],
                         [(CANDIDATE, "0", 0)])

    def test_midAfterCandidates(self) -> None:
        frag = parseSdpFrag("m=audio 9 RTP/AVP 0\r\na={}\r\na=mid:a\r\n"
                            "m=video 9 RTP/AVP 0\r\na={}\r\n".format(CANDIDATE, CANDIDATE))
        self.assertEqual([(c.mid, c.index) for c in frag.candidates], [("a", 0), (None, 1)])

    def test_onlyEnd(self) -> None:
        frag = parseSdpFrag("a=ice-ufrag:x\r\na=ice-pwd:y\r\na=end-of-candidates\r\n")
        self.assertEqual((frag.candidates, frag.ended), ((), True))
        frag = parseSdpFrag("")
        self.assertEqual((frag.iceUfrag, frag.candidates, frag.ended), (None, (), False))

    def test_refused(self) -> None:
        cases = [
            fragment(candidates=("candidate:1 1 udp",)),
            fragment(candidates=(CANDIDATE + " x" * 600,)),
            fragment(candidates=(CANDIDATE,) * (MAX_FRAGMENT_CANDIDATES + 1)),
            "a=ice-ufrag:x\r\na=ice-ufrag:y\r\n",
            "a=ice-pwd:x\r\na=ice-pwd:y\r\n",
            "hello\r\n",
            "v=0\r\n",
            "a=" + "x" * 20000,
        ]
        for text in cases:
            self.assertRaises(WhipError, parseSdpFrag, text)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.one_of(
        st.sampled_from(["a=ice-ufrag:u", "a=ice-pwd:p", "m=audio 9 X 0", "a=mid:0",
                         "a=end-of-candidates", "a=" + CANDIDATE, "a=group:BUNDLE 0"]),
        st.text(max_size=40)), max_size=40))
    def test_anything(self, lines: list[str]) -> None:
        try:
            frag = parseSdpFrag("\r\n".join(lines))
        except WhipError:
            return
        self.assertLessEqual(len(frag.candidates), MAX_FRAGMENT_CANDIDATES)
