"""
Three real tokengate processes (C{twistd tokengate}, distinct loopback
ports) on one real redis-server: the stream registry and the settings
across nodes, driven by ffmpeg publishing over RTMP.

 - a settings change made at B is in force at A at once;
 - ffmpeg publishes at A; B reports the stream C{broadcasting} with A's
   C{originAdress}; a second publish of the same stream at C is refused
   C{in_use} and its one-time token kept: the same token publishes at C
   once A's publisher stopped;
 - A killed (SIGKILL): its registry entry expires within the stated bound
   (L{tokengate.cluster.registry.TTL} plus a heartbeat) and a publish of
   the stream at C is admitted.
"""

from __future__ import annotations

import re
import time
import urllib.request

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tokengate.cluster.registry import HEARTBEAT, TTL

from tests import procs
from tests.fixtures import test_clip
from tests.helpers import require
from tests.redisserver import start_redis_server
from tests.service import TokengateProcess

SETTINGS = "/rest/v2/applications/settings/LiveApp"
CLUSTER_SECRET = "c" * 40
SESSION_SECRET = "s" * 40


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


class ThreeNodesTests(TestCase):
    timeout = 240

    def setUp(self) -> None:
        self.ffmpeg = require("ffmpeg")
        redis = start_redis_server(self)
        self.nodes = {}
        for name in "abc":
            tg = TokengateProcess(self.mktemp(), extra=(
                "--store", redis.url, "--cluster-secret", CLUSTER_SECRET,
                "--session-secret", SESSION_SECRET))
            tg.extra = tg.extra + ("--node-address", "127.0.0.1:{}".format(tg.http))
            self.addCleanup(tg.kill)
            tg.start(timeout=60)
            self.nodes[name] = tg
        self.a, self.b, self.c = self.nodes["a"], self.nodes["b"], self.nodes["c"]
        # the settings are read from Redis once the subscription is in place
        for tg in self.nodes.values():
            self.waitUntil(lambda tg=tg: "LiveApp" in tg.get("/rest/v2/applications")[1].get(
                "applications", []), 20, "the applications read from redis")
        self.running: list[procs.Running] = []
        self.addCleanup(self._killClients)

    async def _killClients(self) -> None:
        for r in self.running:
            r.kill()
        for r in self.running:
            await r.done

    def waitUntil(self, predicate, timeout: float, what: str) -> float:
        """
        Poll (blocking: the nodes are other processes) until C{predicate};
        the seconds it took.
        """
        started = time.monotonic()
        while not predicate():
            if time.monotonic() - started > timeout:
                self.fail("not within {}s: {}".format(timeout, what))
            time.sleep(0.1)
        return time.monotonic() - started

    def mint(self, tg: TokengateProcess, streamId: str = "cam1") -> str:
        code, body = tg.get(
            "/LiveApp/rest/v2/broadcasts/{}/token?expireDate={}&type=publish".format(
                streamId, int(time.time()) + 600))
        self.assertEqual(code, 200, body)
        return str(body["tokenId"])

    def refusals(self, tg: TokengateProcess, reason: str) -> float:
        with urllib.request.urlopen(tg.base + "/metrics", timeout=10) as r:
            text = r.read().decode()
        m = re.search(r'tokengate_refusals_total\{action="publish",protocol="rtmp",'
                      r'reason="%s"\} ([0-9.]+)' % (reason,), text)
        return float(m.group(1)) if m else 0.0

    def publisher(self, tg: TokengateProcess, path: str, loop: bool) -> procs.Running:
        url = "rtmp://127.0.0.1:{}{}".format(tg.rtmp, path)
        argv = [self.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "info"]
        if loop:
            argv += ["-re", "-stream_loop", "-1"]
        argv += ["-i", test_clip(), "-c", "copy", "-f", "flv", url]
        r = procs.start(argv, timeout=120 if loop else 40)
        self.running.append(r)
        return r

    def broadcast(self, tg: TokengateProcess, streamId: str = "cam1"):
        return tg.get("/LiveApp/rest/v2/broadcasts/" + streamId)

    def broadcasting(self, tg: TokengateProcess, streamId: str = "cam1") -> bool:
        code, body = self.broadcast(tg, streamId)
        return code == 200 and body["status"] == "broadcasting"

    async def test_oneStreamOneNode(self) -> None:
        # a settings change at B is in force at A right after
        code, body = self.b.post(SETTINGS, {"publishTokenControlEnabled": True})
        self.assertEqual((code, body["success"]), (200, True), body)
        self.waitUntil(lambda: self.a.get(SETTINGS)[1]["publishTokenControlEnabled"], 5,
                       "the setting at A")
        result = await self.publisher(self.a, "/LiveApp/cam1", loop=False).done
        self.assertNotEqual(result.code, 0, result.stderr[-1500:])
        self.assertEqual(self.refusals(self.a, "missing"), 1)

        # ffmpeg publishes at A; B reports it with A's address
        origin = self.publisher(self.a, "/LiveApp/cam1?token=" + self.mint(self.a), loop=True)
        self.waitUntil(lambda: self.broadcasting(self.b), 30, "cam1 broadcasting at B")
        code, body = self.broadcast(self.b)
        self.assertEqual((body["originAdress"], body["publishType"]),
                         ("127.0.0.1:{}".format(self.a.http), "RTMP"))
        listed = self.c.get("/LiveApp/rest/v2/broadcasts/list/0/10")[1]
        self.assertEqual([(b["streamId"], b["status"], b["originAdress"]) for b in listed],
                         [("cam1", "broadcasting", "127.0.0.1:{}".format(self.a.http))])

        # the same stream at C: refused in_use, its token kept
        token = self.mint(self.c)
        result = await self.publisher(self.c, "/LiveApp/cam1?token=" + token, loop=False).done
        self.assertNotEqual(result.code, 0, result.stderr[-1500:])
        self.assertEqual(self.refusals(self.c, "in_use"), 1)
        self.assertTrue(self.broadcasting(self.a))

        # A's publisher stops: the same token publishes at C
        origin.interrupt()
        await origin.done
        self.waitUntil(lambda: not self.broadcasting(self.b), 10, "cam1 ended")
        result = await self.publisher(self.c, "/LiveApp/cam1?token=" + token, loop=False).done
        self.assertEqual(result.code, 0, result.stderr[-1500:])
        self.assertEqual(self.broadcast(self.c)[1]["status"], "finished")

    async def test_deadNodeExpires(self) -> None:
        origin = self.publisher(self.a, "/LiveApp/cam2", loop=True)
        self.waitUntil(lambda: self.broadcasting(self.c, "cam2"), 30, "cam2 broadcasting at C")
        self.assertEqual(self.broadcast(self.c, "cam2")[1]["originAdress"],
                         "127.0.0.1:{}".format(self.a.http))
        result = await self.publisher(self.c, "/LiveApp/cam2", loop=False).done
        self.assertNotEqual(result.code, 0)
        self.assertEqual(self.refusals(self.c, "in_use"), 1)
        self.a.kill()  # SIGKILL: nothing released
        took = self.waitUntil(lambda: self.broadcast(self.c, "cam2")[0] == 404,
                              TTL + HEARTBEAT + 5, "A's entry expired")
        self.assertLessEqual(took, TTL + 1.0)
        result = await self.publisher(self.c, "/LiveApp/cam2", loop=False).done
        self.assertEqual(result.code, 0, result.stderr[-1500:])
        self.assertEqual(self.refusals(self.c, "in_use"), 1)
        await origin.done
