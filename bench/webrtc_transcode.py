"""
What a VP8-only WebRTC publisher costs: tokengate transcodes its VP8 to
H.264 (tokengate.webrtc.video.Vp8ToH264: decode, libx264 veryfast
zerolatency baseline, on a worker thread).

    python bench/webrtc_transcode.py [--size 640x480] [--fps 30] [--seconds 10]

A VP8 clip (libvpx realtime, ~1 Mbps, a moving testsrc2 picture) is made
in memory first.  Measured in the same run, on this process's CPU time
(pinned to one CPU when possible): decoding the VP8 alone (the baseline:
what any server must spend to look at the picture), then the whole
transcode.  Prints the CPU-seconds per second of video for both, their
ratio, and how many such publishers one core could transcode in real
time.  Bounded: the clip is --seconds long and is run through once each.
"""

from __future__ import annotations

import argparse
import fractions
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_vp8(size: tuple[int, int], fps: int, seconds: int) -> list[tuple[bytes, int]]:
    import av

    src = av.open("testsrc2=size={}x{}:rate={}".format(size[0], size[1], fps), format="lavfi")
    enc = av.CodecContext.create("libvpx", "w")
    enc.width, enc.height = size
    enc.pix_fmt = "yuv420p"
    enc.time_base = fractions.Fraction(1, 90000)
    enc.framerate = fractions.Fraction(fps, 1)
    enc.gop_size = 2 * fps  # a PLI every 2 s, as the server asks
    enc.bit_rate = 1_000_000
    enc.options = {"deadline": "realtime", "cpu-used": "8"}
    out = []
    for i, frame in enumerate(src.decode(video=0)):
        if i >= fps * seconds:
            break
        frame = frame.reformat(format="yuv420p")
        frame.pts = i * 90000 // fps
        frame.time_base = enc.time_base
        out.extend((bytes(p), int(p.pts)) for p in enc.encode(frame))
    out.extend((bytes(p), int(p.pts)) for p in enc.encode(None))
    src.close()
    return out


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def decode_only(frames: list[tuple[bytes, int]]) -> float:
    import av

    dec = av.CodecContext.create("vp8", "r")
    start = cpu()
    n = 0
    for data, _ in frames:
        n += len(dec.decode(av.Packet(data)))
    assert n == len(frames), (n, len(frames))
    return cpu() - start


def transcode(frames: list[tuple[bytes, int]]) -> tuple[float, int]:
    import threading

    from tokengate.webrtc.video import Vp8ToH264

    done = threading.Event()
    got = []

    def deliver(data: bytes, pts: int, key: bool) -> None:
        got.append(pts)
        if len(got) == len(frames):
            done.set()

    t = Vp8ToH264(lambda f, *a: f(*a), deliver, lambda: None, maxPending=len(frames) + 1)
    start = cpu()
    for data, pts in frames:
        t.frame(data, pts)
    done.wait(600)
    used = cpu() - start
    t.close()
    return used, len(got)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="640x480")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--seconds", type=int, default=10)
    a = p.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    w, h = (int(x) for x in a.size.split("x"))
    frames = make_vp8((w, h), a.fps, a.seconds)
    seconds = len(frames) / a.fps
    base = decode_only(frames)
    used, out = transcode(frames)
    if out != len(frames):
        raise SystemExit("transcoded {} of {} frames".format(out, len(frames)))
    print("VP8 {}x{} @ {} fps, {:.0f} s, {} frames".format(w, h, a.fps, seconds, len(frames)))
    print("decode only (baseline): {:.4f} CPU-s per video second".format(base / seconds))
    print("VP8 to H.264 transcode: {:.4f} CPU-s per video second".format(used / seconds))
    print("ratio transcode/decode: {:.2f}".format(used / base))
    print("publishers one core could transcode in real time: {:.1f}".format(seconds / used))


if __name__ == "__main__":
    main()
