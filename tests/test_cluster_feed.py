"""
L{tokengate.cluster.feed}: the internal feed's credential and its FLV
framing of hub frames.
"""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tokengate.cluster.feed import (
    CLOCK_SKEW,
    CREDENTIAL_LIFETIME,
    FeedAudio,
    FeedEncoder,
    FeedError,
    FeedMetadata,
    FeedParser,
    FeedVideo,
    checkFeedCredential,
    feedCredential,
    feedKey,
)
from tokengate.media.flv import build_flv_header, build_flv_tag

KEY = feedKey("c" * 32)
NOW = 1_800_000_000


class CredentialTests(SynchronousTestCase):
    def credential(self, **kw):
        args = dict(app="live", streamId="cam1", node="node-b", expiry=NOW + 10)
        args.update(kw)
        return feedCredential(KEY, **args)

    def test_opensItsOwnFeed(self) -> None:
        self.assertTrue(checkFeedCredential(KEY, "live", "cam1", "node-b", NOW + 10,
                                            self.credential(), NOW))

    def test_boundToEveryField(self) -> None:
        good = self.credential()
        for app, stream, node, expiry in (("live2", "cam1", "node-b", NOW + 10),
                                          ("live", "cam2", "node-b", NOW + 10),
                                          ("live", "cam1", "node-c", NOW + 10),
                                          ("live", "cam1", "node-b", NOW + 11)):
            self.assertFalse(checkFeedCredential(KEY, app, stream, node, expiry, good, NOW))

    def test_anotherSecretRefused(self) -> None:
        other = feedCredential(feedKey("d" * 32), "live", "cam1", "node-b", NOW + 10)
        self.assertFalse(checkFeedCredential(KEY, "live", "cam1", "node-b", NOW + 10, other,
                                             NOW))

    def test_keyIsNotTheSecret(self) -> None:
        self.assertNotEqual(feedKey("c" * 32), ("c" * 32).encode())
        self.assertEqual(len(KEY), 32)

    def test_expiry(self) -> None:
        late = NOW + CLOCK_SKEW + 1
        self.assertFalse(checkFeedCredential(KEY, "live", "cam1", "node-b", NOW,
                                             self.credential(expiry=NOW), late))
        ahead = NOW + CREDENTIAL_LIFETIME + CLOCK_SKEW + 1
        self.assertFalse(checkFeedCredential(KEY, "live", "cam1", "node-b", ahead,
                                             self.credential(expiry=ahead), NOW))
        self.assertTrue(checkFeedCredential(KEY, "live", "cam1", "node-b", NOW,
                                            self.credential(expiry=NOW), NOW + CLOCK_SKEW))

    def test_malformed(self) -> None:
        good = self.credential()
        for expiry, credential in ((str(NOW + 10), good), (True, good), (NOW + 10, None),
                                   (NOW + 10, good[:-1]), (NOW + 10, good.upper()),
                                   (NOW + 10, "")):
            self.assertFalse(checkFeedCredential(KEY, "live", "cam1", "node-b", expiry,
                                                 credential, NOW))


def _frames():
    kinds = st.sampled_from(["video", "audio", "meta"])
    body = st.binary(min_size=0, max_size=300)
    ts = st.integers(min_value=0, max_value=(1 << 32) - 1)
    meta = st.dictionaries(st.text(max_size=8), st.one_of(
        st.floats(allow_nan=False), st.text(max_size=10), st.booleans()), max_size=4)
    return st.lists(st.tuples(kinds, ts, body, meta), max_size=30)


def _encode(items):
    encoder = FeedEncoder()
    out = [encoder.header()]
    expected = []
    for kind, ts, body, meta in items:
        if kind == "video":
            out.append(encoder.video(ts, body))
            expected.append(FeedVideo(ts, body))
        elif kind == "audio":
            out.append(encoder.audio(ts, body))
            expected.append(FeedAudio(ts, body))
        else:
            out.append(encoder.metadata(meta))
            expected.append(FeedMetadata(meta))
    return b"".join(out), expected


class RoundTripTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(_frames(), st.lists(st.integers(min_value=1, max_value=700), max_size=40))
    def test_roundTripAnyChunking(self, items, cuts) -> None:
        """
        Whatever the hub's frames and however the bytes arrive, the parser
        hands back exactly the frames encoded, in order.
        """
        data, expected = _encode(items)
        parser = FeedParser()
        got = []
        pos = 0
        for cut in cuts:
            got += parser.receive(data[pos:pos + cut])
            pos += cut
        got += parser.receive(data[pos:])
        self.assertEqual(got, expected)
        self.assertEqual(parser.bytesIn, len(data))

    def test_headerOnce(self) -> None:
        encoder = FeedEncoder()
        first = encoder.video(0, b"\x17\x00")
        self.assertTrue(first.startswith(b"FLV"))
        self.assertFalse(encoder.video(0, b"\x17\x00").startswith(b"FLV"))
        self.assertEqual(encoder.header(), b"")

    def test_unencodableMetadataIsEmpty(self) -> None:
        data = FeedEncoder().metadata({"x": object()})
        self.assertEqual(FeedParser().receive(data), [FeedMetadata({})])


class HostileFeedTests(SynchronousTestCase):
    """
    A feed from a broken or hostile origin raises L{FeedError} and nothing
    else, with a bounded buffer.
    """

    def test_notFLV(self) -> None:
        self.assertRaises(FeedError, FeedParser().receive, b"HTTP/1.1 200 OK\r\n")

    def test_oversizedTag(self) -> None:
        parser = FeedParser(maxTag=1000)
        data = build_flv_header() + build_flv_tag(9, 0, b"x" * 1001)
        self.assertRaises(FeedError, parser.receive, data[:40])

    def test_bufferBounded(self) -> None:
        parser = FeedParser(maxTag=1000)
        parser.receive(build_flv_header())
        tag = build_flv_tag(9, 0, b"x" * 1000)
        parser.receive(tag[:-5])
        self.assertLessEqual(len(parser._buffer), 1000 + 15)

    def test_badPreviousTagSize(self) -> None:
        tag = bytearray(build_flv_tag(9, 0, b"abc"))
        tag[-1] ^= 1
        self.assertRaises(FeedError, FeedParser().receive, build_flv_header() + bytes(tag))

    def test_unknownTagType(self) -> None:
        data = build_flv_header() + build_flv_tag(7, 0, b"abc")
        self.assertRaises(FeedError, FeedParser().receive, data)

    def test_scriptNotMetadata(self) -> None:
        from tokengate.rtmp import amf0

        for body in (b"\x02\x00", amf0.encode("onCuePoint", {}), amf0.encode("onMetaData")):
            data = build_flv_header() + build_flv_tag(18, 0, body)
            self.assertRaises(FeedError, FeedParser().receive, data)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_garbageRaisesOnlyFeedError(self, junk) -> None:
        parser = FeedParser(maxTag=1 << 16)
        try:
            parser.receive(build_flv_header() + junk)
        except FeedError:
            pass
