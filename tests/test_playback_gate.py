"""
The HTTP playback adapter in memory (StubTreq, a Clock, no sockets): what
the access service refuses before any redemption keeps the token and is
answered byte for byte as Ant Media does; an HTTP session lives in the one
session registry beside RTMP sessions and is ended once, through its grant.
"""

from __future__ import annotations

from treq.testing import StubTreq
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from tokengate.apps import Applications
from tokengate.auth import Throttle
from tokengate.rtmp.protocol import RTMPFactory
from tokengate.server import Server
from tokengate.store.memory import MemoryTokenStore
from tokengate.tokens import Outcome, StoredToken, new_token
from tokengate.web.playback import PlaybackResource
from tokengate.server import buildSite
from tokengate.web.sessions import InvalidCredential, cookie_name

from .fixtures import POLICY_OUTCOMES, RecordingPolicy
from .helpers import NOW, clock_at
from .test_rtmp_protocol import AVC_HEADER, Peer, key

BASE = "http://127.0.0.1:5080/LiveApp/streams/"


def failure(message: str) -> bytes:
    """
    The body of a refusal, byte for byte.
    """
    return ('{"success": false, "message": "' + message
            + '", "dataId": "", "errorId": 0}').encode("utf-8")


class Harness(SynchronousTestCase):
    tokenControl = True
    #: security policies the server asks besides its own
    extraPolicies = ()

    def setUp(self):
        self.clock = clock_at()
        self.throttle = Throttle(self.clock)
        self.server = Server(apps=Applications(None), store=MemoryTokenStore(),
                             clock=self.clock, throttle=self.throttle,
                             extraPolicies=self.extraPolicies)
        self.server.apps.replace("LiveApp", playTokenControlEnabled=self.tokenControl,
                                 dashMuxingEnabled=True, mp4MuxingEnabled=True)
        site = buildSite(self.server)
        self.root = site.resource
        self.http = StubTreq(self.root)
        # RTMP in memory beside it (tests.test_rtmp_protocol's Peer)
        self.factory = RTMPFactory(self.server.access, self.clock, self.server.metrics)

    def mint(self, streamId="s1", type="play"):
        t = new_token(streamId, type, NOW + 600)
        self.server.store.add(StoredToken.fromToken("LiveApp", t))
        return t.tokenId

    def get(self, path, http=None, **kw):
        """
        GET C{path} (under the stream's URL unless absolute): the response
        and its body, once the adapter answered.
        """
        http = http or self.http
        url = path if path.startswith("http") else BASE + path

        async def run():
            r = await http.get(url, **kw)
            return r, await r.content()

        d = ensureDeferred(run())
        for i in range(100):
            if d.called:
                break
            http.flush()
            # a throttled admission waits on the clock
            self.clock.advance(0 if i < 10 else 0.1)
        return self.successResultOf(d)

    def refusals(self, protocol, reason):
        return self.server.metrics.registry.get_sample_value(
            "tokengate_refusals_total",
            {"protocol": protocol, "action": "play", "reason": reason}) or 0

    def kicked(self, protocol, action, reason):
        return self.server.metrics.registry.get_sample_value(
            "tokengate_sessions_kicked_total",
            {"protocol": protocol, "action": action, "reason": reason}) or 0

    def assertAnswer(self, response, code, message):
        r, body = response
        self.assertEqual((r.code, body), (code, failure(message)))
        self.assertEqual(r.headers.getRawHeaders(b"access-control-allow-origin"), [b"*"])
        self.assertEqual(r.headers.getRawHeaders(b"content-type"), [b"application/json"])

    def live(self, streamId="s1"):
        stream = self.server.hub.publish("LiveApp", streamId, "RTMP")
        self.addCleanup(stream.end)
        return stream

    def credential(self, response, streamId="s1"):
        """
        The session credential a response set in its cookie.
        """
        r, _ = response
        name = cookie_name("LiveApp", streamId).encode("ascii")
        for cookie in r.headers.getRawHeaders(b"set-cookie", []):
            pair = cookie.split(b";")[0]
            if pair.startswith(name + b"="):
                return pair[len(name) + 1:].decode("ascii")
        self.fail("no session cookie in {}".format(r.headers))

    def refuses(self, credential, streamId="s1"):
        try:
            self.server.signer.check(credential, "LiveApp", streamId, self.clock.seconds())
        except InvalidCredential:
            return True
        return False


