"""
The hub and the CMAF/HLS packager in process, per frame: the ingest
benchmark's 2 Mbps clip (its FLV tags, as RTMP delivers them) fed to N
live streams, each with a Packager (2 s segments, 0.5 s parts), on a fake
clock.  No sockets, no RTMP parsing: what packaging adds to ingest, and
deterministic enough to compare two versions of the code (run it in each
tree, alternately).

    python bench/hls_packaging.py [--streams 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from twisted.internet.task import Clock  # noqa: E402

from bench.rtmp_ingest import make_clip  # noqa: E402
from tokengate.media.flv import iter_flv_tags  # noqa: E402
from tokengate.media.hub import Hub  # noqa: E402
from tokengate.media.packager import Packager  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    with open(make_clip(40), "rb") as f:
        data = f.read()
    tags = [(t.tag_type, t.timestamp, bytes(t.data)) for t in iter_flv_tags(data)
            if t.tag_type in (8, 9)]
    best = float("inf")
    for _ in range(args.repeat):
        clock = Clock()
        clock.advance(1_800_000_000)
        hub = Hub(clock)
        streams = []
        for i in range(args.streams):
            stream = hub.publish("LiveApp", "s{}".format(i), "RTMP")
            Packager("LiveApp", "s{}".format(i), clock, segmentTarget=2.0, partTarget=0.5,
                     windowSegments=5, hls=True, dash=False).attach(stream)
            streams.append(stream)
        t0 = time.process_time()
        last = 0
        for kind, ts, body in tags:
            if ts - last >= 100:
                clock.advance((ts - last) / 1000)
                last = ts
            for stream in streams:
                if kind == 9:
                    stream.videoReceived(ts, body)
                else:
                    stream.audioReceived(ts, body)
        best = min(best, time.process_time() - t0)
    frames = len(tags) * args.streams
    print("{} streams x {} frames: {:.3f} s CPU, {:.2f} us per frame".format(
        args.streams, len(tags), best, best * 1e6 / frames))


if __name__ == "__main__":
    main()
