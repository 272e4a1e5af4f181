"""
SRT callers under throttling and callers that retry (issue 10, finding 3),
with real callers: GStreamer's C{srtsink} and srt-live-transmit (the
promises are listed in L{tests.test_hostile_srt}, which tests them in memory).
"""

from __future__ import annotations

import os
import time

from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase

from tokengate.apps import Applications
from tokengate.auth import Throttle
from tokengate.server import Server
from tokengate.srt.errors import REJX_DOWN, REJX_UNAUTHORIZED
from tokengate.srt.protocol import SRTListener
from tokengate.store.memory import MemoryTokenStore

from tests import procs
from tests.helpers import require
from tests.interop.test_srt_interop import gst_publish_argv, ts_clip
from tests.test_hostile_srt import ListenerHarness


class RealCallers(procs.ClientsMixin, TestCase):
    timeout = 150

    def setUp(self):
        self.ffmpeg = require("ffmpeg")
        self.throttle = Throttle(reactor)
        self.server = Server(apps=Applications(None), store=MemoryTokenStore(), clock=reactor,
                             throttle=self.throttle)
        self.server.apps.replace("LiveApp", publishTokenControlEnabled=True)
        self.srt = SRTListener(self.server.access, self.server.clock, self.server.metrics)
        self.udp = reactor.listenUDP(0, self.srt, interface="127.0.0.1")
        self.addCleanup(self.udp.stopListening)
        self.port = self.udp.getHost().port
        self.answers = self.recordAnswers()
        self.startClients()

    def recordAnswers(self) -> list[tuple[object, float]]:
        """
        Every answer to a conclusion (a reject code, or C{"agreed"}) with how
        long after the conclusion arrived it was sent.
        """
        answers: list[tuple[object, float]] = []
        listener = self.srt.listener
        reject, accept = listener.reject, listener.accept

        def spyReject(decision, code, now=None):
            answers.append((code, reactor.seconds() - decision.received_at))
            return reject(decision, code, now)

        def spyAccept(decision, now):
            answers.append(("agreed", reactor.seconds() - decision.received_at))
            return accept(decision, now)

        listener.reject = spyReject
        listener.accept = spyAccept
        return answers

    refusals = ListenerHarness.refusals
    unspent = ListenerHarness.unspent

    def gst(self, streamid: str, seconds: int = 4):
        require("gst-launch-1.0")
        return self.start(gst_publish_argv(self.port, streamid, seconds), timeout=seconds + 30)

    def transmit(self, streamid: str, seconds: int):
        """
        srt-live-transmit with its default automatic reconnection: a rejected
        call is tried again, each time with a new socket from a new port.
        """
        slt = require("srt-live-transmit")
        fifo = os.path.abspath(self.mktemp())
        os.mkfifo(fifo)
        url = "srt://127.0.0.1:{}?streamid={}".format(self.port, streamid)
        # two processes joined by a FIFO, so that each can be killed
        caller = self.start(["/bin/sh", "-c", 'exec "$0" file://con "$1" < "$2"', slt, url,
                             fifo], timeout=seconds + 30)
        self.start([self.ffmpeg, "-v", "error", "-nostdin", "-re", "-i", ts_clip(seconds),
                    "-c", "copy", "-f", "mpegts", "-y", fifo], timeout=seconds + 30)
        return caller

    def assertAllInTime(self) -> None:
        """
        Every caller was answered while it still waited: within libsrt's
        3 s connect timeout, less the 0.5 s margin.
        """
        self.assertTrue(self.answers)
        late = [(what, round(delay, 3)) for what, delay in self.answers if delay > 2.5 + 0.05]
        self.assertEqual(late, [])

    async def test_throttledSrtsinkAnsweredInTime(self):
        """
        The finding: 10 refused publishes from 127.0.0.1, then srtsink with a
        valid token.  Every call is answered in time (the guesses with 1401,
        then 1503 once the throttle's wait would not fit); the valid caller
        is refused at once with 1503 and keeps its token, which is never
        spent and never shows as broadcasting.  Trying again with that
        token, the caller is admitted as soon as the throttle's wait fits its
        connect timeout, and goes live.
        """
        for i in range(10):
            result = await self.gst("LiveApp/s1,token=guess%d" % i).done
            self.assertNotEqual(result.code, 0)
            self.assertIn("REJECT", result.stderr)
        codes = [what for what, _ in self.answers]
        self.assertEqual(codes.count(REJX_UNAUTHORIZED), 9, codes)
        self.assertEqual(codes[-1], REJX_DOWN)
        self.assertAllInTime()

        token = self.mint()
        result = await self.gst("LiveApp/s1,token=" + token).done
        self.assertNotEqual(result.code, 0)
        self.assertIn("REJECT", result.stderr)
        self.assertNotIn("timeout", result.stderr.lower())
        what, delay = self.answers[-1]
        self.assertEqual(what, REJX_DOWN)
        self.assertLess(delay, 0.1)
        self.assertTrue(self.unspent(token))
        self.assertIsNone(self.server.hub.record("LiveApp", "s1"))
        self.assertEqual(self.server.gate.registry.grants("LiveApp"), [])

        # the caller tries again, as encoders do: it is admitted as soon as
        # the throttle's wait fits its connect timeout
        deadline = time.monotonic() + 60
        while not self.server.hub.isLive("LiveApp", "s1"):
            self.assertLess(time.monotonic(), deadline, "never admitted")
            pub = self.gst("LiveApp/s1,token=" + token, seconds=20)
            await self.waitFor(lambda: pub.done.called or self.server.hub.isLive("LiveApp", "s1"),
                               40, "an answer", interval=0.1)
            if pub.done.called:
                self.assertIn("REJECT", (await pub.done).stderr)
                self.assertTrue(self.unspent(token))
                await task.deferLater(reactor, 1.0)
        self.assertFalse(self.unspent(token))
        self.assertEqual(self.server.hub.record("LiveApp", "s1").status, "broadcasting")
        self.assertEqual([what for what, _ in self.answers].count("agreed"), 1)
        self.assertAllInTime()
        # only the guesses counted as failures
        self.assertEqual(self.refusals("unknown"), 9)

    async def test_srtLiveTransmitRetriesCountOnce(self):
        """
        srt-live-transmit retries a rejected call by itself: its retries
        are refused each time, and feed the throttle once.

        srt-live-transmit (libsrt 1.5.1) sometimes stops calling after a
        rejection (it hangs: Haivision/srt#2776); one that made no new call
        for 5 s is replaced by another, which is the same retry again.
        """
        deadline = time.monotonic() + 60
        while self.refusals("unknown") < 4:
            self.assertLess(time.monotonic(), deadline, repr(self.answers))
            slt = self.transmit("LiveApp/s1,token=nope", seconds=20)
            seen = count = len(self.answers)
            quiet = time.monotonic() + 20  # the first call may take a while
            while not slt.done.called and self.refusals("unknown") < 4 \
                    and time.monotonic() < quiet:
                await task.deferLater(reactor, 0.5)
                if len(self.answers) > count:
                    count = len(self.answers)
                    quiet = time.monotonic() + 5
            slt.kill()
            if count == seen:
                self.fail("srt-live-transmit never called: " + slt.stderrSoFar()[-2000:])
        self.assertEqual({what for what, _ in self.answers}, {REJX_UNAUTHORIZED})
        self.assertLessEqual(self.throttle.score("127.0.0.1"), 1.0)
        self.assertAllInTime()
