"""
SRT ingest benchmark, against one tokengate server started here:

1. N concurrent 2 Mbps SRT publishers (a light Python SRT caller replaying
   pre-chunked MPEG-TS in real time, answering ACKs and NAKs), then N RTMP
   publishers of the same content (bench/rtmp_ingest.py's replaying
   client): server CPU-seconds per stream-second for each, and their ratio.
2. The packet loss at which the output stays clean: a few SRT callers
   through a lossy path (loss applied by the caller before sending, so the
   receiver must recover it with NAKs); "clean" means the server dropped no
   packet for good (``tokengate_srt_packets_total{kind="dropped"}``).

    python bench/srt_ingest.py [--publishers 100] [--seconds 15]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from twisted.internet import defer, protocol, reactor, task  # noqa: E402

from bench.common import Tokengate, cpu_seconds  # noqa: E402
from bench.rtmp_ingest import drive, make_clip, slices_of  # noqa: E402
from tokengate.srt import packets as P  # noqa: E402

PAYLOAD = 1316
TICK = 0.01


def ts_payloads(flv: str) -> tuple[list[bytes], float]:
    ts = flv[:-4] + ".ts"
    if not os.path.exists(ts):
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", flv, "-c", "copy",
                        "-bsf:v", "h264_mp4toannexb", "-f", "mpegts", ts], check=True)
    with open(ts, "rb") as f:
        data = f.read()
    duration = float(json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", ts],
        capture_output=True, text=True).stdout)["format"]["duration"])
    chunks = [data[i:i + PAYLOAD] for i in range(0, len(data), PAYLOAD)]
    return chunks, duration


class Caller(protocol.DatagramProtocol):
    """
    A minimal SRT caller (HSv5, live): handshake, paced data, ACKACK,
    retransmission on NAK.
    """

    def __init__(self, target, streamid, chunks, rate, loss=0.0, on_ready=None):
        self.target = target
        self.streamid = streamid
        self.chunks = chunks
        self.per_tick = rate * TICK  # packets per tick (fractional)
        self.loss = loss
        self.random = random.Random(hash(streamid) & 0xFFFF)
        self.sid = random.getrandbits(30) or 1
        self.isn = random.getrandbits(30)
        self.peer = 0
        self.seq = self.isn
        self.sent: dict[int, bytes] = {}
        self.index = random.randrange(len(chunks) // 4)
        self.credit = 0.0
        self.start = time.monotonic()
        self.loop = None
        self.ready = False
        self.rejected = None
        self.on_ready = on_ready

    def ts(self) -> int:
        return int((time.monotonic() - self.start) * 1e6) & 0xFFFFFFFF

    def startProtocol(self):
        self.transport.connect(*self.target)
        self.send(P.Handshake(4, 0, 2, self.isn, 1500, 8192, P.URQ_INDUCTION, self.sid, 0,
                              timestamp=self.ts(), dst=0).encode())
        self.hsloop = task.LoopingCall(self.retryHandshake)
        self.hsloop.start(0.25, now=False)
        self.last_hs = None

    def retryHandshake(self):
        if self.ready or self.rejected is not None:
            self.hsloop.stop()
        elif self.last_hs is not None:
            self.send(self.last_hs)

    def send(self, data):
        try:
            self.transport.write(data)
        except OSError:
            pass

    def datagramReceived(self, data, addr):
        try:
            pkt = P.decode_packet(data)
        except Exception:
            return
        if isinstance(pkt, P.Handshake):
            if pkt.reqtype == P.URQ_INDUCTION and not self.ready:
                hsreq = P.HandshakeExtension(P.EXT_HSREQ, P.HSReq(
                    P.SRT_VERSION, 0xBF, 120, 0).encode())
                sid = P.HandshakeExtension(P.EXT_SID, P.encode_stream_id(self.streamid))
                self.last_hs = P.Handshake(5, 0, P.HS_EXT_HSREQ | P.HS_EXT_CONFIG, self.isn, 1500,
                                           8192, P.URQ_CONCLUSION, self.sid, pkt.cookie,
                                           extensions=(hsreq, sid), timestamp=self.ts(),
                                           dst=0).encode()
                self.send(self.last_hs)
            elif pkt.reqtype == P.URQ_CONCLUSION and not self.ready:
                self.ready = True
                self.peer = pkt.socket_id
                self.loop = task.LoopingCall(self.tick)
                self.loop.start(TICK, now=False)
                if self.on_ready:
                    self.on_ready(self)
            elif pkt.reqtype >= P.URQ_FAILURE_TYPES:
                self.rejected = pkt.reqtype - P.URQ_FAILURE_TYPES
        elif isinstance(pkt, P.Ack):
            if pkt.ack_number:
                self.send(P.AckAck(pkt.ack_number, timestamp=self.ts(), dst=self.peer).encode())
            for s in [s for s in self.sent if P.seq_cmp(s, pkt.last_ack_seq) < 0]:
                del self.sent[s]
        elif isinstance(pkt, P.Nak):
            for first, last in pkt.ranges:
                s = first
                for _ in range(P.seq_diff(last, first) + 1):
                    payload = self.sent.get(s)
                    if payload is not None:
                        self.send(P.DataPacket(s, 1, payload, self.ts(), self.peer,
                                               retransmitted=True).encode())
                    s = P.seq_add(s, 1)

    def tick(self):
        self.credit += self.per_tick
        while self.credit >= 1:
            self.credit -= 1
            payload = self.chunks[self.index % len(self.chunks)]
            self.index += 1
            seq = self.seq
            self.seq = P.seq_add(seq, 1)
            self.sent[seq] = payload
            if len(self.sent) > 4096:
                self.sent.pop(next(iter(self.sent)))
            if self.loss and self.random.random() < self.loss:
                continue  # lost on the way
            self.send(P.DataPacket(seq, 1, payload, self.ts(), self.peer).encode())

    def stop(self):
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        if self.ready:
            self.send(P.Shutdown(timestamp=self.ts(), dst=self.peer).encode())


async def srt_drive(port, names, chunks, rate, pids, seconds, loss=0.0):
    ready = defer.Deferred()
    callers = []
    count = [0]

    def on_ready(c):
        count[0] += 1
        if count[0] == len(names) and not ready.called:
            ready.callback(None)

    for i, name in enumerate(names):
        c = Caller(("127.0.0.1", port), name, chunks, rate, loss, on_ready)
        reactor.listenUDP(0, c, interface="127.0.0.1")
        callers.append(c)
        if i % 20 == 19:
            await task.deferLater(reactor, 0.05)
    try:
        await ready.addTimeout(30, reactor)
    except defer.TimeoutError:
        rejected = [c.rejected for c in callers if c.rejected]
        raise SystemExit("only {} of {} SRT callers connected (rejections {})".format(
            count[0], len(names), rejected[:5]))
    await task.deferLater(reactor, 3)
    c0, t0 = cpu_seconds(pids), time.monotonic()
    await task.deferLater(reactor, seconds)
    c1, t1 = cpu_seconds(pids), time.monotonic()
    for c in callers:
        c.stop()
        c.transport.stopListening()
    await task.deferLater(reactor, 1)
    return (c1 - c0) / ((t1 - t0) * len(names)), (c1 - c0) / (t1 - t0)


def metric(base, name, labels):
    text = urllib.request.urlopen(base + "/metrics").read().decode()
    m = re.search(re.escape(name) + r"\{" + labels + r"\} ([0-9.e+]+)", text)
    return float(m.group(1)) if m else 0.0


def run(coro):
    box: list = []
    defer.Deferred.fromCoroutine(coro).addBoth(box.append)
    while not box:
        reactor.iterate(0.005)
    if hasattr(box[0], "raiseException"):
        box[0].raiseException()
    return box[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--publishers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    if shutil.which("taskset"):
        os.sched_setaffinity(0, {1})
    flv = make_clip(40)
    chunks, duration = ts_payloads(flv)
    rate = len(chunks) / duration
    print("clip: {:.2f} Mbps of MPEG-TS, {:.0f} packets/s".format(
        len(chunks) * PAYLOAD * 8 / duration / 1e6, rate))
    slices, _ = slices_of(flv)
    tmp = tempfile.mkdtemp()
    tg = Tokengate(tmp, srt=True)
    base, rtmp, srt = tg.base, tg.rtmp, tg.srt
    reactor.startRunning(installSignalHandlers=False)
    try:
        # measure ingest alone (no HLS/DASH packaging), the same for both
        tg.settings(hlsMuxingEnabled=False)
        n = args.publishers
        srt_cpu, srt_core = run(srt_drive(srt, ["LiveApp/srt{}".format(i) for i in range(n)],
                                          chunks, rate, [tg.pid], args.seconds))
        time.sleep(7)  # let the SRT streams time out and end
        rtmp_result = run(drive(rtmp, ["LiveApp/rtmp{}".format(i) for i in range(n)], [],
                                slices, lambda: [tg.pid], args.seconds))
        losses = []
        for loss in (0.0, 0.01, 0.02, 0.05, 0.10, 0.20):
            before = metric(base, "tokengate_srt_packets_total", 'kind="dropped"')
            run(srt_drive(srt, ["LiveApp/loss{}_{}".format(int(loss * 100), i) for i in range(4)],
                          chunks, rate, [tg.pid], 6, loss))
            dropped = metric(base, "tokengate_srt_packets_total", 'kind="dropped"') - before
            losses.append((loss, dropped))
            time.sleep(6)
    finally:
        tg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print("{} publishers at 2 Mbps:".format(n))
    print("  SRT  CPU per stream-second {:.5f} s ({:.0%} of a core)".format(srt_cpu, srt_core))
    print("  RTMP CPU per stream-second {:.5f} s ({:.0%} of a core)".format(
        rtmp_result["cpu_per_stream_second"], rtmp_result["cpu_fraction_of_core"]))
    print("  ratio SRT / RTMP: {:.2f}".format(srt_cpu / rtmp_result["cpu_per_stream_second"]))
    print("  SRT publishers one core could carry at this cost: {:.0f}".format(1 / srt_cpu))
    print("loss -> packets dropped for good by the server (4 callers, 6 s):")
    for loss, dropped in losses:
        print("  {:4.0%}: {:.0f}{}".format(loss, dropped, "  (clean)" if dropped == 0 else ""))


if __name__ == "__main__":
    main()