class RefusalsKeepTheTokenTests(Harness):
    """
    Every refusal decided before redemption (the access service's checks)
    keeps the token, is counted, and answers as before.
    """

    def assertTokenIntact(self, token):
        """
        C{token} still opens a session (once): the stream goes live, the
        token is redeemed, and then it is spent for anyone else.
        """
        if not self.server.hub.isLive("LiveApp", "s1"):
            self.live()
        self.get("s1.m3u8?token=" + token)
        self.assertEqual(self.server.hub.viewers("LiveApp", "s1"), {"hls": 1})
        grants = self.server.gate.registry.grants("LiveApp", "s1")
        self.assertEqual([(g.protocol, g.kind) for g in grants if g.action == "play"],
                         [("hls", "onetime")])

    def test_invalidStreamId(self):
        token = self.mint()
        for path in (".hidden.m3u8", "a%20b.m3u8", "..%2Fx.m3u8", "{}.m3u8".format("x" * 129),
                     ".x/.x.mpd", "%C3%A9/video.m3u8"):
            self.assertAnswer(self.get(path + "?token=" + token), 404, "Not found")
        self.assertEqual(self.refusals("hls", "invalid"), 5)
        self.assertEqual(self.refusals("dash", "invalid"), 1)
        # suspicious: the address is slowed down, its token is intact
        self.assertGreater(self.throttle.delay("127.0.0.1"), 0)
        self.assertTokenIntact(token)

    def test_unparsedPath(self):
        token = self.mint()
        for path in ("s1", "s1/x.mpd", "s1/video/x.txt", "s1/a/b/c"):
            self.assertAnswer(self.get(path + "?token=" + token), 404, "Not found")
        self.assertTokenIntact(token)

    def test_unknownApplication(self):
        """
        An application deleted while its resource is reached (the site only
        routes known applications to playback).
        """
        token = self.mint()
        root = Resource()
        app = Resource()
        root.putChild(b"Gone", app)
        app.putChild(b"streams", PlaybackResource(self.root._playback, "Gone"))
        http = StubTreq(root)
        self.live()
        self.assertAnswer(self.get("http://127.0.0.1/Gone/streams/s1.m3u8?token=" + token,
                                   http=http), 404, "Not found")
        self.assertEqual(self.refusals("hls", "no_app"), 1)
        self.assertTokenIntact(token)

    def test_hlsDisabled(self):
        self.server.apps.replace("LiveApp", playTokenControlEnabled=True, hlsMuxingEnabled=False,
                                 dashMuxingEnabled=True)
        self.live()
        token = self.mint()
        for path in ("s1.m3u8", "s1_adaptive.m3u8", "s1/video.m3u8"):
            self.assertAnswer(self.get(path + "?token=" + token), 404,
                              "HLS is not enabled for this application")
        self.assertEqual(self.refusals("hls", "disabled"), 3)
        # segments then belong to DASH: no session, refused as before
        self.assertAnswer(self.get("s1/video/1.m4s"), 403, "Invalid Token for streamId:s1")
        self.assertEqual(self.refusals("dash", "missing"), 1)
        self.server.apps.replace("LiveApp", hlsMuxingEnabled=True)
        self.assertTokenIntact(token)

    def test_dashDisabled(self):
        self.server.apps.replace("LiveApp", playTokenControlEnabled=True,
                                 dashMuxingEnabled=False)
        self.live()
        token = self.mint()
        self.assertAnswer(self.get("s1/s1.mpd?token=" + token), 404,
                          "DASH is not enabled for this application")
        self.server.apps.replace("LiveApp", playTokenControlEnabled=True, hlsMuxingEnabled=False,
                                 dashMuxingEnabled=False)
        self.assertAnswer(self.get("s1/video/init.mp4?token=" + token), 404,
                          "DASH is not enabled for this application")
        self.assertEqual(self.refusals("dash", "disabled"), 2)
        self.server.apps.replace("LiveApp", hlsMuxingEnabled=True)
        self.assertTokenIntact(token)

    def test_notLive(self):
        token = self.mint()
        self.assertAnswer(self.get("s1.m3u8?token=" + token), 404, "Stream is not live: s1")
        self.assertAnswer(self.get("s1/video.m3u8?token=" + token), 404,
                          "Stream is not live: s1")
        self.assertEqual(self.refusals("hls", "not_live"), 2)
        self.assertTokenIntact(token)

    def test_notRecorded(self):
        token = self.mint()
        self.assertAnswer(self.get("s1.mp4?token=" + token), 404, "No recording of this stream")
        self.assertEqual(self.refusals("vod", "not_live"), 1)
        self.assertTokenIntact(token)

    def test_spentTokenElsewhere(self):
        """
        What comes after a redemption (the control): a spent token from
        another address is refused 403 with Ant Media's string.
        """
        self.live()
        token = self.mint()
        self.get("s1.m3u8?token=" + token)
        other = StubTreq(self.root)
        self.patch(self.root._playback, "_peer", lambda request: "192.0.2.99")
        self.assertAnswer(self.get("s1.m3u8?token=" + token, http=other), 403,
                          "Invalid Token for streamId:s1")
        self.assertEqual(self.refusals("hls", "unknown"), 1)

    def test_storeUnavailable(self):
        from tokengate.store import StoreUnavailable
        from twisted.internet.defer import fail

        self.live()
        token = self.mint()
        self.patch(self.server.store, "redeem",
                   lambda *args: fail(StoreUnavailable("down")))
        self.assertAnswer(self.get("s1.m3u8?token=" + token), 503,
                          "Token store is unavailable, try again later")


