"""
The HTTP site: body caps, access-log redaction, over a real loopback port.
"""

import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase, SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from tokengate.server import Server
from tokengate.server import buildSite
from tokengate.web.site import redact_uri, redacting_log_formatter

from .helpers import http_client


class RedactionTests(SynchronousTestCase):
    def test_redact(self):
        self.assertEqual(
            redact_uri(b"/LiveApp/streams/s1.m3u8?token=1234&x=1&tokenId=99;jwt=a.b.c"),
            b"/LiveApp/streams/s1.m3u8?token=REDACTED&x=1&tokenId=REDACTED;jwt=REDACTED",
        )
        self.assertEqual(redact_uri(b"/a?mytoken=1"), b"/a?mytoken=1")

    def test_formatter(self):
        request = DummyRequest([b""])
        request.code, request.sentLength, request.clientproto = 200, 10, b"HTTP/1.1"
        request.uri = b"/LiveApp/streams/s1.m3u8?token=SECRET123"
        request.requestHeaders.addRawHeader(b"referer", b"http://x/play.html?id=s1&token=SECRET456")
        line = redacting_log_formatter("[ts]", request)
        self.assertNotIn("SECRET", line)
        self.assertIn("token=REDACTED", line)


class SiteTests(TestCase):
    def setUp(self):
        self.server = Server.inMemory(clock=reactor)
        self.server.config.maxBodySize = 1000
        self.port = reactor.listenTCP(0, buildSite(self.server), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = "http://127.0.0.1:{}".format(self.port.getHost().port)
        self.http = http_client(self)

    async def test_bodyCap(self):
        r = await self.http.post(self.base + "/LiveApp/rest/v2/broadcasts/validate-token",
                            data=b"x" * 5000)
        self.assertEqual(r.code, 413)
        await r.content()
        r = await self.http.post(self.base + "/LiveApp/rest/v2/broadcasts/validate-token",
                            data=b'{"tokenId":"1","streamId":"s","type":"play"}')
        self.assertEqual(r.code, 200)
        self.assertEqual((await r.json())["success"], False)


class LargeBodyTests(TestCase):
    """
    A large body is sent without being copied behind its headers: the bytes
    and the headers arrive as they are.
    """

    def setUp(self):
        from twisted.web.resource import Resource

        from tokengate.web.site import LARGE_BODY, TokengateSite

        self.body = bytes(range(256)) * (3 * LARGE_BODY // 256 + 7)
        body = self.body

        class Big(Resource):
            isLeaf = True

            def render_GET(self, request):
                request.setHeader(b"content-type", b"video/mp4")
                return body

        self.port = reactor.listenTCP(0, TokengateSite(Big()), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = "http://127.0.0.1:{}/seg.m4s".format(self.port.getHost().port)
        self.http = http_client(self)

    async def test_large(self):
        for _ in range(2):
            r = await self.http.get(self.url)
            self.assertEqual(r.code, 200)
            self.assertEqual(r.length, len(self.body))
            self.assertEqual(r.headers.getRawHeaders(b"content-type"), [b"video/mp4"])
            self.assertEqual(await r.content(), self.body)

    async def test_offeredAtOnce(self):
        """
        The whole body is offered to the socket in one send, not 128 KiB
        (Twisted's SEND_LIMIT) per reactor iteration.
        """
        from twisted.internet import tcp

        offered = []
        original = tcp.Connection.writeSomeData

        def writeSomeData(transport, data):
            offered.append(min(len(data), transport.SEND_LIMIT))
            return original(transport, data)

        self.patch(tcp.Connection, "writeSomeData", writeSomeData)
        r = await self.http.get(self.url)
        self.assertEqual(await r.content(), self.body)
        self.assertGreater(len(self.body), tcp.Connection.SEND_LIMIT)
        self.assertIn(len(self.body), offered)


class AccessLogTests(TestCase):
    """
    C{--access-log}: the server's log by default, a file of its own (a
    redacted line appended per request), or off.
    """

    async def served(self, accessLog):
        server = Server.inMemory(clock=reactor)
        server.config.accessLog = accessLog
        port = reactor.listenTCP(0, buildSite(server), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        base = "http://127.0.0.1:{}".format(port.getHost().port)
        http = http_client(self)
        for _ in range(3):
            r = await http.get(base + "/LiveApp/streams/s1.m3u8?token=SECRET123")
            await r.content()
        return server

    async def test_file(self):
        path = self.mktemp()
        await self.served(path)
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 3, lines)
        for line in lines:
            self.assertIn('"GET /LiveApp/streams/s1.m3u8?token=REDACTED HTTP/1.1" 404', line)
            self.assertNotIn("SECRET", line)

    async def test_off(self):
        logged = []
        from twisted.python import log
        log.addObserver(logged.append)
        self.addCleanup(log.removeObserver, logged.append)
        await self.served("off")
        def requests():
            return [e for e in logged if "s1.m3u8" in str(log.textFromEventDict(e))]

        self.assertEqual(requests(), [])
        await self.served(None)
        self.assertEqual(len(requests()), 3)

    def test_option(self):
        from twisted.python import usage

        from tokengate.tap import Options

        path = self.mktemp()
        o = Options()
        o.parseOptions(["--access-log", path])
        self.assertEqual(o["access-log"], path)
        o = Options()
        o.parseOptions(["--access-log", "off"])
        self.assertEqual(o["access-log"], "off")
        o = Options()
        o.parseOptions([])
        self.assertEqual(o["access-log"], "")
        self.assertRaises(usage.UsageError, Options().parseOptions,
                          ["--access-log", os.path.join(path, "missing", "access.log")])
