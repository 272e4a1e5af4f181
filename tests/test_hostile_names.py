"""
Hostile clients and names (issue 10, findings 9 and 10): one stream-id
grammar on every protocol, refused before any token is spent, and client
strings that reach the log escaped and truncated.
"""

from __future__ import annotations

from urllib.parse import quote

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tokengate.apps import Applications
from tokengate.rtmp.protocol import RTMPFactory
from tokengate.server import Server
from tokengate.store.memory import MemoryTokenStore
from tokengate.tokens import MSG_BAD_STREAM_ID, StoredToken, new_token
from tokengate.server import buildSite

from .helpers import NOW, clock_at, http_client, json_body
from .test_rtmp_protocol import Peer
from tests.fixtures import restAPI

#: ids every protocol refuses; RTMP and SRT admitted some of them before
HOSTILE_IDS = ["..", ".hidden", "a b", "caf\u00e9", "x\x00y", "a" * 400, "<svg>", "x\n"]


class LogCapture:
    """
    Every log event emitted while it is installed, formatted.
    """

    def __init__(self, test: SynchronousTestCase) -> None:
        self.lines: list[str] = []
        globalLogPublisher.addObserver(self._observe)
        test.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event: dict) -> None:
        self.lines.append(formatEvent(event) or "")

    def assertSafe(self, test: SynchronousTestCase, limit: int = 1200) -> None:
        for line in self.lines:
            test.assertFalse(any(c in line for c in "\r\n\x00\x1b"), repr(line[:200]))
            test.assertLessEqual(len(line), limit, line[:200])


class RTMPNameTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = clock_at()
        self.server = Server(apps=Applications(None), store=MemoryTokenStore(), clock=self.clock)
        self.factory = RTMPFactory(self.server.access, self.server.clock, self.server.metrics)

    def test_hostileIdsRefusedWithTokensOff(self) -> None:
        """
        With publish tokens off, ids outside the grammar (C{..} and
        C{.hidden} among them, which RTMP admitted) are refused with BadName
        and never go live.
        """
        for i, name in enumerate(HOSTILE_IDS):
            peer = Peer(self, "192.0.2.{}".format(10 + i))
            peer.publish(quote(name, safe=""))
            status = peer.statuses()[-1]
            self.assertEqual(status["code"], "NetStream.Publish.BadName", repr(name))
        for name in HOSTILE_IDS:
            self.assertFalse(self.server.hub.isLive("LiveApp", name[:128]))

    def test_tokenKeptForHostileId(self) -> None:
        """
        A refusal by grammar comes before redemption: the token stays usable.
        """
        self.server.apps.replace("LiveApp", publishTokenControlEnabled=True)
        token = new_token("s1", "publish", NOW + 60)
        self.server.store.add(StoredToken.fromToken("LiveApp", token))
        Peer(self).publish("..?token=" + token.tokenId)
        peer = Peer(self, "192.0.2.99")
        peer.publish("s1?token=" + token.tokenId)
        self.assertEqual(peer.statuses()[-1]["code"], "NetStream.Publish.Start")

    def test_hugeHostileAppNameLoggedSafely(self) -> None:
        """
        A 30,000-character app name with ESC, CR and NUL (a connect within
        the unadmitted connection's message budget) reaches the log escaped
        and truncated.
        """
        logs = LogCapture(self)
        peer = Peer(self)
        peer.command("connect", 1, {"app": "\x1b[31m\r\x00" + "A" * 30000})
        self.clock.advance(1)
        self.assertFalse(peer.transport.connected)
        self.assertTrue([line for line in logs.lines if "AAAA" in line])
        logs.assertSafe(self)


class RESTNameTests(TestCase):
    def setUp(self) -> None:
        self.server = Server.inMemory(clock=clock_at())
        self.treq = StubTreq(restAPI(self.server).resource())

    async def test_mintRefusesHostileIds(self) -> None:
        for name in ["a\x00b", "<svg>", "a" * 10000, "..", ".x", "a b"]:
            r = await self.treq.get(
                "http://127.0.0.1:5080/LiveApp/rest/v2/broadcasts/{}/token".format(quote(name, safe="")),
                params={"type": "publish", "expireDate": str(NOW + 60)})
            body = await json_body(r)
            self.assertEqual((r.code, body["message"]), (400, MSG_BAD_STREAM_ID), repr(name))

    async def test_mintRefusesHostileRoomId(self) -> None:
        r = await self.treq.get("http://127.0.0.1:5080/LiveApp/rest/v2/broadcasts/s1/token",
                                params={"type": "play", "expireDate": str(NOW + 60),
                                        "roomId": "r\x1b"})
        self.assertEqual(r.code, 400)
        await r.content()

    async def test_createBroadcastRefusesHostileIds(self) -> None:
        r = await self.treq.post("http://127.0.0.1:5080/LiveApp/rest/v2/broadcasts/create",
                                 json={"streamId": ".hidden"})
        self.assertEqual(r.code, 400)
        self.assertEqual((await json_body(r))["message"], MSG_BAD_STREAM_ID)


class HTTPPathTests(TestCase):
    """
    A path that is not UTF-8 once decoded gets 400, with no traceback logged
    (trial fails a test that logs an error).
    """

    async def test_invalidUtf8Paths(self) -> None:
        server = Server.inMemory(clock=reactor)
        port = reactor.listenTCP(0, buildSite(server), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        base = "http://127.0.0.1:{}".format(port.getHost().port)
        http = http_client(self)
        logs = LogCapture(self)
        for path in ["/LiveApp/rest/v2/broadcasts/%ff/token", "/%ff", "/LiveApp/%ff",
                     "/rest/v2/applications/settings/%ff", "/LiveApp/static/%ff",
                     "/LiveApp/websocket/%ff", "/%ff/rest/v2/broadcasts/x/token",
                     "/LiveApp/streams/%ff.m3u8"]:
            r = await http.get(base + path)
            await r.content()
            self.assertEqual(r.code, 400, path)
        self.assertFalse([line for line in logs.lines if "Traceback" in line or "Invalid encoding" in line])
