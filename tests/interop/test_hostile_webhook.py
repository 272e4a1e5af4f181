"""
A hung authorization webhook under a flood of plays, against a real
C{twistd tokengate}: the calls in flight stay within the per-application
bound, every request is answered by the timeout (refused, fail closed), and
the server's memory stays put.
"""

from __future__ import annotations

import re
import time
import urllib.request
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests import procs
from tests.fixtures import test_clip
from tests.helpers import require
from tests.httpreceiver import Receiver, hang
from tests.interop.test_hostile_http import _rss
from tokengate.access.outbound import newHTTPClient
from tokengate.access.webhookpolicy import MAX_IN_FLIGHT_PER_APP
from tests.service import TokengateProcess


class HungWebhookFloodTests(TestCase):
    timeout = 180

    #: concurrent plays per round (under the per-address connection limit)
    REQUESTS = 200
    ROUNDS = 3
    #: growth of the server's RSS allowed between the first and last rounds
    RSS_BOUND = 16 * 1024 * 1024

    def setUp(self) -> None:
        self.ffmpeg = require("ffmpeg")
        self.receiver = Receiver().start(self)
        self.receiver.answers["/play"] = hang
        self.tg = TokengateProcess(self.mktemp(), extra=("--webhook-timeout", "1",
                                                         "--store", "memory"))
        self.addCleanup(self.tg.kill)
        self.tg.start()
        code, body = self.tg.post("/rest/v2/applications/settings/LiveApp", {
            "webhookPlayAuthUrl": self.receiver.url("/play")})
        self.assertEqual((code, body["success"]), (200, True), body)
        self.publisher = procs.start([
            self.ffmpeg, "-hide_banner", "-nostdin", "-re", "-i", test_clip(60), "-c", "copy",
            "-f", "flv", "rtmp://127.0.0.1:{}/LiveApp/s1".format(self.tg.rtmp)], 120)

        async def stop() -> None:
            self.publisher.kill()
            await self.publisher.done
        self.addCleanup(stop)

    async def waitLive(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            code, body = await deferToThread(self.tg.get, "/LiveApp/rest/v2/broadcasts/s1")
            if code == 200 and body.get("status") == "broadcasting":
                return
            await task.deferLater(reactor, 0.2)
        self.fail("never went live")

    async def unavailable(self) -> float:
        def fetch() -> str:
            with urllib.request.urlopen(self.tg.base + "/metrics", timeout=10) as r:
                text: str = r.read().decode()
                return text
        text = await deferToThread(fetch)
        m = re.search(r'tokengate_policy_refusals_total\{mechanism="webhook",'
                      r'reason="webhook_unavailable"\} ([0-9.]+)', text)
        return float(m.group(1)) if m else 0.0

    async def test_flood(self) -> None:
        await self.waitLive()
        assert self.tg.proc is not None
        pid = self.tg.proc.pid
        client = newHTTPClient(reactor)
        url = "http://127.0.0.1:{}/LiveApp/streams/s1.m3u8".format(self.tg.http)

        async def one(i: int) -> int:
            response: Any = await client.get(url + "?n={}".format(i))
            await response.content()
            code: int = response.code
            return code

        rss: list[int] = []
        for round_ in range(self.ROUNDS):
            started = time.monotonic()
            peak = 0
            d = gatherResults([Deferred.fromCoroutine(one(i)) for i in range(self.REQUESTS)])
            while not d.called and time.monotonic() - started < 30:
                peak = max(peak, self.receiver.connections())
                await task.deferLater(reactor, 0.05)
            codes = await d
            elapsed = time.monotonic() - started
            # refused, fail closed (never served): each by the timeout
            self.assertEqual(set(codes), {503}, codes)
            self.assertLess(elapsed, 10, "round {} took {:.1f} s".format(round_, elapsed))
            self.assertGreater(peak, 0, "the webhook was asked")
            self.assertLessEqual(peak, MAX_IN_FLIGHT_PER_APP)
            rss.append(_rss(pid))
        self.assertEqual(await self.unavailable(), self.REQUESTS * self.ROUNDS)
        # most were refused at once, without a call (slots free up as calls
        # time out, so a round makes a few more than the bound)
        self.assertLess(len(self.receiver.received), self.REQUESTS * self.ROUNDS // 2)
        self.assertLess(rss[-1] - rss[0], self.RSS_BOUND,
                        "RSS grew {} bytes".format(rss[-1] - rss[0]))

