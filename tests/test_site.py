"""
The HTTP site: body caps, access-log redaction, over a real loopback port.
"""

from twisted.internet import reactor
from twisted.trial.unittest import TestCase, SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from tokengate.server import Server
from tokengate.web.resource import build_site
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
        self.port = reactor.listenTCP(0, build_site(self.server), interface="127.0.0.1")
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