class PolicyPlumbingTests(RefusalsKeepTheTokenTests):
    """
    The security policies are told the C{subscriberId}, C{subscriberCode}
    and other query parameters of the request that opens a session; a
    session's later requests are not asked again.  Each refusal is answered
    Ant Media's way where it has a way, the token kept.
    """

    def setUp(self):
        self.policy = RecordingPolicy()
        self.extraPolicies = [self.policy]
        super().setUp()

    def asked(self):
        r = self.policy.last
        return (r.protocol, r.action, r.app, r.streamId, r.token, r.subscriberId,
                r.subscriberCode, r.params)

    def test_manifestQuery(self):
        self.live()
        token = self.mint()
        r = self.get("s1.m3u8?a=1&token={}&subscriberId=viewer-1&subscriberCode=123456&b=%20"
                     "&a=2&tgs=forged".format(token))
        self.assertEqual(r[0].code, 404)  # admitted; no packager for this bare stream
        self.assertEqual(self.asked(), ("hls", "play", "LiveApp", "s1", token, "viewer-1",
                                        "123456", (("a", "1"), ("b", " "), ("a", "2"))))
        self.assertEqual(self.server.hub.viewers("LiveApp", "s1"), {"hls": 1})

    def test_dashQuery(self):
        self.live()
        token = self.mint()
        self.get("s1/s1.mpd?token={}&subscriberId=viewer-1&subscriberCode=654321".format(token))
        self.assertEqual(self.asked(), ("dash", "play", "LiveApp", "s1", token, "viewer-1",
                                        "654321", ()))

    def test_sessionNotAskedAgain(self):
        self.live()
        response = self.get("s1.m3u8?token={}&subscriberId=viewer-1&subscriberCode=123456"
                            .format(self.mint()))
        credential = self.credential(response)
        self.assertEqual(len(self.policy.asked), 1)
        self.get("s1.m3u8?tgs=" + credential)
        self.get("s1/video/0.m4s?tgs=" + credential)
        self.assertEqual(len(self.policy.asked), 1)

    def test_absurdLengths(self):
        self.live()
        token = self.mint()
        self.assertAnswer(self.get("s1.m3u8?token={}&subscriberId={}".format(token, "a" * 300)),
                          403, "Invalid Token for streamId:s1")
        self.assertAnswer(self.get("s1.m3u8?token={}&x={}".format(token, "v" * 9000)),
                          403, "Invalid Token for streamId:s1")
        self.assertAnswer(self.get("s1.m3u8?token={}&".format(token)
                                   + "&".join("k{}=v".format(i) for i in range(33))),
                          403, "Invalid Token for streamId:s1")
        self.assertEqual(self.policy.asked, [])
        self.assertEqual(self.refusals("hls", "invalid"), 3)
        self.assertTokenIntact(token)

    def test_refusals(self):
        """
        401 C{Subscriber is blocked}, 403 C{Time Based subscriber id or code
        is invalid}, 403 with a reason for the other policies and 503 when
        the webhook did not answer; counted, the token kept.
        """
        self.live()
        token = self.mint()
        expected = {
            Outcome.BLOCKED: (401, "Subscriber is blocked"),
            Outcome.BAD_CODE: (403, "Time Based subscriber id or code is invalid"),
            Outcome.CODE_IN_USE: (403, "Time Based subscriber id or code is invalid"),
            Outcome.UNREGISTERED: (403, "Stream is not registered"),
            Outcome.ADDRESS: (403, "Address is not allowed"),
            Outcome.WEBHOOK_REFUSED: (403, "Not authorized"),
            Outcome.WEBHOOK_UNAVAILABLE: (503, "Authorization is unavailable, try again later"),
        }
        self.assertEqual(set(expected), set(POLICY_OUTCOMES))
        for outcome in POLICY_OUTCOMES:
            self.policy.outcome = outcome
            for path in ("s1.m3u8", "s1/s1.mpd"):
                self.assertAnswer(self.get(path + "?token={}&subscriberId=viewer-1"
                                           "&subscriberCode=123456".format(token)),
                                  *expected[outcome])
            self.assertEqual(self.refusals("hls", outcome.value), 1, outcome)
            self.assertEqual(self.refusals("dash", outcome.value), 1, outcome)
        self.policy.outcome = None
        self.assertTokenIntact(token)


