"""
L{tokengate.access.revocation}'s Redis transport: revocation across the
nodes of a cluster.

The cluster tests run two L{Server} objects ("nodes") in this process, each
with its own Redis client (shared by its L{RedisTokenStore} and its
revocation transport, as the composition root does), on one real
redis-server (L{tests.redisserver}); skipped when redis-server is not
installed (CI installs it and counts such skips as failures). The local
transport and the event parser are tested in memory in L{tests.test_cluster}.
"""

from __future__ import annotations

import json
import time

import redis as redis_py
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, succeed
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tokengate.apps import Applications
from tokengate.auth import StreamCredentials
from tokengate.access.revocation import MAX_EVENT_BYTES, RedisTransport
from tokengate.redisclient import RedisClient
from tokengate.config import ServerConfig
from tokengate.server import Server
from tokengate.store.redis import RedisTokenStore
from tokengate.web.sessions import InvalidCredential

from tests.helpers import eventually, json_body
from tests.redisserver import start_redis_server
from tests.fixtures import restAPI

BASE = "http://127.0.0.1:5080"
SECRET = "s" * 32


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


def counted(server, direction: str) -> float:
    value = server.metrics.registry.get_sample_value(
        "tokengate_cluster_revocations_total", {"direction": direction}
    )
    return value or 0.0


class Mind:
    protocolName = "rtmp"

    def __init__(self, peer="192.0.2.1"):
        self.peerHost = peer
        self.kicked = []

    def kick(self, reason):
        self.kicked.append(reason)


class Node:
    """
    One tokengate node: a server on the shared Redis, its REST API, and its
    HTTP playback sessions.
    """

    def __init__(self, testcase, url: str, keepalive: float = 15.0) -> None:
        self.redis = RedisClient.fromURL(url, reactor, timeout=1.0, reconnectMaxDelay=0.5)
        self.store = RedisTokenStore(self.redis)
        self.server = Server(
            apps=Applications(None), store=self.store, clock=reactor,
            config=ServerConfig(sessionSecret=SECRET), redis=self.redis,
        )
        self.sessions = self.server.httpSessions
        self.revoker = self.server.revoker
        self.bus = self.revoker.transport
        self.bus.keepalive = keepalive
        self.rest = StubTreq(restAPI(self.server).resource())
        # cleanups run last-in first-out: the revoker stops before the
        # store, the store before the client they share
        testcase.addCleanup(self.redis.close)
        testcase.addCleanup(self.store.close)
        testcase.addCleanup(self.revoker.stop)
        self.revoker.start()

    async def _pumped(self, d):
        """
        The result of a StubTreq Deferred that Redis answers later: StubTreq
        only moves bytes when flushed.
        """
        done = []
        d = ensureDeferred(d)
        d.addBoth(lambda result: done.append(result))
        deadline = time.monotonic() + 10
        while not done:
            if time.monotonic() > deadline:
                raise AssertionError("no HTTP answer within 10s")
            self.rest.flush()
            await sleep(0.005)
        return await succeed(done[0])

    async def delete(self, path: str):
        r = await self._pumped(self.rest.delete(BASE + path))
        return r.code, await self._pumped(json_body(r))

    async def put(self, path: str):
        r = await self._pumped(self.rest.put(BASE + path, data=b""))
        return r.code, await self._pumped(json_body(r))

    async def mint(self, streamId="s1", type="publish"):
        r = await self._pumped(self.rest.get(
            BASE + "/LiveApp/rest/v2/broadcasts/{}/token?expireDate={}&type={}".format(
                streamId, int(time.time()) + 600, type
            )
        ))
        return (await self._pumped(json_body(r)))["tokenId"]

    async def login(self, token, action="publish", streamId="s1", peer="192.0.2.1",
                    subscriberId=None):
        if action == "play" and not self.server.hub.isLive("LiveApp", streamId):
            self.server.hub.publish("LiveApp", streamId, "RTMP")
        mind = Mind(peer)
        grant = await self.server.gate.login(
            StreamCredentials("LiveApp", streamId, action, token, peer, "rtmp",
                              subscriberId=subscriberId), mind
        )
        return grant, mind

    async def httpLogin(self, streamId="s1", peer="192.0.2.4"):
        """
        An HTTP playback session admitted through the gate and indexed as
        the playback gate opens one: its grant's mind revokes the session
        when kicked.  Its grant and credential.
        """
        if not self.server.hub.isLive("LiveApp", streamId):
            self.server.hub.publish("LiveApp", streamId, "RTMP")
        mind = self.sessions.mind("hls", peer)
        grant = await self.server.gate.login(
            StreamCredentials("LiveApp", streamId, "play", None, peer, "hls"), mind
        )
        now = reactor.seconds()
        session = self.server.signer.new("LiveApp", streamId, "hls", now)
        self.sessions.open(mind, grant, session)
        return grant, self.server.signer.issue(session, now)

    def httpSession(self, streamId="s1"):
        """
        A playback session of this node and its credential.
        """
        now = reactor.seconds()
        session = self.server.signer.new("LiveApp", streamId, "hls", now)
        return session, self.server.signer.issue(session, now)

    def refuses(self, credential, streamId="s1") -> bool:
        try:
            self.server.signer.check(credential, "LiveApp", streamId, reactor.seconds())
        except InvalidCredential:
            return True
        return False


