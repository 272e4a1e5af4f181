"""
Live DASH through the end of the stream with players nobody here wrote, over
loopback, each with a one-time play token: mpv, ffmpeg, GStreamer's playbin
(dashdemux) and playbin3 (dashdemux2), VLC (as nobody: it refuses root) and
dash.js in Chromium (play.html).  ffmpeg publishes over RTMP, one stream per
player, so that the requests the server saw can be counted per player.

Each player must decode frames, leave by itself within a bound after the
publisher stopped, and make a bounded number of requests (issue 10, finding
1: mpv made about 21,000 requests in 46 s of an ended stream; playbin3
rendered no frame of a live stream).  VLC 3.0 is the exception, checked as
such: it never takes the MPD's change to static, so it neither ends nor
plays the last seconds; the server's bound on polls of an ended stream's MPD
is what stops its requests.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase

from tokengate.media.packager import DASH_DELAY
from tokengate.web.playback import ENDED_DOCUMENTS

from tests import procs
from tests.fixtures import InProcessMedia, frames, test_clip
from tests.helpers import require
from tests.interop.test_players import GStreamer, Mpv, Played, Vlc

#: After the publisher stopped, a player leaves within this many seconds
#: (players behind the live edge still play what they hold: playbin3 plays
#: DASH_DELAY seconds behind it).
EXIT_BOUND = DASH_DELAY + 30.0
#: mpv (ffmpeg 5.1's DASH reader) goes back one segment at every MPD
#: refresh it makes while the stream is live (it takes a segment's index in
#: the refreshed timeline for its number), so it reads most segments twice
#: and falls behind at about half speed: it ends about a publication's
#: length after the publisher.
MPV_EXIT_BOUND = 50 + 70.0
#: A player makes at most this many requests after the publisher stopped.
REQUESTS_AFTER_END = 150


class DashPlayers(procs.ClientsMixin, InProcessMedia, TestCase):
    timeout = 300
    tokenType = "play"

    def setUp(self):
        self.ffmpeg = require("ffmpeg")
        self.requests: list[tuple[float, str, int]] = []

        def counting(site: Any) -> Any:
            log = site.log

            def counted(request: Any) -> None:
                self.requests.append((time.monotonic(), request.uri.decode("latin-1"),
                                      request.code))
                log(request)

            site.log = counted
            return site

        self.serveMedia(counting, playTokenControlEnabled=True, hlsMuxingEnabled=True,
                        dashMuxingEnabled=True)
        self.startClients()

    def publish(self, streamId: str, seconds: int) -> procs.Running:
        url = "rtmp://127.0.0.1:{}/LiveApp/{}".format(self.rtmp.getHost().port, streamId)
        return self.start([self.ffmpeg, "-hide_banner", "-nostdin", "-re", "-i",
                           test_clip(seconds), "-c", "copy", "-f", "flv", url],
                          timeout=seconds + 60)

    def mpd(self, streamId: str) -> str:
        return "{}/LiveApp/streams/{}/{}.mpd?token={}".format(
            self.web, streamId, streamId, self.mint(streamId))

    async def segments(self, streamId: str, count: int = 2) -> None:
        def ready():
            p = self.server.outputs.packager("LiveApp", streamId)
            return p is not None and p.dashMpd("") is not None \
                and (p.edge("video") or (0, 0))[0] >= count
        await self.waitFor(ready, 40, "segments of " + streamId)

    def seen(self, streamId: str, after: float = 0.0) -> list[tuple[str, int]]:
        prefix = "/LiveApp/streams/{}/".format(streamId)
        return [(uri.split("?")[0][len(prefix):], code) for when, uri, code in self.requests
                if uri.startswith(prefix) and when >= after]

    def checkRequests(self, streamId: str, ended: float, what: str) -> Counter:
        everything = self.seen(streamId)
        after = self.seen(streamId, ended)
        codes = Counter(code for _, code in everything)
        media = sum(1 for name, code in everything if name.endswith(".m4s") and code == 200)
        self.assertGreaterEqual(media, 10, (what, codes))
        self.assertLessEqual(len(after), REQUESTS_AFTER_END, (what, Counter(after)))
        self.assertNotIn(500, codes, what)
        return codes

    async def test_throughTheEnd(self):
        """
        mpv, ffmpeg, playbin, playbin3 and VLC play live DASH through the end
        of a 50 s publication.
        """
        mpv, vlc, gst = Mpv(self), Vlc(self), GStreamer(self)
        ids = ["mpv", "ffmpeg", "playbin", "playbin3", "vlc"]
        publishers = {sid: self.publish(sid, 50) for sid in ids}
        for sid in ids:
            await self.segments(sid)
        started = time.monotonic()
        players = {}
        players["mpv"] = self.start(mpv.argv(self.mpd("mpv"), "dash"), timeout=200)
        players["ffmpeg"] = self.start(
            [self.ffmpeg, "-hide_banner", "-nostdin", "-i", self.mpd("ffmpeg"), "-f", "null", "-"],
            timeout=200)
        # playbin (dashdemux): the playbin3 command line with the legacy bin
        players["playbin"] = self.start(
            ["playbin" if arg == "playbin3" else arg
             for arg in gst.argv(self.mpd("playbin"), "dash")], timeout=200)
        players["vlc"] = self.start(vlc.argv(self.mpd("vlc"), "dash"), 200, vlc.env())
        vlcOutput = vlc.output
        # dashdemux2 leaves buffering only with 30 s of media ahead of where it
        # starts (DASH_DELAY behind the edge): join once that much is there.
        await task.deferLater(reactor, max(0.0, DASH_DELAY + 4 - (time.monotonic() - started)))
        players["playbin3"] = self.start(gst.argv(self.mpd("playbin3"), "dash"), timeout=200)
        for sid in ids:
            r = await publishers[sid].done
            self.assertEqual(r.code, 0, (sid, r.stderr[-1000:]))
        ended = time.monotonic()
        live_frames = b"".join(players["playbin3"].proto.out).count(
            b"/GstFakeSink:vs: last-message = chain")
        self.assertGreater(live_frames, 25, "playbin3 rendered no frame while the stream was live")

        results = {}
        for sid in ("ffmpeg", "playbin", "playbin3", "mpv"):
            result = await players[sid].done
            results[sid] = result
            self.assertFalse(result.timedOut, (sid, result.stderr[-1500:]))
            self.assertEqual(result.code, 0, (sid, result.stderr[-1500:]))
            took = time.monotonic() - ended
            print("{} left {:.1f} s after the publisher; {} requests, {} after the end".format(
                sid, took, len(self.seen(sid)), len(self.seen(sid, ended))))
            self.assertLess(took, MPV_EXIT_BOUND if sid == "mpv" else EXIT_BOUND, sid)
            self.checkRequests(sid, ended, sid)
        self.assertGreater(mpv.frames(Played(results["mpv"], None)), 500,
                           results["mpv"].stderr[-1500:])
        self.assertGreater(frames(results["ffmpeg"].stderr), 500, results["ffmpeg"].stderr[-1500:])
        for sid in ("playbin", "playbin3"):
            out = results[sid].out.decode("utf-8", "replace")
            rendered = gst.frames(Played(results[sid], None))
            self.assertGreater(rendered, 500 if sid == "playbin" else 300, (sid, out[-1500:]))
            self.assertIn("Got EOS", out, sid)
        # a segment past the end is answered 204 to ffmpeg's reader (mpv's
        # too), which then ends the track
        for sid in ("mpv", "ffmpeg"):
            self.assertIn(204, Counter(code for _, code in self.seen(sid)), sid)

        # VLC: played, but polls the final MPD as if live; the server stops
        # serving it after ENDED_DOCUMENTS polls, and VLC's requests stop.
        await task.deferLater(reactor, 8 * ENDED_DOCUMENTS)
        codes = self.checkRequests("vlc", ended, "vlc")
        polls = [code for name, code in self.seen("vlc", ended) if name.endswith(".mpd")]
        self.assertLessEqual(polls.count(200), ENDED_DOCUMENTS + 1, polls)
        quiet = self.seen("vlc", time.monotonic() - 15)
        self.assertLessEqual(len(quiet), 3, quiet)
        players["vlc"].kill()
        result = await players["vlc"].done
        self.assertGreater(codes[200], 20)
        self.assertGreater(vlc.frames(Played(result, vlcOutput)), 300)

    async def test_dashjsToTheEnd(self):
        """
        dash.js (play.html) plays live DASH and reaches the end: the video
        element ends, and the player makes a bounded number of requests.
        """
        require("chromium")
        from tests import browser as chromium

        publisher = self.publish("web", 24)
        await self.segments("web", 3)
        b = await chromium.launch(self)
        url = "{}/LiveApp/play.html?id=web&playOrder=dash&token={}".format(
            self.web, self.mint("web"))
        page = await b.open(url)
        await page.wait_for(
            "window.tokengateState && window.tokengateState.status === 'playing'", 40)
        r = await publisher.done
        self.assertEqual(r.code, 0, r.stderr[-1000:])
        ended = time.monotonic()
        await page.wait_for("document.querySelector('video').ended === true", EXIT_BOUND)
        position = await page.evaluate("document.querySelector('video').currentTime")
        self.assertGreater(position, 10)
        await task.deferLater(reactor, 5)
        await b.close()
        self.checkRequests("web", ended, "dash.js")
