"""
Real callers against the sans-IO SRT listener (L{tokengate.srt.connection},
L{tokengate.srt.handshake}, L{tokengate.srt.receiver}) on a plain UDP socket:
ffmpeg and srt-live-transmit publish, are accepted or rejected, and what
arrives is the caller's byte stream. The listener's rules are tested in
memory in L{tests.test_srt_connection}.
"""

from __future__ import annotations

import itertools
import os
import select
import socket
import subprocess
import time
from typing import Optional

from twisted.trial.unittest import SynchronousTestCase

from tokengate.media.ts import TSDemuxer, Video
from tokengate.srt import packets as P
from tokengate.srt.connection import Listener
from tokengate.srt.errors import REJ_UNSECURE, REJX_UNAUTHORIZED
from tokengate.srt.handshake import NeedsAuthorization, Rejected
from tokengate.srt.receiver import Closed, Connection, Payload
from tokengate.srt.streamid import StreamRequest

from tests.helpers import require
from tests.test_media_ts import ts_clip


class _Run:
    """The outcome of one served caller."""

    def __init__(self):
        self.decisions: list = []
        self.conn: Optional[Connection] = None
        self.events: list = []
        self.closed: list = []
        self.received = bytearray()
        self.stderr = ""
        self.returncode: Optional[int] = None
        self.dropped_on_purpose = 0


