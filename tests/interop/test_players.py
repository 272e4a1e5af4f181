"""
Players and an encoder that nobody here wrote, over loopback, with one-time
tokens: mpv, VLC (C{cvlc}, run as C{nobody} when the tests run as root: it
refuses root) and GStreamer (C{gst-launch-1.0}) play RTMP, HLS through the
end of a live stream and the MP4 recording; bad and spent tokens are
refused; GStreamer publishes over RTMP (C{rtmp2sink}, C{openh264enc},
C{avenc_aac}, C{flvmux}) with a publish token.  ffmpeg publishes otherwise.

Each player proves it decoded frames in its own way: mpv through a
C{showinfo} video filter (one log line per decoded frame), VLC through its
C{yuv} video output (raw I420 frames written to a file), GStreamer through a
C{fakesink} whose C{last-message} C{-v} prints per buffer.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, TestCase


from tests import procs
from tests.fixtures import InProcessMedia, test_clip
from tests.helpers import http_client, require

#: a token that was never minted (the form of a real one)
BAD = "1" * 40
WIDTH, HEIGHT = 320, 240  # test_clip's picture
#: a player must leave by itself within this many seconds after the
#: publisher stops (mpv, VLC and GStreamer take 6.5-8 s on HLS)
LEAVE_WITHIN = 25.0


class Played:
    """
    A player's L{procs.Result} and where that run wrote its output.
    """

    def __init__(self, result: procs.Result, output: Optional[str]) -> None:
        self.result = result
        self.output = output

    def __getattr__(self, name: str) -> Any:
        return getattr(self.result, name)


class Player:
    """
    How to run one player and read what it did.
    """

    #: where the run being started writes its decoded frames (if anywhere)
    output: Optional[str] = None

    name = ""

    def __init__(self, testcase: "PlayersBase") -> None:
        self.testcase = testcase

    def argv(self, url: str, kind: str) -> list[str]:
        raise NotImplementedError

    def env(self) -> Optional[dict]:
        return None

    def frames(self, result: Played) -> int:
        raise NotImplementedError

    def text(self, result: Played) -> str:
        return (result.out + result.err).decode("utf-8", "replace")


class Mpv(Player):
    name = "mpv"

    def __init__(self, testcase: "PlayersBase") -> None:
        super().__init__(testcase)
        self.binary = require("mpv")

    def argv(self, url: str, kind: str, extra: tuple[str, ...] = ()) -> list[str]:
        return [self.binary, "--no-config", "--ytdl=no", "--vo=null", "--ao=null",
                "--vf=lavfi=[showinfo]", "--msg-level=all=v", *extra, url]

    def frames(self, result: Played) -> int:
        return len(re.findall(r"Parsed_showinfo_\d+: n:\s*\d+", self.text(result)))


class Vlc(Player):
    """
    cvlc with its C{yuv} video output; as C{nobody} when we are root.
    """

    name = "cvlc"

    def __init__(self, testcase: "PlayersBase") -> None:
        super().__init__(testcase)
        self.binary = require("cvlc")
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            self.prefix = [require("setpriv"), "--reuid=nobody", "--regid=nogroup",
                           "--clear-groups"]
        # a home and an output directory the player's user can write
        self.home = tempfile.mkdtemp(prefix="tg-vlc-")
        os.chmod(self.home, 0o777)
        testcase.addCleanup(shutil.rmtree, self.home, True)
        self.runs = 0

    def argv(self, url: str, kind: str) -> list[str]:
        self.runs += 1
        self.output = os.path.join(self.home, "out{}.yuv".format(self.runs))
        return [*self.prefix, self.binary, "-v", "--intf", "dummy", "--no-video-title-show",
                "--vout", "yuv", "--yuv-file", self.output, "--yuv-chroma", "I420",
                "--aout", "dummy", "--play-and-exit", url]

    def env(self) -> Optional[dict]:
        return dict(os.environ, HOME=self.home, XDG_RUNTIME_DIR=self.home)

    def frames(self, result: Played) -> int:
        if result.output is None:
            return 0
        try:
            size = os.path.getsize(result.output)
        except OSError:
            return 0
        return size // (WIDTH * HEIGHT * 3 // 2)


def requireElements(*names: str) -> None:
    """
    Skip (naming it) when a GStreamer element is missing; a failure under
    C{TOKENGATE_REQUIRE_CLIENTS}, as for a missing binary.
    """
    import subprocess

    inspect = require("gst-inspect-1.0")
    for name in names:
        if subprocess.run([inspect, "--exists", name], timeout=30).returncode != 0:
            message = "GStreamer element {} not installed".format(name)
            if os.environ.get("TOKENGATE_REQUIRE_CLIENTS"):
                raise AssertionError(message)
            raise SkipTest(message)


class GStreamer(Player):
    """
    gst-launch-1.0: playbin3 for HLS and MP4 (legacy playbin with hlsdemux
    does not preroll HLS with a separate audio rendition), rtmp2src for
    RTMP.
    """

    name = "gst-launch-1.0"

    def __init__(self, testcase: "PlayersBase") -> None:
        super().__init__(testcase)
        self.binary = require("gst-launch-1.0")
        requireElements("rtmp2src", "flvdemux", "h264parse", "avdec_h264", "playbin3",
                        "hlsdemux2", "souphttpsrc", "qtdemux", "fakesink")

    def argv(self, url: str, kind: str) -> list[str]:
        sink = ["fakesink", "name=vs", "silent=false", "sync=true"]
        if kind == "rtmp":
            return [self.binary, "-v", "rtmp2src", "location=" + url, "!", "flvdemux", "name=d",
                    "d.video", "!", "queue", "!", "h264parse", "!", "avdec_h264", "!", *sink,
                    "d.audio", "!", "queue", "!", "fakesink", "sync=true"]
        return [self.binary, "-v", "playbin3", "uri=" + url,
                "video-sink=" + " ".join(sink), "audio-sink=fakesink sync=true"]

    def frames(self, result: Played) -> int:
        return self.text(result).count("/GstFakeSink:vs: last-message = chain")


class PlayersBase(procs.ClientsMixin, InProcessMedia):
    """
    The tests every player runs (mixed into one TestCase per player).
    """

    timeout = 180
    tokenType = "play"
    playerClass: Any = None
    # from TestCase
    addCleanup: Any
    mktemp: Any
    fail: Any
    assertEqual: Any
    assertNotEqual: Any
    assertIn: Any
    assertFalse: Any
    assertLess: Any
    assertGreaterEqual: Any

    def setUp(self) -> None:
        self.ffmpeg = require("ffmpeg")
        self.player = self.playerClass(self)
        self.serveMedia(playTokenControlEnabled=True, hlsMuxingEnabled=True,
                        dashMuxingEnabled=True, mp4MuxingEnabled=True)
        self.startClients()

    # --- helpers ----------------------------------------------------------------

    def publish(self, seconds: int, streamId: str = "s1", realtime: bool = True) -> procs.Running:
        return self.start([self.ffmpeg, "-hide_banner", "-nostdin", *(["-re"] if realtime else []),
                           "-i", test_clip(seconds), "-c", "copy", "-f", "flv",
                           "{}/LiveApp/{}".format(self.rtmpBase, streamId)])

    def play(self, url: str, kind: str, timeout: float = 90,
             extra: tuple[str, ...] = ()) -> "Deferred[Played]":
        """
        Start the player; fires with what it did (killed after C{timeout}).
        """
        argv = self.player.argv(url, kind, *((extra,) if extra else ()))
        running = self.start(argv, timeout, self.player.env())
        output = self.player.output
        return running.done.addCallback(Played, output)

    async def waitSegments(self, streamId: str = "s1", count: int = 2) -> None:
        def ready() -> bool:
            p = self.server.outputs.packager("LiveApp", streamId)
            return p is not None and p.hlsMultivariant("") is not None \
                and (p.edge("video") or (0, 0))[0] >= count
        await self.waitFor(ready, 30, "the first segments")

    def live(self, streamId: str = "s1") -> bool:
        return any(s.streamId == streamId for s in self.server.hub.liveStreams())

    def refusals(self, protocol: str) -> float:
        """
        Plays refused over C{protocol} for a token the store does not know.
        """
        text = self.server.metrics.render().decode()
        m = re.search(r'tokengate_refusals_total\{action="play",protocol="%s",'
                      r'reason="unknown"\} ([0-9.]+)' % protocol, text)
        return float(m.group(1)) if m else 0.0

    def grants(self, protocol: str) -> float:
        text = self.server.metrics.render().decode()
        found = re.findall(r'tokengate_grants_total\{action="play",kind="[^"]*",protocol="%s"\} '
                           r'([0-9.]+)' % protocol, text)
        return sum(map(float, found))

    def assertPlayed(self, result: Played, atLeast: int) -> None:
        out = self.player.text(result)
        self.assertFalse(result.timedOut, out[-3000:])
        frames = self.player.frames(result)
        self.assertGreaterEqual(frames, atLeast, "{} decoded {} frames\n{}".format(
            self.player.name, frames, out[-3000:]))

    def assertRefused(self, result: Played) -> None:
        out = self.player.text(result)
        self.assertFalse(result.timedOut, out[-3000:])
        self.assertEqual(self.player.frames(result), 0, out[-3000:])
        if not isinstance(self.player, Vlc):  # cvlc exits 0 whatever happened
            self.assertNotEqual(result.code, 0, out[-3000:])

    # --- the tests ---------------------------------------------------------------

    async def test_rtmp(self) -> None:
        """
        RTMP play with a play token until the publisher stops (the player
        leaves by itself); a token never minted is refused.
        """
        pub = self.publish(14)
        await self.waitFor(self.live, 20, "the stream to go live")
        url = "{}/LiveApp/s1?token=".format(self.rtmpBase)
        token = self.mint()
        good = self.play(url + token, "rtmp")
        bad = self.play(url + BAD, "rtmp")
        refused = await bad
        self.assertRefused(refused)
        self.assertIn("not allowed to play", self.player.text(refused))
        self.assertGreaterEqual(self.refusals("rtmp"), 1)
        # once the first player is admitted, its token is spent: refused
        await self.waitFor(lambda: self.grants("rtmp") >= 1, 20, "the player's admission")
        spent = await self.play(url + token, "rtmp")
        self.assertRefused(spent)
        self.assertIn("not allowed to play", self.player.text(spent))
        result = await pub.done
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        ended = time.monotonic()
        result = await good
        self.assertLess(time.monotonic() - ended, LEAVE_WITHIN)
        self.assertPlayed(result, 100)

    async def test_hlsThroughEnd(self) -> None:
        await self.hlsThroughEnd()

    async def hlsThroughEnd(self) -> Played:
        """
        HLS with a play token through the end of a live stream: the player
        plays, then leaves by itself within L{LEAVE_WITHIN} seconds of the
        publisher's end; a token never minted is refused.
        """
        pub = self.publish(18)
        # GStreamer's hlsdemux2 stalls (1.22: after one video segment, no
        # audio segment) when it joins a playlist of two segments; with
        # three it plays to the end
        await self.waitSegments(count=3)
        url = self.web + "/LiveApp/streams/s1.m3u8?token="
        good = self.play(url + self.mint(), "hls")
        refused = await self.play(url + BAD, "hls")
        self.assertRefused(refused)
        self.assertGreaterEqual(self.refusals("hls"), 1)
        result = await pub.done
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        ended = time.monotonic()
        result = await good
        self.assertLess(time.monotonic() - ended, LEAVE_WITHIN,
                        self.player.text(result)[-3000:])
        self.assertPlayed(result, 150)
        self.assertEqual(self.server.hub.viewers("LiveApp", "s1").get("hls"), 1)
        return result

    async def test_mp4(self) -> None:
        """
        The MP4 recording with a play token, whole; once the session it
        opened has ended, the spent token opens nothing.
        """
        pub = self.publish(12, realtime=False)
        result = await pub.done
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        path = self.server.outputs.recordingPath("LiveApp", "s1")
        await self.waitFor(lambda: os.path.exists(path), 30, "the recording")
        token = self.mint()
        url = self.web + "/LiveApp/streams/s1.mp4?token=" + token
        result = await self.play(url, "vod")
        self.assertPlayed(result, 250)
        self.assertEqual(result.code, 0, self.player.text(result)[-3000:])
        # the session ends (DELETE .../sessions): the spent token is refused
        other = http_client(self)
        r = await other.delete(self.web + "/LiveApp/rest/v2/broadcasts/s1/sessions")
        self.assertEqual(r.code, 200, await r.content())
        self.assertRefused(await self.play(url, "vod"))
        self.assertRefused(await self.play(self.web + "/LiveApp/streams/s1.mp4?token=" + BAD,
                                           "vod"))


class MpvTests(PlayersBase, TestCase):
    playerClass = Mpv

    async def test_hlsThroughEnd(self) -> None:
        result = await self.hlsThroughEnd()
        # mpv opens the multivariant playlist twice with the token (its
        # stream layer, then libavformat): both must succeed, or mpv falls
        # back to playing the first media playlist alone, without audio
        out = self.player.text(result)
        self.assertIn("Audio --aid=1", out)
        self.assertIn("Video --vid=1", out)

    async def test_dashOpensTwice(self) -> None:
        """
        mpv opens the MPD twice with the token (finding 4 of issue 10): the
        second open continues the session the first opened.
        """
        self.publish(30)
        await self.waitSegments()
        token = self.mint()
        url = self.web + "/LiveApp/streams/s1/s1.mpd?token=" + token
        result = await self.play(url, "dash", 60, ("--length=5",))
        out = self.player.text(result)
        self.assertEqual(result.code, 0, out[-3000:])
        self.assertPlayed(result, 100)
        self.assertNotIn("Failed to recognize file format", out)
        self.assertEqual(self.server.hub.viewers("LiveApp", "s1").get("dash"), 1)


class VlcTests(PlayersBase, TestCase):
    playerClass = Vlc


class GStreamerTests(PlayersBase, TestCase):
    playerClass = GStreamer


class GStreamerPublishTests(procs.ClientsMixin, InProcessMedia, TestCase):
    """
    GStreamer publishes over RTMP: rtmp2sink, openh264enc, avenc_aac, flvmux.
    """

    timeout = 120

    def setUp(self) -> None:
        self.gst = require("gst-launch-1.0")
        requireElements("videotestsrc", "audiotestsrc", "openh264enc", "avenc_aac", "h264parse",
                        "aacparse", "flvmux", "rtmp2sink")
        self.ffmpeg = require("ffmpeg")
        self.serveMedia(publishTokenControlEnabled=True, hlsMuxingEnabled=True)
        self.startClients()

    def gstPublish(self, streamId: str, token: str, seconds: int = 12) -> procs.Running:
        url = "rtmp://127.0.0.1:{}/LiveApp/{}?token={}".format(
            self.rtmp.getHost().port, streamId, token)
        return self.start([
            self.gst, "-e",
            "videotestsrc", "is-live=true", "num-buffers={}".format(25 * seconds), "!",
            "video/x-raw,width=320,height=240,framerate=25/1", "!", "videoconvert", "!",
            "openh264enc", "gop-size=25", "!", "h264parse", "!",
            "flvmux", "name=m", "streamable=true", "!", "rtmp2sink", "location=" + url,
            "audiotestsrc", "is-live=true", "samplesperbuffer=1024",
            "num-buffers={}".format(44100 * seconds // 1024), "!",
            "audio/x-raw,rate=44100,channels=1", "!", "audioconvert", "!", "avenc_aac", "!",
            "aacparse", "!", "m."], timeout=60)

    def status(self, streamId: str) -> Optional[str]:
        record = self.server.hub.record("LiveApp", streamId)
        return None if record is None else record.status

    async def test_publishToken(self) -> None:
        """
        The stream goes live and ffmpeg decodes its HLS; the publisher ends
        cleanly and the token is spent.
        """
        token = self.mint("g1")
        pub = self.gstPublish("g1", token)

        def segments() -> bool:
            p = self.server.outputs.packager("LiveApp", "g1")
            return p is not None and (p.edge("video") or (0, 0))[0] >= 2
        await self.waitFor(segments, 30, "GStreamer's stream to be packaged")
        self.assertEqual(self.status("g1"), "broadcasting")
        reader = await self.start([self.ffmpeg, "-hide_banner", "-nostdin", "-i",
                                   self.web + "/LiveApp/streams/g1.m3u8", "-t", "3",
                                   "-f", "null", "-"], timeout=60).done
        self.assertEqual(reader.code, 0, reader.stderr[-2000:])
        self.assertRegex(reader.stderr, r"Video: h264")
        self.assertRegex(reader.stderr, r"Audio: aac")
        found = re.findall(r"frame=\s*(\d+)", reader.stderr)
        self.assertGreaterEqual(int(found[-1]) if found else 0, 60, reader.stderr[-2000:])
        result = await pub.done
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        self.assertIn("EOS", result.out.decode("utf-8", "replace"))
        await self.waitFor(lambda: self.status("g1") == "finished", 10, "the stream to end")
        again = await self.gstPublish("g1", token, 2).done
        self.assertNotEqual(again.code, 0)

    async def test_badToken(self) -> None:
        """
        A token never minted: refused with NetStream.Publish.BadName,
        nothing goes live.
        """
        result = await self.gstPublish("g2", BAD).done
        self.assertFalse(result.timedOut)
        self.assertNotEqual(result.code, 0)
        out = (result.out + result.err).decode("utf-8", "replace")
        self.assertIn("NetStream.Publish.BadName", out)
        self.assertEqual(list(self.server.hub.liveStreams()), [])
        self.assertIsNone(self.server.outputs.packager("LiveApp", "g2"))
        r = await http_client(self).get(self.web + "/LiveApp/streams/g2.m3u8")
        self.assertEqual(r.code, 404)
