"""
The HTTPS listener end to end: ``twistd tokengate --https ... --certificate
--private-key`` (on the asyncio reactor, as the README runs it) serves the
REST API, the WebRTC signalling as ``wss://`` and playback over TLS, with a
certificate that a client checks against its CA.
"""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.request

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.trial.unittest import TestCase

from tests import procs
from tests.helpers import require
from tests.service import TokengateProcess, free_port
from tests.interop.test_store_redis import _write_certificates


class _Client(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.messages.append(json.loads(payload))

    def onClose(self, wasClean: bool, code: object, reason: object) -> None:
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError("closed: {} {}".format(code, reason)))
        self.factory.closed = True


class HTTPSListener(TestCase):
    timeout = 90

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.ca, cert, key, self.otherCA = _write_certificates(directory)
        self.port = free_port()
        self.tg = TokengateProcess(os.path.join(directory, "data"), extra=(
            "--https", "ssl:{}:interface=127.0.0.1".format(self.port),
            "--certificate", cert, "--private-key", key, "--store", "memory",
        ), reactor="asyncio").start()
        self.addCleanup(self.tg.stop)
        self.base = "https://127.0.0.1:{}".format(self.port)
        self.context = ssl.create_default_context(cafile=self.ca)

    def call(self, path: str, body: object = None) -> tuple[int, object]:
        req = urllib.request.Request(
            self.base + path, method="GET" if body is None else "POST",
            data=None if body is None else json.dumps(body).encode(),
            headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10, context=self.context) as r:
            return r.status, json.loads(r.read())

    async def websocket(self) -> tuple[_Client, WebSocketClientFactory]:
        url = "wss://127.0.0.1:{}/LiveApp/websocket".format(self.port)
        factory = WebSocketClientFactory(url)
        factory.protocol = _Client
        factory.opened = Deferred()
        factory.messages = []
        factory.closed = False
        with open(self.ca, "rb") as f:
            trust = Certificate.loadPEM(f.read())
        connectWS(factory, contextFactory=optionsForClientTLS("127.0.0.1", trustRoot=trust))
        proto = await factory.opened
        self.addCleanup(lambda: proto.transport.abortConnection())
        return proto, factory

    async def expect(self, factory: WebSocketClientFactory, command: str) -> dict:
        for _ in range(100):
            for m in factory.messages:
                if m.get("command") == command:
                    factory.messages.remove(m)
                    return m
            await task.deferLater(reactor, 0.05)
        self.fail("no {} message; got {}".format(command, factory.messages))

    async def test_rest_wss_and_playback(self) -> None:
        # REST over TLS, checked against the CA
        code, settings = self.call("/rest/v2/applications/settings/LiveApp")
        self.assertEqual(code, 200)
        settings.update(publishTokenControlEnabled=True, playTokenControlEnabled=True,
                        dashMuxingEnabled=True)
        self.assertEqual(self.call("/rest/v2/applications/settings/LiveApp", settings),
                         (200, {"success": True, "message": "", "dataId": "",
                                "errorId": 0}))
        _, token = self.call("/LiveApp/rest/v2/broadcasts/w1/token?expireDate={}&type=publish"
                             .format(int(time.time()) + 300))
        # a client trusting another CA refuses the certificate
        with self.assertRaises(urllib.error.URLError):
            urllib.request.urlopen(self.base + "/rest/v2/applications", timeout=10,
                                   context=ssl.create_default_context(cafile=self.otherCA))

        # the signalling as wss://
        proto, factory = await self.websocket()
        proto.sendMessage(json.dumps({"command": "ping"}).encode())
        await self.expect(factory, "pong")
        proto.sendMessage(json.dumps({"command": "publish", "streamId": "w1",
                                      "token": "12345"}).encode())
        self.assertEqual(await self.expect(factory, "error"),
                         {"command": "error", "definition": "unauthorized_access",
                          "streamId": "w1"})
        proto.sendMessage(json.dumps({"command": "publish", "streamId": "w1",
                                      "token": token["tokenId"]}).encode())
        self.assertEqual(await self.expect(factory, "start"),
                         {"command": "start", "streamId": "w1"})
        proto.sendMessage(json.dumps({"command": "stop", "streamId": "w1"}).encode())

        # playback over TLS: an RTMP stream's DASH manifest points at https://
        _, token = self.call("/LiveApp/rest/v2/broadcasts/r1/token?expireDate={}&type=publish"
                             .format(int(time.time()) + 300))
        ff = procs.start([
            require("ffmpeg"), "-nostdin", "-loglevel", "error", "-re",
            "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-t", "20",
            "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-bf", "0",
            "-pix_fmt", "yuv420p", "-f", "flv",
            "rtmp://127.0.0.1:{}/LiveApp/r1?token={}".format(self.tg.rtmp, token["tokenId"])],
            40)
        self.addCleanup(lambda: (ff.kill(), ff.done)[1])
        _, play = self.call("/LiveApp/rest/v2/broadcasts/r1/token?expireDate={}&type=play"
                            .format(int(time.time()) + 300))
        mpd = None
        for _ in range(100):
            try:
                # (not live yet: 404, and the token is kept)
                with urllib.request.urlopen(
                        self.base + "/LiveApp/streams/r1/r1.mpd?token=" + play["tokenId"],
                        timeout=5, context=self.context) as r:
                    mpd = r.read().decode()
                    break
            except urllib.error.HTTPError:
                await task.deferLater(reactor, 0.2)
        self.assertIsNotNone(mpd, self.tg.logText()[-2000:])
        # the manifest's Location (with the session credential) is https://
        self.assertIn("<Location>https://127.0.0.1:{}/LiveApp/streams/r1/r1.mpd?tgs="
                      .format(self.port), mpd)
        self.assertNotIn(play["tokenId"], mpd)
