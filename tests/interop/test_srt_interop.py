"""
SRT ingest through the token gate with real callers over loopback: ffmpeg,
srt-live-transmit and GStreamer's srtsink publish; ffmpeg plays the result
back over RTMP and HLS; a lossy UDP relay in between still gives a clean
stream.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import time

from twisted.internet import reactor, task
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import TestCase

from tokengate.apps import Applications
from tokengate.rtmp.protocol import RTMPFactory
from tokengate.server import Server
from tokengate.srt.errors import REJX_UNAUTHORIZED
from tokengate.srt.protocol import SRTListener
from tokengate.store.memory import MemoryTokenStore
from tokengate.server import buildSite

from tests import procs
from tests.fixtures import frames, test_clip
from tests.helpers import require

_ts: dict[int, str] = {}


def ts_clip(seconds: int) -> str:
    if seconds not in _ts or not os.path.exists(_ts[seconds]):
        flv = test_clip(seconds)
        path = flv[:-4] + ".ts"
        subprocess.run([require("ffmpeg"), "-v", "error", "-y", "-i", flv, "-c", "copy",
                        "-bsf:v", "h264_mp4toannexb", "-f", "mpegts", path],
                       check=True, timeout=60)
        _ts[seconds] = path
    return _ts[seconds]


def gst_publish_argv(port: int, streamid: str, seconds: int = 4) -> list[str]:
    """
    GStreamer publishing H.264 in MPEG-TS with C{srtsink}: the stream id goes
    in the URI's query.  C{mpegtsmux alignment=7} makes every buffer seven TS
    packets (1316 bytes): srtsink sends a buffer as one SRT message, and
    bigger ones (every keyframe) never arrive in live mode.  libsrt's log
    (C{srtlib}) on stderr says when the call is rejected.
    """
    return ["/usr/bin/env", "GST_DEBUG=srtlib:4", require("gst-launch-1.0"), "-q",
            "videotestsrc", "is-live=true", "num-buffers={}".format(25 * seconds), "!",
            "video/x-raw,width=320,height=240,framerate=25/1", "!",
            "openh264enc", "gop-size=25", "!", "h264parse", "config-interval=-1", "!",
            "mpegtsmux", "alignment=7", "!",
            "srtsink", "uri=srt://127.0.0.1:{}?streamid={}".format(port, streamid)]


def record_rejections(listener: SRTListener) -> list[int]:
    """
    The reject codes C{listener} sends, as it sends them.
    """
    codes: list[int] = []
    reject = listener.listener.reject

    def spy(decision, code, now=None):
        codes.append(code)
        return reject(decision, code, now)

    listener.listener.reject = spy  # type: ignore[method-assign]
    return codes


class Relay(DatagramProtocol):
    """
    A UDP relay between one caller and the server that drops and reorders a
    few percent of the caller's packets.
    """

    def __init__(self, target, loss=0.03, reorder=0.03, seed=7):
        self.target = target
        self.loss = loss
        self.reorder = reorder
        self.random = random.Random(seed)
        self.caller = None
        self.dropped = 0

    def datagramReceived(self, data, addr):
        if addr == self.target:
            if self.caller is not None:
                self.transport.write(data, self.caller)
            return
        self.caller = addr
        is_data = not (data[0] & 0x80)
        if is_data and self.random.random() < self.loss:
            self.dropped += 1
            return
        if is_data and self.random.random() < self.reorder:
            reactor.callLater(0.005, self.transport.write, data, self.target)
            return
        self.transport.write(data, self.target)


class SRTInterop(procs.ClientsMixin, TestCase):
    timeout = 120

    def setUp(self):
        self.ffmpeg = require("ffmpeg")
        self.server = Server(apps=Applications(None), store=MemoryTokenStore(), clock=reactor)
        self.server.apps.replace("LiveApp", publishTokenControlEnabled=True)
        self.srt = SRTListener(self.server.access, self.server.clock, self.server.metrics)
        self.udp = reactor.listenUDP(0, self.srt, interface="127.0.0.1")
        self.rtmp = reactor.listenTCP(0, RTMPFactory(self.server.access, self.server.clock, self.server.metrics), interface="127.0.0.1")
        self.addCleanup(self.rtmp.stopListening)
        self.addCleanup(self.udp.stopListening)
        self.port = self.udp.getHost().port
        self.startClients()

    def publish(self, streamid, seconds=6, port=None):
        url = "srt://127.0.0.1:{}?streamid={}&linger=3".format(port or self.port, streamid)
        return self.start([self.ffmpeg, "-hide_banner", "-nostdin", "-re", "-i",
                           ts_clip(seconds), "-c", "copy", "-f", "mpegts", url])

    def refusals(self, reason):
        text = self.server.metrics.render().decode()
        m = re.search(r'tokengate_refusals_total\{action="publish",protocol="srt",'
                      r'reason="%s"\} ([0-9.]+)' % reason, text)
        return float(m.group(1)) if m else 0.0

    async def waitLive(self, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stream = self.server.hub.get("LiveApp", "s1")
            if stream is not None and stream.gop:
                return stream
            await task.deferLater(reactor, 0.1)
        self.fail("never went live")


class FFmpegCallerTests(SRTInterop):
    async def test_publishAndPlayBack(self):
        pub = self.publish("LiveApp/s1,token=" + self.mint(), seconds=12)
        stream = await self.waitLive()
        self.assertEqual(self.server.hub.record("LiveApp", "s1").publishType, "SRT")
        self.assertIsNotNone(stream.videoConfig)
        for _ in range(30):
            if stream.audioConfig is not None:
                break
            await task.deferLater(reactor, 0.1)
        self.assertIsNotNone(stream.audioConfig)
        play = self.start([self.ffmpeg, "-hide_banner", "-nostdin", "-i",
                           "rtmp://127.0.0.1:{}/LiveApp/s1".format(self.rtmp.getHost().port),
                           "-t", "3", "-f", "null", "-"])
        result = await play.done
        self.assertEqual(result.code, 0, result.stderr[-1500:])
        self.assertGreater(frames(result.stderr), 40)
        result = await pub.done
        self.assertEqual(result.code, 0, result.stderr[-1500:])
        for _ in range(50):
            if not self.server.hub.isLive("LiveApp", "s1"):
                break
            await task.deferLater(reactor, 0.1)
        self.assertEqual(self.server.hub.record("LiveApp", "s1").status, "finished")

    async def test_accessControlForm(self):
        pub = self.publish("#!::r=LiveApp/s1,m=publish,token=" + self.mint())
        await self.waitLive()
        pub.kill()

    async def test_refusals(self):
        spent = self.mint()
        first = self.publish("LiveApp/s1,token=" + spent, seconds=4)
        self.assertEqual((await first.done).code, 0)
        other = self.mint(streamId="s2")
        cases = [
            ("LiveApp/s1,token=" + spent, "unknown"),
            ("LiveApp/s1", "missing"),
            ("LiveApp/s1,token=" + other, "wrong_stream"),
            ("LiveApp/s1,token=" + self.mint(type="play"), "wrong_type"),
        ]
        for streamid, reason in cases:
            result = await self.publish(streamid).done
            self.assertNotEqual(result.code, 0, streamid)
            self.assertIn("REJECT", result.stderr, streamid)
            self.assertEqual(self.refusals(reason), 1, reason)
        result = await self.publish("NoSuchApp/s1,token=1").done
        self.assertNotEqual(result.code, 0)
        self.assertEqual(self.refusals("no_app"), 1)
        # the mismatched token still works for its stream
        pub = self.publish("LiveApp/s2,token=" + other)
        result = await pub.done
        self.assertEqual(result.code, 0, result.stderr[-1500:])

    async def test_inUseKeepsToken(self):
        first = self.publish("LiveApp/s1,token=" + self.mint(), seconds=12)
        await self.waitLive()
        second = self.mint()
        result = await self.publish("LiveApp/s1,token=" + second).done
        self.assertNotEqual(result.code, 0)
        self.assertEqual(self.refusals("in_use"), 1)
        first.kill()
        await first.done
        # the SRT connection ends by idle timeout once ffmpeg is killed
        for _ in range(100):
            if not self.server.hub.isLive("LiveApp", "s1"):
                break
            await task.deferLater(reactor, 0.1)
        result = await self.publish("LiveApp/s1,token=" + second).done
        self.assertEqual(result.code, 0, result.stderr[-1500:])

    async def test_kick(self):
        pub = self.publish("LiveApp/s1,token=" + self.mint(), seconds=20)
        await self.waitLive()
        self.assertEqual(self.server.gate.registry.kickTokenSessions("LiveApp", "s1"), 1)
        self.assertFalse(self.server.hub.isLive("LiveApp", "s1"))
        result = await pub.done
        self.assertFalse(result.timedOut)

    async def test_lossyLink(self):
        relay = Relay(("127.0.0.1", self.port))
        port = reactor.listenUDP(0, relay, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        seen = []

        class Count:
            viewerKind = None

            def streamStarted(self, stream):
                pass

            def metadataChanged(self, m):
                pass

            def configChanged(self, kind, body, ts):
                pass

            def frameReceived(self, frame):
                if frame.kind == "video":
                    seen.append(frame.timestamp)

            def streamEnded(self):
                pass

        self.server.hub.onPublish(lambda stream: stream.subscribe(Count()))
        pub = self.publish("LiveApp/s1,token=" + self.mint(), seconds=8,
                           port=port.getHost().port)
        result = await pub.done
        self.assertEqual(result.code, 0, result.stderr[-1500:])
        self.assertGreater(relay.dropped, 10)
        # every video frame arrived, in order
        self.assertGreaterEqual(len(seen), 8 * 25 - 2)
        self.assertEqual(seen, sorted(seen))


class SrtLiveTransmitTests(SRTInterop):
    def transmit(self, streamid, seconds=4):
        slt = require("srt-live-transmit")
        cmd = "{} -v error -re -i {} -c copy -f mpegts - | {} -a:no -t:8 file://con " \
              "'srt://127.0.0.1:{}?streamid={}'".format(self.ffmpeg, ts_clip(seconds), slt,
                                                         self.port, streamid)
        return self.start(["/bin/sh", "-c", cmd], timeout=30)

    async def test_accepted(self):
        r = self.transmit("LiveApp/s1,token=" + self.mint(), seconds=6)
        await self.waitLive()
        r.kill()

    async def test_rejected(self):
        result = await self.transmit("LiveApp/s1,token=nope").done
        # srt-live-transmit exits 0 when rejected: look at what it said and
        # at the server
        self.assertIn("REJECT", result.stderr)
        self.assertFalse(self.server.hub.isLive("LiveApp", "s1"))
        self.assertEqual(self.refusals("unknown"), 1)


class GStreamerCallerTests(SRTInterop):
    """
    GStreamer 1.22's C{srtsink} publishing (C{openh264enc}, C{mpegtsmux}).
    """

    def setUp(self):
        super().setUp()
        require("gst-launch-1.0")
        self.server.apps.replace("LiveApp", publishTokenControlEnabled=True,
                                 hlsMuxingEnabled=True)
        self.http = reactor.listenTCP(0, buildSite(self.server), interface="127.0.0.1")
        self.addCleanup(self.server.outputs.close)
        self.addCleanup(self.http.stopListening)
        self.web = "http://127.0.0.1:{}".format(self.http.getHost().port)
        self.codes = record_rejections(self.srt)

    def gst(self, streamid, seconds=4):
        return self.start(gst_publish_argv(self.port, streamid, seconds), timeout=seconds + 30)

    async def test_publishPlaysAsHls(self):
        pub = self.gst("LiveApp/s1,token=" + self.mint(), seconds=30)
        await self.waitLive()
        self.assertEqual(self.server.hub.record("LiveApp", "s1").publishType, "SRT")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            p = self.server.outputs.packager("LiveApp", "s1")
            if p is not None and (p.edge("video") or (0, 0))[0] >= 2:
                break
            await task.deferLater(reactor, 0.2)
        else:
            self.fail("no HLS segments")
        play = self.start([self.ffmpeg, "-hide_banner", "-nostdin", "-i",
                           self.web + "/LiveApp/streams/s1.m3u8", "-t", "3", "-f", "null", "-"],
                          timeout=60)
        result = await play.done
        self.assertEqual(result.code, 0, result.stderr[-1500:])
        self.assertGreater(frames(result.stderr), 40)
        self.assertEqual(self.codes, [])
        pub.kill()

    async def test_badTokenRefused(self):
        result = await self.gst("LiveApp/s1,token=nope").done
        self.assertNotEqual(result.code, 0)
        self.assertIn("REJECT", result.stderr)
        self.assertEqual(self.codes, [REJX_UNAUTHORIZED])
        self.assertEqual(self.refusals("unknown"), 1)
        self.assertIsNone(self.server.hub.record("LiveApp", "s1"))
        # and the missing token
        result = await self.gst("LiveApp/s1").done
        self.assertNotEqual(result.code, 0)
        self.assertEqual(self.codes, [REJX_UNAUTHORIZED] * 2)
        self.assertEqual(self.refusals("missing"), 1)
