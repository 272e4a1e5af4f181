"""
twistd options and the service tree.
"""

import os

from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import TestCase

from tokengate.tap import Options, makeService


class OptionsTests(TestCase):
    def parse(self, *argv):
        o = Options()
        o.parseOptions(list(argv))
        return o

    def test_defaults(self):
        o = self.parse()
        self.assertEqual(o["http"], "tcp:5080")
        self.assertEqual(o["rtmp"], "tcp:1935")
        self.assertEqual(o["srt"], "udp:4200")
        self.assertIsNone(o["https"])
        self.assertEqual(o["data-dir"], "./tokengate-data")
        self.assertEqual(o["store"], "")

    def test_https(self):
        o = self.parse("--certificate", "/etc/tg/c:ert.pem")
        self.assertEqual(o["https"], "ssl:5443:privateKey=/etc/tg/c\\:ert.pem:certKey=/etc/tg/c\\:ert.pem")
        o = self.parse("--https", "ssl:8443", "--certificate", "c.pem", "--private-key", "k.pem")
        self.assertEqual(o["https"], "ssl:8443:privateKey=k.pem:certKey=c.pem")
        self.assertRaises(usage.UsageError, self.parse, "--https", "ssl:8443")

    def test_config(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('http = "tcp:8080"\nstore = "memory"\n"data-dir" = "/tmp/x"\n"kick-on-expiry" = true\n')
        o = self.parse("--config", path, "--http", "tcp:9090")
        self.assertEqual(o["http"], "tcp:9090")  # the command line wins
        self.assertEqual(o["store"], "memory")
        self.assertEqual(o["data-dir"], "/tmp/x")
        self.assertTrue(o["kick-on-expiry"])
        with open(path, "w") as f:
            f.write('htpp = "tcp:8080"\n')
        e = self.assertRaises(usage.UsageError, self.parse, "--config", path)
        self.assertIn("htpp", str(e))
        self.assertRaises(usage.UsageError, self.parse, "--config", path + ".missing")

    def test_invalid(self):
        self.assertRaises(usage.UsageError, self.parse, "--srt", "tcp:4200")
        self.assertRaises(usage.UsageError, self.parse, "--srt", "udp:4200:bogus=1")
        self.assertRaises(usage.UsageError, self.parse, "--rest-jwt-secret", "short")
        self.assertRaises(usage.UsageError, self.parse, "--rest-allowed-cidr", "x")
        self.assertRaises(usage.UsageError, self.parse, "--webrtc-transcodes", "-1")
        self.assertRaises(usage.UsageError, self.parse, "--webrtc-transcodes", "many")

    def test_webrtcTranscodes(self):
        """
        The default (2 per CPU) stays in ServerConfig unless one is given,
        on the command line or in the config file.
        """
        self.assertIsNone(self.parse()["webrtc-transcodes"])
        self.assertEqual(self.parse("--webrtc-transcodes", "0")["webrtc-transcodes"], 0)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('"webrtc-transcodes" = 3\n')
        self.assertEqual(self.parse("--config", path)["webrtc-transcodes"], 3)
        for argv, expected in ((["--webrtc-transcodes", "5"], 5),
                               ([], 2 * (os.cpu_count() or 1))):
            o = Options()
            o.parseOptions(["--data-dir", self.mktemp(), "--store", "memory"] + argv)
            svc = makeService(o, MemoryReactorClock())
            self.assertEqual(svc.server.config.webrtcTranscodes, expected)

    def test_webhookTimeout(self):
        """
        --webhook-timeout (1 to 60 s, default 3) reaches the webhooks'
        outgoing client.
        """
        for bad in ("0", "0.5", "61", "x"):
            self.assertRaises(usage.UsageError, self.parse, "--webhook-timeout", bad)
        for argv, expected in ((["--webhook-timeout", "7.5"], 7.5), ([], 3.0)):
            o = Options()
            o.parseOptions(["--data-dir", self.mktemp(), "--store", "memory"] + argv)
            svc = makeService(o, MemoryReactorClock())
            self.assertEqual(svc.server.config.webhookTimeout, expected)

    def test_sessionReuseWindowDeprecated(self):
        """
        --session-reuse-window is still accepted (command line and config
        file) so existing set-ups start; it logs that it has no effect.
        """
        from twisted.logger import globalLogPublisher

        seen = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('"session-reuse-window" = 0\n')
        for argv in (["--session-reuse-window", "0"], ["--config", path]):
            o = Options()
            o.parseOptions(["--data-dir", self.mktemp(), "--store", "memory"] + argv)
            makeService(o, MemoryReactorClock())
        warnings = [e for e in seen if "session-reuse-window" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 2)
        seen.clear()
        o = Options()
        o.parseOptions(["--data-dir", self.mktemp(), "--store", "memory"])
        makeService(o, MemoryReactorClock())
        self.assertEqual([e for e in seen if "session-reuse-window" in e.get("log_format", "")],
                         [])


class ServiceTests(TestCase):
    def test_listeners(self):
        reactor = MemoryReactorClock()
        udp = []
        class FakePort:
            def stopListening(self):
                udp.append("stopped")

        reactor.listenUDP = lambda port, proto, interface="", maxPacketSize=8192: udp.append(
            (port, interface, type(proto).__name__)) or FakePort()
        data = self.mktemp()
        o = Options()
        o.parseOptions(["--data-dir", data, "--http", "tcp:15080:interface=127.0.0.1",
                        "--rtmp", "tcp:11935:interface=127.0.0.1", "--store", "memory",
                        "--srt", "udp:14200:interface=127.0.0.1"])
        svc = makeService(o, reactor)
        svc.privilegedStartService()
        svc.startService()
        self.addCleanup(svc.stopService)
        self.assertEqual([(p, i) for p, _, _, i in reactor.tcpServers],
                         [(15080, "127.0.0.1"), (11935, "127.0.0.1")])
        self.assertEqual(udp, [(14200, "127.0.0.1", "SRTListener")])
        self.assertTrue(os.path.exists(os.path.join(data, "apps.json")))
        self.assertEqual(list(svc.server.apps), ["LiveApp", "WebRTCAppEE"])

    def test_unknownStore(self):
        o = Options()
        o.parseOptions(["--data-dir", self.mktemp(), "--store", "mongodb://x"])
        self.assertRaises(SystemExit, makeService, o, MemoryReactorClock())

    async def test_subscriberStore(self):
        """
        The subscriber store is the token store's backend (here the default,
        SQLite in the data directory), shares the server's metrics, and is
        closed on shutdown after the sessions are kicked and before the
        token store.
        """
        from tokengate.access.subscribers_sqlite import SQLiteSubscriberStore

        o = Options()
        o.parseOptions(["--data-dir", self.mktemp(), "--http", "tcp:0:interface=127.0.0.1",
                        "--rtmp", "", "--srt", ""])
        svc = makeService(o, MemoryReactorClock())
        # the listeners and timers never started (a fake reactor): only the
        # server's own shutdown is under test
        for child in list(svc):
            child.disownServiceParent()
        server = svc.server
        self.assertIsInstance(server.subscribers, SQLiteSubscriberStore)
        order = []
        kickAll, close, storeClose = (server.gate.registry.kickAll, server.subscribers.close,
                                      server.store.close)
        server.gate.registry.kickAll = lambda reason: order.append("kick") or kickAll(reason)
        server.subscribers.close = lambda: order.append("subscribers") or close()
        server.store.close = lambda: order.append("tokens") or storeClose()
        await svc.stopService()
        self.assertEqual(order, ["kick", "subscribers", "tokens"])
        # a call the closed database fails is counted in the server's metrics
        from tokengate.store import StoreUnavailable

        with self.assertRaises(StoreUnavailable):
            await server.subscribers.getSubscriber("LiveApp", "s", "alice")
        self.assertEqual(server.metrics.registry.get_sample_value(
            "tokengate_store_errors_total", {"operation": "subscriber_get"}), 1.0)

class MaxBroadcastsTests(TestCase):
    """
    C{--max-broadcasts}: the broadcast registry's bound per application.
    """

    def test_bound(self):
        for argv, expected in (([], 10_000), (["--max-broadcasts", "5"], 5)):
            o = Options()
            o.parseOptions(["--data-dir", self.mktemp(), "--store", "memory"] + argv)
            svc = makeService(o, MemoryReactorClock())
            self.assertEqual(svc.server.broadcasts.limit, expected)
        for bad in ("0", "-1", "many", "10000001"):
            self.assertRaises(usage.UsageError, Options().parseOptions, ["--max-broadcasts", bad])
