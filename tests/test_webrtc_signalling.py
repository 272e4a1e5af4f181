"""
The WebSocket signalling at /{App}/websocket, with a real Autobahn client
over loopback against the real site.  The media engine is a test double
(signalling only; real media is in test_webrtc_media), except in
L{NoMedia}, which runs the engine this (non-asyncio) reactor gets.
"""

from __future__ import annotations

import json
import time
from typing import Any, Sequence

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tokengate.apps import Applications
from tokengate.server import Server
from tokengate.store.memory import MemoryTokenStore
from tokengate.tokens import PLAY, PUBLISH, Outcome, StoredToken, digest, new_token
from tokengate.server import buildSite
from tokengate.webrtc import signalling

from tests.fixtures import POLICY_OUTCOMES, RecordingPolicy


class FakePeer:
    def __init__(self, events: Any, kind: str) -> None:
        self.events = events
        self.kind = kind
        self.candidates: list[Any] = []
        self.closed = False

    def answer(self, sdp: str) -> Deferred:
        reactor.callLater(0, self.events.connected)
        return succeed("fake-answer to " + sdp)

    def offer(self) -> Deferred:
        return succeed("fake-offer")

    def accept(self, sdp: str) -> Deferred:
        reactor.callLater(0, self.events.connected)
        return succeed(None)

    def addCandidate(self, candidate: str, mid: Any, label: Any) -> Deferred:
        self.candidates.append((candidate, mid, label))
        return succeed(None)

    def close(self) -> Deferred:
        self.closed = True
        return succeed(None)


class FakeEngine:
    available = True
    reason = ""

    def __init__(self) -> None:
        self.peers: list[FakePeer] = []

    def publisher(self, stream: Any, events: Any) -> FakePeer:
        self.peers.append(FakePeer(events, "publish"))
        return self.peers[-1]

    def player(self, stream: Any, events: Any) -> FakePeer:
        self.peers.append(FakePeer(events, "play"))
        return self.peers[-1]


