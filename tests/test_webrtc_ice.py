"""
STUN and TURN for WebRTC (L{tokengate.webrtc.ice}): the options, the
time-limited TURN credentials of coturn's use-auth-secret, the
C{iceServerConfig} reply, and, with a real coturn and headless Chromium,
play.html playing a stream through the TURN relay (and failing fast with a
wrong secret).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
from typing import Any

from twisted.internet import reactor, task
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.trial.unittest import TestCase

from tokengate.apps import Applications
from tokengate.config import ServerConfig
from tokengate.server import Server
from tokengate.store.memory import MemoryTokenStore
from tokengate.tap import Options, makeService
from tokengate.server import buildSite
from tokengate.webrtc.ice import (
    IceConfigError,
    IceServers,
    parse_uris,
    server_ice_servers,
    turn_rest_credentials,
)
from tokengate.webrtc.signalling import SignallingFactory

from . import procs
from .helpers import clock_at, require

SECRET = "north-wind-secret"
URIS = ("stun:stun.example.com:3478,turn:turn.example.com:3478?transport=udp,"
        "turns:turn.example.com:5349?transport=tcp")


def hmac_sha1(key: bytes, message: bytes) -> bytes:
    """
    HMAC-SHA1 spelled out (RFC 2104), independently of the hmac module.
    """
    if len(key) > 64:
        key = hashlib.sha1(key).digest()
    key = key.ljust(64, b"\0")
    inner = hashlib.sha1(bytes(k ^ 0x36 for k in key) + message).digest()
    return hashlib.sha1(bytes(k ^ 0x5C for k in key) + inner).digest()


class ParseUris(TestCase):
    def test_string_and_list(self):
        expected = ["stun:stun.example.com:3478", "turn:turn.example.com:3478?transport=udp",
                    "turns:turn.example.com:5349?transport=tcp"]
        self.assertEqual(parse_uris(URIS), expected)
        self.assertEqual(parse_uris(" , ".join(expected) + ", "), expected)
        self.assertEqual(parse_uris(expected), expected)
        self.assertEqual(parse_uris(["stun:a.example", "turn:[2001:db8::1]:3478,turn:10.0.0.1"]),
                         ["stun:a.example", "turn:[2001:db8::1]:3478", "turn:10.0.0.1"])
        self.assertEqual(parse_uris(""), [])
        self.assertEqual(parse_uris([]), [])
        self.assertEqual(parse_uris(None), [])

    def test_invalid(self):
        for bad in ("http://turn.example.com", "turn.example.com:3478", "turn:",
                    "turn:host:99999", "turn:host:3478?transport=sctp", "turn:host name",
                    "stun:host:3478?transport=udp", "stun://host"):
            e = self.assertRaises(IceConfigError, parse_uris, bad)
            self.assertIn("--ice-servers", str(e))
        self.assertRaises(IceConfigError, parse_uris, 3478)
        self.assertRaises(IceConfigError, parse_uris, ["stun:a", 1])

    def test_server_stun(self):
        self.assertEqual(server_ice_servers("stun:a.example:3478, stun:b.example"),
                         [{"urls": "stun:a.example:3478"}, {"urls": "stun:b.example"}])
        self.assertEqual(server_ice_servers(""), [])
        for bad in ("turn:a.example", "stuns:a.example"):
            e = self.assertRaises(IceConfigError, server_ice_servers, bad)
            self.assertIn("--server-stun", str(e))


class IceOptions(TestCase):
    def parse(self, *argv: str) -> Options:
        o = Options()
        o.parseOptions(list(argv))
        return o

    def config(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_defaults(self):
        o = self.parse()
        self.assertEqual(o["ice-servers"], [])
        self.assertEqual(o["server-stun"], [])
        self.assertEqual(o["turn-secret"], "")
        self.assertEqual(o["turn-username"], "")
        self.assertEqual(o["turn-credential-ttl"], 86400)
        self.assertEqual(o["ice-transport-policy"], "all")

    def test_command_line(self):
        o = self.parse("--ice-servers", URIS, "--turn-secret", SECRET,
                       "--turn-credential-ttl", "3600", "--ice-transport-policy", "relay",
                       "--server-stun", "stun:stun.example.com:3478")
        self.assertEqual(o["ice-servers"], parse_uris(URIS))
        self.assertEqual(o["turn-secret"], SECRET)
        self.assertEqual(o["turn-credential-ttl"], 3600)
        self.assertEqual(o["ice-transport-policy"], "relay")
        self.assertEqual(o["server-stun"], ["stun:stun.example.com:3478"])
        o = self.parse("--ice-servers", "turn:t.example:3478", "--turn-username", "u",
                       "--turn-credential", "p")
        self.assertEqual((o["turn-username"], o["turn-credential"]), ("u", "p"))

    def test_config_file(self):
        path = self.config(
            '"ice-servers" = ["stun:stun.example.com:3478", '
            '"turn:turn.example.com:3478?transport=udp"]\n'
            '"turn-secret" = "north-wind-secret"\n'
            '"turn-credential-ttl" = 7200\n'
            '"ice-transport-policy" = "relay"\n'
            '"server-stun" = ["stun:a.example", "stun:b.example:3479"]\n')
        o = self.parse("--config", path)
        self.assertEqual(o["ice-servers"], ["stun:stun.example.com:3478",
                                            "turn:turn.example.com:3478?transport=udp"])
        self.assertEqual(o["turn-secret"], SECRET)
        self.assertEqual(o["turn-credential-ttl"], 7200)
        self.assertEqual(o["ice-transport-policy"], "relay")
        self.assertEqual(o["server-stun"], ["stun:a.example", "stun:b.example:3479"])
        # a string in the file, as on the command line; the command line wins
        path = self.config('"ice-servers" = "stun:a.example, stun:b.example"\n')
        self.assertEqual(self.parse("--config", path)["ice-servers"],
                         ["stun:a.example", "stun:b.example"])
        self.assertEqual(self.parse("--config", path, "--ice-servers", "stun:c.example")
                         ["ice-servers"], ["stun:c.example"])

    def test_invalid(self):
        refused = [
            ("--ice-servers", "http://x.example"),
            ("--ice-servers", "turn:t.example", "--turn-secret", SECRET,
             "--turn-username", "u", "--turn-credential", "p"),     # both kinds
            ("--ice-servers", "turn:t.example"),                    # TURN without credentials
            ("--ice-servers", "turn:t.example", "--turn-username", "u"),  # half of static
            ("--ice-servers", "stun:s.example", "--turn-secret", SECRET),  # no TURN URI
            ("--ice-servers", "stun:s.example", "--ice-transport-policy", "relay"),
            ("--ice-transport-policy", "relay"),
            ("--ice-transport-policy", "none"),
            ("--ice-servers", "turn:t.example", "--turn-secret", SECRET,
             "--turn-credential-ttl", "10"),
            ("--server-stun", "turn:t.example"),
        ]
        for argv in refused:
            self.assertRaises(usage.UsageError, self.parse, *argv)
        self.assertRaises(usage.UsageError, self.parse, "--turn-credential-ttl", "soon")
        for text in ('"ice-servers" = 3\n', '"turn-credential-ttl" = "1 day"\n',
                     '"turn-secret" = 5\n'):
            self.assertRaises(usage.UsageError, self.parse, "--config", self.config(text))

    def test_service(self):
        """
        The settings reach ServerConfig, the signalling factory (browsers)
        and serverIceServers (the server's own peer connections).
        """
        from twisted.internet.testing import MemoryReactorClock

        o = self.parse("--data-dir", self.mktemp(), "--store", "memory",
                       "--ice-servers", URIS, "--turn-secret", SECRET,
                       "--ice-transport-policy", "relay",
                       "--server-stun", "stun:stun.example.com:3478")
        svc = makeService(o, MemoryReactorClock())
        config = svc.server.config
        self.assertEqual(config.iceServers, parse_uris(URIS))
        self.assertEqual(config.turnSecret, SECRET)
        self.assertEqual(config.turnCredentialTtl, 86400)
        self.assertEqual(config.iceTransportPolicy, "relay")
        self.assertEqual(config.serverIceServers, [{"urls": "stun:stun.example.com:3478"}])
        self.assertNotIn(SECRET, repr(config))
        [site] = [s.factory for s in svc if getattr(s, "what", None) == "HTTP"]
        factory = site.resource._webrtc.factory
        self.assertEqual(factory.ice, IceServers.fromConfig(config))


class Credentials(TestCase):
    def test_known_answer(self):
        # printf %s 1800086400:tokengate | openssl dgst -sha1 -hmac north-wind-secret -binary | base64
        self.assertEqual(turn_rest_credentials(SECRET, 1_800_000_000, 86400),
                         ("1800086400:tokengate", "N8O5GoOYAINfKz72piNuOSlBaeY="))

    def test_hmac_and_expiry(self):
        for secret, now, ttl in ((SECRET, 1_800_000_000.7, 86400), ("s", 1_700_000_123, 60),
                                 ("k" * 100, 1_900_000_000, 3600)):
            username, credential = turn_rest_credentials(secret, now, ttl)
            expiry, _, label = username.partition(":")
            self.assertEqual(int(expiry), int(now) + ttl)
            self.assertEqual(label, "tokengate")
            self.assertEqual(base64.b64decode(credential),
                             hmac_sha1(secret.encode(), username.encode()))

    def test_fresh_per_reply(self):
        ice = IceServers(uris=["turn:t.example:3478"], turnSecret=SECRET, credentialTtl=600)
        a = ice.reply(1_800_000_000)
        b = ice.reply(1_800_000_030)
        self.assertEqual(a["turnServerUsername"], "1800000600:tokengate")
        self.assertEqual(b["turnServerUsername"], "1800000630:tokengate")
        self.assertNotEqual(a["turnServerCredential"], b["turnServerCredential"])

    def test_secrets_out_of_repr(self):
        for ice in (IceServers(uris=["turn:t.example"], turnSecret=SECRET),
                    IceServers(uris=["turn:t.example"], turnUsername="u", turnCredential=SECRET)):
            self.assertNotIn(SECRET, repr(ice))
            self.assertNotIn(SECRET, ice.describe())
        self.assertNotIn(SECRET, repr(ServerConfig(turnSecret=SECRET)))
        self.assertNotIn(SECRET, repr(ServerConfig(turnCredential=SECRET)))


class Reply(TestCase):
    NOW = 1_800_000_000

    def test_nothing(self):
        self.assertEqual(IceServers().reply(self.NOW), {
            "command": "iceServerConfig", "stunServerUri": "", "turnServerUsername": "",
            "turnServerCredential": "", "iceServers": [], "iceTransportPolicy": "all"})

    def test_stun_only(self):
        ice = IceServers(uris=["stun:s1.example:3478", "stun:s2.example"])
        self.assertEqual(ice.reply(self.NOW), {
            "command": "iceServerConfig", "stunServerUri": "stun:s1.example:3478",
            "turnServerUsername": "", "turnServerCredential": "",
            "iceServers": [{"urls": ["stun:s1.example:3478", "stun:s2.example"]}],
            "iceTransportPolicy": "all"})

    def test_turn_static(self):
        ice = IceServers(uris=parse_uris(URIS), turnUsername="alice", turnCredential="pw")
        self.assertEqual(ice.reply(self.NOW), {
            "command": "iceServerConfig",
            # Ant Media Server's SDK: the first turn: URI with the credentials
            "stunServerUri": "turn:turn.example.com:3478?transport=udp",
            "turnServerUsername": "alice", "turnServerCredential": "pw",
            "iceServers": [
                {"urls": ["stun:stun.example.com:3478"]},
                {"urls": ["turn:turn.example.com:3478?transport=udp",
                          "turns:turn.example.com:5349?transport=tcp"],
                 "username": "alice", "credential": "pw"}],
            "iceTransportPolicy": "all"})

    def test_turn_secret(self):
        ice = IceServers(uris=parse_uris(URIS), turnSecret=SECRET)
        username, credential = turn_rest_credentials(SECRET, self.NOW, 86400)
        self.assertEqual(ice.reply(self.NOW), {
            "command": "iceServerConfig",
            "stunServerUri": "turn:turn.example.com:3478?transport=udp",
            "turnServerUsername": username, "turnServerCredential": credential,
            "iceServers": [
                {"urls": ["stun:stun.example.com:3478"]},
                {"urls": ["turn:turn.example.com:3478?transport=udp",
                          "turns:turn.example.com:5349?transport=tcp"],
                 "username": username, "credential": credential}],
            "iceTransportPolicy": "all"})

    def test_relay(self):
        ice = IceServers(uris=["turns:t.example:5349?transport=tcp", "stun:s.example"],
                         turnSecret=SECRET, transportPolicy="relay")
        reply = ice.reply(self.NOW)
        self.assertEqual(reply["iceTransportPolicy"], "relay")
        # no turn: URI for the Ant Media Server SDK: its STUN, as before
        self.assertEqual(reply["stunServerUri"], "stun:s.example")
        self.assertEqual(reply["iceServers"][1]["urls"], ["turns:t.example:5349?transport=tcp"])

    def test_refused(self):
        self.assertRaises(IceConfigError, IceServers, uris=["turn:t.example"])
        self.assertRaises(IceConfigError, IceServers, uris=["stun:s.example"],
                          transportPolicy="relay")
        self.assertRaises(IceConfigError, IceServers, uris=["turn:t.example"],
                          turnSecret="s", turnUsername="u", turnCredential="p")


class SignallingReply(TestCase):
    """
    getIceServerConfig over a real WebSocket, against the site built from a
    ServerConfig; the secret never reaches the log.
    """

    timeout = 30

    async def test_over_websocket(self):
        from .test_webrtc_signalling import WS

        clock = clock_at(1_800_000_000)
        with capturedLogs() as events:
            server = Server(apps=Applications(None), store=MemoryTokenStore(), clock=clock,
                            config=ServerConfig(iceServers=parse_uris(URIS), turnSecret=SECRET,
                                                turnCredentialTtl=3600,
                                                iceTransportPolicy="relay"))
            site = buildSite(server)
            port = reactor.listenTCP(0, site, interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            c = await WS("ws://127.0.0.1:{}/LiveApp/websocket".format(port.getHost().port)).open()
            c.send(command="getIceServerConfig")
            m = await c.expect(command="iceServerConfig")
            clock.advance(10)
            c.send(command="getIceServerConfig")
            m2 = await c.expect(command="iceServerConfig")
            c.proto.sendClose()
            await c.factory.closed
        self.assertEqual(m["turnServerUsername"], "1800003600:tokengate")
        self.assertEqual(base64.b64decode(m["turnServerCredential"]),
                         hmac_sha1(SECRET.encode(), b"1800003600:tokengate"))
        self.assertEqual(m["iceTransportPolicy"], "relay")
        self.assertEqual(m["iceServers"][1]["username"], "1800003600:tokengate")
        self.assertEqual(m2["turnServerUsername"], "1800003610:tokengate")
        text = json.dumps([{k: str(v) for k, v in e.items()} for e in events])
        self.assertIn("turn:turn.example.com:3478?transport=udp", text)  # the start-up line
        self.assertIn("time-limited", text)
        for secret in (SECRET, m["turnServerCredential"], m2["turnServerCredential"]):
            self.assertNotIn(secret, text)

    def test_factory_compatible(self):
        """
        The factory still takes a lone STUN URI, and defaults to nothing.
        """
        def factory(*args: Any) -> SignallingFactory:
            s = Server(apps=Applications(None), store=MemoryTokenStore(), clock=clock_at())
            return SignallingFactory(s.access, s.clock, s.metrics, s.hub, *args)

        f = factory(None, "stun:stun.example.com:3478")
        self.assertEqual(f.ice.reply(0)["stunServerUri"], "stun:stun.example.com:3478")
        self.assertEqual(f.ice.reply(0)["iceServers"], [{"urls": ["stun:stun.example.com:3478"]}])
        self.assertEqual(factory().ice, IceServers())


# -- coturn + Chromium -------------------------------------------------------------

TURN_SECRET = "coturn-shared-secret-for-tests"

#: A page-side probe of a peer connection (the expression C{pc}): video
#: frames decoded (player) or encoded (publisher), and the selected
#: candidate pair with its two candidates.
SELECTED_PAIR = """
(function (pc) {
  if (!pc) { return null; }
  return pc.getStats().then(function (stats) {
    var out = {frames: 0, pair: null, local: null, remote: null};
    var selected = null;
    stats.forEach(function (r) {
      if (r.type === 'inbound-rtp' && r.kind === 'video') { out.frames = r.framesDecoded || 0; }
      if (r.type === 'outbound-rtp' && r.kind === 'video') { out.frames = r.framesEncoded || 0; }
      if (r.type === 'transport' && r.selectedCandidatePairId) { selected = r.selectedCandidatePairId; }
    });
    var pair = selected && stats.get(selected);
    if (pair) {
      out.pair = pair.state;
      var l = stats.get(pair.localCandidateId), r = stats.get(pair.remoteCandidateId);
      out.local = l && {type: l.candidateType, address: l.address, port: l.port,
                        relayProtocol: l.relayProtocol, url: l.url};
      out.remote = r && {type: r.candidateType, address: r.address, port: r.port};
    }
    return out;
  });
})(%s)
"""
PLAYER_PC = "window.tokengateWebRTC && window.tokengateWebRTC.pc"
PUBLISHER_PC = "window.tokengatePublishState.pc"


def _stun_binding_request() -> bytes:
    return b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12)


class CoturnRelay(TestCase):
    """
    coturn (use-auth-secret) on loopback; tokengate (twistd, asyncio
    reactor) with --ice-servers turn:... --turn-secret --ice-transport-policy
    relay; ffmpeg publishes over RTMP; Chromium plays play.html over WebRTC.
    With the right secret the video is decoded and the selected candidate
    pair's local candidate is a relay one (coturn's address): the media went
    through coturn.  With a wrong secret coturn refuses the allocation (401),
    the browser has no candidate at all and the page fails at once.
    """

    timeout = 60

    def setUp(self) -> None:
        self.turnserver = require("turnserver")
        self.ffmpeg = require("ffmpeg")
        require("chromium")
        self.running: list[procs.Running] = []
        self.addCleanup(self._stopAll)

    async def _stopAll(self) -> None:
        for r in self.running:
            r.kill()
        for r in self.running:
            await r.done

    def startProcess(self, argv: list[str], timeout: float) -> procs.Running:
        r = procs.start(argv, timeout)
        self.running.append(r)
        return r

    async def startCoturn(self) -> tuple[int, procs.Running]:
        from .service import free_port

        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        port = free_port(socket.SOCK_DGRAM)
        low = relay_range(port)
        argv = [self.turnserver, "-n", "--no-cli", "--no-tls", "--no-dtls", "--no-tcp",
                "--listening-ip", "127.0.0.1", "--listening-port", str(port),
                "--relay-ip", "127.0.0.1", "--min-port", str(low), "--max-port", str(low + 19),
                "--use-auth-secret", "--static-auth-secret", TURN_SECRET, "--realm", "tokengate",
                "--allow-loopback-peers", "--no-software-attribute",
                "--pidfile", os.path.join(work, "turnserver.pid"),
                "--userdb", os.path.join(work, "turndb"),
                "--log-file", "stdout", "--simple-log", "--no-stdout-log"]
        coturn = self.startProcess(argv, 55)
        # ready when it answers a STUN binding request
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        try:
            for _ in range(100):
                if coturn.done.called:
                    break
                try:
                    s.sendto(_stun_binding_request(), ("127.0.0.1", port))
                except OSError:
                    pass
                await task.deferLater(reactor, 0.05)
                try:
                    data = s.recv(2048)
                except BlockingIOError:
                    continue
                if data[:2] == b"\x01\x01":
                    return port, coturn
        finally:
            s.close()
        self.fail("coturn did not answer on 127.0.0.1:{}:\n{}".format(port, coturn.stderrSoFar()
                                                                      + self.stdout(coturn)))

    @staticmethod
    def stdout(r: procs.Running) -> str:
        return b"".join(r.proto.out).decode("utf-8", "replace")

    async def startTokengate(self, turnPort: int, secret: str) -> Any:
        from .service import TokengateProcess

        tg = TokengateProcess(self.mktemp(), reactor="asyncio", extra=(
            "--store", "memory",
            "--ice-servers", "turn:127.0.0.1:{}?transport=udp".format(turnPort),
            "--turn-secret", secret, "--ice-transport-policy", "relay"))
        self.addCleanup(tg.stop)
        await reactor_thread(tg.start)
        return tg

    async def publish(self, tg: Any) -> None:
        self.startProcess([
            self.ffmpeg, "-nostdin", "-loglevel", "error", "-re",
            "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
            "-t", "50", "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast",
            "-tune", "zerolatency", "-g", "25", "-bf", "0",
            "-f", "flv", "rtmp://127.0.0.1:{}/LiveApp/s1".format(tg.rtmp)], 55)
        for _ in range(100):
            code, body = await reactor_thread(tg.get, "/LiveApp/rest/v2/broadcasts/s1")
            if code == 200 and body.get("status") == "broadcasting":
                return
            await task.deferLater(reactor, 0.1)
        self.fail("the RTMP stream did not go live:\n{}".format(self.running[-1].stderrSoFar()))

    async def browser(self) -> Any:
        from . import browser as browser_mod

        return await browser_mod.launch(self, args=[
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])

    async def relayed(self, page: Any, pc: str, turnPort: int, what: str) -> dict:
        """
        Wait for frames on the peer connection C{pc} of C{page}; check
        that they go through coturn: the browser's end of the selected
        candidate pair is its relayed address on coturn (relay-ip
        127.0.0.1, in this coturn's relay port range).
        """
        stats = None
        for _ in range(60):
            stats = await page.evaluate(SELECTED_PAIR % pc)
            # (the pair's state may still read in-progress at the first frames)
            if stats and stats["frames"] > 0 and stats["local"] and stats["pair"] == "succeeded":
                break
            await task.deferLater(reactor, 0.25)
        self.assertTrue(stats and stats["frames"] > 0 and stats["local"],
                        "{}: {}\n{}".format(what, stats, page.debug()))
        self.assertEqual(stats["pair"], "succeeded", stats)
        self.assertEqual(stats["local"]["type"], "relay", stats)
        self.assertEqual(stats["local"]["address"], "127.0.0.1", stats)
        self.assertEqual(stats["local"]["url"], "turn:127.0.0.1:{}?transport=udp".format(turnPort))
        low = relay_range(turnPort)
        self.assertTrue(low <= stats["local"]["port"] <= low + 19, stats)
        return stats

    async def test_relayed(self) -> None:
        """
        The publish page publishes and play.html plays, both through coturn.
        """
        port, coturn = await self.startCoturn()
        tg = await self.startTokengate(port, TURN_SECRET)
        b = await self.browser()
        pub = await b.open("{}/LiveApp?id=s1".format(tg.base))
        await pub.wait_for("window.tokengatePublishState.status === 'publishing' || "
                           "window.tokengatePublishState.status === 'error'", timeout=20)
        self.assertEqual(await pub.evaluate("window.tokengatePublishState.status"), "publishing",
                         await pub.evaluate("window.tokengatePublishState.error"))
        config = await pub.evaluate("window.tokengatePublishState.config")
        self.assertEqual(config["iceTransportPolicy"], "relay")
        self.assertEqual(config["iceServers"][0]["urls"],
                         ["turn:127.0.0.1:{}?transport=udp".format(port)])
        self.assertTrue(config["iceServers"][0]["username"].endswith(":tokengate"))
        await self.relayed(pub, PUBLISHER_PC, port, "publisher")
        code, body = await reactor_thread(tg.get, "/LiveApp/rest/v2/broadcasts/s1")
        self.assertEqual(body["status"], "broadcasting")

        play = await b.open("{}/LiveApp/play.html?id=s1&playOrder=webrtc".format(tg.base))
        await play.wait_for("window.tokengateWebRTC && window.tokengateWebRTC.config", timeout=10)
        self.assertEqual(await play.evaluate("window.tokengateWebRTC.config.iceTransportPolicy"),
                         "relay")
        await self.relayed(play, PLAYER_PC, port, "player")
        self.assertEqual(await play.evaluate("window.tokengateState.tech"), "webrtc")
        self.assertNotIn(TURN_SECRET, tg.logText())

    async def test_wrong_secret(self) -> None:
        """
        coturn refuses the credentials (401): with the relay policy the
        browser has no candidate, and both pages fail at once.
        """
        port, coturn = await self.startCoturn()
        tg = await self.startTokengate(port, "not-the-" + TURN_SECRET)
        await self.publish(tg)
        b = await self.browser()
        play = await b.open("{}/LiveApp/play.html?id=s1&playOrder=webrtc".format(tg.base))
        pub = await b.open("{}/LiveApp?id=s2".format(tg.base))
        await play.wait_for("window.tokengateState.status === 'error'", timeout=10)
        self.assertIn("TURN server refused", await play.evaluate("window.tokengateState.error"))
        errors = await play.evaluate("window.tokengateWebRTC.iceErrors")
        self.assertIn(401, [e["errorCode"] for e in errors], errors)
        stats = await play.evaluate(SELECTED_PAIR % PLAYER_PC)
        self.assertFalse(stats and (stats["frames"] or stats["pair"]), stats)
        await pub.wait_for("window.tokengatePublishState.status === 'error'", timeout=10)
        self.assertIn("TURN server refused",
                      await pub.evaluate("window.tokengatePublishState.error"))
        errors = await pub.evaluate("window.tokengatePublishState.iceErrors")
        self.assertIn(401, [e["errorCode"] for e in errors], errors)


def relay_range(turnPort: int) -> int:
    """
    The first of the 20 relay ports of the coturn listening on C{turnPort}
    (distinct ranges for coturns running at once).
    """
    return 50000 + (turnPort % 700) * 20


def reactor_thread(f: Any, *args: Any) -> Any:
    """
    Run a blocking helper (the tokengate subprocess's start, its REST
    calls) in a thread, so that the reactor keeps serving the other
    processes meanwhile.
    """
    from twisted.internet.threads import deferToThread

    return deferToThread(f, *args)
