"""
The applications kept in Redis (L{tokengate.cluster.settings}) on a real
redis-server: two nodes, each with its own Redis client; a change made on
one is in force on the other at once, deletions too; a node cut off catches
up when its subscription is back; Redis down refuses changes (nothing
changes); a node that has not read the settings knows no application.
"""

from __future__ import annotations

import json
import time

import redis as redis_py
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tokengate.apps import Applications, AppSettings, SettingsError, SettingsUnavailable
from tokengate.cluster.settings import RedisApplications
from tokengate.metrics import Metrics
from tokengate.redisclient import RedisClient

from tests.redisserver import start_redis_server


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def eventually(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("not true within {}s".format(timeout))
        await sleep(0.02)


class RedisApplicationsTests(TestCase):
    timeout = 60

    def setUp(self):
        self.redisServer = start_redis_server(self)
        self.raw = redis_py.Redis(host=self.redisServer.host, port=self.redisServer.port,
                                  socket_timeout=5)
        self.addCleanup(self.raw.close)

    def node(self, seed=None):
        client = RedisClient.fromURL(self.redisServer.url, reactor, timeout=0.5,
                                     reconnectMaxDelay=0.2)
        self.addCleanup(client.close)
        apps = RedisApplications(client, reactor, Metrics(), seed=seed, keepalive=0.5)
        changes = []
        apps.onChange(lambda name, settings: changes.append((name, settings)))
        apps.changes = changes
        self.addCleanup(apps.stop)
        return apps

    async def started(self, *nodes):
        for apps in nodes:
            apps.start()
        await eventually(lambda: all(a.loaded for a in nodes))

    async def test_seedOnceThenShared(self):
        seed = Applications(None)
        seed.replace("LiveApp", publishTokenControlEnabled=True)
        seed.create("Mine")
        a = self.node(seed)
        # before it has read the settings a node knows no application
        self.assertIsNone(a.get("LiveApp"))
        await self.started(a)
        self.assertEqual(sorted(a), ["LiveApp", "Mine", "WebRTCAppEE"])
        self.assertTrue(a.get("LiveApp").publishTokenControlEnabled)
        # a second node's own seed does not overwrite the cluster's
        b = self.node()
        await self.started(b)
        self.assertEqual(sorted(b), ["LiveApp", "Mine", "WebRTCAppEE"])
        self.assertTrue(b.get("LiveApp").publishTokenControlEnabled)

    async def test_changeInForceEverywhere(self):
        a, b = self.node(), self.node()
        await self.started(a, b)
        await eventually(lambda: a.subscribed and b.subscribed)
        await a.store("LiveApp", AppSettings(playTokenControlEnabled=True))
        self.assertTrue(a.get("LiveApp").playTokenControlEnabled)
        await eventually(lambda: b.get("LiveApp").playTokenControlEnabled)
        self.assertIn(("LiveApp", b.get("LiveApp")), b.changes)
        await b.add("Other")
        await eventually(lambda: a.get("Other") is not None)
        with self.assertRaises(SettingsError):
            await a.add("Other")
        await b.remove("Other")
        await eventually(lambda: a.get("Other") is None)
        # the deletion was told to a's listeners (which end its sessions)
        self.assertIn(("Other", None), a.changes)
        stored = self.raw.hgetall("tokengate:apps")
        self.assertEqual(sorted(k.decode() for k in stored), ["LiveApp", "WebRTCAppEE"])
        self.assertTrue(json.loads(stored[b"LiveApp"])["playTokenControlEnabled"])

    async def test_catchUpAfterRestart(self):
        """
        Redis restarted (empty): the nodes seed it again and agree; a change
        made while one node was cut off is caught up when its subscription
        is back.
        """
        a, b = self.node(), self.node()
        await self.started(a, b)
        await eventually(lambda: a.subscribed and b.subscribed)
        self.redisServer.stop()
        with self.assertRaises(SettingsUnavailable):
            await a.store("LiveApp", AppSettings(publishTokenControlEnabled=True))
        # nothing changed anywhere
        self.assertFalse(a.get("LiveApp").publishTokenControlEnabled)
        self.redisServer.start()
        await eventually(lambda: a.subscribed and b.subscribed)
        await a.store("LiveApp", AppSettings(publishTokenControlEnabled=True))
        await eventually(lambda: b.get("LiveApp").publishTokenControlEnabled)
        # b misses a change: written behind its back, no notice
        self.raw.hset("tokengate:apps", "WebRTCAppEE",
                      json.dumps({"playTokenControlEnabled": True}))
        self.raw.hdel("tokengate:apps", "LiveApp")
        self.raw.client_kill_filter(_type="pubsub")
        await eventually(lambda: b.get("LiveApp") is None)
        self.assertTrue(b.get("WebRTCAppEE").playTokenControlEnabled)
        self.assertIn(("LiveApp", None), b.changes)

    async def test_emptyRedisKeepsTheClustersSettings(self):
        """
        Redis restarted empty (no persistence) after a change made through
        the cluster: the nodes seed it again with the settings in force,
        not with their start-up seed (which would switch token control off
        on every node).
        """
        seed = Applications(None)
        seed.create("Mine")
        a, b = self.node(seed), self.node(seed)
        await self.started(a, b)
        await eventually(lambda: a.subscribed and b.subscribed)
        await a.store("LiveApp", AppSettings(playTokenControlEnabled=True))
        await b.remove("Mine")
        await eventually(lambda: b.get("LiveApp").playTokenControlEnabled
                         and a.get("Mine") is None)
        self.redisServer.stop()
        self.redisServer.start()
        await eventually(lambda: self.raw.exists("tokengate:apps"))
        await eventually(lambda: a.subscribed and b.subscribed)
        await sleep(0.3)
        for apps in (a, b):
            self.assertEqual(sorted(apps), ["LiveApp", "WebRTCAppEE"])
            self.assertTrue(apps.get("LiveApp").playTokenControlEnabled)
        stored = self.raw.hgetall("tokengate:apps")
        self.assertEqual(sorted(k.decode() for k in stored), ["LiveApp", "WebRTCAppEE"])
        self.assertTrue(json.loads(stored[b"LiveApp"])["playTokenControlEnabled"])

    async def test_malformedIgnored(self):
        self.raw.hset("tokengate:apps", mapping={
            "LiveApp": "{not json", "rest": "{}", "Good": json.dumps({"hlsListSize": "7"})})
        a = self.node()
        await self.started(a)
        self.assertEqual(list(a), ["Good"])
        self.assertEqual(a.get("Good").hlsListSize, "7")
        # a notice naming nothing valid is dropped
        self.raw.publish("tokengate:apps:0", "x ../../etc")
        self.raw.publish("tokengate:apps:0", b"\xff\xfe")
        await sleep(0.2)
        self.assertEqual(list(a), ["Good"])

    async def test_restChangesEverywhere(self):
        """
        The REST API's settings, creation and deletion go through Redis: in
        force on the other node; Redis out of reach, a 503 and nothing
        changed.
        """
        from treq.testing import StubTreq
        from twisted.internet.defer import ensureDeferred

        from tokengate.server import Server
        from tokengate.store.memory import MemoryTokenStore
        from tests.fixtures import restAPI
        from tests.helpers import json_body

        a, b = self.node(), self.node()
        await self.started(a, b)
        await eventually(lambda: a.subscribed and b.subscribed)
        server = Server(apps=a, store=MemoryTokenStore(), clock=reactor)
        rest = StubTreq(restAPI(server).resource())

        async def call(method, path, body=None, rest=rest):
            done = []
            d = ensureDeferred(rest.request(
                method, "http://127.0.0.1:5080" + path,
                data=json.dumps(body).encode() if body is not None else None))
            d.addBoth(done.append)
            deadline = time.monotonic() + 10
            while not done:
                self.assertLess(time.monotonic(), deadline, "no answer")
                rest.flush()
                await sleep(0.01)
            response = done[0]
            content = []
            ensureDeferred(json_body(response)).addBoth(content.append)
            while not content:
                rest.flush()
                await sleep(0.01)
            return response.code, content[0]

        # a node that has not read the applications yet answers 503
        unread = Server(apps=self.node(), store=MemoryTokenStore(), clock=reactor)
        unreadRest = StubTreq(restAPI(unread).resource())
        for method, path in (("GET", "/rest/v2/applications"),
                             ("GET", "/rest/v2/applications/settings/LiveApp"),
                             ("GET", "/LiveApp/rest/v2/broadcasts/list/0/10")):
            code, body = await call(method, path, rest=unreadRest)
            self.assertEqual((code, body["message"]),
                             (503, "Application settings are unavailable, try again later"))
        code, body = await call("POST", "/rest/v2/applications/settings/LiveApp",
                                {"playTokenControlEnabled": True})
        self.assertEqual((code, body["success"]), (200, True))
        await eventually(lambda: b.get("LiveApp").playTokenControlEnabled)
        code, body = await call("POST", "/rest/v2/applications/Third")
        self.assertEqual((code, body["success"]), (200, True))
        await eventually(lambda: b.get("Third") is not None)
        code, body = await call("DELETE", "/rest/v2/applications/Third")
        self.assertEqual((code, body["success"]), (200, True))
        await eventually(lambda: b.get("Third") is None)
        self.redisServer.stop()
        code, body = await call("POST", "/rest/v2/applications/settings/LiveApp", {})
        self.assertEqual((code, body["message"]),
                         (503, "Application settings are unavailable, try again later"))
        self.assertTrue(a.get("LiveApp").playTokenControlEnabled)
        code, _ = await call("POST", "/rest/v2/applications/Fourth")
        self.assertEqual(code, 503)
        self.assertIsNone(a.get("Fourth"))
