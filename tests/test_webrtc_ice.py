"""
STUN and TURN for WebRTC (L{tokengate.webrtc.ice}): the options, the
time-limited TURN credentials of coturn's use-auth-secret, the
C{iceServerConfig} reply. With a real coturn and headless Chromium (play.html
playing through the TURN relay): L{tests.interop.test_webrtc_ice}.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from twisted.internet import reactor
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

from .helpers import clock_at

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
