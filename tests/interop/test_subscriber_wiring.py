"""
The persistent subscriber store as C{twistd tokengate} wires it, against
real tokengate processes (L{tests.service.TokengateProcess}) over loopback:

  - on the default store (SQLite in the data directory), a subscriber
    added over REST, and a block, survive a restart of the process: after
    it, ffmpeg publishes over RTMP with the subscriber's own code (its
    recorded C{b32Secret}, not the key derived from the application's
    secret), read from C{GET .../subscribers/{sid}/totp?type=publish};
  - two processes on one real redis-server share a subscriber and a block:
    one added on the first is listed by the second and publishes there
    with ffmpeg; blocked through the first, its publish to the second is
    refused with Ant Media's RTMP answer, counted as C{blocked}.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from typing import Any

import pyotp
from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase

from tests import procs
from tests.fixtures import test_clip
from tests.helpers import require
from tests.service import TokengateProcess

B32 = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
PUBLISH_SECRET = "publish secret of the app"
SUBS = "/LiveApp/rest/v2/broadcasts/{}/subscribers"
BLOCKED = "Subscriber alice is blocked to publish stream."


class Node:
    """
    What the tests ask of one tokengate process.
    """

    def __init__(self, tg: TokengateProcess) -> None:
        self.tg = tg

    def put(self, path: str) -> tuple[int, Any]:
        req = urllib.request.Request(self.tg.base + path, data=b"", method="PUT")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def totp(self, streamId: str, subscriberId: str = "alice") -> str:
        code, answer = self.tg.get(SUBS.format(streamId) + "/{}/totp?type=publish".format(
            subscriberId))
        assert code == 200 and answer["success"], answer
        return str(answer["dataId"])

    def subscribers(self, streamId: str) -> list[dict[str, Any]]:
        code, listed = self.tg.get(SUBS.format(streamId) + "/list/0/10")
        assert code == 200, listed
        return list(listed)

    def refusals(self, reason: str) -> float:
        with urllib.request.urlopen(self.tg.base + "/metrics", timeout=10) as r:
            text = r.read().decode()
        m = re.search(r'tokengate_refusals_total\{action="publish",protocol="rtmp",'
                      r'reason="%s"\} ([0-9.]+)' % reason, text)
        return float(m.group(1)) if m else 0.0

    def rtmp(self, path: str) -> str:
        return "rtmp://127.0.0.1:{}{}".format(self.tg.rtmp, path)


class WiringTest(TestCase):
    timeout = 180

    def setUp(self) -> None:
        self.ffmpeg = require("ffmpeg")
        self.running: list[procs.Running] = []
        self.addCleanup(self._killClients)

    async def _killClients(self) -> None:
        for r in self.running:
            r.kill()
        for r in self.running:
            await r.done

    def node(self, dataDir: str, *extra: str) -> Node:
        tg = TokengateProcess(dataDir, extra=extra).start(timeout=60)
        self.addCleanup(tg.stop)
        return Node(tg)

    def configure(self, node: Node) -> None:
        code, answer = node.tg.post("/rest/v2/applications/settings/LiveApp", {
            "enableTimeTokenForPublish": True, "timeTokenSecretForPublish": PUBLISH_SECRET})
        self.assertEqual((code, answer["success"]), (200, True), answer)

    async def publish(self, node: Node, streamId: str, code: str) -> procs.Result:
        path = "/LiveApp/{}?subscriberId=alice&subscriberCode={}".format(streamId, code)
        r = procs.start([self.ffmpeg, "-hide_banner", "-nostdin", "-i", test_clip(3),
                         "-c", "copy", "-f", "flv", node.rtmp(path)], 90)
        self.running.append(r)
        return await r.done

    async def finished(self, node: Node, streamId: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        answer: Any = None
        while time.monotonic() < deadline:
            code, answer = node.tg.get("/LiveApp/rest/v2/broadcasts/" + streamId)
            if code == 200 and answer["status"] == "finished":
                return
            await task.deferLater(reactor, 0.2, lambda: None)
        self.fail("{} did not finish: {}".format(streamId, answer))

    def assertCode(self, code: str) -> None:
        """
        C{code} is the subscriber's own (its b32Secret), per pyotp.
        """
        self.assertIn(code, [pyotp.TOTP(B32, interval=60).at(time.time() + d)
                             for d in (-2, 0, 2)])


class SQLiteRestartTests(WiringTest):
    async def test_subscriberSurvivesRestart(self) -> None:
        dataDir = self.mktemp()
        node = self.node(dataDir)
        self.configure(node)
        code, answer = node.tg.post(SUBS.format("s1"), {
            "subscriberId": "alice", "type": "publish", "b32Secret": B32,
            "subscriberName": "Alice"})
        self.assertEqual((code, answer["success"]), (200, True), answer)
        code, answer = node.put(SUBS.format("s1") + "/ghost/block/600/publish")
        self.assertEqual((code, answer["success"]), (200, True), answer)
        log = node.tg.log
        self.assertIn(node.tg.stop(), (0, -15))
        with open(log) as f:
            self.assertIn("Main loop terminated", f.read())  # a clean shutdown

        node = self.node(dataDir)  # the same data directory, new ports
        listed = node.subscribers("s1")
        self.assertEqual([(s["subscriberId"], s["subscriberName"], s["type"], s["blockedType"])
                          for s in listed],
                         [("alice", "Alice", "publish", None),
                          ("ghost", None, None, "publish")])
        self.assertGreater(listed[1]["blockedUntilUnitTimeStampMs"], time.time() * 1000 + 500e3)
        code = node.totp("s1")
        self.assertCode(code)
        result = await self.publish(node, "s1", code)
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        await self.finished(node, "s1")
        code_, events = node.tg.get("/LiveApp/rest/v2/broadcasts/s1/connection-events/0/10")
        self.assertEqual([(e["subscriberId"], e["eventType"]) for e in events],
                         [("alice", "connected"), ("alice", "disconnected")])


class RedisClusterTests(WiringTest):
    def setUp(self) -> None:
        super().setUp()
        from tests.redisserver import start_redis_server

        redis = start_redis_server(self)
        self.a, self.b = (self.node(self.mktemp(), "--store", redis.url) for _ in range(2))
        for node in (self.a, self.b):
            self.configure(node)  # the applications' settings are each node's

    async def test_sharedSubscriberAndBlock(self) -> None:
        a, b = self.a, self.b
        code, answer = a.tg.post(SUBS.format("s1"), {
            "subscriberId": "alice", "type": "publish", "b32Secret": B32})
        self.assertEqual((code, answer["success"]), (200, True), answer)
        self.assertEqual([s["subscriberId"] for s in b.subscribers("s1")], ["alice"])
        totp = b.totp("s1")
        self.assertCode(totp)
        result = await self.publish(b, "s1", totp)
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        await self.finished(b, "s1")
        # the connection events of one node are read on the other
        code, events = a.tg.get("/LiveApp/rest/v2/broadcasts/s1/connection-events/0/10")
        self.assertEqual([(e["subscriberId"], e["eventType"], e["eventProtocol"])
                          for e in events],
                         [("alice", "connected", "rtmp"), ("alice", "disconnected", "rtmp")])
        code, answer = a.put(SUBS.format("s1") + "/alice/block/60/publish")
        self.assertEqual((code, answer["success"]), (200, True), answer)
        result = await self.publish(b, "s1", a.totp("s1"))
        self.assertNotEqual(result.code, 0)
        self.assertIn(BLOCKED, result.stderr)
        self.assertEqual(b.refusals("blocked"), 1)
        self.assertEqual(a.refusals("blocked"), 0)
        # unblocked on the second node, the first admits it again
        code, answer = b.put(SUBS.format("s1") + "/alice/block/0/publish")
        self.assertEqual((code, answer["success"]), (200, True), answer)
        result = await self.publish(a, "s1", b.totp("s1"))
        self.assertEqual(result.code, 0, result.stderr[-2000:])
