"""
The stream registry (L{tokengate.cluster.registry}) in memory: claims,
refresh, expiry, compare-and-delete, nodes racing, the backend down and
back; and the cluster's claim as the access service's first policy
(L{tokengate.access.clusterpolicy}), which keeps the token of a refused
publish.  The Redis backend runs the same suite on a real redis-server in
L{tests.interop.test_cluster_registry}.
"""

from __future__ import annotations

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tokengate.access.service import AccessRequest, Refused
from tokengate.apps import Applications
from tokengate.cluster.registry import (
    HEARTBEAT,
    TTL,
    MemoryBackend,
    MemoryLocator,
    RegistryUnavailable,
    StreamLocation,
    StreamRegistry,
    StreamTaken,
)
from tokengate.config import ServerConfig, defaultNodeAddress, parseNodeAddress
from tokengate.metrics import Metrics
from tokengate.server import Server
from tokengate.store.memory import MemoryTokenStore
from tokengate.tokens import PUBLISH, Outcome, StoredToken, new_token

from .fixtures import restAPI
from .helpers import NOW, clock_at, json_body


def result(testcase, d):
    """
    The result of an already fired Deferred (memory backends answer at once).
    """
    return testcase.successResultOf(Deferred.fromCoroutine(d) if not isinstance(d, Deferred)
                                    else d)


class RegistrySuite:
    """
    The behaviour of L{StreamRegistry} over a backend: mixed into a test
    case that provides C{makeBackend()}, C{advance(seconds)} and
    C{resolve(d)} (the result of a Deferred, waiting for it on a real
    backend) and C{takeDown()} / C{bringUp()}.
    """

    def node(self, name, ended=None):
        ended = ended if ended is not None else []
        registry = StreamRegistry(
            self.backend, self.clock, Metrics(), "127.0.0.1:{}".format(5080 + len(name)),
            lambda app, streamId: ended.append((app, streamId)), nodeId=name)
        self.addCleanup(registry.stop)
        return registry

    def claim(self, registry, streamId="s1", publishType="RTMP"):
        return self.resolve(Deferred.fromCoroutine(
            registry.claim("LiveApp", streamId, publishType)))

    def claimFails(self, registry, exception, streamId="s1"):
        return self.resolveFailure(Deferred.fromCoroutine(
            registry.claim("LiveApp", streamId, "RTMP")), exception)

    def test_claimOncePerCluster(self):
        a, b = self.node("a"), self.node("b")
        release = self.claim(a)
        taken = self.claimFails(b, StreamTaken)
        self.assertEqual(taken.owner, "a")
        # another stream is free; another publisher of a is refused too
        self.claim(b, "s2")
        self.assertEqual(self.claimFails(a, StreamTaken).owner, "a")
        release()
        self.claim(b)

    def test_releaseIsCompareAndDelete(self):
        """
        Only the owner's release deletes: a release that comes after the
        entry expired and another node claimed the stream leaves the other
        node's entry.
        """
        a, b = self.node("a"), self.node("b")
        release = self.claim(a)
        self.advance(TTL + 1)
        self.claim(b)
        release()
        self.flush()
        self.assertEqual(self.claimFails(a, StreamTaken).owner, "b")
        self.assertFalse(self.resolve(self.backend.release("LiveApp", "s1", "a")))
        self.assertTrue(self.resolve(self.backend.release("LiveApp", "s1", "b")))

    def test_entryExpiresWithoutHeartbeat(self):
        a, b = self.node("a"), self.node("b")
        self.claim(a)
        self.advance(TTL - 1)
        self.claimFails(b, StreamTaken)
        self.advance(2)
        self.claim(b)

    def test_heartbeatKeepsEntries(self):
        a, b = self.node("a"), self.node("b")
        self.claim(a)
        a.start()
        for _ in range(5):
            self.advance(HEARTBEAT)
        self.claimFails(b, StreamTaken)
        a.stop()
        self.advance(TTL + 1)
        self.claim(b)

    def test_locate(self):
        a, b = self.node("a"), self.node("b")
        self.claim(a, publishType="SRT")
        # claimed but not live yet: nowhere to pull from
        self.assertIsNone(self.resolve(b.locate("LiveApp", "s1")))
        a.streamLive("LiveApp", "s1", NOW + 1.5)
        self.flush()
        location = self.resolve(b.locate("LiveApp", "s1"))
        self.assertEqual(location, StreamLocation("a", a.address, "SRT", NOW + 1.5))
        self.assertEqual(b.localNodeId, "b")
        self.assertIsNone(self.resolve(b.locate("LiveApp", "s2")))
        self.assertEqual(self.resolve(b.liveStreams("LiveApp")), {"s1": location})
        self.assertEqual(self.resolve(b.liveStreams("Other")), {})

    def test_downRefusesClaimsAndRecovers(self):
        """
        The backend down: claims fail (counted); the heartbeat keeps trying;
        back up, it re-asserts the entries this node holds (even expired).
        """
        a, b = self.node("a"), self.node("b")
        self.claim(a)
        a.start()
        self.takeDown()
        self.claimFails(b, RegistryUnavailable, "s2")
        self.advance(TTL + HEARTBEAT)
        self.bringUp()
        self.advance(HEARTBEAT)
        self.flush()
        self.assertEqual(self.claimFails(b, StreamTaken).owner, "a")
        self.assertTrue(a.owns("LiveApp", "s1"))

    def test_lostWhileDownEndsPublisher(self):
        """
        A node that could not refresh while another node claimed its expired
        stream ends its own publisher when it reaches the registry again.
        """
        ended = []
        a, b = self.node("a", ended), self.node("b")
        self.claim(a)
        a.start()
        self.disconnect(a)
        self.advance(TTL + HEARTBEAT)
        self.claim(b)
        self.reconnect(a)
        self.advance(HEARTBEAT)
        self.flush()
        self.assertEqual(ended, [("LiveApp", "s1")])
        self.assertFalse(a.owns("LiveApp", "s1"))
        self.assertEqual(self.claimFails(a, StreamTaken).owner, "b")

    def test_racingClaims(self):
        """
        Two nodes claiming one stream at once: exactly one wins.
        """
        a, b = self.node("a"), self.node("b")
        da = Deferred.fromCoroutine(a.claim("LiveApp", "race", "RTMP"))
        db = Deferred.fromCoroutine(b.claim("LiveApp", "race", "RTMP"))
        outcomes = []
        for d in (da, db):
            d.addCallbacks(lambda _: outcomes.append("won"),
                           lambda f: outcomes.append(f.trap(StreamTaken) and "lost"))
        self.waitFor(lambda: len(outcomes) == 2)
        self.assertEqual(sorted(outcomes), ["lost", "won"])


