"""
Hostile WHIP/WHEP clients against a real C{twistd tokengate} on the asyncio
reactor, with the server's RSS measured before and after each flood:

- thousands of refused requests (64 KiB offers without a token, wrong
  content types, PATCH and DELETE of sessions that do not exist): the RSS
  stays within L{RSS_REFUSED};
- rounds of WHEP sessions (aiortc peer connections) opened from one
  address past its limit and deleted, then a round left unconnected until
  the connect deadline ends it: at most the limit exist at once, all end,
  and the RSS stays within L{RSS_SESSIONS}.

The in-memory rules are in L{tests.test_hostile_whip}.
"""

from __future__ import annotations

import http.client
import os
import re
import secrets
import subprocess
import time
import urllib.request
from typing import Optional

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import require
from tests.interop.test_hostile_http import _rss
from tests.interop.test_whip import clip
from tests.service import TokengateProcess
from tests.whipoffers import fragment, offer
from tokengate.webrtc.whip import CONNECT_TIMEOUT
from tokengate.webrtc.whipwire import MAX_OFFER

#: growth of the server's RSS allowed during each flood
RSS_REFUSED = 8 * 1024 * 1024
RSS_SESSIONS = 24 * 1024 * 1024

LIMIT = 6


class WhipFloodProcessTests(SynchronousTestCase):
    def setUp(self) -> None:
        try:
            import aiortc  # noqa: F401
        except ImportError:
            if os.environ.get("TOKENGATE_REQUIRE_CLIENTS"):
                raise
            self.skipTest("aiortc not installed")
        self.tg = TokengateProcess(self.mktemp(), reactor="asyncio", extra=(
            "--store", "memory", "--max-connections-per-address", str(LIMIT))).start()
        self.addCleanup(self.tg.stop)
        self.conn: Optional[http.client.HTTPConnection] = None

    def request(self, method: str, path: str, body: bytes = b"",
                headers: Optional[dict[str, str]] = None) -> tuple[int, dict[str, str], bytes]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.tg.http, timeout=30)
            try:
                self.conn.request(method, path, body=body or None, headers=headers or {})
                r = self.conn.getresponse()
                data = r.read()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, data
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(self.tg.base + "/metrics", timeout=10) as r:
            text = r.read().decode()
        m = re.search("^" + re.escape(name) + r" ([0-9.e+]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    def rss(self) -> int:
        assert self.tg.proc is not None
        return _rss(self.tg.proc.pid)

    def test_refusedFlood(self) -> None:
        code, body = self.tg.post("/rest/v2/applications/settings/LiveApp",
                                  {"publishTokenControlEnabled": True,
                                   "playTokenControlEnabled": True})
        self.assertEqual(code, 200, body)
        big = offer() + "a=x-pad:" + "p" * (MAX_OFFER - len(offer()) - 20) + "\r\n"
        self.assertLessEqual(len(big), MAX_OFFER)

        def flood(rounds: int) -> None:
            for i in range(rounds):
                sdp = {"content-type": "application/sdp"}
                code, h, _ = self.request("POST", "/LiveApp/whip/s1",
                                          big.encode(), sdp)
                self.assertEqual(code, 401)
                self.assertTrue(h["www-authenticate"].startswith("Bearer"))
                code, _, _ = self.request("POST", "/LiveApp/whep/s1", big.encode(),
                                          {"content-type": "text/plain"})
                self.assertEqual(code, 415)
                session = "/LiveApp/whip/s1/" + secrets.token_urlsafe(24)
                code, _, _ = self.request("PATCH", session, fragment().encode(), {
                    "content-type": "application/trickle-ice-sdpfrag"})
                self.assertEqual(code, 404)
                code, _, _ = self.request("DELETE", session)
                self.assertEqual(code, 404)

        flood(60)
        before = self.rss()
        flood(1500)
        after = self.rss()
        self.assertLess(after - before, RSS_REFUSED, (before, after))
        self.assertEqual(self.metric("tokengate_whip_sessions"), 0)
        self.assertEqual(self.metric(
            'tokengate_refusals_total{action="play",protocol="whep",reason="content_type"}'),
            1560)

    def test_sessionFlood(self) -> None:
        ffmpeg = require("ffmpeg")
        path = os.path.abspath(self.mktemp()) + ".mp4"
        subprocess.run(clip(ffmpeg, path, 120), check=True, timeout=120)
        publisher = subprocess.Popen(
            [ffmpeg, "-nostdin", "-loglevel", "error", "-re", "-i", path, "-c", "copy",
             "-f", "flv", "rtmp://127.0.0.1:{}/LiveApp/s1".format(self.tg.rtmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (publisher.kill(), publisher.wait(10)))
        deadline = time.monotonic() + 30
        while self.metric("tokengate_live_streams") < 1:
            self.assertLess(time.monotonic(), deadline, "the RTMP publish")
            time.sleep(0.3)
        sdp = offer("recvonly").encode()

        def round(keep: bool = False) -> None:
            created: list[str] = []
            for _ in range(LIMIT * 3):
                code, h, body = self.request("POST", "/LiveApp/whep/s1", sdp,
                                             {"content-type": "application/sdp"})
                self.assertIn(code, (201, 429), body)
                if code == 201:
                    created.append(h["location"])
            # the flood's connection is one of the address's connections
            self.assertGreaterEqual(len(created), LIMIT - 2)
            self.assertLessEqual(len(created), LIMIT)
            self.assertEqual(self.metric("tokengate_whep_sessions"), len(created))
            if not keep:
                for location in created:
                    self.assertEqual(self.request("DELETE", location)[0], 200)
                self.assertEqual(self.metric("tokengate_whep_sessions"), 0)

        round()
        before = self.rss()
        for _ in range(5):
            round()
        round(keep=True)
        # never connected: the connect deadline ends them
        deadline = time.monotonic() + CONNECT_TIMEOUT + 15
        while self.metric("tokengate_whep_sessions") > 0:
            self.assertLess(time.monotonic(), deadline, "the connect deadline")
            time.sleep(1)
        after = self.rss()
        self.assertLess(after - before, RSS_SESSIONS, (before, after))
        self.assertGreater(self.metric(
            'tokengate_refusals_total{action="play",protocol="whep",'
            'reason="too_many_sessions"}'), 0)
