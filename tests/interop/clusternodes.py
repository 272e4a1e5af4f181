"""
N real tokengate processes (C{twistd tokengate}, distinct loopback ports)
on one real redis-server, for the cluster's interop tests: start them,
wait for their settings, mint tokens, read their metrics, run bounded
client processes.
"""

from __future__ import annotations

import re
import time
import urllib.request
from typing import Any, Callable, Optional, Sequence

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests import procs
from tests.redisserver import RedisServer, start_redis_server
from tests.service import TokengateProcess

SETTINGS = "/rest/v2/applications/settings/LiveApp"
CLUSTER_SECRET = "c" * 40
SESSION_SECRET = "s" * 40

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ([-+0-9.eE]+|[-+]?Inf|NaN)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


def metric(tg: TokengateProcess, name: str, **labels: str) -> float:
    """
    The sum of the samples C{name} of C{tg}'s C{/metrics} whose labels
    include C{labels} (0 when none).
    """
    with urllib.request.urlopen(tg.base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None or m.group(1) != name:
            continue
        have = dict(_LABEL.findall(m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


class ClusterNodes(TestCase):
    """
    C{self.redis} and C{self.nodes} (a list of L{TokengateProcess}, all on
    the asyncio reactor so that they serve WebRTC), started in C{setUp};
    client processes started through L{client} are killed and awaited at
    cleanup.
    """

    nodeCount = 3
    #: the nodes' reactor (None: twistd's default, without WebRTC media)
    nodeReactor: Optional[str] = "asyncio"
    timeout = 240

    def setUp(self) -> None:
        self.redis: RedisServer = start_redis_server(self)
        self.nodes: list[TokengateProcess] = []
        for _ in range(self.nodeCount):
            tg = TokengateProcess(self.mktemp(), reactor=self.nodeReactor, extra=(
                "--store", self.redis.url, "--cluster-secret", CLUSTER_SECRET,
                "--session-secret", SESSION_SECRET))
            tg.extra = tg.extra + ("--node-address", "127.0.0.1:{}".format(tg.http))
            self.addCleanup(tg.kill)
            tg.start(timeout=60)
            self.nodes.append(tg)
        for tg in self.nodes:
            self.waitUntil(lambda tg=tg: "LiveApp" in tg.get("/rest/v2/applications")[1].get(
                "applications", []), 20, "the applications read from redis")
        self.running: list[procs.Running] = []
        self.addCleanup(self._killClients)

    async def _killClients(self) -> None:
        for r in self.running:
            r.kill()
        for r in self.running:
            await r.done

    def waitUntil(self, predicate: Callable[[], Any], timeout: float, what: str) -> float:
        """
        Poll (blocking) until C{predicate}; the seconds it took.
        """
        started = time.monotonic()
        while not predicate():
            if time.monotonic() - started > timeout:
                self.fail("not within {}s: {}".format(timeout, what))
            time.sleep(0.1)
        return time.monotonic() - started

    async def eventually(self, predicate: Callable[[], Any], timeout: float,
                         what: Any) -> float:
        """
        Wait without blocking the reactor (which reads the clients' output
        and drives the browser) until C{predicate}; the seconds it took.
        """
        started = time.monotonic()
        while not predicate():
            if time.monotonic() - started > timeout:
                self.fail("not within {}s: {}".format(timeout, what() if callable(what) else what))
            await sleep(0.2)
        return time.monotonic() - started

    def configure(self, tg: TokengateProcess, **settings: Any) -> None:
        """
        Change LiveApp's settings at C{tg}; wait until every node has them.
        """
        code, body = tg.post(SETTINGS, settings)
        self.assertEqual((code, body["success"]), (200, True), body)
        for other in self.nodes:
            self.waitUntil(lambda other=other: all(
                other.get(SETTINGS)[1].get(k) == v for k, v in settings.items()), 10,
                "the settings at {}".format(other.http))

    def mint(self, tg: TokengateProcess, type: str, streamId: str = "cam1") -> str:
        code, body = tg.get(
            "/LiveApp/rest/v2/broadcasts/{}/token?expireDate={}&type={}".format(
                streamId, int(time.time()) + 600, type))
        self.assertEqual(code, 200, body)
        return str(body["tokenId"])

    def delete(self, tg: TokengateProcess, path: str) -> tuple[int, Any]:
        """
        C{DELETE path} at C{tg}: the status and the JSON answer.
        """
        import json
        import urllib.error

        req = urllib.request.Request(tg.base + path, method="DELETE")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def broadcast(self, tg: TokengateProcess, streamId: str = "cam1") -> dict:
        code, body = tg.get("/LiveApp/rest/v2/broadcasts/" + streamId)
        return body if code == 200 and isinstance(body, dict) else {}

    def broadcasting(self, tg: TokengateProcess, streamId: str = "cam1") -> bool:
        return self.broadcast(tg, streamId).get("status") == "broadcasting"

    def client(self, argv: Sequence[str], timeout: float,
            env: Optional[dict[str, str]] = None) -> procs.Running:
        r = procs.start(argv, timeout=timeout, env=env)
        self.running.append(r)
        return r
