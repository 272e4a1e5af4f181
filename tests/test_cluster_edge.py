"""
Edge pull through the composition root, in one process: two L{Server}s
("nodes") sharing one in-memory stream registry, each with its real HTTP
site on a loopback port; the edge pulls over HTTP from the origin's
C{/internal/v1/feed} with the credential of the cluster secret.
"""

from __future__ import annotations

import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tokengate.access.service import AccessRequest
from tokengate.apps import Applications
from tokengate.auth import Refused
from tokengate.cluster.registry import MemoryBackend
from tokengate.config import ServerConfig
from tokengate.media.hub import PULLED
from tokengate.server import Server, buildSite
from tokengate.store.memory import MemoryTokenStore
from tokengate.tokens import PLAY

from tests.service import free_port

AVC_HEADER = bytes([0x17, 0x00, 0, 0, 0]) + b"avcC-config"


def key(n):
    return bytes([0x17, 0x01, 0, 0, 0]) + bytes([n]) * 100


class Mind:
    protocolName = "rtmp"
    peerHost = "127.0.0.1"

    def __init__(self):
        self.kicked = []

    def kick(self, reason):
        self.kicked.append(reason)


async def eventually(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("not within {}s".format(timeout))
        await deferLater(reactor, 0.02, lambda: None)


class TwoNodesTests(TestCase):
    timeout = 60

    def node(self, secret, backend):
        http = free_port()
        server = Server(apps=Applications(None), store=self.store, clock=reactor,
                        streamBackend=backend,
                        config=ServerConfig(clusterSecret=secret,
                                            nodeAddress="127.0.0.1:{}".format(http)))
        port = reactor.listenTCP(http, buildSite(server, engine=object()),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(server.streams.stop)
        if server.puller is not None:
            self.addCleanup(server.puller.stopAll)
        return server

    def setUp(self):
        self.store = MemoryTokenStore()
        self.backend = MemoryBackend(reactor)

    async def originLive(self, origin):
        await origin.streams.claim("LiveApp", "s1", "RTMP")
        stream = origin.hub.publish("LiveApp", "s1", "RTMP")
        stream.videoReceived(0, AVC_HEADER)
        stream.videoReceived(0, key(1))
        return stream

    async def test_pullOverHTTP(self):
        origin = self.node("o" * 40, self.backend)
        edge = self.node("o" * 40, self.backend)
        stream = await self.originLive(origin)
        viewing = await edge.access.play(
            AccessRequest("LiveApp", "s1", PLAY, "rtmp", "127.0.0.1"), Mind())
        copy = viewing.stream
        self.assertEqual(copy.publishType, PULLED)
        self.assertEqual(copy.videoConfig, AVC_HEADER)
        stream.videoReceived(40, key(2))
        await eventually(lambda: copy.gop and copy.gop[-1].body == key(2))
        self.assertEqual(len(stream.subscribers), 2)  # the packager and the feed
        stream.end()
        await eventually(lambda: copy.ended)
        self.assertFalse(edge.hub.isLive("LiveApp", "s1"))
        viewing.end()

    async def test_anotherSecretIsRefused(self):
        origin = self.node("o" * 40, self.backend)
        edge = self.node("x" * 40, self.backend)
        edge.puller.admissionWait = 1.0
        await self.originLive(origin)
        d = edge.access.play(AccessRequest("LiveApp", "s1", PLAY, "rtmp", "127.0.0.1"), Mind())
        with self.assertRaises(Refused) as e:
            await d
        self.assertEqual(e.exception.outcome.value, "not_live")
        self.assertEqual(origin.metrics.registry.get_sample_value(
            "tokengate_feed_requests_total", {"outcome": "forbidden"}) >= 1, True)
        self.assertFalse(edge.hub.isLive("LiveApp", "s1"))

    async def test_withoutSecretNothingIsPulled(self):
        origin = self.node("o" * 40, self.backend)
        edge = self.node("", self.backend)
        self.assertIsNone(edge.puller)
        await self.originLive(origin)
        with self.assertRaises(Refused) as e:
            await edge.access.play(
                AccessRequest("LiveApp", "s1", PLAY, "rtmp", "127.0.0.1"), Mind())
        self.assertEqual(e.exception.outcome.value, "not_live")
