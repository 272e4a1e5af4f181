"""
The HTTP playback gate over a real loopback port: sessions, refusals, CORS,
blocking reloads, DASH, MP4.
"""

from __future__ import annotations

import os
import re
import time

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tokengate.apps import Applications
from tokengate.media.flv import iter_flv_tags
from tokengate.config import ServerConfig
from tokengate.server import Server
from tokengate.store.memory import MemoryTokenStore
from tokengate.tokens import StoredToken, new_token
from tokengate.server import buildSite

from .helpers import http_client, require
from tests.fixtures import test_clip


def feed(stream, path, until_ms=None, start_ms=0):
    """
    Push an FLV clip's tags into a live stream as fast as possible.

    @raise AssertionError: when no video or no audio tag was pushed (the
        tests would then read a playlist of nothing).
    """
    with open(path, "rb") as f:
        data = f.read()
    pushed = {8: 0, 9: 0}
    for tag in iter_flv_tags(data):
        if tag.timestamp < start_ms and tag.tag_type == 9 and tag.data[1] != 0:
            continue
        if until_ms is not None and tag.timestamp >= until_ms:
            break
        body = bytes(tag.data)
        if tag.tag_type == 9:
            stream.videoReceived(tag.timestamp, body)
        elif tag.tag_type == 8:
            stream.audioReceived(tag.timestamp, body)
        if tag.tag_type in pushed:
            pushed[tag.tag_type] += 1
    assert pushed[8] and pushed[9], "pushed {} of {}".format(pushed, path)


class PlaybackBase(TestCase):
    timeout = 60
    tokenControl = True

    def setUp(self):
        require("ffmpeg")
        self.clip = test_clip(12)
        self.dataDir = self.mktemp()
        os.makedirs(self.dataDir)
        self.server = Server(apps=Applications(None), store=MemoryTokenStore(), clock=reactor,
                             config=ServerConfig(), dataDir=self.dataDir)
        self.server.apps.replace("LiveApp", playTokenControlEnabled=self.tokenControl,
                                 dashMuxingEnabled=True, mp4MuxingEnabled=True)
        self.site = buildSite(self.server)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.addCleanup(self.server.outputs.close)
        self.base = "http://127.0.0.1:{}/LiveApp/streams/".format(self.port.getHost().port)
        self.http = http_client(self)
        # another viewer: another loopback address
        self.other = http_client(self, source="127.0.0.2")

    def mint(self, streamId="s1", type="play"):
        t = new_token(streamId, type, int(time.time()) + 600)
        self.server.store.add(StoredToken.fromToken("LiveApp", t))
        return t.tokenId

    def live(self, streamId="s1", until_ms=8000):
        stream = self.server.hub.publish("LiveApp", streamId, "RTMP")
        self.addCleanup(stream.end)
        feed(stream, self.clip, until_ms)
        return stream

    async def get(self, url, client=None, **kw):
        r = await (client or self.http).get(url if url.startswith("http") else self.base + url,
                                            **kw)
        return r, await r.content()


def uris(playlist: str) -> list[str]:
    found = [line for line in playlist.splitlines() if line and not line.startswith("#")]
    found += re.findall(r'URI="([^"]+)"', playlist)
    return found


