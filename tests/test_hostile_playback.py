"""
Players that ask for what does not exist, over and over: segments past the
end of an ended stream, far ahead of the live edge, the final MPD polled as
if the stream were live (issue 10, finding 1: mpv made about 21,000 requests
in 46 s).  Each answer is cheap (no packager work, a small or empty body),
and a viewing session's allowance of such requests is bounded: past it the
session ends (410), is counted, and its credential stops working.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from tokengate.web.playback import ENDED_DOCUMENTS, FUTILE_LIMIT

from .test_playback import PlaybackBase


def floods(server, protocol: str) -> float:
    value = server.metrics.registry.get_sample_value(
        "tokengate_playback_floods_total", {"protocol": protocol})
    return value or 0.0


class DashSession:
    """The session credential and the segment numbers an MPD gives a player."""

    def __init__(self, mpd: str) -> None:
        media = re.search(r'media="video/\$Number\$\.m4s\?([^"]+)"', mpd)
        assert media is not None, mpd
        self.query = unquote(media.group(1).replace("&amp;", "&"))
        starts = [int(n) for n in re.findall(r'startNumber="(\d+)"', mpd)]
        self.first = starts[0]


class FutileRequestTests(PlaybackBase):
    async def openDash(self) -> DashSession:
        r, body = await self.get("s1/s1.mpd?token=" + self.mint())
        self.assertEqual(r.code, 200, body)
        return DashSession(body.decode())

    async def test_pastTheEndOfAnEndedStream(self):
        """
        Once the stream ended, a segment past its last one is answered 204
        with no body (ffmpeg's DASH reader, mpv's too, then ends the track
        instead of skipping to the next number forever); the session may do
        that L{FUTILE_LIMIT} times, then it ends with 410, is counted, and
        its credential no longer opens anything.
        """
        stream = self.live()
        session = await self.openDash()  # a token opens a session while live only
        stream.end()
        packager = self.server.outputs.packager("LiveApp", "s1")
        last = packager.edge("video")[0]
        r, data = await self.get("s1/video/{}.m4s?{}".format(last, session.query))
        self.assertEqual(r.code, 200)
        self.assertTrue(data)
        self.assertEqual(self.server.hub.viewers("LiveApp", "s1").get("dash"), 1)
        for n in range(last + 1, last + 1 + FUTILE_LIMIT):
            r, data = await self.get("s1/video/{}.m4s?{}".format(n, session.query))
            self.assertEqual(r.code, 204, n)
            self.assertEqual(data, b"")
        self.assertEqual(floods(self.server, "dash"), 0)
        r, data = await self.get("s1/video/{}.m4s?{}".format(last + 1 + FUTILE_LIMIT,
                                                              session.query))
        self.assertEqual(r.code, 410, data)
        self.assertIn(b"viewing session ended", data)
        self.assertEqual(floods(self.server, "dash"), 1)
        # the session is over: even a segment that exists is refused
        r, _ = await self.get("s1/video/{}.m4s?{}".format(last, session.query))
        self.assertEqual(r.code, 403)
        # the MPD without a session is a new admission: the stream ended
        r, body = await self.get("s1/s1.mpd?" + session.query)
        self.assertEqual(r.code, 404)
        self.assertIn(b"Stream is not live", body)
        self.assertEqual(self.server.hub.viewers("LiveApp", "s1").get("dash", 0), 0)

    async def test_farAheadOfTheLiveEdge(self):
        """
        While live, a segment far ahead of the live edge is a cheap 404 and
        counts; the part or segment about to be made (what LL-HLS preload
        hints and DASH low-latency players ask for early) does not.
        """
        self.live()
        session = await self.openDash()
        edge = self.server.outputs.packager("LiveApp", "s1").edge("video")[0]
        for _ in range(FUTILE_LIMIT + 10):
            r, _ = await self.get("s1/video/{}.9.m4s?{}".format(edge + 1, session.query))
            self.assertEqual(r.code, 404)
        self.assertEqual(floods(self.server, "dash"), 0)
        for n in range(FUTILE_LIMIT):
            r, data = await self.get("s1/video/{}.m4s?{}".format(edge + 100 + n, session.query))
            self.assertEqual(r.code, 404, data)
            self.assertLess(len(data), 200)
        r, _ = await self.get("s1/video/{}.m4s?{}".format(edge + 1000, session.query))
        self.assertEqual(r.code, 410)
        self.assertEqual(floods(self.server, "dash"), 1)
        r, _ = await self.get("s1/video/{}.m4s?{}".format(edge, session.query))
        self.assertEqual(r.code, 403)

    async def test_endedManifestPolledAsIfLive(self):
        """
        After the end each document is served L{ENDED_DOCUMENTS} times per
        session (VLC 3 keeps polling the final MPD every 5 s because it never
        takes its change to static); later polls get 410.  Another viewer's
        session has its own allowance.
        """
        stream = self.live()
        session = await self.openDash()
        other = await self.openDash()
        stream.end()
        for _ in range(ENDED_DOCUMENTS):
            r, body = await self.get("s1/s1.mpd?" + session.query)
            self.assertEqual(r.code, 200)
            self.assertIn(b'type="static"', body)
        r, body = await self.get("s1/s1.mpd?" + session.query)
        self.assertEqual(r.code, 410, body)
        self.assertIn(b"Stream ended", body)
        r, _ = await self.get("s1/s1.mpd?" + other.query)
        self.assertEqual(r.code, 200)
        # polling on: the refusals count as futile, and end the session
        for _ in range(FUTILE_LIMIT):
            r, _ = await self.get("s1/s1.mpd?" + session.query)
        self.assertEqual(r.code, 410)
        self.assertEqual(floods(self.server, "dash"), 1)
        r, _ = await self.get("s1/video/1.m4s?" + session.query)
        self.assertEqual(r.code, 403)
        r, _ = await self.get("s1/video/1.m4s?" + other.query)
        self.assertEqual(r.code, 200)


class FutileWithoutTokensTests(PlaybackBase):
    tokenControl = False

    async def test_perAddress(self):
        """
        Without play tokens there is no session to end: the address gets
        410 for futile requests (of that stream) once it spent the
        allowance, and is still served what exists.
        """
        stream = self.live()
        stream.end()
        last = self.server.outputs.packager("LiveApp", "s1").edge("video")[0]
        codes = []
        for n in range(FUTILE_LIMIT + 3):
            r, _ = await self.get("s1/video/{}.m4s".format(last + 1 + n))
            codes.append(r.code)
        self.assertEqual(codes, [204] * FUTILE_LIMIT + [410] * 3)
        self.assertEqual(floods(self.server, "http"), 3)
        r, data = await self.get("s1/video/{}.m4s".format(last))
        self.assertEqual(r.code, 200)
        self.assertTrue(data)