class OpenApplicationTests(Harness):
    """
    Without play token control there is no session: the access service's
    checks still decide the switches and the names.
    """

    tokenControl = False

    def test_switchesAndNames(self):
        self.server.apps.replace("LiveApp", hlsMuxingEnabled=False, dashMuxingEnabled=False)
        self.assertAnswer(self.get("s1.m3u8"), 404, "HLS is not enabled for this application")
        self.assertAnswer(self.get("s1/s1.mpd"), 404, "DASH is not enabled for this application")
        self.assertAnswer(self.get(".x.m3u8"), 404, "Not found")
        self.assertAnswer(self.get("s1.mp4"), 404, "No recording of this stream")
        self.assertEqual(self.refusals("hls", "disabled"), 1)
        self.assertEqual(self.refusals("dash", "disabled"), 1)

    def test_notLiveAnsweredByThePackager(self):
        self.assertAnswer(self.get("s1.m3u8"), 404, "Stream is not live: s1")
        self.assertAnswer(self.get("s1/video/3.m4s"), 404, "Stream is not live: s1")
        # delivery, not admission: nothing refused
        self.assertEqual(self.refusals("hls", "not_live"), 0)
        self.assertEqual(self.server.gate.registry.grants("LiveApp"), [])


class OpenApplicationPolicyTests(Harness):
    """
    An application without play token control but with a security policy
    that applies to play (a TOTP code, a play webhook): the first request is
    admitted all the same and opens a session; segments need one.  A policy
    that applies only to publish changes nothing for HTTP play.
    """

    tokenControl = False

    def setUp(self):
        self.policy = RecordingPolicy()
        self.extraPolicies = [self.policy]
        super().setUp()

    def test_admittedWithoutToken(self):
        self.live()
        response = self.get("s1.m3u8?subscriberId=viewer-1&subscriberCode=123456&x=1")
        r = self.policy.last
        self.assertEqual((r.protocol, r.token, r.subscriberId, r.subscriberCode, r.params),
                         ("hls", None, "viewer-1", "123456", (("x", "1"),)))
        self.assertEqual(self.server.hub.viewers("LiveApp", "s1"), {"hls": 1})
        credential = self.credential(response)
        self.get("s1/video/0.m4s?tgs=" + credential)
        self.assertEqual(len(self.policy.asked), 1)

    def test_refusedWithoutToken(self):
        self.live()
        self.policy.outcome = Outcome.BAD_CODE
        self.assertAnswer(self.get("s1.m3u8?subscriberId=viewer-1&subscriberCode=000000"),
                          403, "Time Based subscriber id or code is invalid")
        self.policy.outcome = Outcome.BLOCKED
        self.assertAnswer(self.get("s1/s1.mpd?subscriberId=viewer-1&subscriberCode=000000"),
                          401, "Subscriber is blocked")
        self.assertEqual(self.server.hub.viewers("LiveApp", "s1"), {})

    def test_segmentNeedsASession(self):
        self.live()
        self.assertAnswer(self.get("s1/video/0.m4s?subscriberId=viewer-1&subscriberCode=1"),
                          403, "Invalid Token for streamId:s1")
        self.assertEqual(self.policy.asked, [])

    def test_codeContinuesItsSession(self):
        """
        As a token does: the subscriber id and code that opened a session
        continue it from the same address (mpv opens a URL twice), for the
        same stream and format; another code is admitted afresh.
        """
        self.live()

        def sessionId(path, peer="127.0.0.1"):
            # a client without cookies
            self.patch(self.root._playback, "_peer", lambda request: peer)
            credential = self.credential(self.get(path, http=StubTreq(self.root)))
            return self.server.signer.check(credential, "LiveApp", "s1",
                                            self.clock.seconds()).sessionId

        url = "s1.m3u8?subscriberId=viewer-1&subscriberCode=123456"
        first = sessionId(url)
        self.assertEqual(sessionId(url), first)
        self.assertEqual(len(self.policy.asked), 1)
        self.assertEqual(self.server.hub.viewers("LiveApp", "s1"), {"hls": 1})
        self.assertNotEqual(sessionId("s1.m3u8?subscriberId=viewer-1&subscriberCode=654321"),
                            first)
        self.assertNotEqual(sessionId("s1.m3u8?subscriberId=viewer-2&subscriberCode=123456"),
                            first)
        self.assertEqual(len(self.policy.asked), 3)
        self.assertNotEqual(sessionId(url, peer="192.0.2.99"), first)
        self.assertEqual(len(self.policy.asked), 4)

    def test_publishOnlyPolicy(self):
        self.policy.actions = frozenset({"publish"})
        self.live()
        r, _ = self.get("s1.m3u8?subscriberId=viewer-1&subscriberCode=123456")
        self.assertEqual(self.policy.asked, [])
        self.assertEqual(self.server.gate.registry.grants("LiveApp", "s1"), [])
        self.assertFalse(r.headers.getRawHeaders(b"set-cookie"))