class GateTests(PlaybackBase):
    async def test_oneTokenOneSession(self):
        self.live()
        token = self.mint()
        r, body = await self.get("s1.m3u8?token=" + token)
        self.assertEqual(r.code, 200, body)
        self.assertEqual(r.headers.getRawHeaders(b"content-type"), [b"application/vnd.apple.mpegurl"])
        self.assertEqual(r.headers.getRawHeaders(b"access-control-allow-origin"), [b"*"])
        master = body.decode()
        self.assertNotIn(token, master)
        media_uris = uris(master)
        self.assertTrue(media_uris)
        for uri in media_uris:
            self.assertIn("tgs=", uri)
        # follow the session through media playlists, init and segments, no cookies
        for uri in media_uris:
            r, body = await self.get(uri)
            self.assertEqual(r.code, 200, (uri, body))
            children = uris(body.decode())[:4]
            self.assertTrue(children, body)
            for child in children:
                self.assertIn("tgs=", child)
                base = uri.split("/")[0] + "/"
                r2, data = await self.get(base + child)
                self.assertEqual(r2.code, 200, (child, data[:200]))
                self.assertTrue(data, child)
                self.assertEqual(r2.headers.getRawHeaders(b"content-type"), [b"video/mp4"])
        # the same token from anyone else: refused
        r, body = await self.get("s1.m3u8?token=" + token, client=self.other)
        self.assertEqual(r.code, 403)
        self.assertIn(b"Invalid Token for streamId:s1", body)
        self.assertEqual(r.headers.getRawHeaders(b"access-control-allow-origin"), [b"*"])

    async def test_guessedSegmentRefused(self):
        self.live()
        for path in ("s1/video/1.m4s", "s1/video/init.mp4", "s1/video.m3u8", "s1/s1.mpd",
                     "s1/video/1.m4s?tgs=forged.value"):
            r, body = await self.get(path)
            self.assertEqual(r.code, 403, path)

    async def test_notLiveKeepsToken(self):
        token = self.mint()
        r, body = await self.get("s1.m3u8?token=" + token)
        self.assertEqual(r.code, 404)
        self.live()
        r, body = await self.get("s1.m3u8?token=" + token)
        self.assertEqual(r.code, 200)

    async def test_methods(self):
        self.live()
        r = await self.http.request("OPTIONS", self.base + "s1.m3u8")
        self.assertEqual(r.code, 204)
        self.assertEqual(r.headers.getRawHeaders(b"access-control-allow-origin"), [b"*"])
        r = await self.http.post(self.base + "s1.m3u8?token=" + self.mint(), data=b"")
        self.assertEqual(r.code, 403)
        self.assertIn(b"Invalid Request Type", await r.content())

    async def test_revokeEndsSession(self):
        self.live()
        r, body = await self.get("s1.m3u8?token=" + self.mint())
        media = uris(body.decode())[0]
        r, _ = await self.get(media)
        self.assertEqual(r.code, 200)
        self.assertEqual(self.server.hub.viewers("LiveApp", "s1"), {"hls": 1})
        self.server.gate.registry.kickTokenSessions("LiveApp", "s1")
        r, _ = await self.get(media)
        self.assertEqual(r.code, 403)

    async def test_revokeSessionsREST(self):
        self.live()
        r, body = await self.get("s1.m3u8?token=" + self.mint())
        media = uris(body.decode())[0]
        r = await self.http.delete(self.base.replace("/streams/", "/rest/v2/broadcasts/s1/sessions"))
        self.assertEqual(r.code, 200, await r.content())
        r, _ = await self.get(media)
        self.assertEqual(r.code, 403)
        self.assertEqual(self.server.hub.viewers("LiveApp", "s1"), {})

    async def test_cookieContinuesWithSpentToken(self):
        self.live()
        token = self.mint()
        r, _ = await self.get("s1/s1.mpd?token=" + token)
        self.assertEqual(r.code, 200)
        cookies = r.headers.getRawHeaders(b"set-cookie")
        self.assertTrue(cookies)
        cookie = cookies[0].split(b";")[0]
        self.assertIn(b"Path=/LiveApp/streams/", cookies[0])
        r, body = await self.get("s1/s1.mpd?token=" + token, headers={b"cookie": cookie},
                                 client=self.other)
        self.assertEqual(r.code, 200)
        r, body = await self.get("s1/s1.mpd?token=" + token, client=self.other)
        self.assertEqual(r.code, 403)

    async def test_dashCarriesSession(self):
        self.live()
        r, body = await self.get("s1/s1.mpd?token=" + self.mint())
        self.assertEqual(r.code, 200)
        mpd = body.decode()
        self.assertIn("<Location>", mpd)
        self.assertIn("tgs=", re.search(r"<Location>([^<]+)</Location>", mpd).group(1))
        self.assertIn('media="video/$Number$.m4s?tgs=', mpd)
        self.assertIn("UTCTiming", mpd)
        r, body = await self.get(self.base.replace("/LiveApp/streams/", "/time"))
        self.assertRegex(body.decode(), r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

    async def test_blockingReload(self):
        stream = self.live(until_ms=4000)
        r, body = await self.get("s1.m3u8?token=" + self.mint())
        media = uris(body.decode())[0]
        r, body = await self.get(media)
        seq = int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", body.decode()).group(1))
        count = body.decode().count("#EXTINF")
        self.assertGreater(count, 0, body)
        nxt = seq + count + 1
        from twisted.internet.defer import Deferred

        d = Deferred.fromCoroutine(self.get(media + "&_HLS_msn={}".format(nxt)))
        await task.deferLater(reactor, 0.3)
        self.assertFalse(d.called)
        feed(stream, self.clip, until_ms=9000, start_ms=4000)
        r, body = await d
        self.assertEqual(r.code, 200)
        self.assertIn("{}.m4s".format(nxt), body.decode())



class SpentTokenTests(PlaybackBase):
    """
    A spent token continues the session it opened, from the address that
    redeemed it, while that session is alive; nobody else gets anything.
    """

    async def test_headThenGet(self):
        self.live()
        token = self.mint()
        r = await self.http.head(self.base + "s1.m3u8?token=" + token)
        self.assertEqual(r.code, 200)
        r, body = await self.get("s1.m3u8?token=" + token)
        self.assertEqual(r.code, 200)
        self.assertIn(b"tgs=", body)
        self.assertEqual(self.server.hub.viewers("LiveApp", "s1"), {"hls": 1})

    async def test_sameSessionLaterFromSameAddress(self):
        self.live()
        token = self.mint()
        r, first = await self.get("s1/s1.mpd?token=" + token)
        self.assertEqual(r.code, 200)
        # mpv: libavformat reopens the URL after mpv's own probe
        r, again = await self.get("s1/s1.mpd?token=" + token)
        self.assertEqual(r.code, 200, again)
        sid = re.compile(r"tgs=([^&\"<]+)")
        signer = self.server.signer
        now = time.time()
        self.assertEqual(
            signer.check(sid.search(first.decode()).group(1), "LiveApp", "s1", now).sessionId,
            signer.check(sid.search(again.decode()).group(1), "LiveApp", "s1", now).sessionId)
        self.assertEqual(self.server.hub.viewers("LiveApp", "s1"), {"dash": 1})

    async def test_concurrentFirstRequests(self):
        """
        Two requests with one fresh token at once from one address (mpv's
        two opens can overlap): one session, both answered.
        """
        from twisted.internet.defer import gatherResults

        self.live()
        token = self.mint()
        self.slowStore(0.3)
        results = await gatherResults([
            Deferred.fromCoroutine(self.get("s1.m3u8?token=" + token)) for _ in range(3)])
        self.assertEqual([r.code for r, _ in results], [200, 200, 200])
        self.assertEqual(self.redeems, 1)
        self.assertEqual(self.server.hub.viewers("LiveApp", "s1"), {"hls": 1})

    def slowStore(self, delay):
        """
        Answer redemptions after C{delay} seconds (a store on a network),
        counting them.
        """
        store = self.server.store
        redeem = store.redeem
        self.redeems = 0

        def slow(*args):
            self.redeems += 1
            d = redeem(*args)
            return d.addCallback(lambda outcome: task.deferLater(reactor, delay, lambda: outcome))

        self.patch(store, "redeem", slow)

    async def test_concurrentFromTwoAddresses(self):
        from twisted.internet.defer import gatherResults

        self.live()
        token = self.mint()
        self.slowStore(0.3)
        results = await gatherResults([
            Deferred.fromCoroutine(self.get("s1.m3u8?token=" + token)),
            Deferred.fromCoroutine(self.get("s1.m3u8?token=" + token, client=self.other))])
        self.assertEqual(sorted(r.code for r, _ in results), [200, 403])
        self.assertEqual(self.server.hub.viewers("LiveApp", "s1"), {"hls": 1})

    async def test_otherAddressRefused(self):
        self.live()
        token = self.mint()
        r, _ = await self.get("s1.m3u8?token=" + token)
        self.assertEqual(r.code, 200)
        r, body = await self.get("s1.m3u8?token=" + token, client=self.other)
        self.assertEqual(r.code, 403)
        self.assertIn(b"Invalid Token for streamId:s1", body)

    async def test_otherFormatRefused(self):
        """
        The session is for the format it was opened for: an HLS token is
        not a DASH session.
        """
        self.live()
        token = self.mint()
        r, _ = await self.get("s1.m3u8?token=" + token)
        self.assertEqual(r.code, 200)
        r, _ = await self.get("s1/s1.mpd?token=" + token)
        self.assertEqual(r.code, 403)

    async def test_endedSessionRefused(self):
        self.live()
        token = self.mint()
        r, _ = await self.get("s1.m3u8?token=" + token)
        self.assertEqual(r.code, 200)
        registry = self.server.gate.registry
        self.assertEqual(registry.kick(registry.grants("LiveApp", "s1"), "revoked"), 1)
        r, _ = await self.get("s1.m3u8?token=" + token)
        self.assertEqual(r.code, 403)

    async def test_idleSessionRefused(self):
        self.live()
        token = self.mint()
        r, _ = await self.get("s1.m3u8?token=" + token)
        self.assertEqual(r.code, 200)
        sessions = self.server.httpSessions
        mind = next(iter(sessions._byId.values()))
        mind.lastSeen -= self.server.signer.idle + 1
        r, _ = await self.get("s1.m3u8?token=" + token)
        self.assertEqual(r.code, 403)
        self.assertEqual(sessions.sweep(), 1)
        self.assertEqual(sessions._opener, {})
        self.assertEqual(self.server.hub.viewers("LiveApp", "s1"), {})


class OpenTests(PlaybackBase):
    tokenControl = False

    async def test_noTokenNeeded(self):
        self.live()
        r, body = await self.get("s1.m3u8")
        self.assertEqual(r.code, 200)
        self.assertNotIn(b"tgs=", body)
        media = uris(body.decode())[0]
        r, body = await self.get(media)
        self.assertEqual(r.code, 200)

    async def test_switches(self):
        self.server.apps.replace("LiveApp", hlsMuxingEnabled=False, dashMuxingEnabled=False)
        self.live()
        r, _ = await self.get("s1.m3u8")
        self.assertEqual(r.code, 404)
        r, _ = await self.get("s1/s1.mpd")
        self.assertEqual(r.code, 404)


class StartingTests(PlaybackBase):
    """
    A playlist or MPD asked for while the stream has media but no complete
    segment yet (just published, or just pulled from its origin) is
    answered once the first segment is made.
    """

    tokenControl = False

    async def test_answeredAtTheFirstSegment(self):
        stream = self.server.hub.publish("LiveApp", "s1", "RTMP")
        self.addCleanup(stream.end)
        feed(stream, self.clip, until_ms=500)
        pending = [Deferred.fromCoroutine(self.get(path)) for path in ("s1.m3u8", "s1/s1.mpd")]
        await task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual([d.called for d in pending], [False, False])
        feed(stream, self.clip, start_ms=500)
        for d in pending:
            r, body = await d
            self.assertEqual(r.code, 200, body)

    async def test_mediaPlaylistWaitsForItsTrack(self):
        """
        The multivariant playlist is answered at the first video segment
        and lists audio; the audio playlist asked for before the first
        audio segment is made is answered once it is (not 404: ffmpeg
        would play without sound).
        """
        stream = self.server.hub.publish("LiveApp", "s1", "RTMP")
        self.addCleanup(stream.end)
        with open(self.clip, "rb") as f:
            tags = list(iter_flv_tags(f.read()))
        audio = [t for t in tags if t.tag_type == 8]
        for tag in tags:
            if tag.tag_type == 9 and tag.timestamp < 5000:
                stream.videoReceived(tag.timestamp, bytes(tag.data))
        for tag in audio:
            if tag.timestamp < 300:
                # the first audio segment begun, not complete
                stream.audioReceived(tag.timestamp, bytes(tag.data))
        r, body = await self.get("s1.m3u8")
        self.assertEqual(r.code, 200, body)
        self.assertIn(b"audio.m3u8", body)
        pending = Deferred.fromCoroutine(self.get("s1/audio.m3u8"))
        await task.deferLater(reactor, 0.3, lambda: None)
        self.assertFalse(pending.called)
        for tag in audio:
            if 300 <= tag.timestamp < 5000:
                stream.audioReceived(tag.timestamp, bytes(tag.data))
        r, body = await pending
        self.assertEqual(r.code, 200, body)
        self.assertIn(b".m4s", body)

    async def test_noMediaIsAnsweredAtOnce(self):
        stream = self.server.hub.publish("LiveApp", "s1", "RTMP")
        self.addCleanup(stream.end)
        r, body = await self.get("s1.m3u8")
        self.assertEqual((r.code, b"starting" in body), (404, True))


class VodTests(PlaybackBase):
    async def test_recordingRangeRequests(self):
        stream = self.live(until_ms=None)
        stream.end()
        path = self.server.outputs.recordingPath("LiveApp", "s1")
        for _ in range(100):
            if os.path.exists(path):
                break
            await task.deferLater(reactor, 0.1)
        self.assertTrue(os.path.exists(path))
        token = self.mint()
        r, _ = await self.get("s1.mp4?token=" + token, )
        # treq follows the redirect to the session URL
        self.assertEqual(r.code, 200)
        final = r.request.absoluteURI.decode()
        self.assertIn("tgs=", final)
        r, body = await self.get(final, headers={b"range": b"bytes=0-99"})
        self.assertEqual(r.code, 206)
        self.assertEqual(len(body), 100)
        self.assertEqual(body[4:8], b"ftyp")
        # the spent token from the same address continues the session (mpv
        # opens a URL twice); from anyone else: refused
        r, _ = await self.get("s1.mp4?token=" + token)
        self.assertEqual(r.code, 200)
        self.assertEqual(self.server.hub.viewers("LiveApp", "s1"), {"vod": 1})
        r, _ = await self.get("s1.mp4?token=" + token, client=self.other)
        self.assertEqual(r.code, 403)

    async def test_noRecordingKeepsToken(self):
        token = self.mint()
        r, _ = await self.get("nope.mp4?token=" + token)
        self.assertEqual(r.code, 404)


class HTTPSessionsTests(TestCase):
    """
    The HTTP sessions' index over the session registry, in memory (a
    Clock, no sockets).
    """

    def setUp(self):
        from tokengate.access.sessions import SessionRegistry
        from tokengate.metrics import Metrics
        from tokengate.web.playback import HTTPSessions
        from tokengate.web.sessions import SessionSigner

        from .helpers import clock_at

        self.clock = clock_at()
        self.metrics = Metrics()
        self.registry = SessionRegistry(self.metrics, self.clock)
        self.signer = SessionSigner(b"s" * 32, idle=120, vodIdle=3600)
        self.sessions = HTTPSessions(self.registry, self.signer, self.clock, maxSessions=3)

    def open(self, token, peer="10.0.0.1", kind="hls", streamId="s1"):
        from tokengate.access.sessions import Grant

        mind = self.sessions.mind(kind, peer, token)
        grant = Grant(app="LiveApp", streamId=streamId, action="play", protocol=kind,
                      peer=peer, kind="onetime", digest=token, expires=None, mind=mind,
                      registry=self.registry, started=self.clock.seconds())
        self.registry.add(grant)
        session = self.signer.new("LiveApp", streamId, kind, self.clock.seconds())
        self.sessions.open(mind, grant, session)
        return session, grant

    def test_continuedOnlyByItsOpener(self):
        session, _ = self.open("d1")
        self.assertEqual(self.sessions.continued("d1", "10.0.0.1", "LiveApp", "s1", "hls"),
                         session)
        for args in [("d1", "10.0.0.2", "LiveApp", "s1", "hls"),   # another address
                     ("d2", "10.0.0.1", "LiveApp", "s1", "hls"),   # another token
                     ("d1", "10.0.0.1", "LiveApp", "s2", "hls"),   # another stream
                     ("d1", "10.0.0.1", "WebRTCAppEE", "s1", "hls"),
                     ("d1", "10.0.0.1", "LiveApp", "s1", "dash")]:  # another format
            self.assertIsNone(self.sessions.continued(*args), args)

    def test_aliveOnly(self):
        session, grant = self.open("d1")
        self.clock.advance(100)
        self.assertIsNotNone(self.sessions.continued("d1", "10.0.0.1", "LiveApp", "s1", "hls"))
        # continuing counts as activity
        self.clock.advance(100)
        self.assertIsNotNone(self.sessions.continued("d1", "10.0.0.1", "LiveApp", "s1", "hls"))
        self.clock.advance(121)
        self.assertIsNone(self.sessions.continued("d1", "10.0.0.1", "LiveApp", "s1", "hls"))
        self.assertEqual(self.sessions.sweep(), 1)
        self.assertTrue(grant.ended)
        self.assertEqual(self.kicked("idle"), 1)
        # a session whose grant ended (a kick, a logout) is not continued either
        _, grant2 = self.open("d2")
        grant2.kick("revoked")
        self.assertIsNone(self.sessions.continued("d2", "10.0.0.1", "LiveApp", "s1", "hls"))
        _, grant3 = self.open("d3")
        grant3.logout()
        self.assertIsNone(self.sessions.continued("d3", "10.0.0.1", "LiveApp", "s1", "hls"))
        self.assertEqual(self.sessions._byId, {})

    def kicked(self, reason, protocol="hls"):
        return self.metrics.registry.get_sample_value(
            "tokengate_sessions_kicked_total",
            {"protocol": protocol, "action": "play", "reason": reason}) or 0

    def refused(self, session):
        from tokengate.web.sessions import InvalidCredential

        try:
            self.signer.check(self.signer.issue(session, self.clock.seconds()),
                              session.app, session.streamId, self.clock.seconds())
        except InvalidCredential:
            return True
        return False

    def test_kickedAndEvictedForgotten(self):
        s1, g1 = self.open("d1")
        self.registry.kickTokenSessions("LiveApp", "s1")
        self.assertTrue(g1.ended)
        self.assertTrue(self.refused(s1))
        self.assertIsNone(self.sessions.continued("d1", "10.0.0.1", "LiveApp", "s1", "hls"))
        # beyond maxSessions the least recently seen go (their credentials
        # refused), and their tokens with them
        opened = [self.open("e{}".format(i)) for i in range(5)]
        self.assertEqual([g.ended for _, g in opened], [True, True, False, False, False])
        self.assertEqual([self.refused(s) for s, _ in opened], [True, True, False, False, False])
        self.assertEqual(self.kicked("evicted"), 2)
        self.assertIsNone(self.sessions.continued("e0", "10.0.0.1", "LiveApp", "s1", "hls"))
        self.assertIsNotNone(self.sessions.continued("e4", "10.0.0.1", "LiveApp", "s1", "hls"))
        self.assertEqual(len(self.sessions._opener), 3)
        self.assertEqual(len(self.sessions._byId), 3)
        self.assertEqual(self.sessions.count("LiveApp", "s1"), {"hls": 3})

    def test_endedOnce(self):
        """
        However many paths try to end an HTTP session (a revocation's kick
        of the stream's players, a kick, a logout, the sweep, shutdown), it ends
        once: its credential revoked once, its grant's kick counted once,
        the registry's gauge back to zero.
        """
        revoked = []
        revoke = self.signer.revokeSession
        self.signer.revokeSession = lambda sid, now: (revoked.append(sid), revoke(sid, now))
        session, grant = self.open("d1")
        players = [g for g in self.registry.grants("LiveApp", "s1") if g.action == "play"]
        self.assertEqual(players, [grant])
        self.assertEqual(self.registry.kick(players, "revoked"), 1)
        self.assertEqual(self.registry.kick(players, "revoked"), 0)
        grant.kick("revoked")
        grant.logout()
        self.clock.advance(200)
        self.assertEqual(self.sessions.sweep(), 0)
        self.assertEqual(self.registry.kickAll("shutdown"), 0)
        self.assertEqual(revoked, [session.sessionId])
        self.assertEqual(self.kicked("revoked"), 1)
        self.assertEqual(self.kicked("idle") + self.kicked("shutdown"), 0)
        self.assertEqual(self.metrics.registry.get_sample_value(
            "tokengate_sessions", {"protocol": "hls", "action": "play"}), 0)
        self.assertEqual(self.sessions.count("LiveApp", "s1"), {})

    def test_floodEndsThroughTheGrant(self):
        session, grant = self.open("d1")
        self.sessions.end(session, "flood")
        self.assertTrue(grant.ended)
        self.assertTrue(self.refused(session))
        self.assertEqual(self.kicked("flood"), 1)

    def test_jwtReopenedKeepsNewerOpener(self):
        """
        A reusable token (a JWT) opens a second session from the same
        address; ending the first keeps the second continuable.
        """
        first, g1 = self.open("j")
        second, _ = self.open("j")
        g1.kick("revoked")
        self.assertEqual(self.sessions.continued("j", "10.0.0.1", "LiveApp", "s1", "hls"), second)