class MemoryRegistryTests(RegistrySuite, SynchronousTestCase):
    def setUp(self):
        self.clock = clock_at()
        self.backend = MemoryBackend(self.clock)
        self._cut = set()

    def advance(self, seconds):
        # in steps, as the reactor would run the heartbeats
        steps = max(1, int(seconds / 0.5))
        for _ in range(steps):
            self.clock.advance(seconds / steps)

    def flush(self):
        pass

    def waitFor(self, predicate):
        self.assertTrue(predicate())

    def resolve(self, d):
        return self.successResultOf(d)

    def resolveFailure(self, d, exception):
        return self.failureResultOf(d, exception).value

    def takeDown(self):
        self.backend.down = True

    def bringUp(self):
        self.backend.down = False

    def disconnect(self, registry):
        registry._backend = MemoryBackend(self.clock, down=True)

    def reconnect(self, registry):
        registry._backend = self.backend


class MemoryLocatorTests(SynchronousTestCase):
    def test_locator(self):
        location = StreamLocation("n1", "10.0.0.1:5080", "RTMP", NOW)
        locator = MemoryLocator("n2", {("LiveApp", "s1"): location})
        self.assertEqual(self.successResultOf(locator.locate("LiveApp", "s1")), location)
        self.assertIsNone(self.successResultOf(locator.locate("LiveApp", "s2")))
        locator.down = True
        self.failureResultOf(locator.locate("LiveApp", "s1"), RegistryUnavailable)


class Mind:
    protocolName = "rtmp"
    peerHost = "192.0.2.1"

    def __init__(self):
        self.kicked = []

    def kick(self, reason):
        self.kicked.append(reason)


