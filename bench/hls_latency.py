"""
LL-HLS latency, in one run against a tokengate server started here:

1. ingest → part listed: ffmpeg publishes a clip over RTMP in real time
   (``-re``); a poller follows the video media playlist with blocking
   reloads (``_HLS_msn``/``_HLS_part``) and, for each new part, measures how
   long after the wall-clock end of its media (program date-time of its
   segment plus the part durations before it) the playlist listing it
   arrived.  The part target (0.5 s by default) is the baseline: a part
   cannot be listed before its last frame arrived.
2. glass-to-glass with hls.js in low-latency mode (headless Chromium):
   how far the frame on screen is behind the wall clock, from the program
   date-time of what is playing (``tokengateState.liveLatency``).

    python bench/hls_latency.py [--seconds 20]

Targets: part listed ≤ 1 s after ingest, glass-to-glass ≤ 3 s.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import Tokengate  # noqa: E402
from bench.rtmp_ingest import make_clip  # noqa: E402


def parse_time(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def part_end_times(playlist: str) -> dict[tuple[int, int], float]:
    """
    (msn, part) -> wall-clock end of that part's media.
    """
    msn = int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", playlist).group(1))
    ends: dict[tuple[int, int], float] = {}
    pdt = None
    elapsed = 0.0
    part = 0
    for line in playlist.splitlines():
        if line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            pdt = parse_time(line.split(":", 1)[1])
            elapsed = 0.0
            part = 0
        elif line.startswith("#EXT-X-PART:") and pdt is not None:
            elapsed += float(re.search(r"DURATION=([\d.]+)", line).group(1))
            ends[(msn, part)] = pdt + elapsed
            part += 1
        elif line and not line.startswith("#"):
            msn += 1
            pdt = None
    return ends


def poll_parts(url: str, seconds: float) -> list[float]:
    latencies: list[float] = []
    seen: set[tuple[int, int]] = set()
    deadline = time.time() + seconds
    nxt = None
    while time.time() < deadline:
        target = url if nxt is None else "{}&_HLS_msn={}&_HLS_part={}".format(url, *nxt)
        with urllib.request.urlopen(target, timeout=10) as r:
            body = r.read().decode()
        arrived = time.time()
        ends = part_end_times(body)
        for key, end in ends.items():
            if key not in seen:
                seen.add(key)
                if nxt is not None:  # only parts this request waited for
                    latencies.append(arrived - end)
        hint = re.search(r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="video/(\d+)\.(\d+)\.m4s', body)
        if hint:
            nxt = (int(hint.group(1)), int(hint.group(2)))
        else:
            newest = max(ends)
            nxt = (newest[0], newest[1] + 1)
    return latencies


async def glass_to_glass(page_url: str, seconds: float) -> list[float]:
    from twisted.internet import reactor, task

    from tests import browser as chromium

    class Cleanups:
        def __init__(self) -> None:
            self.calls: list = []

        def addCleanup(self, f, *a) -> None:
            self.calls.append((f, a))

    holder = Cleanups()
    b = await chromium.launch(holder)
    try:
        page = await b.open(page_url)
        await page.wait_for("window.tokengateState && window.tokengateState.status === 'playing'", 40)
        samples = []
        end = time.time() + seconds
        while time.time() < end:
            value = await page.evaluate("window.tokengateState.liveLatency")
            if value is not None:
                samples.append(float(value))
            await task.deferLater(reactor, 0.5)
        return samples
    finally:
        await b.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--part-target", type=float, default=0.5)
    args = parser.parse_args()
    clip = make_clip(40)
    tmp = tempfile.mkdtemp()
    server = Tokengate(tmp, "--part-target", str(args.part_target))
    base, rtmp = server.base, server.rtmp
    pub = None
    try:
        pub = subprocess.Popen(["ffmpeg", "-v", "error", "-nostdin", "-re", "-stream_loop", "-1",
                                "-i", clip, "-c", "copy", "-f", "flv",
                                "rtmp://127.0.0.1:{}/LiveApp/s1".format(rtmp)])
        time.sleep(6)
        parts = poll_parts(base + "/LiveApp/streams/s1/video.m3u8?x=1", args.seconds)
        g2g: list[float] = []
        if shutil.which("chromium"):
            from twisted.internet import defer, reactor

            box: list = []
            d = defer.Deferred.fromCoroutine(glass_to_glass(
                base + "/LiveApp/play.html?id=s1&playOrder=hls", args.seconds))
            d.addBoth(box.append)
            reactor.startRunning(installSignalHandlers=False)
            while not box:
                reactor.iterate(0.05)
            if isinstance(box[0], list):
                g2g = box[0]
            else:
                print("glass-to-glass failed:", box[0])
        else:
            print("chromium not installed: glass-to-glass not measured")
    finally:
        if pub is not None:
            pub.terminate()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    def q(values: list[float], p: float) -> float:
        values = sorted(values)
        return values[min(len(values) - 1, int(p * len(values)))]

    print("part target: {:.3f} s".format(args.part_target))
    if parts:
        print("last frame of a part -> part listed, {} parts: median {:.3f} s, p95 {:.3f} s "
              "(median / part target = {:.2f}; small negatives are the publisher "
              "running a little ahead of real time)".format(
                  len(parts), statistics.median(parts), q(parts, 0.95),
                  statistics.median(parts) / args.part_target))
        print("first frame of a part -> part listed: median {:.3f} s (target <= 1 s)".format(
            statistics.median(parts) + args.part_target))
    if g2g:
        print("glass-to-glass (hls.js low-latency), {} samples: median {:.2f} s, p95 {:.2f} s "
              "(target <= 3 s)".format(len(g2g), statistics.median(g2g), q(g2g, 0.95)))


if __name__ == "__main__":
    main()