def serve(testcase, argv, *, stdin=None, decide=None, seconds=20.0, lose_every=0, feeder=None):
    """
    Listen on a fresh UDP port, run the caller *argv* (``PORT`` replaced),
    authorize with *decide(decision) -> None (accept) | code (reject)*, and
    pump the sans-IO listener and connection with select() until the
    caller exits and the connection is over, or *seconds* pass.  With
    *lose_every*, every n-th first transmission of a data packet is
    "lost" on the way in.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    testcase.addCleanup(sock.close)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    ids = itertools.count(0x1000)
    listener = Listener(os.urandom(16), lambda: next(ids))
    argv = [a.replace("PORT", str(port)) for a in argv]
    proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    testcase.addCleanup(_reap, proc)
    if stdin is not None and feeder is not None:
        stdin.close()
    run = _Run()
    demux = TSDemuxer()
    start = time.monotonic()
    next_tick = start
    data_seen = 0
    caller_done_at: Optional[float] = None
    while time.monotonic() - start < seconds:
        now = time.monotonic()
        readable, _, _ = select.select([sock], [], [], max(0.0, min(next_tick - now, 0.01)))
        now = time.monotonic()
        if readable:
            datagram, addr = sock.recvfrom(65536)
            if P.peek_dst(datagram) == 0:
                decision = listener.handle_handshake(datagram, addr, now)
                run.decisions.append(decision)
                if isinstance(decision, NeedsAuthorization):
                    code = decide(decision) if decide else None
                    if code is None:
                        reply, run.conn = listener.accept(decision, now)
                    else:
                        reply = listener.reject(decision, code, now)
                    sock.sendto(reply, addr)
                elif decision.data:
                    sock.sendto(decision.data, addr)
            else:
                conn = listener.lookup(P.peek_dst(datagram), addr)
                if conn is not None:
                    if lose_every and not datagram[0] & 0x80 and not datagram[4] & 0x04:
                        data_seen += 1
                        # never the very last packet: nothing would follow to
                        # reveal the gap (libsrt cannot recover that either)
                        if data_seen % lose_every == lose_every // 2:
                            run.dropped_on_purpose += 1
                            continue
                    for event in conn.receive(datagram, now):
                        _handle(run, demux, event)
                    for d in conn.data_to_send():
                        sock.sendto(d, conn.peer)
        if now >= next_tick:
            next_tick = now + 0.01
            conn = run.conn
            if conn is not None and not conn.closed:
                for d in conn.tick(now):
                    sock.sendto(d, conn.peer)
                for event in conn.take_events():
                    _handle(run, demux, event)
        finished = proc.poll() is not None
        if feeder is not None and feeder.poll() is not None and caller_done_at is None:
            caller_done_at = now
        if (
            feeder is not None
            and caller_done_at is not None
            and now - caller_done_at > 1.5
            and run.conn is not None
            and not run.conn.closed
        ):
            # srt-live-transmit keeps the connection open after its input
            # ends: close it from our side.
            sock.sendto(run.conn.close(now), run.conn.peer)
        if finished and (run.conn is None or run.conn.closed):
            break
        if run.conn is not None and run.conn.closed and proc.poll() is None:
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
            break
    run.events += demux.flush()
    run.demux = demux
    try:
        _, err = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    run.stderr = err.decode("utf-8", "replace")
    run.returncode = proc.returncode
    run.listener = listener
    return run


def _handle(run, demux, event):
    if isinstance(event, Payload):
        run.received += event.data
        run.events += demux.feed(event.data)
    else:
        run.closed.append(event)


def _reap(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    for f in (proc.stderr, proc.stdin):
        if f is not None:
            f.close()


def _token_gate(decision):
    if decision.error is not None:
        return decision.error.code
    return None if decision.request.token == "GOOD" else REJX_UNAUTHORIZED


class RealCallerTests(SynchronousTestCase):
    """
    ffmpeg 5.1 and srt-live-transmit 1.5 (libsrt 1.5.1) as callers against
    the sans-IO listener on a real UDP socket (select, no threads).  Each
    run takes a few seconds (the clip is sent at its real-time rate).
    """

    def setUp(self):
        self.ffmpeg = require("ffmpeg")
        self.clip = ts_clip()

    def ffmpeg_argv(self, query):
        # linger: libsrt's live mode closes at once by default, discarding
        # what the sender still holds, so the last packets sometimes never
        # left.  With it, srt_close() waits until we acknowledged everything.
        return [self.ffmpeg, "-hide_banner", "-nostdin", "-re", "-i", self.clip, "-c", "copy",
                "-f", "mpegts", "srt://127.0.0.1:PORT?linger=3&" + query]  # fmt: skip

    def assertWholeStream(self, run, truncated_pes=0):
        videos = [e for e in run.events if isinstance(e, Video)]
        self.assertEqual(len(videos), 75)
        self.assertEqual([i for i, v in enumerate(videos) if v.keyframe], [0, 25, 50])
        self.assertEqual([v.timestamp_ms for v in videos], [40 * i for i in range(75)])
        self.assertEqual(run.demux.stats["cc_errors"], 0)
        self.assertEqual(run.demux.stats["pes_dropped"], truncated_pes)

    def test_ffmpegAccepted(self):
        run = serve(self, self.ffmpeg_argv("streamid=App/s1,token=GOOD"), decide=_token_gate)
        self.assertEqual(run.returncode, 0, run.stderr[-2000:])
        auth = [d for d in run.decisions if isinstance(d, NeedsAuthorization)]
        self.assertEqual(len(auth), 1)
        self.assertEqual(auth[0].request, StreamRequest("App", "s1", "GOOD", "publish", {}))
        self.assertEqual(run.closed, [Closed("peer shutdown")])
        self.assertWholeStream(run)
        with open(self.clip, "rb") as f:
            self.assertEqual(bytes(run.received), f.read())
        with open(self.clip, "rb") as f:
            self.assertEqual(bytes(run.received), f.read())  # -c copy: the same bytes
        stats = run.conn.stats()
        self.assertEqual(stats.bytes_delivered, len(run.received))
        self.assertEqual(stats.packets_lost, 0)
        self.assertGreater(stats.acks_sent, 10)
        self.assertLess(stats.rtt_us, 50_000)  # measured from real ACKACKs
        self.assertEqual(len(run.received) % 1316, 0)

    def test_ffmpegRecoversLoss(self):
        """
        Every 10th data packet is lost once: NAKs bring every one back, and
        the byte stream is whole.
        """
        run = serve(self, self.ffmpeg_argv("streamid=App/s1,token=GOOD"), decide=_token_gate, lose_every=10)
        self.assertEqual(run.returncode, 0, run.stderr[-2000:])
        self.assertGreater(run.dropped_on_purpose, 5)
        stats = run.conn.stats()
        self.assertEqual(stats.packets_lost, run.dropped_on_purpose)
        self.assertGreaterEqual(stats.packets_retransmitted, run.dropped_on_purpose)
        self.assertEqual(stats.packets_dropped, 0)
        self.assertGreaterEqual(stats.naks_sent, run.dropped_on_purpose)
        self.assertEqual(run.closed, [Closed("peer shutdown")])
        self.assertWholeStream(run)
        with open(self.clip, "rb") as f:
            self.assertEqual(bytes(run.received), f.read())

    def test_ffmpegRejected(self):
        run = serve(self, self.ffmpeg_argv("streamid=App/s1,token=BAD"), decide=_token_gate, seconds=15)
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("REJECT", run.stderr)
        self.assertIsNone(run.conn)
        rejected = [d for d in run.decisions if isinstance(d, NeedsAuthorization)]
        self.assertEqual(len(rejected), 1)

    def test_ffmpegBadStreamId(self):
        run = serve(self, self.ffmpeg_argv("streamid=nonsense"), decide=_token_gate, seconds=15)
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("REJECT", run.stderr)
        self.assertIsNone(run.conn)

    def test_ffmpegEncryptionRejected(self):
        run = serve(self, self.ffmpeg_argv("streamid=App/s1,token=GOOD&passphrase=0123456789abcdef"),
                    decide=_token_gate, seconds=15)  # fmt: skip
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("REJECT", run.stderr)
        refused = [d for d in run.decisions if isinstance(d, Rejected)]
        self.assertEqual([d.code for d in refused], [REJ_UNSECURE])

    def slt(self, token):
        slt = require("srt-live-transmit")
        feeder = subprocess.Popen(
            [self.ffmpeg, "-nostdin", "-v", "error", "-re", "-i", self.clip, "-c", "copy", "-f", "mpegts", "-"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.addCleanup(_reap, feeder)
        argv = [slt, "-a:no", "file://con", f"srt://127.0.0.1:PORT?streamid=App/s1,token={token}"]
        return serve(self, argv, stdin=feeder.stdout, feeder=feeder, decide=_token_gate)

    def test_srtLiveTransmitAccepted(self):
        run = self.slt("GOOD")
        # 1456-byte payloads, not a multiple of 188: the demuxer resyncs nothing
        self.assertEqual(len(run.received) % 1456, 0)
        self.assertGreater(len(run.received), 100_000)
        # it never sends the last partial 1456-byte block of its input, so
        # the last audio PES is cut short
        self.assertWholeStream(run, truncated_pes=1)
        with open(self.clip, "rb") as f:
            self.assertEqual(bytes(run.received), f.read()[: len(run.received)])
        self.assertEqual(run.demux.stats["resyncs"], 0)
        # it kept the connection open after its input ended; our SHUTDOWN ended it
        self.assertIn("disconnected", run.stderr)
        self.assertTrue(run.conn.closed)

    def test_srtLiveTransmitRejected(self):
        run = self.slt("BAD")
        # srt-live-transmit exits 0 when rejected: only its stderr tells
        self.assertIn("REJECT", run.stderr)
        self.assertIsNone(run.conn)
        self.assertIn(run.returncode, (0, 1, -9), run.stderr[-2000:])
