"""
SRT callers under throttling, callers that retry, and callers that vanish
(issue 10, finding 3).

The promises tested here (docs/srt.md, "Throttling and the connect
timeout"):

- a caller is answered while it still waits: the throttle never holds an SRT
  caller past its connect timeout (3 s from the start of its connect, less a
  0.5 s margin); one it would hold longer is refused at once with 1503 and
  its token is kept;
- a token is redeemed only for an agreement sent within that time;
- an admitted caller's stream goes live (``broadcasting``) on its first media
  packet; one that never sends media is never live, holds its stream only
  until its idle timeout, and then the stream is free again;
- a caller retrying the same refused call (new socket, new port: what
  srt-live-transmit does, 7 times in 10 s) feeds the throttle once, and so
  do the repeats of one conclusion.

In memory with a L{Clock} and a fake UDP transport; with real callers
(GStreamer's C{srtsink} and srt-live-transmit) in
L{tests.interop.test_hostile_srt}.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Sequence

from twisted.trial.unittest import SynchronousTestCase

from tokengate.apps import Applications
from tokengate.auth import Throttle
from tokengate.server import Server
from tokengate.srt import packets as P
from tokengate.srt.errors import REJX_CONFLICT, REJX_DOWN, REJX_UNAUTHORIZED
from tokengate.srt.packets import DataPacket, Handshake, HSReq, HandshakeExtension, decode_packet
from tokengate.srt.protocol import SRTListener
from tokengate.store.memory import MemoryTokenStore
from tokengate.tokens import PUBLISH, StoredToken, digest, new_token

from .helpers import clock_at

NULL_TS = b"\x47\x1f\xff\x10" + b"\xff" * 184
ISN = 0x1234


class FakeUDP:
    """
    Collects what the listener writes, by destination address.
    """

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def write(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))

    def to(self, addr: Any) -> list[Any]:
        return [decode_packet(d) for d, a in self.sent if a == addr]


class Caller:
    """
    One libsrt-like caller socket: an address and a socket id.
    """

    def __init__(self, case: "ListenerHarness", port: int, socketId: int) -> None:
        self.case = case
        self.addr = ("127.0.0.1", port)
        self.socketId = socketId
        self.cookie = 0
        self.listenerId: Optional[int] = None
        self.seq = ISN

    def send(self, data: bytes) -> None:
        self.case.srt.datagramReceived(data, self.addr)

    def induction(self) -> None:
        hs = Handshake(4, 0, 2, ISN, 1500, 8192, P.URQ_INDUCTION, self.socketId, 0,
                       P.encode_peer_ip("127.0.0.1"), (), 100, 0)
        self.send(hs.encode())
        self.cookie = self.answers()[-1].cookie

    def conclusion(self, streamId: str, elapsed: float = 0.001) -> None:
        """
        Send the conclusion; C{elapsed} is the time since the caller's
        connect began (its handshake timestamp).
        """
        exts = (HandshakeExtension(P.EXT_HSREQ, HSReq(0x010501, 0xBF, 120, 0).encode()),
                HandshakeExtension(P.EXT_SID, P.encode_stream_id(streamId)))
        hs = Handshake(5, 0, P.HS_EXT_HSREQ | P.HS_EXT_CONFIG, ISN, 1500, 8192,
                       P.URQ_CONCLUSION, self.socketId, self.cookie,
                       P.encode_peer_ip("127.0.0.1"), exts, int(elapsed * 1e6), 0)
        self.send(hs.encode())

    def call(self, streamId: str, elapsed: float = 0.001) -> None:
        self.induction()
        self.conclusion(streamId, elapsed)

    def answers(self) -> list[Any]:
        return [p for p in self.case.transport.to(self.addr) if isinstance(p, Handshake)]

    def answer(self) -> Optional[Any]:
        """
        The answer to the conclusion: C{("agreed", listener socket id)} or
        C{("rejected", code)}, or None while there is none.
        """
        for p in self.answers():
            if p.reqtype == P.URQ_CONCLUSION:
                self.listenerId = p.socket_id
                return ("agreed", p.socket_id)
            if p.reqtype >= 1000:
                return ("rejected", p.reqtype - 1000)
        return None

    def media(self, payload: bytes = NULL_TS * 7) -> None:
        assert self.listenerId is not None
        self.send(DataPacket(self.seq, 1, payload, 200_000, self.listenerId).encode())
        self.seq += 1


class ListenerHarness:
    #: security policies the server asks besides its own
    extraPolicies: Sequence[Any] = ()

    def setUp(self) -> None:
        self.clock = clock_at()
        self.throttle = Throttle(self.clock)
        self.server = Server(apps=Applications(None), store=MemoryTokenStore(),
                             clock=self.clock, throttle=self.throttle,
                             extraPolicies=self.extraPolicies)
        self.server.apps.replace("LiveApp", publishTokenControlEnabled=True)
        self.srt = SRTListener(self.server.access, self.server.clock, self.server.metrics)
        self.transport = FakeUDP()
        self.srt.makeConnection(self.transport)
        self.addCleanup(self.srt.doStop)
        self.ports = iter(range(40000, 50000))
        self.ids = iter(range(0x1A0D0096, 0, -1))

    def caller(self) -> Caller:
        return Caller(self, next(self.ports), next(self.ids))

    def mint(self, streamId: str = "s1") -> str:
        token = new_token(streamId, PUBLISH, int(self.clock.seconds()) + 600)
        self.server.store.add(StoredToken.fromToken("LiveApp", token))
        return token.tokenId

    def unspent(self, token: str, streamId: str = "s1") -> bool:
        stored = self.server.store._tokens  # the memory store: a peek, no redemption
        return digest(token) in stored

    def refusals(self, reason: str) -> float:
        text = self.server.metrics.render().decode()
        m = re.search(r'tokengate_refusals_total\{action="publish",protocol="srt",'
                      r'reason="%s"\} ([0-9.]+)' % reason, text)
        return float(m.group(1)) if m else 0.0

    def fail(self, n: int) -> None:
        """
        Make 127.0.0.1 look like a guesser: n different refused attempts.
        """
        for i in range(n):
            self.throttle.failed("127.0.0.1", b"guess %d" % i)

    def advance(self, seconds: float, step: float = 0.01) -> None:
        target = self.clock.seconds() + seconds
        while self.clock.seconds() < target:
            self.clock.advance(max(min(step, target - self.clock.seconds()), 1e-6))


class ThrottledCallerTests(ListenerHarness, SynchronousTestCase):
    def test_heldPastTheConnectTimeoutRefusedAtOnce(self):
        """
        The finding: after 10 refusals the throttle's wait (4 s) exceeds
        what a caller can wait (3 s): the caller is refused at once with
        1503, and its token is kept.
        """
        self.fail(10)
        self.assertGreater(self.throttle.delay("127.0.0.1"), 3.0)
        token = self.mint()
        c = self.caller()
        c.call("LiveApp/s1,token=" + token)
        self.assertEqual(c.answer(), ("rejected", REJX_DOWN))
        self.assertTrue(self.unspent(token))
        self.assertEqual(self.refusals("throttled"), 1)
        self.assertFalse(self.server.hub.isTaken("LiveApp", "s1"))
        # a throttled refusal is not a failure: the score did not grow
        self.assertAlmostEqual(self.throttle.score("127.0.0.1"), 10)

    def test_waitThatFitsIsWaited(self):
        """
        A wait the caller can afford is waited, then the caller is admitted
        within its connect timeout.
        """
        self.fail(8)
        self.assertEqual(self.throttle.delay("127.0.0.1"), 2.0)
        token = self.mint()
        c = self.caller()
        c.call("LiveApp/s1,token=" + token)
        self.assertIsNone(c.answer())
        # libsrt repeats its conclusion every 250 ms while it waits
        for i in range(7):
            self.advance(0.25)
            c.conclusion("LiveApp/s1,token=" + token, 0.001 + 0.25 * (i + 1))
            self.assertIsNone(c.answer())
        self.advance(0.25)
        self.assertEqual(c.answer()[0], "agreed")
        self.assertFalse(self.unspent(token))

    def test_callerLateInItsConnectRefusedAtOnce(self):
        """
        What the caller can still wait counts from the start of its connect
        (its conclusion's timestamp), not from when the conclusion arrived.
        """
        self.fail(7)
        self.assertEqual(self.throttle.delay("127.0.0.1"), 1.0)
        token = self.mint()
        c = self.caller()
        c.call("LiveApp/s1,token=" + token, elapsed=1.8)
        self.assertEqual(c.answer(), ("rejected", REJX_DOWN))
        self.assertTrue(self.unspent(token))
        # a caller with a bogus timestamp gets no longer than the timeout
        c = self.caller()
        c.call("LiveApp/s1,token=" + token, elapsed=4000.0)
        self.assertEqual(c.answer(), ("rejected", REJX_DOWN))
        self.assertTrue(self.unspent(token))

    def test_unthrottledCallerNeverDelayed(self):
        """
        Without throttling the caller is answered at once, whatever its
        timestamp says.
        """
        token = self.mint()
        c = self.caller()
        c.call("LiveApp/s1,token=" + token, elapsed=10.0)
        self.assertEqual(c.answer()[0], "agreed")

    def test_everyAnswerInTime(self):
        """
        A guesser's calls, one after another as fast as they are answered:
        every one is answered within the 3 s a caller waits.
        """
        worst = 0.0
        for i in range(30):
            c = self.caller()
            start = self.clock.seconds()
            c.call("LiveApp/s1,token=guess%d" % i)
            while c.answer() is None:
                self.advance(0.05)
                self.assertLess(self.clock.seconds() - start, 3.0)
            worst = max(worst, self.clock.seconds() - start)
            self.assertEqual(c.answer()[0], "rejected")
        self.assertLessEqual(worst, 2.5)
        self.assertGreater(self.refusals("throttled"), 0)


class RetryTests(ListenerHarness, SynchronousTestCase):
    def test_retriesOfARefusedCallCountOnce(self):
        """
        srt-live-transmit retries a rejected call with a new socket from a
        new port: the retries of one refused call count once.
        """
        for _ in range(7):
            c = self.caller()
            c.call("LiveApp/s1,token=nope")
            self.assertEqual(c.answer(), ("rejected", REJX_UNAUTHORIZED))
        self.assertEqual(self.refusals("unknown"), 7)
        self.assertAlmostEqual(self.throttle.score("127.0.0.1"), 1)
        # another token is another attempt
        c = self.caller()
        c.call("LiveApp/s1,token=other")
        self.assertAlmostEqual(self.throttle.score("127.0.0.1"), 2)

    def test_repeatedConclusionsAnsweredOnce(self):
        """
        The repeats of one conclusion (same address, same socket id) get the
        same answer and are neither counted nor checked again.
        """
        c = self.caller()
        c.call("LiveApp/s1,token=nope")
        for _ in range(10):
            c.conclusion("LiveApp/s1,token=nope")
        answers = [p for p in c.answers() if p.reqtype >= 1000]
        self.assertEqual(len(answers), 11)
        self.assertEqual({p.reqtype for p in answers}, {1000 + REJX_UNAUTHORIZED})
        self.assertEqual(self.refusals("unknown"), 1)
        self.assertAlmostEqual(self.throttle.score("127.0.0.1"), 1)

    def test_badStreamIdRetriesCountOnce(self):
        for _ in range(5):
            self.caller().call("LiveApp")
        for _ in range(5):
            self.caller().call("LiveApp/x,token=a,token=b")
        self.assertEqual(self.refusals("invalid"), 10)
        self.assertAlmostEqual(self.throttle.score("127.0.0.1"), 2)


class FirstMediaTests(ListenerHarness, SynchronousTestCase):
    def test_liveOnFirstMedia(self):
        token = self.mint()
        c = self.caller()
        c.call("LiveApp/s1,token=" + token)
        self.assertEqual(c.answer()[0], "agreed")
        self.assertFalse(self.unspent(token))
        hub = self.server.hub
        self.assertFalse(hub.isLive("LiveApp", "s1"))
        self.assertIsNone(hub.record("LiveApp", "s1"))
        self.assertTrue(hub.isTaken("LiveApp", "s1"))
        self.advance(1.0)
        self.assertFalse(hub.isLive("LiveApp", "s1"))
        c.media()
        self.assertTrue(hub.isLive("LiveApp", "s1"))
        record = hub.record("LiveApp", "s1")
        self.assertEqual((record.status, record.publishType), ("broadcasting", "SRT"))

    def test_callerThatNeverSendsMedia(self):
        """
        The finding's other half: an admitted caller that never sends media
        never shows as broadcasting; its stream is held (another publisher
        is refused with 1409 and keeps its token) until the idle timeout,
        then free.
        """
        token = self.mint()
        c = self.caller()
        c.call("LiveApp/s1,token=" + token)
        self.assertEqual(c.answer()[0], "agreed")
        hub = self.server.hub
        second = self.mint()
        c2 = self.caller()
        c2.call("LiveApp/s1,token=" + second)
        self.assertEqual(c2.answer(), ("rejected", REJX_CONFLICT))
        self.assertTrue(self.unspent(second))
        for _ in range(60):
            self.advance(0.1)
            self.assertIsNone(hub.record("LiveApp", "s1"))
        self.assertFalse(hub.isTaken("LiveApp", "s1"))
        self.assertEqual(self.srt.sessions, {})
        self.assertEqual(self.server.gate.registry.grants("LiveApp"), [])
        # the caller was told (SHUTDOWN), and the stream is free again
        self.assertTrue(any(isinstance(p, P.Shutdown) for p in self.transport.to(c.addr)))
        c3 = self.caller()
        c3.call("LiveApp/s1,token=" + second)
        self.assertEqual(c3.answer()[0], "agreed")
        c3.media()
        self.assertTrue(hub.isLive("LiveApp", "s1"))

    def test_kickBeforeMediaReleasesTheStream(self):
        c = self.caller()
        c.call("LiveApp/s1,token=" + self.mint())
        self.assertEqual(c.answer()[0], "agreed")
        self.assertEqual(self.server.gate.registry.kickTokenSessions("LiveApp", "s1"), 1)
        self.assertFalse(self.server.hub.isTaken("LiveApp", "s1"))
        self.assertEqual(self.srt.sessions, {})

    def test_shutdownBeforeMedia(self):
        c = self.caller()
        c.call("LiveApp/s1,token=" + self.mint())
        c.send(P.Shutdown(0, c.listenerId or c.answer()[1]).encode())
        self.assertFalse(self.server.hub.isTaken("LiveApp", "s1"))
        self.assertIsNone(self.server.hub.record("LiveApp", "s1"))
