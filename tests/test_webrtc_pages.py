"""
The WHIP pages of every application, served by the site the composition
root builds (the media engine faked): C{/{App}/whip.html} (the WHIP publish
page), its scripts, and play.html's WHEP technology.  In Chromium, with real
clients: tests/interop/test_whip_clients.py.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tokengate.apps import Applications
from tokengate.config import ServerConfig
from tokengate.server import Server, buildSite
from tokengate.store.memory import MemoryTokenStore

from tests.helpers import http_client
from tests.test_webrtc_whip import FakeEngine


class WhipPages(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.server = Server(apps=Applications(None), store=MemoryTokenStore(), clock=reactor,
                             config=ServerConfig())
        self.server.apps.replace("LiveApp", publishTokenControlEnabled=True)
        site = buildSite(self.server, engine=FakeEngine())
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.base = "http://127.0.0.1:{}".format(port.getHost().port)
        self.http = http_client(self)

    async def get(self, path: str) -> tuple[Any, str]:
        r = await self.http.get(self.base + path)
        return r, (await r.content()).decode("utf-8")

    async def test_whipPage(self) -> None:
        """
        C{/{App}/whip.html}: the page with the application's name and its
        scripts, not cached, without a referrer.
        """
        r, body = await self.get("/LiveApp/whip.html?id=s1&token=T")
        self.assertEqual(r.code, 200)
        h = r.headers
        self.assertEqual(h.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"])
        self.assertEqual(h.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertEqual(h.getRawHeaders(b"referrer-policy"), [b"no-referrer"])
        self.assertIn('data-app="LiveApp"', body)
        self.assertIn('<script src="/LiveApp/whipclient.js"></script>', body)
        self.assertIn('<script src="/LiveApp/whippublish.js"></script>', body)
        self.assertNotIn("__APP__", body)

    async def test_unknown(self) -> None:
        """
        No page for an unknown application or below the page.
        """
        for path in ("/NoApp/whip.html", "/LiveApp/whip.html/x", "/NoApp/whep.js"):
            r, _ = await self.get(path)
            self.assertEqual(r.code, 404, path)

    async def test_scripts(self) -> None:
        """
        The WHIP client, the publish page's script and play.html's WHEP
        technology, which play.html loads after webrtc.js.
        """
        for name, marker in (("whipclient.js", "window.tokengateWhip ="),
                             ("whippublish.js", "tokengateWhip"),
                             ("whep.js", "players.whep =")):
            r, body = await self.get("/LiveApp/" + name)
            self.assertEqual(r.code, 200, name)
            self.assertIn(b"javascript", r.headers.getRawHeaders(b"content-type")[0])
            self.assertIn(marker, body)
        r, body = await self.get("/LiveApp/play.html")
        self.assertEqual(r.code, 200)
        scripts = [line for line in body.splitlines() if line.startswith("<script")]
        self.assertEqual(scripts, ['<script src="ice.js"></script>',
                                   '<script src="webrtc.js"></script>',
                                   '<script src="whipclient.js"></script>',
                                   '<script src="whep.js"></script>',
                                   '<script src="player.js"></script>'])
