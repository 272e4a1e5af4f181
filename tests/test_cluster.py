"""
L{tokengate.access.revocation} without Redis: a memory store's server revokes
through the local transport, and the cluster's event parser. The revocation
across two nodes on a real redis-server is in L{tests.interop.test_cluster}.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from tokengate.access.revocation import (
    MAX_EVENT_BYTES,
    LocalTransport,
    MalformedEvent,
    Revocation,
    parseEvent,
)
from tokengate.server import Server

from tests.helpers import NOW, clock_at


class LocalTransportTests(SynchronousTestCase):
    def test_memoryStoreIsLocal(self):
        server = Server.inMemory(clock=clock_at())
        self.assertIs(type(server.revoker.transport), LocalTransport)
        server.revoker.start()
        self.assertEqual(self.successResultOf(server.revoker.revokeSessions("LiveApp", "s1")), 0)
        self.assertIsNone(self.successResultOf(server.revoker.stop()))
        self.assertEqual(server.signer._streamRevoked, {("LiveApp", "s1"): NOW})
        self.assertIsNone(server.metrics.registry.get_sample_value(
            "tokengate_cluster_revocations_total", {"direction": "sent"}))


class ParseEventTests(SynchronousTestCase):
    def test_good(self):
        event = {"v": 1, "kind": "tokens", "app": "LiveApp", "streamId": "s/1:x",
                 "time": 12, "origin": "abc"}
        self.assertEqual(
            parseEvent(json.dumps(event)),
            Revocation(kind="tokens", app="LiveApp", streamId="s/1:x", time=12.0,
                       origin="abc"),
        )
        self.assertEqual(parseEvent(json.dumps(event).encode()).kind, "tokens")

    def test_bad(self):
        for message in (None, 5, b"\xff", "x" * (MAX_EVENT_BYTES + 1), "1", "{}",
                        '{"v":1,"kind":"tokens","app":"a","streamId":"s","time":true,'
                        '"origin":"o"}',
                        '{"v":1,"kind":"tokens","app":"a","streamId":"s","time":-1,'
                        '"origin":"o"}'):
            self.assertRaises(MalformedEvent, parseEvent, message)
