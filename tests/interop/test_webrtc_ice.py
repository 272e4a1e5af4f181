"""
STUN and TURN for WebRTC (L{tokengate.webrtc.ice}) with a real coturn and
headless Chromium: the publish page and play.html go through the TURN relay
(and fail fast with a wrong secret). The options, the credentials and the
replies are tested in memory in L{tests.test_webrtc_ice}.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase

from tests import procs
from tests.helpers import require
from tests.service import TokengateProcess, free_port


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
        from tests import browser as browser_mod

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