class _Client(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.messages.append(json.loads(payload))

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        self.factory.closeCode = code
        if not self.factory.closed.called:
            self.factory.closed.callback(code)


class WS:
    def __init__(self, url: str) -> None:
        f = self.factory = WebSocketClientFactory(url)
        f.protocol = _Client
        f.opened, f.closed = Deferred(), Deferred()
        f.messages, f.closeCode = [], None
        connectWS(f)

    async def open(self) -> "WS":
        self.proto = await self.factory.opened
        return self

    def send(self, **msg: Any) -> None:
        self.proto.sendMessage(json.dumps(msg).encode())

    def raw(self, data: bytes) -> None:
        self.proto.sendMessage(data)

    async def expect(self, timeout: float = 5.0, **fields: Any) -> dict:
        deadline = time.time() + timeout
        while True:
            for i, m in enumerate(self.factory.messages):
                if all(m.get(k) == v for k, v in fields.items()):
                    return self.factory.messages.pop(i)
            if time.time() > deadline:
                raise AssertionError("no {} in {}".format(fields, self.factory.messages))
            await task.deferLater(reactor, 0.02)


class SignallingBase(TestCase):
    """
    A site with the signalling (test-double engine) on a loopback port, and
    clients for it (also used by tests.test_hostile_json).
    """

    timeout = 30

    #: security policies the server asks besides its own
    extraPolicies: Sequence[Any] = ()

    def setUp(self) -> None:
        self.server = Server(apps=Applications(None), store=MemoryTokenStore(), clock=reactor,
                             extraPolicies=self.extraPolicies)
        self.server.apps.replace("LiveApp", publishTokenControlEnabled=True,
                                 playTokenControlEnabled=True)
        self.site = buildSite(self.server)
        self.pages = self.site.resource._webrtc
        self.engine = FakeEngine()
        self.pages.factory.engine = self.engine
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = "ws://127.0.0.1:{}/LiveApp/websocket".format(self.port.getHost().port)
        self.clients: list[WS] = []
        self.addCleanup(self._close)

    async def _close(self) -> None:
        for c in self.clients:
            if c.factory.closeCode is None and hasattr(c, "proto"):
                c.proto.sendClose()
                await c.factory.closed
        for s in self.server.hub.liveStreams():
            s.end()

    async def ws(self) -> WS:
        c = await WS(self.url).open()
        self.clients.append(c)
        return c

    def mint(self, streamId: str = "s1", type: str = "publish") -> str:
        t = new_token(streamId, type, int(time.time()) + 600)
        self.server.store.add(StoredToken.fromToken("LiveApp", t))
        return t.tokenId

    async def publish(self, c: WS, streamId: str = "s1") -> None:
        c.send(command="publish", streamId=streamId, token=self.mint(streamId))
        await c.expect(command="start", streamId=streamId)
        c.send(command="takeConfiguration", streamId=streamId, type="offer", sdp="o")
        m = await c.expect(command="takeConfiguration", streamId=streamId)
        self.assertEqual((m["type"], m["sdp"]), ("answer", "fake-answer to o"))
        await c.expect(command="notification", definition="publish_started", streamId=streamId)


class PolicyPlumbing(SignallingBase):
    """
    The security policies are told the C{subscriberId} and
    C{subscriberCode} of a C{publish} or C{play} (as Ant Media's JavaScript
    SDK sends them), and each refusal is Ant Media's error, the token kept
    and the socket usable.
    """

    def setUp(self) -> None:
        self.policy = RecordingPolicy()
        self.extraPolicies = [self.policy]
        super().setUp()

    def asked(self) -> tuple:
        r = self.policy.last
        return (r.protocol, r.action, r.app, r.streamId, r.token, r.subscriberId,
                r.subscriberCode, r.params)

    async def test_publishFields(self) -> None:
        c = await self.ws()
        token = self.mint()
        c.send(command="publish", streamId="s1", token=token, subscriberId="sub-1",
               subscriberCode="123456", streamName="ignored", mainTrack="", metaData="")
        await c.expect(command="start", streamId="s1")
        self.assertEqual(self.asked(), ("webrtc", "publish", "LiveApp", "s1", token, "sub-1",
                                        "123456", ()))

    async def test_playFields(self) -> None:
        await self.publish(await self.ws())
        c = await self.ws()
        token = self.mint("s1", "play")
        c.send(command="play", streamId="s1", token=token, subscriberId="viewer-1",
               subscriberCode="654321", room="", trackList=[])
        await c.expect(command="takeConfiguration", streamId="s1")
        self.assertEqual(self.asked(), ("webrtc", "play", "LiveApp", "s1", token, "viewer-1",
                                        "654321", ()))

    async def test_absentOrNotStrings(self) -> None:
        """
        What the SDK sends when there is no subscriber (C{""}, or nothing),
        and values that are not strings, reach the policy as None.
        """
        c = await self.ws()
        for fields in ({"subscriberId": "", "subscriberCode": ""}, {},
                       {"subscriberId": 12, "subscriberCode": 123456},
                       {"subscriberId": None, "subscriberCode": ["1"]}):
            self.policy.outcome = Outcome.BAD_CODE
            c.send(command="publish", streamId="s1", token="x", **fields)
            await c.expect(command="error", definition="unauthorized_access", streamId="s1")
            self.assertEqual(self.asked()[5:7], (None, None), fields)

    async def test_absurdLengths(self) -> None:
        c = await self.ws()
        token = self.mint()
        c.send(command="publish", streamId="s1", token=token, subscriberId="a" * 300)
        await c.expect(command="error", definition="unauthorized_access", streamId="s1")
        self.assertEqual(self.policy.asked, [])
        self.assertEqual(self.server.metrics.refusals.labels("webrtc", "publish", "invalid")
                         ._value.get(), 1)
        c.send(command="publish", streamId="s1", token=token)
        await c.expect(command="start", streamId="s1")

    async def test_refusals(self) -> None:
        """
        Each policy outcome on publish and play: C{user_blocked},
        C{not_allowed_unregistered_streams}, else C{unauthorized_access};
        counted; both tokens kept.
        """
        c = await self.ws()
        publishToken, playToken = self.mint(), self.mint("s1", "play")
        for outcome in POLICY_OUTCOMES:
            self.policy.outcome = outcome
            definition = {Outcome.BLOCKED: "user_blocked",
                          Outcome.UNREGISTERED: "not_allowed_unregistered_streams"}.get(
                              outcome, "unauthorized_access")
            c.send(command="publish", streamId="s1", token=publishToken,
                   subscriberId="sub-1", subscriberCode="123456")
            m = await c.expect(command="error", streamId="s1")
            self.assertEqual(m, {"command": "error", "definition": definition,
                                 "streamId": "s1"}, outcome)
            self.assertEqual(self.server.metrics.refusals.labels(
                "webrtc", "publish", outcome.value)._value.get(), 1, outcome)
        self.policy.outcome = None
        c.send(command="publish", streamId="s1", token=publishToken)
        await c.expect(command="start", streamId="s1")
        c.send(command="takeConfiguration", streamId="s1", type="offer", sdp="o")
        await c.expect(command="notification", definition="publish_started", streamId="s1")
        p = await self.ws()
        for outcome in POLICY_OUTCOMES:
            self.policy.outcome = outcome
            p.send(command="play", streamId="s1", token=playToken)
            m = await p.expect(command="error", streamId="s1")
            self.assertEqual(m, signalling.refusalMessage(outcome, PLAY, "s1"), outcome)
        self.policy.outcome = None
        p.send(command="play", streamId="s1", token=playToken)
        await p.expect(command="takeConfiguration", streamId="s1")


class Signalling(SignallingBase):
    async def test_ping_and_ice(self) -> None:
        c = await self.ws()
        c.send(command="ping")
        await c.expect(command="pong")
        c.send(command="getIceServerConfig")
        m = await c.expect(command="iceServerConfig")
        # nothing configured (see test_webrtc_ice for STUN and TURN): the
        # Ant Media Server SDK's fields, empty, and an empty list
        self.assertEqual(m, {"command": "iceServerConfig", "stunServerUri": "",
                             "turnServerUsername": "", "turnServerCredential": "",
                             "iceServers": [], "iceTransportPolicy": "all"})

    async def test_stream_id_errors(self) -> None:
        c = await self.ws()
        c.send(command="publish", token="x")
        await c.expect(command="error", definition="noStreamNameSpecified")
        c.send(command="play", streamId="bad/id", token="x")
        await c.expect(command="error", definition="invalidStreamName", streamId="bad/id")
        c.send(command="getStreamInfo", streamId="")
        await c.expect(command="error", definition="noStreamNameSpecified")

    async def test_malformed(self) -> None:
        c = await self.ws()
        c.raw(b"{not json")
        await c.expect(command="error", definition="invalid_json")
        c.raw(b"[1, 2]")
        await c.expect(command="error", definition="invalid_json")
        c.send(streamId="s1")
        await c.expect(command="error", definition="missing_command")
        c.send(command="selfDestruct", streamId="s1")
        await c.expect(command="error", definition="unknown_command")
        c.proto.sendMessage(b"\xff\xfe", isBinary=True)
        await c.expect(command="error", definition="invalid_json")
        # still served
        c.send(command="ping")
        await c.expect(command="pong")

    async def test_bad_token_then_good(self) -> None:
        c = await self.ws()
        c.send(command="publish", streamId="s1", token="123")
        await c.expect(command="error", definition="unauthorized_access", streamId="s1")
        c.send(command="publish", streamId="s1", token="")
        await c.expect(command="error", definition="unauthorized_access", streamId="s1")
        await self.publish(c)
        self.assertTrue(self.server.hub.isLive("LiveApp", "s1"))
        self.assertEqual(self.server.hub.get("LiveApp", "s1").publishType, "WebRTC")
        c.send(command="takeCandidate", streamId="s1", label=0, id="0",
               candidate="candidate:1 1 udp 1 127.0.0.1 9 typ host")
        c.send(command="publish", streamId="s1", token=self.mint())
        await c.expect(command="error", definition="already_publishing", streamId="s1")
        self.assertEqual(self.engine.peers[0].candidates[0][1:], ("0", 0))
        c.send(command="getStreamInfo", streamId="s1")
        await c.expect(command="streamInformation", streamId="s1")
        c.send(command="stop", streamId="s1")
        await c.expect(command="notification", definition="publish_finished", streamId="s1")
        self.assertFalse(self.server.hub.isLive("LiveApp", "s1"))
        self.assertTrue(self.engine.peers[0].closed)
        refusals = self.server.metrics.refusals.labels("webrtc", "publish", "unknown")
        self.assertEqual(refusals._value.get(), 1)

    async def test_in_use_keeps_token(self) -> None:
        a = await self.ws()
        await self.publish(a)
        b = await self.ws()
        token = self.mint("s1")
        b.send(command="publish", streamId="s1", token=token)
        await b.expect(command="error", definition="streamIdInUse", streamId="s1")
        a.send(command="stop", streamId="s1")
        await a.expect(command="notification", definition="publish_finished")
        b.send(command="publish", streamId="s1", token=token)
        await b.expect(command="start", streamId="s1")

    async def test_play(self) -> None:
        c = await self.ws()
        token = self.mint("s1", "play")
        c.send(command="play", streamId="s1", token=token)
        m = await c.expect(command="error", definition="no_stream_exist", streamId="s1")
        self.assertEqual(m["error_code"], "404")
        c.send(command="getStreamInfo", streamId="s1")
        await c.expect(command="error", definition="no_stream_exist")
        pub = await self.ws()
        await self.publish(pub)
        # the token was kept
        c.send(command="play", streamId="s1", token=token)
        m = await c.expect(command="takeConfiguration", streamId="s1")
        self.assertEqual((m["type"], m["sdp"]), ("offer", "fake-offer"))
        self.assertFalse([x for x in c.factory.messages if x.get("command") == "start"])
        c.send(command="play", streamId="s1", token=token)
        await c.expect(command="error", definition="already_playing", streamId="s1")
        c.send(command="takeConfiguration", streamId="s1", type="answer", sdp="a")
        await c.expect(command="notification", definition="play_started", streamId="s1")
        # spent
        d = await self.ws()
        d.send(command="play", streamId="s1", token=token)
        await d.expect(command="error", definition="unauthorized_access", streamId="s1")
        c.send(command="stop", streamId="s1")
        await c.expect(command="notification", definition="play_finished", streamId="s1")

    def refusals(self, action: str, reason: str) -> float:
        return self.server.metrics.refusals.labels("webrtc", action, reason)._value.get()

    async def test_invalid_stream_id_keeps_token(self) -> None:
        """
        A malformed stream id is refused before any token is looked at.
        """
        c = await self.ws()
        token = self.mint("s1")
        for bad in ("s 1", ".s1", "s1/x", "s" * 129):
            c.send(command="publish", streamId=bad, token=token)
            await c.expect(command="error", definition="invalidStreamName", streamId=bad[:128])
        self.assertEqual(self.refusals("publish", "invalid"), 4)
        self.assertIn(digest(token), self.server.store._tokens)
        await self.publish(c, "s1")  # with a fresh token: now spend the first one
        c.send(command="stop", streamId="s1")
        await c.expect(command="notification", definition="publish_finished")
        c.send(command="publish", streamId="s1", token=token)
        await c.expect(command="start", streamId="s1")

    async def test_webrtc_disabled_keeps_token(self) -> None:
        """
        webRTCEnabled false: publish is answered webrtc_not_enabled, play
        with Ant Media Server's not-found answer whose reason is
        webrtc_not_enabled; neither spends its token, both work once the
        switch is on again.
        """
        pub = await self.ws()
        await self.publish(pub, "live")
        self.server.apps.replace("LiveApp", webRTCEnabled=False)
        c = await self.ws()
        publishToken = self.mint("s1")
        c.send(command="publish", streamId="s1", token=publishToken)
        m = await c.expect(command="error", streamId="s1")
        self.assertEqual(m, {"command": "error", "definition": "webrtc_not_enabled",
                             "streamId": "s1"})
        playToken = self.mint("live", "play")
        c.send(command="play", streamId="live", token=playToken)
        m = await c.expect(command="error", streamId="live")
        self.assertEqual(m, {"command": "error", "definition": "no_stream_exist",
                             "streamId": "live", "error_code": "404",
                             "information": "webrtc_not_enabled"})
        self.assertEqual(self.refusals("publish", "disabled"), 1)
        self.assertEqual(self.refusals("play", "disabled"), 1)
        self.assertEqual(self.server.gate.registry.grants("LiveApp", "s1"), [])
        stored = self.server.store._tokens  # the memory store: a peek, no redemption
        self.assertIn(digest(publishToken), stored)
        self.assertIn(digest(playToken), stored)
        # no engine was asked for a peer connection
        self.assertEqual([p.kind for p in self.engine.peers], ["publish"])
        self.server.apps.replace("LiveApp", webRTCEnabled=True)
        c.send(command="publish", streamId="s1", token=publishToken)
        await c.expect(command="start", streamId="s1")
        c.send(command="play", streamId="live", token=playToken)
        m = await c.expect(command="takeConfiguration", streamId="live")
        self.assertEqual(m["type"], "offer")

    async def test_stream_info(self) -> None:
        """
        getStreamInfo reports the live stream's size and codecs, read from
        its H.264 configuration.
        """
        from tokengate.media.codecs import (
            AVC_SEQUENCE_HEADER,
            build_avcc_from_sps_pps,
            build_sps,
            build_video_tag,
        )

        c = await self.ws()
        await self.publish(c, "s1")
        stream = self.server.hub.get("LiveApp", "s1")
        avcc = build_avcc_from_sps_pps(build_sps(66, 30, 640, 360), b"\x68\xce\x3c\x80")
        stream.videoReceived(0, build_video_tag(1, avcc, avc_packet_type=AVC_SEQUENCE_HEADER))
        c.send(command="getStreamInfo", streamId="s1")
        m = await c.expect(command="streamInformation", streamId="s1")
        info = m["streamInfo"][0]
        self.assertEqual((info["streamWidth"], info["streamHeight"], info["videoCodec"],
                          info["audioCodec"]), (640, 360, "H264", ""))

    async def test_other_commands(self) -> None:
        c = await self.ws()
        c.send(command="takeConfiguration", streamId="s1", type="offer", sdp="x")
        await c.expect(command="error", definition="no_peer_associated_before")
        c.send(command="takeCandidate", streamId="s1", candidate="x")
        await c.expect(command="error", definition="no_peer_associated_before")
        c.send(command="getTrackList", streamId="s1", token="")
        await c.expect(command="trackList", streamId="s1")
        c.send(command="joinRoom", streamId="room1")
        await c.expect(command="error", definition="not_supported")
        c.send(command="getRoomInfo", streamId="room1")
        await c.expect(command="error", definition="not_supported")
        for name in ("enableTrack", "toggleVideo", "toggleAudio"):
            c.send(command=name, streamId="s1")
        c.send(command="ping")
        await c.expect(command="pong")

    async def test_kick_closes_4003(self) -> None:
        c = await self.ws()
        await self.publish(c)
        n = self.server.gate.registry.kickTokenSessions("LiveApp", "s1")
        self.assertEqual(n, 1)
        code = await c.factory.closed
        self.assertEqual(code, signalling.CLOSE_REVOKED)
        self.assertTrue(self.engine.peers[0].closed)
        self.assertFalse(self.server.hub.isLive("LiveApp", "s1"))

    async def test_rate_limit(self) -> None:
        c = await self.ws()
        for _ in range(int(signalling.RATE_BURST) + 20):
            c.send(command="ping")
        await c.expect(command="error", definition="too_many_requests")

    async def test_flood_closes(self) -> None:
        c = await self.ws()
        for _ in range(int(signalling.RATE_BURST) + signalling.RATE_ABUSE + 50):
            c.send(command="ping")
        code = await c.factory.closed
        self.assertEqual(code, signalling.CLOSE_ABUSE)

    async def test_message_size(self) -> None:
        c = await self.ws()
        c.raw(json.dumps({"command": "ping", "pad": "x" * signalling.MAX_MESSAGE_SIZE}).encode())
        code = await c.factory.closed
        # the server fails the connection (1009 "too big", seen by the client
        # as 1006 when it drops before the closing handshake)
        self.assertIn(code, (1006, 1009))
        c2 = await self.ws()
        c2.send(command="ping")
        await c2.expect(command="pong")

    async def test_streams_per_socket(self) -> None:
        c = await self.ws()
        for i in range(signalling.MAX_STREAMS):
            await self.publish(c, "s{}".format(i))
        c.send(command="publish", streamId="extra", token=self.mint("extra"))
        await c.expect(command="error", definition="too_many_streams", streamId="extra")

    async def test_sessions_gauge(self) -> None:
        await self.ws()
        await self.ws()
        text = self.server.metrics.render() if hasattr(self.server.metrics, "render") else None
        self.assertEqual(len(self.pages.factory.connections), 2)
        if text is not None:
            self.assertIn(b"tokengate_websocket_sessions 2.0", text)


class NoMedia(TestCase):
    """
    On a reactor that is not the asyncio one, publish and play are answered
    with not_initialized_yet and the token is not spent.
    """

    timeout = 30

    async def test_not_initialized(self) -> None:
        server = Server(apps=Applications(None), store=MemoryTokenStore(), clock=reactor)
        server.apps.replace("LiveApp", publishTokenControlEnabled=True)
        site = buildSite(server)
        self.assertFalse(site.resource._webrtc.engine.available)
        self.assertIn("asyncio", site.resource._webrtc.engine.reason)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        c = await WS("ws://127.0.0.1:{}/LiveApp/websocket".format(port.getHost().port)).open()
        c.send(command="publish", streamId="s1", token="1")
        m = await c.expect(command="error", definition="not_initialized_yet", streamId="s1")
        self.assertIn("asyncio", m["information"])
        c.send(command="ping")
        await c.expect(command="pong")
        c.proto.sendClose()
        await c.factory.closed


class RefusalMessages(SynchronousTestCase):
    """
    Every access outcome's answer on the WebSocket (the table in
    docs/development.md).
    """

    def test_everyOutcome(self) -> None:
        tokenRefusal = {"command": "error", "definition": "unauthorized_access", "streamId": "s"}
        for action in (PUBLISH, PLAY):
            for outcome in Outcome:
                if outcome is Outcome.GRANTED:
                    continue
                m = signalling.refusalMessage(outcome, action, "s")
                if outcome is Outcome.IN_USE:
                    expected = dict(tokenRefusal, definition="streamIdInUse")
                elif outcome is Outcome.UNAVAILABLE:
                    expected = dict(tokenRefusal, definition="data_store_not_available")
                elif outcome is Outcome.BLOCKED:
                    expected = dict(tokenRefusal, definition="user_blocked")
                elif outcome is Outcome.UNREGISTERED:
                    expected = dict(tokenRefusal, definition="not_allowed_unregistered_streams")
                elif outcome is Outcome.NOT_LIVE:
                    expected = dict(tokenRefusal, definition="no_stream_exist", error_code="404",
                                    information="stream_not_exist_or_not_streaming")
                elif outcome is Outcome.DISABLED and action == PLAY:
                    expected = dict(tokenRefusal, definition="no_stream_exist", error_code="404",
                                    information="webrtc_not_enabled")
                elif outcome is Outcome.DISABLED:
                    expected = dict(tokenRefusal, definition="webrtc_not_enabled")
                else:
                    expected = tokenRefusal
                self.assertEqual(m, expected, (action, outcome))
                # the reference server's key order, byte for byte
                self.assertEqual(list(m), list(expected), (action, outcome))
