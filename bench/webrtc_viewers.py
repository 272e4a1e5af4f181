"""
WebRTC viewers benchmark: one 1 Mbps H.264 stream published over RTMP
(ffmpeg -re, a testsrc2 640x360 clip made once and cached in bench/out/),
played by N aiortc viewers through the WebSocket signalling (or WHEP).

    python bench/webrtc_viewers.py [--viewers 50] [--seconds 15] [--baseline 8]
                                   [--light] [--audio] [--whep | --compare]

``--whep``: the viewers play over WHEP (``POST /LiveApp/whep/s1``) instead;
``--compare``: N WebSocket viewers, then N WHEP viewers of the same stream in
the same run, and the ratio of their CPU per viewer (WHEP over WebSocket),
with the WHEP offer -> 201 latency (median, p95).

The tokengate server runs under ``twistd -r asyncio`` (WebRTC needs it),
pinned to CPU 0 when ``taskset`` exists; this load generator runs on CPU 1.
The viewers do not decode: their receivers use the server's own
encoded-frame passthrough (tokengate.webrtc.aiortcpatches), so each one only counts
the H.264 access units it gets.  They decline the Opus audio track (the
clip has AAC, which the server would transcode once and send to each
viewer) unless ``--audio`` is given.  With ``--light`` they only count RTP
frames (no jitter buffer, no NACKs), so that one generator core can hold
150 and more of them.

Measured, in the same run: the server's CPU with the publisher and no
viewers (the baseline), then with N viewers; the server's CPU-seconds per
viewer-second (above the baseline), its ratio to the baseline's CPU per
second, how many viewers one core would carry, and the time from sending
``play`` to the first received video frame (median, p95).  Bounded in time;
stops by itself and cleans up its processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from urllib.parse import urljoin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)
from twisted.internet import asyncioreactor  # noqa: E402

asyncioreactor.install(loop)

from autobahn.twisted.websocket import (  # noqa: E402
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from twisted.internet import defer, reactor, task  # noqa: E402

from bench import common  # noqa: E402



def make_clip(seconds: int = 30) -> str:
    """
    testsrc2 640x360 at 30 fps, H.264 ~1 Mbps CBR, no B-frames, 2 s GOP,
    and 64 kb/s AAC; made once.
    """
    return common.make_cbr_clip("clip-1mbps-360p-{}s.flv".format(seconds), seconds, "640x360",
                                1000, "veryfast", 64, bframes=0)


def cpu_seconds(pid: int) -> float:
    return common.cpu_seconds([pid])


class Client(WebSocketClientProtocol):
    def onOpen(self):
        self.factory.opened.callback(self)

    def onMessage(self, payload, isBinary):
        msg = json.loads(payload)
        cmd = msg.get("command")
        if cmd in ("takeConfiguration", "error") and not self.factory.offer.called:
            self.factory.offer.callback(msg)

    def send(self, **msg):
        self.sendMessage(json.dumps(msg).encode())


class Viewer:
    def __init__(self, url: str, streamId: str, token: str, audio: bool = False,
                 light: bool = False, whep: bool = False) -> None:
        self.whep = whep
        #: WHEP: seconds from the POST of the offer to its 201, and the session
        self.answered: float | None = None
        self.location: str | None = None
        self.audio_on = audio
        self.light = light
        self.started = 0.0
        self.url = url
        self.streamId = streamId
        self.token = token
        self.frames = 0
        self.audio = 0
        self.first: float | None = None
        self.error: object = None
        self.pc = None
        self.ws = None
        self.tasks: list = []

    async def consume(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            if track.kind == "video":
                self.frames += 1
                if self.first is None:
                    self.first = time.monotonic() - self.started
            else:
                self.audio += 1

    async def startWhep(self) -> None:
        """
        Play over WHEP: offer to receive, POST it, take the answer.
        """
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        from tokengate.webrtc.aiortcpatches import passthrough

        self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        for kind in ("video", "audio"):
            t = pc.addTransceiver(kind, direction="recvonly" if kind == "video" or self.audio_on
                                  else "inactive")
            passthrough(t.receiver)  # count access units, do not decode
            if self.light:
                t.receiver._bench_viewer = self
        pc.on("track", lambda tr: self.tasks.append(asyncio.ensure_future(self.consume(tr))))
        self.started = time.monotonic()
        offer = await defer.Deferred.fromFuture(asyncio.ensure_future(pc.createOffer()))
        await defer.Deferred.fromFuture(asyncio.ensure_future(pc.setLocalDescription(offer)))
        posted = time.monotonic()
        status, location, body = await defer.Deferred.fromFuture(asyncio.ensure_future(
            asyncio.to_thread(_post, self.url, pc.localDescription.sdp, self.token)))
        if status != 201:
            self.error = {"status": status, "body": body[:200]}
            return
        self.answered = time.monotonic() - posted
        self.location = location
        await defer.Deferred.fromFuture(asyncio.ensure_future(
            pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))))

    async def start(self) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        from tokengate.webrtc.aiortcpatches import passthrough

        if self.whep:
            return await self.startWhep()
        f = WebSocketClientFactory(self.url)
        f.protocol = Client
        f.opened = defer.Deferred()
        f.offer = defer.Deferred()
        connectWS(f)
        self.ws = await f.opened
        self.started = time.monotonic()
        self.ws.send(command="play", streamId=self.streamId, token=self.token)
        m = await f.offer
        if m["command"] == "error":
            self.error = m
            return
        self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.on("track", lambda tr: self.tasks.append(asyncio.ensure_future(self.consume(tr))))
        await defer.Deferred.fromFuture(asyncio.ensure_future(
            pc.setRemoteDescription(RTCSessionDescription(sdp=m["sdp"], type="offer"))))
        for t in pc.getTransceivers():
            passthrough(t.receiver)  # count access units, do not decode
            if self.light:
                t.receiver._bench_viewer = self  # count RTP frames only (see light_receivers)
            if t.kind == "audio" and not self.audio_on:
                t.direction = "inactive"  # decline the Opus track
        answer = await defer.Deferred.fromFuture(asyncio.ensure_future(pc.createAnswer()))
        await defer.Deferred.fromFuture(asyncio.ensure_future(pc.setLocalDescription(answer)))
        self.ws.send(command="takeConfiguration", streamId=self.streamId, type="answer",
                     sdp=pc.localDescription.sdp)

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        if self.pc is not None:
            await defer.Deferred.fromFuture(asyncio.ensure_future(self.pc.close()))
        if self.ws is not None:
            self.ws.sendClose()
        if self.location is not None:
            await defer.Deferred.fromFuture(asyncio.ensure_future(
                asyncio.to_thread(_delete, urljoin(self.url, self.location))))


def _post(url: str, sdp: str, token: str) -> tuple[int, str, str]:
    headers = {"content-type": "application/sdp"}
    if token:
        headers["authorization"] = "Bearer " + token
    req = urllib.request.Request(url, data=sdp.encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers.get("location", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, "", e.read().decode("utf-8", "replace")


def _delete(url: str) -> None:
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=10).read()
    except OSError:
        pass


def light_receivers() -> None:
    """
    For receivers marked with C{_bench_viewer}: count the RTP frames (video:
    packets with the marker bit, the last of a frame; audio: packets) and
    drop the packets, skipping aiortc's jitter buffer, depacketizer, NACKs
    and receiver reports (so a lossy generator causes no retransmissions).
    """
    from aiortc.rtcrtpreceiver import RTCRtpReceiver

    original = RTCRtpReceiver._handle_rtp_packet

    async def handle(self, packet, arrival_time_ms):
        viewer = getattr(self, "_bench_viewer", None)
        if viewer is None:
            return await original(self, packet, arrival_time_ms)
        if self._track is None or self._track.kind == "video":
            if packet.marker:
                viewer.frames += 1
                if viewer.first is None:
                    viewer.first = time.monotonic() - viewer.started
        else:
            viewer.audio += 1

    RTCRtpReceiver._handle_rtp_packet = handle


def q(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


async def run(args, base: str, ws: str, pid: int) -> dict:
    from tokengate.webrtc.aiortcpatches import installPassthrough

    installPassthrough()
    if args.light:
        light_receivers()
    await task.deferLater(reactor, 3.0)  # the publisher settles
    c0, t0 = cpu_seconds(pid), time.monotonic()
    await task.deferLater(reactor, args.baseline)
    c1, t1 = cpu_seconds(pid), time.monotonic()
    baseline = (c1 - c0) / (t1 - t0)
    whep = base + "/LiveApp/whep/s1"
    if args.compare:
        result = await measure(args, ws, pid, baseline, False)
        await task.deferLater(reactor, 3.0)  # the first viewers' peers close
        result["whep"] = await measure(args, whep, pid, baseline, True)
        perWs, perWhep = result["cpu_per_viewer_second"], result["whep"]["cpu_per_viewer_second"]
        result["whep_over_websocket"] = perWhep / perWs if perWs > 0 else None
        return result
    return await measure(args, whep if args.whep else ws, pid, baseline, args.whep)


async def measure(args, url: str, pid: int, baseline: float, whep: bool) -> dict:
    viewers = [Viewer(url, "s1", "", args.audio, args.light, whep) for _ in range(args.viewers)]
    # Connect in batches of 10 per 0.5 s (ICE, DTLS handshakes are bursts).
    starts = []
    for i in range(0, len(viewers), 10):
        for v in viewers[i:i + 10]:
            starts.append(defer.ensureDeferred(v.start()))
        await task.deferLater(reactor, 0.5)
    await defer.DeferredList(starts, consumeErrors=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(v.first is None and v.error is None
                                              for v in viewers):
        await task.deferLater(reactor, 0.2)
    await task.deferLater(reactor, 2.0)
    f0 = sum(v.frames for v in viewers)
    c2, t2, g2 = cpu_seconds(pid), time.monotonic(), cpu_seconds(os.getpid())
    await task.deferLater(reactor, args.seconds)
    c3, t3, g3 = cpu_seconds(pid), time.monotonic(), cpu_seconds(os.getpid())
    f1 = sum(v.frames for v in viewers)
    a1 = sum(v.audio for v in viewers)
    await defer.DeferredList([defer.ensureDeferred(v.stop()) for v in viewers],
                             consumeErrors=True)
    playing = [v for v in viewers if v.first is not None]
    loaded = (c3 - c2) / (t3 - t2)
    perViewer = (loaded - baseline) / max(1, len(playing))
    firsts = [v.first for v in playing]
    answers = [v.answered for v in viewers if v.answered is not None]
    return {
        "signalling": "whep" if whep else "websocket",
        "viewers": len(viewers),
        "playing": len(playing),
        "errors": [v.error for v in viewers if v.error is not None][:3],
        "baseline_cpu_per_second": baseline,
        "loaded_cpu_per_second": loaded,
        "cpu_per_viewer_second": perViewer,
        "ratio_viewer_to_baseline": perViewer / baseline if baseline > 0 else None,
        "viewers_per_core": int((1 - baseline) / perViewer) if perViewer > 0 else None,
        "fps_per_viewer": (f1 - f0) / (t3 - t2) / max(1, len(playing)),
        "audio_packets_received": a1,
        "generator_cpu_per_second": (g3 - g2) / (t3 - t2),
        "first_frame_median": statistics.median(firsts) if firsts else None,
        "first_frame_p95": q(firsts, 0.95) if firsts else None,
        "offer_to_201_median": statistics.median(answers) if answers else None,
        "offer_to_201_p95": q(answers, 0.95) if answers else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--baseline", type=float, default=8)
    parser.add_argument("--light", action="store_true",
                        help="viewers count RTP frames only: no jitter buffer, no NACKs (for "
                             "more viewers than aiortc receivers fit on one generator core)")
    parser.add_argument("--audio", action="store_true",
                        help="viewers accept the Opus track too (default: video only)")
    parser.add_argument("--whep", action="store_true",
                        help="viewers play over WHEP instead of the WebSocket signalling")
    parser.add_argument("--compare", action="store_true",
                        help="WebSocket viewers, then as many WHEP viewers, in the same run")
    args = parser.parse_args()
    clip = make_clip()
    taskset = shutil.which("taskset")
    if taskset:
        os.sched_setaffinity(0, {1 % os.cpu_count()})
    tmp = tempfile.mkdtemp()
    server = common.Tokengate(tmp, asyncio=True)
    http, rtmp, base = server.http, server.rtmp, server.base
    pub = None
    result: dict = {}
    try:
        pub = subprocess.Popen(["ffmpeg", "-v", "error", "-nostdin", "-re", "-stream_loop", "-1",
                                "-i", clip, "-c", "copy", "-f", "flv",
                                "rtmp://127.0.0.1:{}/LiveApp/s1".format(rtmp)])
        box: list = []

        def go():
            d = defer.ensureDeferred(run(args, base, "ws://127.0.0.1:{}/LiveApp/websocket".format(
                http), server.pid))
            d.addBoth(lambda r: (box.append(r), reactor.stop()))
            reactor.callLater(args.baseline + (args.seconds + 120) * (2 if args.compare else 1),
                              lambda: box or (box.append(RuntimeError("timed out")),
                                              reactor.stop()))

        reactor.callWhenRunning(go)
        reactor.run(installSignalHandlers=False)
        result = box[0]
        if not isinstance(result, dict):
            raise SystemExit("benchmark failed: {}".format(
                result.getTraceback() if hasattr(result, "getTraceback") else result))
    finally:
        if pub is not None:
            pub.terminate()
            pub.wait(10)
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))
    report(result, args)
    if args.compare:
        report(result["whep"], args)
        ratio = result["whep_over_websocket"]
        if ratio is not None:
            print("WHEP viewers cost {:.2f}x the CPU of WebSocket-signalled viewers "
                  "(target within 10 %)".format(ratio))


def report(result: dict, args) -> None:
    print("{} WebRTC viewers over {}{} of one 1 Mbps H.264 stream{} ({} playing, {:.1f} fps "
          "each):".format(result["viewers"], result["signalling"],
                          " (light)" if args.light else "", " + Opus" if args.audio else "",
                          result["playing"], result["fps_per_viewer"]))
    if result["generator_cpu_per_second"] > 0.9:
        print("  warning: the load generator used {:.0%} of its core; the viewers may lose "
              "packets (fewer fps, retransmissions)".format(result["generator_cpu_per_second"]))
    print("  server CPU, publisher only: {:.1%} of a core; with viewers: {:.1%}".format(
        result["baseline_cpu_per_second"], result["loaded_cpu_per_second"]))
    print("  CPU-seconds per viewer-second: {:.5f} ({:.2f}x the publish-only baseline's "
          "CPU per second)".format(result["cpu_per_viewer_second"],
                                   result["ratio_viewer_to_baseline"] or 0))
    print("  one core would carry about {} viewers (target >= 100)".format(
        result["viewers_per_core"]))
    if result["first_frame_median"] is not None:
        print("  play -> first video frame: median {:.2f} s, p95 {:.2f} s".format(
            result["first_frame_median"], result["first_frame_p95"]))
    if result["offer_to_201_median"] is not None:
        print("  WHEP offer -> 201: median {:.3f} s, p95 {:.3f} s".format(
            result["offer_to_201_median"], result["offer_to_201_p95"]))


if __name__ == "__main__":
    main()