class ClusterPolicyTests(SynchronousTestCase):
    """
    Two servers ("nodes") on one memory backend: the access service claims
    a publish's stream cluster-wide before redeeming its token.
    """

    def setUp(self):
        self.clock = clock_at()
        self.backend = MemoryBackend(self.clock)
        self.store = MemoryTokenStore()
        self.a = self.server("127.0.0.1:5081")
        self.b = self.server("127.0.0.1:5082")

    def server(self, address):
        server = Server(apps=Applications(None), store=self.store, clock=self.clock,
                        config=ServerConfig(nodeAddress=address),
                        streamBackend=self.backend)
        server.apps.replace("LiveApp", publishTokenControlEnabled=True)
        return server

    def mint(self, streamId="s1"):
        t = new_token(streamId, PUBLISH, NOW + 600)
        self.store.add(StoredToken.fromToken("LiveApp", t))
        return t.tokenId

    def publish(self, server, token, protocol="rtmp", streamId="s1"):
        return server.access.publish(
            AccessRequest("LiveApp", streamId, PUBLISH, protocol, "192.0.2.1", token), Mind())

    def refusals(self, server, outcome):
        return server.metrics.refusals.labels("rtmp", "publish", outcome.value)._value.get()

    def test_inUseElsewhereKeepsToken(self):
        publication = self.successResultOf(self.publish(self.a, self.mint()))
        publication.start()
        self.assertEqual(self.successResultOf(self.b.streams.locate("LiveApp", "s1")).nodeId,
                         self.a.streams.localNodeId)
        token = self.mint()
        failure = self.failureResultOf(self.publish(self.b, token), Refused)
        self.assertEqual(failure.value.outcome, Outcome.IN_USE)
        self.assertEqual(self.refusals(self.b, Outcome.IN_USE), 1)
        publication.end()
        # the token was kept: it works once the stream is free
        second = self.successResultOf(self.publish(self.b, token))
        second.start()
        self.assertEqual(self.successResultOf(self.a.streams.locate("LiveApp", "s1")).address,
                         "127.0.0.1:5082")

    def test_registryDownRefusesUnavailable(self):
        self.backend.down = True
        token = self.mint()
        failure = self.failureResultOf(self.publish(self.a, token), Refused)
        self.assertEqual(failure.value.outcome, Outcome.UNAVAILABLE)
        self.assertFalse(self.a.hub.isTaken("LiveApp", "s1"))
        self.backend.down = False
        self.successResultOf(self.publish(self.a, token))

    def test_refusedTokenReleasesClaim(self):
        """
        A claim taken for a publish whose token is then refused is released.
        """
        failure = self.failureResultOf(self.publish(self.a, "nope" * 8), Refused)
        self.assertEqual(failure.value.outcome, Outcome.UNKNOWN)
        self.successResultOf(self.publish(self.b, self.mint()))

    def test_lostStreamKicksPublisher(self):
        publication = self.successResultOf(self.publish(self.a, self.mint()))
        publication.start()
        self.a.streams._endPublisher("LiveApp", "s1")
        self.assertTrue(publication.grant.ended)
        self.assertEqual(publication.grant.mind.kicked, ["revoked"])

    def test_playsNotClaimed(self):
        self.assertFalse(self.a.access.admissionRequired("LiveApp", "play"))


class NodeAddressTests(SynchronousTestCase):
    def test_parse(self):
        self.assertEqual(parseNodeAddress("10.0.0.2:5080"), ("10.0.0.2", 5080))
        self.assertEqual(parseNodeAddress("node-a.internal:80"), ("node-a.internal", 80))
        self.assertEqual(parseNodeAddress("[::1]:5080"), ("[::1]", 5080))
        for bad in ("", "host", ":5080", "host:0", "host:65536", "host:x", "a b:1",
                    "::1:5080", "[::1:5080", "[zz]:1", "h/x:1"):
            self.assertRaises(ValueError, parseNodeAddress, bad)

    def test_default(self):
        self.assertEqual(defaultNodeAddress("tcp:5080"), "127.0.0.1:5080")
        self.assertEqual(defaultNodeAddress("tcp:0:interface=127.0.0.1"), "127.0.0.1:0")
        self.assertEqual(defaultNodeAddress("tcp:port=8080:interface=10.1.2.3"),
                         "10.1.2.3:8080")
        self.assertEqual(defaultNodeAddress("tcp:8080:interface=0.0.0.0"), "127.0.0.1:8080")


