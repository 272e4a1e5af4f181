"""
A REST caller creating broadcasts without end, against a real
C{twistd tokengate} with the memory store (where the registry lives in the
server's memory): past C{--max-broadcasts} every create is refused (400,
counted) and the server's memory stays put.  The bound itself is held in
memory by L{tests.test_store_broadcasts} for every backend.
"""

from __future__ import annotations

import http.client
import json
import os
import re

from twisted.trial.unittest import SynchronousTestCase

from tests.interop.test_hostile_http import _rss
from tests.service import TokengateProcess


class BroadcastFloodTests(SynchronousTestCase):
    LIMIT = 300
    FLOOD = 6000
    #: growth of the server's RSS allowed during the refused flood
    RSS_BOUND = 3 * 1024 * 1024

    def setUp(self) -> None:
        self.tg = TokengateProcess(os.path.abspath(self.mktemp()), extra=(
            "--store", "memory", "--max-broadcasts", str(self.LIMIT))).start()
        self.addCleanup(self.tg.stop)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.tg.http, timeout=10)
        self.addCleanup(self.conn.close)

    def create(self, i: int) -> tuple[int, dict]:
        body = json.dumps({"streamId": "s{}".format(i), "name": "n" * 256,
                           "description": "d" * 1024}).encode()
        self.conn.request("POST", "/LiveApp/rest/v2/broadcasts/create", body,
                          {"content-type": "application/json"})
        r = self.conn.getresponse()
        return r.status, json.loads(r.read())

    def test_flood(self) -> None:
        for i in range(self.LIMIT):
            code, body = self.create(i)
            self.assertEqual(code, 200, body)
        assert self.tg.proc is not None
        before = _rss(self.tg.proc.pid)
        for i in range(self.LIMIT, self.LIMIT + self.FLOOD):
            code, body = self.create(i)
            self.assertEqual((code, body["success"]), (400, False))
        after = _rss(self.tg.proc.pid)
        self.assertLess(after - before, self.RSS_BOUND,
                        "RSS grew from {} to {}".format(before, after))
        # still exactly LIMIT broadcasts, and the refusals counted
        self.conn.request("GET", "/LiveApp/rest/v2/broadcasts/list/250/250")
        r = self.conn.getresponse()
        self.assertEqual(len(json.loads(r.read())), self.LIMIT - 250)
        self.conn.request("GET", "/metrics")
        r = self.conn.getresponse()
        m = re.search(r'tokengate_rest_refusals_total\{reason="broadcast_limit"\} ([0-9.]+)',
                      r.read().decode())
        self.assertIsNotNone(m)
        assert m is not None
        self.assertEqual(float(m.group(1)), self.FLOOD)
