"""
The RTMP server protocol, in memory: a client RTMPConnection against the
server protocol over string transports, on a fake clock.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.trial.unittest import SynchronousTestCase

from tokengate.access.names import isValidStreamId
from tokengate.apps import Applications
from tokengate.rtmp import protocol
from tokengate.rtmp.core import CLIENT, AudioData, Command, RTMPConnection, VideoData
from tokengate.rtmp.protocol import (
    DESC_PLAY_REFUSED,
    DESC_PUBLISH_REFUSED,
    READ_PACING,
    READ_SIZE,
    RTMPFactory,
    parse_stream_name,
)
from tokengate.server import Server
from tokengate.store.memory import MemoryTokenStore
from tokengate.tokens import Outcome, StoredToken, new_token

from .fixtures import POLICY_OUTCOMES, RecordingPolicy
from .helpers import NOW, clock_at

AVC_HEADER = bytes([0x17, 0x00, 0, 0, 0]) + bytes.fromhex("0164001fffe1000467640000010004") + b"\x68\xee\x3c\x80"
AAC_HEADER = bytes([0xAF, 0x00, 0x11, 0x88])


def key(n=0):
    return bytes([0x17, 0x01, 0, 0, 0]) + bytes([n]) * 100


def inter(n=0):
    return bytes([0x27, 0x01, 0, 0, 0]) + bytes([n]) * 100


def parsed(name, appPath=""):
    """
    (stream id, token, subscriber id, code, params) of an RTMP stream name.
    """
    r = parse_stream_name(name, appPath)
    return r.streamId, r.token, r.subscriberId, r.subscriberCode, r.params


class ParseTests(SynchronousTestCase):
    def test_forms(self):
        self.assertEqual(parsed("s1?token=123"), ("s1", "123", None, None, ()))
        self.assertEqual(parsed("s1?foo&token=1%2B2&x=y"),
                         ("s1", "1+2", None, None, (("foo", ""), ("x", "y"))))
        self.assertEqual(parsed("s1/123"), ("s1", "123", None, None, ()))
        self.assertEqual(parsed("s1%2F123"), ("s1", "123", None, None, ()))
        self.assertEqual(parsed("123", appPath="s1"), ("s1", "123", None, None, ()))
        self.assertEqual(parsed("s1"), ("s1", None, None, None, ()))
        self.assertEqual(parsed("s1?token="), ("s1", None, None, None, ()))
        self.assertEqual(parsed("mp4:s1.flv?token=9"), ("s1", "9", None, None, ()))
        self.assertEqual(parsed(""), ("", None, None, None, ()))

    def test_subscriberQuery(self):
        """
        Ant Media's query form: token, subscriberId and subscriberCode have
        their fields (the first of a repeated key wins), the other pairs are
        the params, in order.
        """
        self.assertEqual(
            parsed("s1?token=T&subscriberId=sub-1&subscriberCode=123456&a=1&b=2"),
            ("s1", "T", "sub-1", "123456", (("a", "1"), ("b", "2"))))
        self.assertEqual(parsed("s1?subscriberCode=1&subscriberId=x&subscriberId=y"),
                         ("s1", None, "x", "1", ()))
        self.assertEqual(parsed("s1?subscriberId=&subscriberCode="), ("s1", None, None, None, ()))
        self.assertEqual(parsed("s1?subscriberId=a%40b.c"), ("s1", None, "a@b.c", None, ()))

    def test_subscriberPath(self):
        """
        Ant Media's path form C{stream/token/subscriberId/subscriberCode},
        with C{/} or C{%2F}, and as ffmpeg folds it into the application.
        """
        whole = ("s1", "T", "sub-1", "123456", ())
        self.assertEqual(parsed("s1/T/sub-1/123456"), whole)
        self.assertEqual(parsed("s1%2FT%2Fsub-1%2F123456"), whole)
        self.assertEqual(parsed("123456", appPath="s1/T/sub-1"), whole)
        self.assertEqual(parsed("sub-1/123456", appPath="s1/T"), whole)
        self.assertEqual(parsed("s1/T/sub-1"), ("s1", "T", "sub-1", None, ()))
        # the query wins over the path
        self.assertEqual(parsed("s1/T/sub-1/123456?subscriberCode=654321"),
                         ("s1", "T", "sub-1", "654321", ()))

    def test_ffmpegFolding(self):
        """
        What ffmpeg really sends for C{rtmp://host/LiveApp/s1/T/sub-1/123456}:
        the app C{LiveApp/s1} (its first two path segments) and the name
        C{T/sub-1/123456}.
        """
        self.assertEqual(parsed("T/sub-1/123456", appPath="s1"),
                         ("s1", "T", "sub-1", "123456", ()))

    @given(streamId=st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,20}", fullmatch=True),
           token=st.text(st.characters(codec="utf-8", exclude_characters="/%"), min_size=1,
                         max_size=40),
           subscriberId=st.from_regex(r"[A-Za-z0-9_.@-]{4,30}", fullmatch=True),
           code=st.from_regex(r"[0-9]{6}", fullmatch=True),
           split=st.integers(0, 3))
    def test_formsAgree(self, streamId, token, subscriberId, code, split):
        """
        The query form, the path form and the path folded into the
        application at any segment say the same.
        """
        if streamId.endswith(".flv"):
            streamId += "x"
        expected = (streamId, token, subscriberId, code, ())
        query = "{}?{}".format(streamId, urlencode(
            [("token", token), ("subscriberId", subscriberId), ("subscriberCode", code)]))
        self.assertEqual(parsed(query), expected)
        segments = [streamId, quote(token, safe=""), subscriberId, code]
        self.assertEqual(parsed("/".join(segments)), expected)
        if split:
            self.assertEqual(parsed("/".join(segments[split:]), "/".join(segments[:split])),
                             expected)

    @given(st.text(max_size=300), st.text(max_size=40))
    def test_anyName(self, name, appPath):
        """
        Any name parses (the grammar and the bounds are the access
        service's); empty values are absent ones.
        """
        r = parse_stream_name(name, appPath)
        self.assertNotIn("", (r.token, r.subscriberId, r.subscriberCode))

    def test_tooManySegments(self):
        """
        A path of more than four segments is not understood: its stream id
        is the whole path, outside the grammar.
        """
        streamId = parsed("s1/T/sub-1/123456/more")[0]
        self.assertEqual(streamId, "s1/T/sub-1/123456/more")
        self.assertFalse(isValidStreamId(streamId))

    def test_paramsInOrder(self):
        """
        Every other pair, in order (the access service bounds them).
        """
        params = parsed("s1?" + "&".join("k{}=v".format(i) for i in range(100)))[4]
        self.assertEqual(params, tuple(("k{}".format(i), "v") for i in range(100)))

    def test_secretsNotInRepr(self):
        r = parse_stream_name("s1?token=SECRETTOKEN&subscriberId=sub-1&subscriberCode=123456")
        self.assertNotIn("SECRETTOKEN", repr(r))
        self.assertNotIn("123456", repr(r))


class Peer:
    """
    A client RTMPConnection wired to a server protocol.
    """

    def __init__(self, test, host="192.0.2.10"):
        self.test = test
        self.proto = test.factory.buildProtocol(IPv4Address("TCP", host, 5000))
        self.transport = StringTransportWithDisconnection(peerAddress=IPv4Address("TCP", host, 5000))
        self.transport.protocol = self.proto
        self.proto.makeConnection(self.transport)
        self.client = RTMPConnection(CLIENT)
        self.events = []
        self.pump()

    def pump(self):
        for _ in range(10):
            out = self.client.data_to_send()
            if out and self.transport.connected:
                self.proto.dataReceived(out)
            back = self.transport.value()
            self.transport.clear()
            if back:
                self.events.extend(self.client.receive_data(back))
            if not out and not back:
                return

    def command(self, name, txn, obj=None, *args, stream_id=0):
        self.client.send_command(stream_id, name, txn, obj, *args)
        self.pump()

    def statuses(self):
        return [
            e.args[0] for e in self.events
            if isinstance(e, Command) and e.name == "onStatus"
        ]

    def connect(self, app="LiveApp"):
        self.command("connect", 1, {"app": app, "tcUrl": "rtmp://127.0.0.1/" + app})
        self.command("createStream", 2, None)

    def publish(self, name):
        self.connect()
        self.command("publish", 3, None, name, "live", stream_id=1)

    def media(self, video=(), audio=()):
        for ts, body in video:
            self.client.send_video(1, ts, body)
        for ts, body in audio:
            self.client.send_audio(1, ts, body)
        self.pump()


class ProtocolTests(SynchronousTestCase):
    def setUp(self):
        self.clock = clock_at()
        self.server = Server(apps=Applications(None), store=MemoryTokenStore(), clock=self.clock)
        self.server.apps.replace("LiveApp", publishTokenControlEnabled=True)
        self.factory = RTMPFactory(self.server.access, self.server.clock, self.server.metrics)

    def mint(self, streamId="s1", type="publish"):
        t = new_token(streamId, type, NOW + 60)
        self.server.store.add(StoredToken.fromToken("LiveApp", t))
        return t.tokenId

    def test_publish(self):
        peer = Peer(self)
        peer.publish("s1?token=" + self.mint())
        self.assertEqual(peer.statuses()[-1]["code"], "NetStream.Publish.Start")
        peer.client.send_data(1, 0, "@setDataFrame", "onMetaData", {"width": 320.0})
        peer.media(video=[(0, AVC_HEADER), (0, key()), (40, inter())], audio=[(0, AAC_HEADER)])
        stream = self.server.hub.get("LiveApp", "s1")
        self.assertEqual(stream.metadata, {"width": 320.0})
        self.assertEqual(stream.videoConfig, AVC_HEADER)
        self.assertEqual(stream.audioConfig, AAC_HEADER)
        self.assertEqual(len(stream.gop), 2)
        peer.transport.loseConnection()
        self.assertFalse(self.server.hub.isLive("LiveApp", "s1"))
        self.assertEqual(self.server.gate.registry.grants("LiveApp", "s1"), [])

    def test_refusedTellsNoToken(self):
        peer = Peer(self)
        token = self.mint(streamId="other")
        peer.publish("s1?token=" + token)
        status = peer.statuses()[-1]
        self.assertEqual(
            (status["level"], status["code"], status["description"]),
            ("error", "NetStream.Publish.BadName", "You are not allowed to publish the stream."),
        )
        self.assertEqual(status["details"], "s1")
        self.assertTrue(peer.transport.connected)
        self.clock.advance(0.2)
        self.assertFalse(peer.transport.connected)

    def test_unknownApp(self):
        peer = Peer(self)
        peer.command("connect", 1, {"app": "Nope"})
        err = [e for e in peer.events if isinstance(e, Command) and e.name == "_error"]
        self.assertEqual(err[0].args[0]["code"], "NetConnection.Connect.Rejected")
        self.clock.advance(0.2)
        self.assertFalse(peer.transport.connected)

    def test_garbageClosesOnlyThatClient(self):
        good = Peer(self)
        good.publish("s1?token=" + self.mint())
        bad = Peer(self, "192.0.2.66")
        bad.connect()
        bad.proto.dataReceived(b"\xff" * 64)
        self.assertFalse(bad.transport.connected)
        good.media(video=[(0, AVC_HEADER), (0, key())])
        self.assertTrue(good.transport.connected)
        self.assertEqual(len(self.server.hub.get("LiveApp", "s1").gop), 1)

    def test_handshakeTimeout(self):
        peer = Peer(self)
        self.clock.advance(11)
        self.assertFalse(peer.transport.connected)

    def test_kick(self):
        peer = Peer(self)
        peer.publish("s1?token=" + self.mint())
        self.server.gate.registry.kickTokenSessions("LiveApp", "s1")
        peer.pump()
        self.assertEqual(peer.statuses()[-1]["code"], "NetStream.Unpublish.Success")
        self.assertFalse(peer.transport.connected)
        self.assertFalse(self.server.hub.isLive("LiveApp", "s1"))

    def test_playerGetsKeyframeFirstRebased(self):
        pub = Peer(self)
        pub.publish("s1?token=" + self.mint())
        pub.media(video=[(0, AVC_HEADER), (1000, key()), (1040, inter()), (1080, key(1))],
                  audio=[(0, AAC_HEADER)])
        player = Peer(self, "192.0.2.20")
        player.connect()
        player.command("play", 3, None, "s1", -2000.0, stream_id=1)
        codes = [s["code"] for s in player.statuses()]
        self.assertEqual(codes, ["NetStream.Play.Reset", "NetStream.Play.Start"])
        media = [(type(e).__name__, e.timestamp, e.payload[:2]) for e in player.events
                 if isinstance(e, (VideoData, AudioData))]
        self.assertEqual(media[0][2], AVC_HEADER[:2])
        self.assertEqual(media[1][2], AAC_HEADER[:2])
        self.assertEqual(media[2], ("VideoData", 0, key(1)[:2]))
        pub.media(video=[(1120, inter())])
        player.pump()
        last = [e for e in player.events if isinstance(e, VideoData)][-1]
        self.assertEqual(last.timestamp, 40)
        # publisher leaves: the player is told and closed
        pub.transport.loseConnection()
        player.pump()
        codes = [s["code"] for s in player.statuses()]
        self.assertEqual(codes[-2:], ["NetStream.Play.UnpublishNotify", "NetStream.Play.Stop"])
        self.clock.advance(0.2)
        self.assertFalse(player.transport.connected)

    def test_playerWritesOncePerPublisherRead(self):
        """
        The frames of one publisher read reach a player in one write, and
        frames outside a read (no burst) are written at once.
        """
        pub = Peer(self)
        pub.publish("s1?token=" + self.mint())
        pub.media(video=[(0, AVC_HEADER), (0, key())], audio=[(0, AAC_HEADER)])
        player = Peer(self, "192.0.2.20")
        player.connect()
        player.command("play", 3, None, "s1", -2000.0, stream_id=1)
        writes = []
        write = player.transport.write
        player.transport.write = lambda data: (writes.append(data), write(data))
        pub.media(video=[(40, inter()), (80, inter()), (120, inter())])
        self.assertEqual(len(writes), 1)
        player.pump()
        self.assertEqual(
            [e.timestamp for e in player.events if isinstance(e, VideoData)][-3:], [40, 80, 120])
        stream = self.server.hub.get("LiveApp", "s1")
        stream.videoReceived(160, inter())
        self.assertEqual(len(writes), 2)
        self.assertFalse(stream.inBurst)

    def test_publisherReadsArePaced(self):
        """
        With PACING_MIN_PUBLISHERS publishing, after a read shorter than a
        full buffer an admitted publisher's transport pauses; one timer
        wakes every publisher resting then, READ_PACING after the first
        rested.  A full read does not pause; a player is never paused; a
        closed publisher is not resumed; below PACING_MIN_PUBLISHERS no
        publisher rests.
        """
        self.patch(protocol, "PACING_MIN_PUBLISHERS", 2)
        a = Peer(self)
        a.publish("s1?token=" + self.mint())
        a.media(video=[(0, AVC_HEADER)])
        self.assertEqual(a.transport.producerState, "producing")  # alone: never rests
        b = Peer(self, "192.0.2.11")
        b.publish("s2?token=" + self.mint("s2"))
        self.clock.advance(READ_PACING)
        self.assertEqual([a.transport.producerState, b.transport.producerState],
                         ["producing", "producing"])
        a.media(video=[(0, key())])
        self.assertEqual(a.transport.producerState, "paused")
        self.clock.advance(READ_PACING / 2)
        b.media(video=[(0, AVC_HEADER)])
        self.assertEqual(b.transport.producerState, "paused")
        self.assertEqual(len(self.clock.getDelayedCalls()), 2 + 1)  # two idle timers, one pacer
        self.clock.advance(READ_PACING / 2)
        self.assertEqual([a.transport.producerState, b.transport.producerState],
                         ["producing", "producing"])
        self.assertEqual(len(self.server.hub.get("LiveApp", "s1").gop), 1)
        # a full read: the publisher may have more queued, read on
        a.client.send_video(1, 40, inter() * (READ_SIZE // len(inter()) + 1))
        data = a.client.data_to_send()
        self.assertGreaterEqual(len(data), READ_SIZE)
        a.proto.dataReceived(data)
        self.assertEqual(a.transport.producerState, "producing")
        self.assertEqual(len(self.server.hub.get("LiveApp", "s1").gop), 2)
        # a player's reads are not paced
        player = Peer(self, "192.0.2.20")
        player.connect()
        player.command("play", 3, None, "s1", -2000.0, stream_id=1)
        player.command("getStreamLength", 4, None, "s1")
        self.assertEqual(player.transport.producerState, "producing")
        # closed while resting: not resumed
        b.media(video=[(0, key())])
        b.transport.loseConnection()
        self.clock.advance(READ_PACING)
        self.assertEqual(b.transport.producerState, "paused")
        # a alone again: it reads at once
        a.media(video=[(80, inter())])
        self.assertEqual(a.transport.producerState, "producing")

    def test_slowPlayer(self):
        pub = Peer(self)
        pub.publish("s1?token=" + self.mint())
        pub.media(video=[(0, AVC_HEADER), (0, key())])
        slow = Peer(self, "192.0.2.21")
        slow.connect()
        slow.command("play", 3, None, "s1", stream_id=1)
        fast = Peer(self, "192.0.2.22")
        fast.connect()
        fast.command("play", 3, None, "s1", stream_id=1)
        # the slow player's socket fills: it is paused as a producer
        slow.proto.pauseProducing()
        pub.media(video=[(40, inter()), (80, inter())])
        self.assertEqual(slow.transport.value(), b"")
        slow.proto.resumeProducing()
        pub.media(video=[(120, inter())])  # not a keyframe: still skipped
        self.assertEqual(slow.transport.value(), b"")
        pub.media(video=[(160, key(2))])
        slow.pump()
        self.assertEqual([e for e in slow.events if isinstance(e, VideoData)][-1].payload, key(2))
        # congested for too long: disconnected, nobody else disturbed
        slow.proto.pauseProducing()
        self.clock.advance(11)
        pub.media(video=[(200, inter())])
        self.assertFalse(slow.transport.connected)
        self.assertTrue(fast.transport.connected and pub.transport.connected)
        fast.pump()
        self.assertEqual([e for e in fast.events if isinstance(e, VideoData)][-1].timestamp, 200)

    def test_playDisabled(self):
        self.server.apps.replace("LiveApp", rtmpPlaybackEnabled=False)
        pub = Peer(self)
        pub.publish("s1?token=" + self.mint())
        player = Peer(self, "192.0.2.20")
        player.connect()
        player.command("play", 3, None, "s1", stream_id=1)
        self.assertEqual(player.statuses()[-1]["level"], "error")

    def test_playDisabledKeepsToken(self):
        """
        With C{rtmpPlaybackEnabled} off, an RTMP play is answered as the
        reference server does (C{NetStream.Failed}, "RTMP playback is
        disabled.") before its token is looked at: the token still plays
        once the switch is on again.
        """
        self.server.apps.replace("LiveApp", publishTokenControlEnabled=True,
                                 playTokenControlEnabled=True, rtmpPlaybackEnabled=False)
        pub = Peer(self)
        pub.publish("s1?token=" + self.mint())
        token = self.mint(type="play")
        player = Peer(self, "192.0.2.20")
        player.connect()
        player.command("play", 3, None, "s1?token=" + token, stream_id=1)
        status = player.statuses()[-1]
        self.assertEqual((status["level"], status["code"], status["description"]),
                         ("error", "NetStream.Failed", "RTMP playback is disabled."))
        self.assertEqual(self.server.metrics.refusals.labels("rtmp", "play", "disabled")
                         ._value.get(), 1)
        self.server.apps.replace("LiveApp", publishTokenControlEnabled=True,
                                 playTokenControlEnabled=True, rtmpPlaybackEnabled=True)
        again = Peer(self, "192.0.2.21")
        again.connect()
        again.command("play", 3, None, "s1?token=" + token, stream_id=1)
        self.assertIn("NetStream.Play.Start", [st["code"] for st in again.statuses()])

    def test_inUseAndNotLiveKeepTokens(self):
        """
        A publish of a live stream (C{in_use}) and a play of a stream that
        is not live (C{not_live}) are answered before their tokens are
        looked at: both tokens work afterwards.
        """
        self.server.apps.replace("LiveApp", publishTokenControlEnabled=True,
                                 playTokenControlEnabled=True)
        playToken = self.mint(type="play")
        early = Peer(self, "192.0.2.30")
        early.connect()
        early.command("play", 3, None, "s1?token=" + playToken, stream_id=1)
        self.assertEqual(early.statuses()[-1]["code"], "NetStream.Play.StreamNotFound")
        first = Peer(self)
        first.publish("s1?token=" + self.mint())
        self.assertEqual(first.statuses()[-1]["code"], "NetStream.Publish.Start")
        second = Peer(self, "192.0.2.31")
        waiting = self.mint()
        second.publish("s1?token=" + waiting)
        status = second.statuses()[-1]
        self.assertEqual((status["code"], status["description"]),
                         ("NetStream.Publish.BadName", "The stream is already being published."))
        player = Peer(self, "192.0.2.32")
        player.connect()
        player.command("play", 3, None, "s1?token=" + playToken, stream_id=1)
        self.assertIn("NetStream.Play.Start", [st["code"] for st in player.statuses()])
        first.transport.loseConnection()
        third = Peer(self, "192.0.2.33")
        third.publish("s1?token=" + waiting)
        self.assertEqual(third.statuses()[-1]["code"], "NetStream.Publish.Start")
        for outcome in ("not_live", "in_use"):
            action = "play" if outcome == "not_live" else "publish"
            self.assertEqual(self.server.metrics.refusals.labels("rtmp", action, outcome)
                             ._value.get(), 1)


class PolicyPlumbingTests(SynchronousTestCase):
    """
    The security policies are told what an RTMP client sent (token,
    subscriber id and code, the query's other pairs, in both of Ant Media's
    forms), and each refusal is answered Ant Media's way, the token kept.
    """

    def setUp(self):
        self.clock = clock_at()
        self.policy = RecordingPolicy()
        self.server = Server(apps=Applications(None), store=MemoryTokenStore(), clock=self.clock,
                             extraPolicies=[self.policy])
        self.server.apps.replace("LiveApp", publishTokenControlEnabled=True,
                                 playTokenControlEnabled=True, rtmpPlaybackEnabled=True)
        self.factory = RTMPFactory(self.server.access, self.server.clock, self.server.metrics)

    mint = ProtocolTests.mint

    def asked(self):
        r = self.policy.last
        return (r.protocol, r.action, r.app, r.streamId, r.token, r.subscriberId,
                r.subscriberCode, r.params)

    def play(self, name, host="192.0.2.20"):
        player = Peer(self, host)
        player.connect()
        player.command("play", 3, None, name, stream_id=1)
        return player

    def test_queryForm(self):
        token = self.mint()
        peer = Peer(self)
        peer.publish("s1?token={}&subscriberId=sub-1&subscriberCode=123456&a=1&b=%20".format(
            token))
        self.assertEqual(peer.statuses()[-1]["code"], "NetStream.Publish.Start")
        self.assertEqual(self.asked(), ("rtmp", "publish", "LiveApp", "s1", token, "sub-1",
                                        "123456", (("a", "1"), ("b", " "))))

    def test_pathForm(self):
        token = self.mint()
        peer = Peer(self)
        peer.publish("s1/{}/sub-1/123456".format(token))
        self.assertEqual(peer.statuses()[-1]["code"], "NetStream.Publish.Start")
        self.assertEqual(self.asked(), ("rtmp", "publish", "LiveApp", "s1", token, "sub-1",
                                        "123456", ()))

    def test_pathFoldedIntoTheApplication(self):
        """
        ffmpeg sends C{rtmp://host/LiveApp/s1/T/sub-1/123456} as the app
        C{LiveApp/s1/T/sub-1} and the name C{123456}.
        """
        token = self.mint()
        peer = Peer(self)
        peer.command("connect", 1, {"app": "LiveApp/s1/{}/sub-1".format(token)})
        peer.command("createStream", 2, None)
        peer.command("publish", 3, None, "123456", "live", stream_id=1)
        self.assertEqual(peer.statuses()[-1]["code"], "NetStream.Publish.Start")
        self.assertEqual(self.asked(), ("rtmp", "publish", "LiveApp", "s1", token, "sub-1",
                                        "123456", ()))

    def test_playForms(self):
        Peer(self).publish("s1?token=" + self.mint())
        token = self.mint(type="play")
        player = self.play("s1?token={}&subscriberId=viewer-1&subscriberCode=654321&x=y".format(
            token))
        self.assertIn("NetStream.Play.Start", [s["code"] for s in player.statuses()])
        self.assertEqual(self.asked(), ("rtmp", "play", "LiveApp", "s1", token, "viewer-1",
                                        "654321", (("x", "y"),)))
        token = self.mint(type="play")
        player = self.play("s1/{}/viewer-2/111111".format(token), "192.0.2.21")
        self.assertIn("NetStream.Play.Start", [s["code"] for s in player.statuses()])
        self.assertEqual(self.asked()[4:7], (token, "viewer-2", "111111"))

    def test_absurdLengthsInvalid(self):
        """
        A subscriber id or code far longer than any is refused as invalid
        before any policy or token is asked, the token kept.
        """
        token = self.mint()
        for name in ("s1?token={}&subscriberId=" + "a" * 300,
                     "s1?token={}&subscriberCode=" + "1" * 100,
                     "s1/{}/sub-1/" + "1" * 100):
            peer = Peer(self)
            peer.publish(name.format(token))
            status = peer.statuses()[-1]
            self.assertEqual((status["code"], status["description"]),
                             ("NetStream.Publish.BadName", DESC_PUBLISH_REFUSED))
        self.assertEqual(self.policy.asked, [])
        self.assertEqual(self.server.metrics.refusals.labels("rtmp", "publish", "invalid")
                         ._value.get(), 3)
        peer = Peer(self)
        peer.publish("s1?token=" + token)
        self.assertEqual(peer.statuses()[-1]["code"], "NetStream.Publish.Start")

    def test_publishRefusals(self):
        """
        A blocked subscriber is told so (C{NetStream.Failed}, Ant Media's
        text); every other policy refusal is Ant Media's security refusal;
        each keeps the token, is counted, and closes the connection.
        """
        token = self.mint()
        for outcome in POLICY_OUTCOMES:
            self.policy.outcome = outcome
            peer = Peer(self)
            peer.publish("s1?token={}&subscriberId=sub-1&subscriberCode=123456".format(token))
            status = peer.statuses()[-1]
            if outcome is Outcome.BLOCKED:
                expected = ("error", "NetStream.Failed", "Subscriber sub-1 is blocked to publish "
                            "stream.")
            else:
                expected = ("error", "NetStream.Publish.BadName", DESC_PUBLISH_REFUSED)
            self.assertEqual((status["level"], status["code"], status["description"]), expected,
                             outcome)
            self.assertEqual(status["details"], "s1")
            self.assertEqual(self.server.metrics.refusals.labels("rtmp", "publish", outcome.value)
                             ._value.get(), 1, outcome)
            self.clock.advance(0.2)
            self.assertFalse(peer.transport.connected, outcome)
        self.policy.outcome = None
        peer = Peer(self)
        peer.publish("s1?token=" + token)
        self.assertEqual(peer.statuses()[-1]["code"], "NetStream.Publish.Start")

    def test_playRefusals(self):
        Peer(self).publish("s1?token=" + self.mint())
        token = self.mint(type="play")
        for outcome in POLICY_OUTCOMES:
            self.policy.outcome = outcome
            player = self.play("s1/{}/viewer-1/123456".format(token))
            status = player.statuses()[-1]
            if outcome is Outcome.BLOCKED:
                expected = ("error", "NetStream.Failed", "Subscriber viewer-1 is blocked to play "
                            "stream.")
            else:
                expected = ("error", "NetStream.Publish.BadName", DESC_PLAY_REFUSED)
            self.assertEqual((status["level"], status["code"], status["description"]), expected,
                             outcome)
            self.assertEqual(self.server.metrics.refusals.labels("rtmp", "play", outcome.value)
                             ._value.get(), 1, outcome)
        self.policy.outcome = None
        player = self.play("s1?token=" + token)
        self.assertIn("NetStream.Play.Start", [s["code"] for s in player.statuses()])