class ClusterRestTests(TestCase):
    """
    C{GET /{app}/rest/v2/broadcasts/{id}} and the list report the streams
    live on every node, with their origin (C{originAdress}).
    """

    def setUp(self):
        self.clock = clock_at()
        self.backend = MemoryBackend(self.clock)
        self.store = MemoryTokenStore()
        self.rest = {}
        self.a = self.server("10.0.0.1:5080")
        self.b = self.server("10.0.0.2:5080")

    def server(self, address):
        server = Server(apps=Applications(None), store=self.store, clock=self.clock,
                        config=ServerConfig(nodeAddress=address),
                        streamBackend=self.backend)
        self.rest[server.config.nodeAddress] = StubTreq(restAPI(server).resource())
        return server

    async def get(self, server, path):
        r = await self.rest[server.config.nodeAddress].get("http://127.0.0.1:5080/LiveApp/rest/v2/broadcasts/" + path)
        return r.code, await json_body(r)

    async def publish(self, server, streamId, protocol="rtmp"):
        publication = await server.access.publish(
            AccessRequest("LiveApp", streamId, PUBLISH, protocol, "192.0.2.1"), Mind())
        return publication

    async def test_getAnywhere(self):
        publication = await self.publish(self.a, "s1")
        publication.start()
        code, body = await self.get(self.a, "s1")
        self.assertEqual((code, body["status"], body["originAdress"], body["publishType"]),
                         (200, "broadcasting", "10.0.0.1:5080", "RTMP"))
        code, body = await self.get(self.b, "s1")
        self.assertEqual((code, body["status"], body["originAdress"], body["publishType"],
                          body["startTime"]),
                         (200, "broadcasting", "10.0.0.1:5080", "RTMP", NOW * 1000))
        # claimed but not live (SRT before its first packet): not broadcasting
        await self.publish(self.a, "s2", "srt")
        code, _ = await self.get(self.b, "s2")
        self.assertEqual(code, 404)
        publication.end()
        code, _ = await self.get(self.b, "s1")
        self.assertEqual(code, 404)
        code, body = await self.get(self.a, "s1")
        self.assertEqual((body["status"], body["originAdress"]), ("finished", None))

    async def test_listEveryNode(self):
        (await self.publish(self.a, "a1")).start()
        (await self.publish(self.b, "b1")).start()
        ended = await self.publish(self.b, "b0")
        ended.start()
        ended.end()
        for server in (self.a, self.b):
            code, body = await self.get(server, "list/0/10")
            self.assertEqual(code, 200)
            seen = {(b["streamId"], b["status"], b["originAdress"]) for b in body}
            self.assertIn(("a1", "broadcasting", "10.0.0.1:5080"), seen)
            self.assertIn(("b1", "broadcasting", "10.0.0.2:5080"), seen)
        code, body = await self.get(self.a, "list/0/10")
        self.assertEqual(len(body), 2)
        code, body = await self.get(self.b, "list/0/10")
        self.assertEqual([b["streamId"] for b in body], ["b1", "a1", "b0"])

    async def test_registryDownLocalView(self):
        (await self.publish(self.a, "s1")).start()
        self.backend.down = True
        code, _ = await self.get(self.b, "s1")
        self.assertEqual(code, 404)
        code, body = await self.get(self.a, "s1")
        self.assertEqual((body["status"], body["originAdress"]), ("broadcasting", "10.0.0.1:5080"))
        self.assertEqual(
            self.b.metrics.store_errors.labels("cluster_locate")._value.get(), 1)


class ClusterOptionsTests(SynchronousTestCase):
    def parse(self, *argv):
        from tokengate.tap import Options

        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_clusterSecret(self):
        from twisted.python.usage import UsageError

        self.assertRaises(UsageError, self.parse, "--cluster-secret", "x" * 31)
        self.assertEqual(self.parse("--cluster-secret", "x" * 32)["cluster-secret"], "x" * 32)
        self.assertEqual(self.parse()["cluster-secret"], "")

    def test_nodeAddress(self):
        from twisted.python.usage import UsageError

        self.assertEqual(self.parse()["node-address"], "127.0.0.1:5080")
        self.assertEqual(self.parse("--http", "tcp:8080:interface=10.0.0.7")["node-address"],
                         "10.0.0.7:8080")
        self.assertEqual(self.parse("--node-address", "node-a:5080")["node-address"],
                         "node-a:5080")
        for bad in ("node-a", "node-a:0", "[::1:80"):
            self.assertRaises(UsageError, self.parse, "--node-address", bad)

    def test_secretNotInConfigRepr(self):
        self.assertNotIn("y" * 40, repr(ServerConfig(clusterSecret="y" * 40)))