class OneRegistryTests(Harness):
    """
    HTTP sessions are grants of the one registry, beside RTMP's, and every
    end goes through the grant's kick, once.
    """

    def httpSession(self, peer=None):
        self.live() if not self.server.hub.isLive("LiveApp", "s1") else None
        response = self.get("s1.m3u8?token=" + self.mint())
        return self.credential(response)

    def countRevocations(self):
        revoked = []
        revoke = self.server.signer.revokeSession

        def counting(sessionId, now):
            revoked.append(sessionId)
            revoke(sessionId, now)

        self.patch(self.server.signer, "revokeSession", counting)
        return revoked

    def test_kickedOnce(self):
        """
        The stream's viewing sessions ended as revocation does (kick the
        registry's play grants, refuse the stream's credentials): the HTTP
        session's credential is revoked once, its grant ends once, and
        nothing ends it again (another kick, the sweep, shutdown).
        """
        revoked = self.countRevocations()
        credential = self.httpSession()
        self.assertAnswer(self.get("s1/video.m3u8?tgs=" + credential), 404,
                          "Stream is starting; try again shortly")
        registry = self.server.gate.registry
        players = [g for g in registry.grants("LiveApp", "s1") if g.action == "play"]
        self.assertEqual([g.protocol for g in players], ["hls"])
        self.assertEqual(registry.kick(players, "revoked"), 1)
        self.server.signer.revokeStream("LiveApp", "s1", self.clock.seconds())
        self.assertEqual(len(revoked), 1)
        self.assertTrue(self.refuses(credential))
        self.assertEqual(registry.kick(players, "revoked"), 0)
        self.assertEqual(registry.kickTokenSessions("LiveApp", "s1"), 0)
        self.clock.advance(self.server.signer.idle + 1)
        self.assertEqual(self.server.httpSessions.sweep(), 0)
        self.assertEqual(registry.kickAll("shutdown"), 0)  # (the publisher is no grant here)
        self.assertEqual(len(revoked), 1)
        self.assertEqual(self.kicked("hls", "play", "revoked"), 1)
        self.assertEqual(self.server.hub.viewers("LiveApp", "s1"), {})
        self.assertAnswer(self.get("s1/video.m3u8?tgs=" + credential), 403,
                          "Invalid Token for streamId:s1")

    def test_idleEndedOnceThroughTheGrant(self):
        revoked = self.countRevocations()
        credential = self.httpSession()
        self.clock.advance(self.server.signer.idle + 1)
        self.assertEqual(self.server.httpSessions.sweep(), 1)
        self.assertEqual(self.server.httpSessions.sweep(), 0)
        self.assertEqual(self.kicked("hls", "play", "idle"), 1)
        self.assertEqual(self.server.hub.viewers("LiveApp", "s1"), {})
        # its credentials expired already: nothing to revoke
        self.assertEqual(revoked, [])
        self.assertTrue(self.refuses(credential))

    def test_applicationDeleted(self):
        revoked = self.countRevocations()
        credential = self.httpSession()
        self.server.apps.delete("LiveApp")
        self.assertEqual(len(revoked), 1)
        self.assertTrue(self.refuses(credential))
        self.assertEqual(self.kicked("hls", "play", "revoked"), 1)

    def test_httpAndRtmpEndedByOnePath(self):
        """
        An RTMP publisher, an RTMP player and an HLS session: one registry
        holds the three; the one path (the registry's kick, as shutdown
        uses it) ends each through its grant, once, each its protocol's way
        (RTMP closes, HLS refuses the credential).
        """
        self.server.apps.replace("LiveApp", playTokenControlEnabled=True,
                                 publishTokenControlEnabled=True, dashMuxingEnabled=True)
        publisher = Peer(self)
        publisher.publish("s1?token=" + self.mint(type="publish"))
        publisher.media(video=[(0, AVC_HEADER), (0, key())])
        player = Peer(self, "192.0.2.20")
        player.connect()
        player.command("play", 3, None, "s1?token=" + self.mint(), -2000.0, stream_id=1)
        self.assertEqual(player.statuses()[-1]["code"], "NetStream.Play.Start")
        revoked = self.countRevocations()
        credential = self.credential(self.get("s1.m3u8?token=" + self.mint()))
        registry = self.server.gate.registry
        self.assertEqual(sorted((g.protocol, g.action) for g in registry.grants("LiveApp", "s1")),
                         [("hls", "play"), ("rtmp", "play"), ("rtmp", "publish")])
        # players first: ending the publisher first would end the RTMP
        # player as its stream ends (a logout, not a kick)
        grants = sorted(registry.grants("LiveApp", "s1"), key=lambda g: g.action == "publish")
        self.assertEqual(registry.kick(grants, "shutdown"), 3)
        self.assertEqual(registry.kick(grants, "shutdown"), 0)
        self.assertEqual(registry.kickAll("shutdown"), 0)
        publisher.pump()
        player.pump()
        self.clock.advance(1)
        self.assertFalse(publisher.transport.connected)
        self.assertFalse(player.transport.connected)
        self.assertEqual(len(revoked), 1)
        self.assertTrue(self.refuses(credential))
        for protocol, action in [("rtmp", "publish"), ("rtmp", "play"), ("hls", "play")]:
            self.assertEqual(self.kicked(protocol, action, "shutdown"), 1)
        self.assertEqual(registry.grants("LiveApp"), [])
        self.assertEqual(self.server.httpSessions.sweep(), 0)