class ClusterTests(TestCase):
    timeout = 60

    def setUp(self):
        self.redisServer = start_redis_server(self)
        self.redis = redis_py.Redis(
            host=self.redisServer.host, port=self.redisServer.port, socket_timeout=5
        )
        self.addCleanup(self.redis.close)
        self.a = Node(self, self.redisServer.url)
        self.b = Node(self, self.redisServer.url)
        for node in (self.a, self.b):
            node.server.apps.replace("LiveApp", publishTokenControlEnabled=True)

    async def subscribed(self, *nodes):
        nodes = nodes or (self.a, self.b)
        await eventually(lambda: all(n.bus.subscribed for n in nodes))
        # and caught up once
        await eventually(lambda: all(not n.bus.catchingUp for n in nodes))

    def test_transportForRedis(self):
        """
        A server given a Redis client revokes through a Redis transport on
        that very client, the one its token store uses.
        """
        self.assertIsInstance(self.a.bus, RedisTransport)
        self.assertIs(self.a.bus.client, self.a.redis)
        self.assertIs(self.a.store.client, self.a.redis)
        self.assertEqual(self.a.bus.channel, "tokengate:revocations:0")
        self.assertNotEqual(self.a.revoker.nodeId, self.b.revoker.nodeId)

    async def test_tokensRevokedEverywhere(self):
        """
        DELETE .../tokens on node A ends the token-admitted live session on
        node B; a session admitted without a token stays; A does not apply
        its own event.
        """
        await self.subscribed()
        token = await self.a.mint()
        grant, mind = await self.b.login(token)
        self.b.server.hub.publish("LiveApp", "s1", "RTMP")
        # a player on B admitted without a token (play control is off)
        untokened, _ = await self.b.login(None, action="play", peer="192.0.2.2")
        # a token session on A, kicked locally
        tokenA = await self.a.mint(streamId="s1")
        grantA, mindA = await self.a.login(tokenA, peer="192.0.2.3")
        code, body = await self.a.delete("/LiveApp/rest/v2/broadcasts/s1/tokens")
        self.assertEqual(code, 200)
        self.assertEqual(
            body, {"success": True, "message": "0 tokens revoked, 1 sessions ended",
                   "dataId": "0", "errorId": 0}
        )
        await eventually(lambda: mind.kicked)
        self.assertEqual(mind.kicked, ["revoked"])
        self.assertTrue(grant.ended)
        self.assertFalse(untokened.ended)
        self.assertEqual(mindA.kicked, ["revoked"])
        self.assertEqual(counted(self.a.server, "sent"), 1)
        self.assertEqual(counted(self.b.server, "received"), 1)
        await sleep(0.2)
        self.assertEqual(counted(self.a.server, "received"), 0)
        self.assertEqual(
            self.a.server.metrics.registry.get_sample_value(
                "tokengate_sessions_kicked_total",
                {"protocol": "rtmp", "action": "publish", "reason": "revoked"},
            ),
            1,
        )

    async def test_sessionsRevokedEverywhere(self):
        """
        DELETE .../sessions on node A: node B refuses its playback credential
        for the stream, ends its HTTP session and its player; the response
        has its usual shape.
        """
        await self.subscribed()
        httpGrant, credential = await self.b.httpLogin()
        self.assertEqual(self.b.sessions.count("LiveApp", "s1"), {"hls": 1})
        other, otherCredential = self.b.httpSession(streamId="s2")
        self.assertFalse(self.b.refuses(credential))
        # a credential issued by B works on A too (same secret) until revoked
        self.assertFalse(self.a.refuses(credential))
        code, body = await self.a.delete("/LiveApp/rest/v2/broadcasts/s1/sessions")
        self.assertEqual(
            (code, body), (200, {"success": True, "message": "0 sessions ended",
                                 "dataId": "0", "errorId": 0})
        )
        self.assertTrue(self.a.refuses(credential))
        await eventually(lambda: self.b.refuses(credential))
        self.assertTrue(httpGrant.ended)
        self.assertEqual(self.b.sessions.count("LiveApp", "s1"), {})
        self.assertFalse(self.b.refuses(otherCredential, streamId="s2"))
        # a session started after the revocation is not refused
        await sleep(0.01)
        _, later = self.b.httpSession()
        self.assertFalse(self.b.refuses(later))
        # recorded for nodes that missed it
        members = self.redis.zrange("tokengate:revoked", 0, -1)
        self.assertEqual(members, [b"sessions:LiveApp:s1"])
        self.assertGreater(self.redis.pttl("tokengate:revoked"), 6 * 3600 * 1000)

    async def test_catchUpAfterMissedEvent(self):
        """
        A node whose subscription was down while another node revoked learns
        it from the record once its subscription is back, and ends only
        what started before the revocation.
        """
        await self.subscribed()
        _, credential = self.b.httpSession()
        token = await self.a.mint()
        tokenGrant, tokenMind = await self.b.login(token)
        self.b.server.hub.publish("LiveApp", "s1", "RTMP")
        player, playerMind = await self.b.login(None, action="play")
        # drop B's subscriber connection (Redis' side): it comes back by
        # itself after its back-off (about a second)
        port = self.b.bus.subscription.connection.transport.getHost().port
        self.redis.execute_command("CLIENT", "KILL", "ADDR", "127.0.0.1:{}".format(port))
        await eventually(lambda: not self.b.bus.subscribed, timeout=5)
        await self.a.delete("/LiveApp/rest/v2/broadcasts/s1/sessions")
        await self.a.delete("/LiveApp/rest/v2/broadcasts/s1/tokens")
        self.assertEqual(counted(self.a.server, "sent"), 2)
        self.assertFalse(self.b.bus.subscribed, "B came back too early for this test")
        self.assertFalse(self.b.refuses(credential))
        await self.subscribed(self.b)
        self.assertEqual(counted(self.b.server, "received"), 0)
        self.assertTrue(self.b.refuses(credential))
        self.assertTrue(player.ended)
        self.assertEqual(playerMind.kicked, ["revoked"])
        self.assertEqual(tokenMind.kicked, ["revoked"])
        # what B admits now is not ended by catching up again
        _, fresh = self.b.httpSession()
        newPlayer, _ = await self.b.login(None, action="play")
        await self.b.bus.catchUp()
        self.assertFalse(self.b.refuses(fresh))
        self.assertFalse(newPlayer.ended)

    async def test_subscriberBlockedEverywhere(self):
        """
        Blocking a TOTP subscriber on node A ends its sessions of that
        stream and type on node B too, also when B missed the event (from
        the record, once its subscription is back).
        """
        await self.subscribed()
        alice, aliceMind = await self.b.login(None, action="play", subscriberId="alice")
        bob, _ = await self.b.login(None, action="play", subscriberId="bobby")
        code, body = await self.a.put(
            "/LiveApp/rest/v2/broadcasts/s1/subscribers/alice/block/60/play")
        self.assertEqual((code, body["success"], body["dataId"]), (200, True, "0"))
        await eventually(lambda: aliceMind.kicked)
        self.assertEqual(aliceMind.kicked, ["blocked"])
        self.assertFalse(bob.ended)
        self.assertEqual(self.redis.zrange("tokengate:revoked", 0, -1),
                         [b"subscriber:LiveApp:s1:alice:play"])
        # B misses the block of bobby: it learns it from the record
        port = self.b.bus.subscription.connection.transport.getHost().port
        self.redis.execute_command("CLIENT", "KILL", "ADDR", "127.0.0.1:{}".format(port))
        await eventually(lambda: not self.b.bus.subscribed, timeout=5)
        await self.a.put("/LiveApp/rest/v2/broadcasts/s1/subscribers/bobby/block/60/publish_play")
        self.assertFalse(self.b.bus.subscribed, "B came back too early for this test")
        self.assertFalse(bob.ended)
        await self.subscribed(self.b)
        self.assertTrue(bob.ended)

    async def test_catchUpAtStart(self):
        """
        A node started after a revocation catches up: a credential issued
        before it is refused there too.
        """
        await self.subscribed()
        _, credential = self.a.httpSession()
        await self.a.delete("/LiveApp/rest/v2/broadcasts/s1/sessions")
        c = Node(self, self.redisServer.url)
        c.server.apps.replace("LiveApp", publishTokenControlEnabled=True)
        self.assertFalse(c.refuses(credential))
        await self.subscribed(c)
        self.assertTrue(c.refuses(credential))

    async def test_resubscribesAfterRedisRestart(self):
        """
        The subscriber reconnects by itself when Redis comes back.
        """
        await self.subscribed()
        self.redisServer.stop()
        await eventually(lambda: not self.a.bus.subscribed and not self.b.bus.subscribed)
        self.redisServer.start()
        await self.subscribed()
        _, credential = self.b.httpSession()
        await self.a.delete("/LiveApp/rest/v2/broadcasts/s1/sessions")
        await eventually(lambda: self.b.refuses(credential))
        self.assertEqual(counted(self.b.server, "received"), 1)

    async def test_frozenRedisDetected(self):
        """
        A subscription to a Redis that stops answering (SIGSTOP) is dropped
        after an unanswered PING, and comes back when Redis does.
        """
        c = Node(self, self.redisServer.url, keepalive=0.2)
        c.server.apps.replace("LiveApp", publishTokenControlEnabled=True)
        await self.subscribed(c)
        self.redisServer.freeze()
        try:
            await eventually(lambda: not c.bus.subscribed, timeout=5)
        finally:
            self.redisServer.thaw()
        await self.subscribed(c)
        _, credential = c.httpSession()
        await self.a.delete("/LiveApp/rest/v2/broadcasts/s1/sessions")
        await eventually(lambda: c.refuses(credential))

    async def test_redisDown(self):
        """
        With Redis down, DELETE .../sessions still acts on this node and
        answers as before, within the store's timeout; the failure to tell
        the cluster is counted.
        """
        await self.subscribed()
        _, credential = self.a.httpSession()
        player, mind = await self.a.login(None, action="play")
        self.redisServer.stop()
        await eventually(lambda: not self.a.bus.subscribed)
        started = time.monotonic()
        code, body = await self.a.delete("/LiveApp/rest/v2/broadcasts/s1/sessions")
        self.assertLess(time.monotonic() - started, 3.0)
        self.assertEqual(
            (code, body), (200, {"success": True, "message": "1 sessions ended",
                                 "dataId": "1", "errorId": 0})
        )
        self.assertTrue(self.a.refuses(credential))
        self.assertEqual(mind.kicked, ["revoked"])
        self.assertEqual(counted(self.a.server, "failed"), 1)
        self.assertEqual(counted(self.a.server, "sent"), 0)
        # tokens: the local sessions end, the store answers 503 as before
        code, body = await self.a.delete("/LiveApp/rest/v2/broadcasts/s1/tokens")
        self.assertEqual(code, 503)
        self.assertEqual(counted(self.a.server, "failed"), 2)

    async def test_malformedEvents(self):
        """
        Garbage on the channel is ignored and counted, and the subscriber
        goes on working.
        """
        await self.subscribed()
        channel = self.a.bus.channel
        good = {"v": 1, "kind": "sessions", "app": "LiveApp", "streamId": "s1",
                "time": time.time(), "origin": "elsewhere"}
        garbage = [
            b"\xff\xfe\x00",
            b"not json",
            b"[]",
            b"{" * 5000,
            b"[" * 3000 + b"]" * 3000,
            json.dumps(dict(good, kind="nuke")).encode(),
            json.dumps(dict(good, v=2)).encode(),
            json.dumps(dict(good, time="now")).encode(),
            json.dumps(dict(good, time=float("nan"))).encode(),
            json.dumps(dict(good, app=7)).encode(),
            json.dumps(dict(good, streamId="")).encode(),
            json.dumps(dict(good, origin="x" * (MAX_EVENT_BYTES))).encode(),
        ]
        for message in garbage:
            self.redis.publish(channel, message)
        await eventually(lambda: counted(self.b.server, "malformed") == len(garbage))
        self.assertEqual(counted(self.a.server, "malformed"), len(garbage))
        self.assertEqual(counted(self.b.server, "received"), 0)
        self.assertTrue(self.b.bus.subscribed)
        # an event for an application B does not have: received, no effect
        self.redis.publish(channel, json.dumps(dict(good, app="Nope")))
        _, credential = self.b.httpSession()
        self.redis.publish(channel, json.dumps(dict(good, time=time.time())))
        await eventually(lambda: self.b.refuses(credential))
        self.assertEqual(counted(self.b.server, "received"), 2)
        self.assertNotIn(("Nope", "s1"), self.b.server.signer._streamRevoked)


class ServiceTests(TestCase):
    timeout = 60

    async def test_twistdWiring(self):
        """
        C{twistd tokengate --store redis://...} subscribes when the service
        starts and closes the subscription when it stops (trial checks that
        nothing is left in the reactor).
        """
        from tokengate.tap import Options, makeService

        redisServer = start_redis_server(self)
        o = Options()
        o.parseOptions(["--data-dir", self.mktemp(), "--store", redisServer.url,
                        "--http", "tcp:0:interface=127.0.0.1", "--rtmp", "", "--srt", ""])
        svc = makeService(o, reactor)
        bus = svc.server.revoker.transport
        self.assertIsInstance(bus, RedisTransport)
        # the Redis client is opened once: the store and the transport share it
        self.assertIsInstance(svc.server.redis, RedisClient)
        self.assertIs(svc.server.store.client, svc.server.redis)
        self.assertIs(bus.client, svc.server.redis)
        svc.privilegedStartService()
        svc.startService()
        try:
            await eventually(lambda: bus.subscribed)
        finally:
            await svc.stopService()
        self.assertFalse(bus.subscribed)
        self.assertTrue(svc.server.redis.closed)
