"""
RTMP interop with real ffmpeg over loopback: publishing and playing through
the token gate.
"""

from __future__ import annotations

import re
import time

from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase

from tokengate.rtmp.protocol import RTMPFactory
from tokengate.server import Server
from tokengate.store.memory import MemoryTokenStore
from tokengate.apps import Applications

from tests import procs
from tests.fixtures import frames, test_clip
from tests.helpers import require

REFUSED = "You are not allowed to publish the stream."
REFUSED_PLAY = "You are not allowed to play the stream due to security."


class RTMPInteropBase(procs.ClientsMixin, TestCase):
    timeout = 120

    def setUp(self):
        self.ffmpeg = require("ffmpeg")
        self.clip = test_clip()
        self.server = Server(apps=Applications(None), store=MemoryTokenStore(), clock=reactor)
        self.port = reactor.listenTCP(0, RTMPFactory(self.server.access, self.server.clock, self.server.metrics), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = "rtmp://127.0.0.1:{}".format(self.port.getHost().port)
        self.startClients()

    def publish(self, path, seconds_timeout=60, clip=None, realtime=True):
        argv = [self.ffmpeg, "-hide_banner", "-nostdin"]
        if realtime:
            argv.append("-re")
        argv += ["-i", clip or self.clip, "-c", "copy", "-f", "flv", self.url + path]
        return self.start(argv, seconds_timeout)

    def play(self, path, seconds=None, timeout=60):
        argv = [self.ffmpeg, "-hide_banner", "-nostdin", "-i", self.url + path]
        if seconds:
            argv += ["-t", str(seconds)]
        argv += ["-f", "null", "-"]
        return self.start(argv, timeout)

    async def waitLive(self, streamId="s1", app="LiveApp", timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stream = self.server.hub.get(app, streamId)
            if stream is not None and stream.gop:
                return stream
            await task.deferLater(reactor, 0.1)
        self.fail("{} never went live".format(streamId))

    def refusals(self, reason):
        text = self.server.metrics.render().decode()
        m = re.search(r'tokengate_refusals_total\{action="(?:publish|play)",protocol="rtmp",'
                      r'reason="%s"\} ([0-9.]+)' % reason, text)
        return float(m.group(1)) if m else 0.0


class PublishTests(RTMPInteropBase):
    def setUp(self):
        super().setUp()
        self.server.apps.replace("LiveApp", publishTokenControlEnabled=True)

    async def test_validTokenRunsToEnd(self):
        token = self.mint()
        r = self.publish("/LiveApp/s1?token=" + token, realtime=False)
        result = await r.done
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        rec = self.server.hub.record("LiveApp", "s1")
        self.assertEqual((rec.status, rec.publishType), ("finished", "RTMP"))
        # the token is spent: a second publish is refused
        result = await self.publish("/LiveApp/s1?token=" + token, realtime=False).done
        self.assertNotEqual(result.code, 0)
        self.assertIn(REFUSED, result.stderr)
        self.assertEqual(self.refusals("unknown"), 1)

    async def test_liveWhilePublishing(self):
        token = self.mint()
        r = self.publish("/LiveApp/s1?token=" + token)
        stream = await self.waitLive()
        self.assertIsNotNone(stream.videoConfig)
        self.assertIsNotNone(stream.audioConfig)
        self.assertEqual(stream.metadata["width"], 320)
        self.assertEqual(self.server.hub.record("LiveApp", "s1").status, "broadcasting")
        result = await r.done
        self.assertEqual(result.code, 0, result.stderr[-2000:])

    async def test_refusals(self):
        playToken = self.mint(type="play")
        otherStream = self.mint(streamId="s2")
        expired = self.mint(expire=int(time.time()) + 1)
        await task.deferLater(reactor, 1.5)
        cases = [
            ("/LiveApp/s1", "missing"),
            ("/LiveApp/s1?token=" + playToken, "wrong_type"),
            ("/LiveApp/s1?token=" + otherStream, "wrong_stream"),
            ("/LiveApp/s1?token=" + expired, "expired"),
            ("/LiveApp/s1?token=12345", "unknown"),
        ]
        for path, reason in cases:
            result = await self.publish(path, realtime=False).done
            self.assertNotEqual(result.code, 0, path)
            self.assertIn(REFUSED, result.stderr, path)
            self.assertEqual(self.refusals(reason), 1, reason)
            self.assertNotIn(playToken, self.server.metrics.render().decode())
        self.assertFalse(self.server.hub.isLive("LiveApp", "s1"))
        # the mismatched token still works for its own stream
        result = await self.publish("/LiveApp/s2?token=" + otherStream, realtime=False).done
        self.assertEqual(result.code, 0, result.stderr[-2000:])

    async def test_pathForm(self):
        token = self.mint()
        result = await self.publish("/LiveApp/s1/" + token, realtime=False).done
        self.assertEqual(result.code, 0, result.stderr[-2000:])

    async def test_unknownApplication(self):
        result = await self.publish("/NoSuchApp/s1?token=1", realtime=False).done
        self.assertNotEqual(result.code, 0)
        self.assertIn("No such application", result.stderr)

    async def test_alreadyLiveKeepsToken(self):
        first = self.publish("/LiveApp/s1?token=" + self.mint())
        await self.waitLive()
        second = self.mint()
        result = await self.publish("/LiveApp/s1?token=" + second, realtime=False).done
        self.assertNotEqual(result.code, 0)
        self.assertIn("already being published", result.stderr)
        first.kill()
        await first.done
        for _ in range(50):
            if not self.server.hub.isLive("LiveApp", "s1"):
                break
            await task.deferLater(reactor, 0.1)
        # the second token was not redeemed
        result = await self.publish("/LiveApp/s1?token=" + second, realtime=False).done
        self.assertEqual(result.code, 0, result.stderr[-2000:])

    async def test_revokeKicksPublisher(self):
        token = self.mint()
        r = self.publish("/LiveApp/s1?token=" + token, seconds_timeout=60,
                         clip=test_clip(20))
        await self.waitLive()
        self.assertEqual(self.server.gate.registry.kickTokenSessions("LiveApp", "s1"), 1)
        result = await r.done
        self.assertFalse(result.timedOut)
        self.assertFalse(self.server.hub.isLive("LiveApp", "s1"))


class NoTokenControlTests(RTMPInteropBase):
    async def test_noTokenNeeded(self):
        result = await self.publish("/LiveApp/free", realtime=False).done
        self.assertEqual(result.code, 0, result.stderr[-2000:])


class HashTokenTests(RTMPInteropBase):
    """
    Ant Media's hash tokens with ffmpeg: publish and play over RTMP with
    sha256(streamId + role + tokenHashSecret), reusable; a wrong one is
    refused.
    """

    SECRET = "a hash secret of 24 chars"

    def setUp(self):
        super().setUp()
        self.server.apps.replace("LiveApp", hashControlPublishEnabled=True,
                                 hashControlPlayEnabled=True, tokenHashSecret=self.SECRET)

    async def test_publishAndPlay(self):
        from tokengate.access.hashtoken import hashToken

        publish = hashToken("s1", "publish", self.SECRET)
        play = hashToken("s1", "play", self.SECRET)
        result = await self.publish("/LiveApp/s1?token=" + play, realtime=False).done
        self.assertNotEqual(result.code, 0)
        self.assertIn(REFUSED, result.stderr)
        self.assertEqual(self.refusals("invalid"), 1)
        pub = self.publish("/LiveApp/s1?token=" + publish, clip=test_clip(20))
        await self.waitLive()
        for _ in range(2):  # reusable
            result = await self.play("/LiveApp/s1?token=" + play, seconds=2).done
            self.assertEqual(result.code, 0, result.stderr[-2000:])
            self.assertGreater(frames(result.stderr), 20)
        result = await self.play("/LiveApp/s1?token=" + publish, seconds=2).done
        self.assertNotEqual(result.code, 0)
        self.assertIn(REFUSED_PLAY, result.stderr)
        pub.kill()


class PlayTests(RTMPInteropBase):
    def setUp(self):
        super().setUp()
        self.server.apps.replace("LiveApp", publishTokenControlEnabled=True,
                                 playTokenControlEnabled=True)

    async def test_playWithToken(self):
        pub = self.publish("/LiveApp/s1?token=" + self.mint(), clip=test_clip(20))
        await self.waitLive()
        token = self.mint(type="play")
        result = await self.play("/LiveApp/s1?token=" + token, seconds=2).done
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        self.assertGreater(frames(result.stderr), 20)
        self.assertIn("Video: h264", result.stderr)
        self.assertIn("Audio: aac", result.stderr)
        # spent
        result = await self.play("/LiveApp/s1?token=" + token, seconds=2).done
        self.assertNotEqual(result.code, 0)
        self.assertIn(REFUSED_PLAY, result.stderr)
        pub.kill()

    async def test_notLiveKeepsToken(self):
        token = self.mint(type="play")
        result = await self.play("/LiveApp/s1?token=" + token, seconds=2).done
        self.assertNotEqual(result.code, 0)
        pub = self.publish("/LiveApp/s1?token=" + self.mint(), clip=test_clip(20))
        await self.waitLive()
        result = await self.play("/LiveApp/s1?token=" + token, seconds=2).done
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        pub.kill()

    async def test_twoPlayersThenPublisherStops(self):
        pub = self.publish("/LiveApp/s1?token=" + self.mint(), clip=test_clip(6))
        await self.waitLive()
        players = [self.play("/LiveApp/s1?token=" + self.mint(type="play")) for _ in range(2)]
        for _ in range(100):
            if self.server.hub.viewers("LiveApp", "s1").get("rtmp") == 2:
                break
            await task.deferLater(reactor, 0.1)
        self.assertEqual(self.server.hub.viewers("LiveApp", "s1"), {"rtmp": 2})
        result = await pub.done
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        # the players end by themselves when the publisher is gone
        for p in players:
            r = await p.done
            self.assertFalse(r.timedOut)
            self.assertEqual(r.code, 0, r.stderr[-2000:])
            self.assertGreater(frames(r.stderr), 25)