class HashTokenTests(Harness):
    """
    HLS and DASH with Ant Media's hash tokens: the play hash of the stream
    opens a session, again and again; anything else is refused as a token.
    """

    SECRET = "a hash secret of 24 chars"

    def setUp(self):
        super().setUp()
        self.server.apps.replace("LiveApp", playTokenControlEnabled=False,
                                 hashControlPlayEnabled=True, tokenHashSecret=self.SECRET,
                                 dashMuxingEnabled=True)

    def test_hlsAndDash(self):
        from tokengate.access.hashtoken import hashToken

        self.live()
        play = hashToken("s1", "play", self.SECRET)
        for path in ("s1.m3u8", "s1/s1.mpd"):
            for wrong in (hashToken("s1", "publish", self.SECRET),
                          hashToken("s2", "play", self.SECRET), "", "x"):
                self.assertAnswer(self.get(path + "?token=" + wrong), 403,
                                  "Invalid Token for streamId:s1")
        self.assertEqual(self.refusals("hls", "invalid"), 3)
        self.assertEqual(self.refusals("hls", "missing"), 1)
        for path in ("s1.m3u8", "s1/s1.mpd", "s1.m3u8"):
            # admitted (the stream has no media yet: the packager's answer),
            # each by a client without the others' session cookie
            self.assertAnswer(self.get(path + "?token=" + play, http=StubTreq(self.root)),
                              404, "Stream is starting; try again shortly")
        kinds = [(g.protocol, g.kind) for g in self.server.gate.registry.grants("LiveApp", "s1")]
        self.assertEqual(sorted(kinds), [("dash", "hash"), ("hls", "hash"), ("hls", "hash")])
