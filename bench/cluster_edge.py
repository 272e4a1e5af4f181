"""
Edge pull benchmark: one origin and two edges (three ``twistd tokengate``
nodes on one redis-server, loopback), one 2 Mbps RTMP publisher at the
origin, RTMP viewers (``ffmpeg -c copy``, no decoding) spread over the
edges.

    python bench/cluster_edge.py [--viewers 8] [--seconds 15]

Measured in one run:

 1. the origin's CPU (its process's CPU-seconds per second) with one viewer
    per edge, then with N viewers per edge: an edge pulls each stream once,
    so the origin serves one feed per edge whatever the viewers; the ratio
    N/1 should stay near 1.  For contrast, the origin's CPU with 2N viewers
    playing from it directly (the cost edge pull saves it);
 2. the latency an edge adds: a viewer at the origin and a viewer at an
    edge read the same stream at once, each frame's arrival time is taken
    at both (``ffmpeg -c copy -f flv`` to a pipe, flushed per packet,
    frames matched by their bytes): the median and p95 of edge minus
    direct, which should stay under 0.5 s.

Bounded in time; stops by itself and cleans up its processes.  Needs ffmpeg
and redis-server.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import Tokengate, cpu_seconds, free_port, make_cbr_clip  # noqa: E402
from tokengate.cluster.feed import FeedError, FeedParser, FeedVideo  # noqa: E402

SECRET = "b" * 40


def ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        raise SystemExit("ffmpeg is needed")
    return path


def start_redis(tmp: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is needed")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tmp],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    import socket

    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, "redis://127.0.0.1:{}/0".format(port)
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("redis-server did not start")


def cpu_rate(pid: int, seconds: float) -> float:
    """
    The process's CPU-seconds per second over the next C{seconds}.
    """
    before, t0 = cpu_seconds([pid]), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds([pid]) - before) / (time.monotonic() - t0)


class Viewers:
    """
    RTMP players that copy the stream to nowhere.
    """

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def add(self, node: Tokengate, n: int) -> None:
        for _ in range(n):
            self.procs.append(subprocess.Popen(
                [ffmpeg(), "-nostdin", "-v", "error", "-i",
                 "rtmp://127.0.0.1:{}/LiveApp/s1".format(node.rtmp), "-c", "copy", "-f", "null",
                 "-"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def alive(self) -> int:
        return sum(1 for p in self.procs if p.poll() is None)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait(10)
        self.procs = []


class Arrivals(threading.Thread):
    """
    One RTMP player whose video frames' arrival times are recorded, by the
    frame's digest.
    """

    def __init__(self, node: Tokengate, seconds: float) -> None:
        super().__init__(daemon=True)
        self.proc = subprocess.Popen(
            [ffmpeg(), "-nostdin", "-v", "error", "-i",
             "rtmp://127.0.0.1:{}/LiveApp/s1".format(node.rtmp), "-t", str(seconds),
             "-c", "copy", "-flush_packets", "1", "-f", "flv", "pipe:1"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.frames: dict[bytes, list[float]] = {}

    def run(self) -> None:
        parser = FeedParser()
        assert self.proc.stdout is not None
        while True:
            data = self.proc.stdout.read1(65536)  # type: ignore[attr-defined]
            if not data:
                return
            now = time.monotonic()
            try:
                events = parser.receive(data)
            except FeedError:
                return
            for event in events:
                if type(event) is FeedVideo and len(event.body) > 5:
                    # the tag's first 5 bytes (type, composition time) may
                    # differ between two remuxes of one frame
                    digest = hashlib.blake2b(event.body[5:], digest_size=12).digest()
                    self.frames.setdefault(digest, []).append(now)


def added_latency(direct: Arrivals, edge: Arrivals) -> list[float]:
    """
    For each frame both saw: edge arrival minus the nearest direct arrival
    of the same bytes (the clip repeats: the nearest within 2 s).
    """
    deltas = []
    for digest, times in edge.frames.items():
        seen = direct.frames.get(digest)
        if not seen:
            continue
        for t in times:
            nearest = min(seen, key=lambda s: abs(s - t))
            if abs(nearest - t) < 2.0:
                deltas.append(t - nearest)
    return deltas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", type=int, default=8, help="viewers per edge")
    parser.add_argument("--seconds", type=float, default=15.0, help="each measurement")
    args = parser.parse_args()

    clip = make_cbr_clip("clip-2mbps-20s.flv", 20, "1280x720", 1870, "ultrafast", 128)
    tmp = tempfile.mkdtemp(prefix="tg-bench-edge-")
    redis, url = start_redis(tmp)
    nodes: list[Tokengate] = []
    viewers = Viewers()
    publisher = None
    try:
        for name in ("origin", "edge1", "edge2"):
            os.makedirs(os.path.join(tmp, name))
            nodes.append(Tokengate(os.path.join(tmp, name), "--store", url,
                                   "--cluster-secret", SECRET, "--session-secret", SECRET))
        origin, edge1, edge2 = nodes
        time.sleep(1.0)
        publisher = subprocess.Popen(
            [ffmpeg(), "-nostdin", "-v", "error", "-re", "-stream_loop", "-1", "-i", clip,
             "-c", "copy", "-f", "flv", "rtmp://127.0.0.1:{}/LiveApp/s1".format(origin.rtmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3.0)
        baseline = cpu_rate(origin.pid, args.seconds / 2)

        viewers.add(edge1, 1)
        viewers.add(edge2, 1)
        time.sleep(3.0)
        one = cpu_rate(origin.pid, args.seconds)
        oneAlive = viewers.alive()

        viewers.add(edge1, args.viewers - 1)
        viewers.add(edge2, args.viewers - 1)
        time.sleep(3.0)
        many = cpu_rate(origin.pid, args.seconds)
        manyAlive = viewers.alive()
        viewers.stop()

        viewers.add(origin, 2 * args.viewers)
        time.sleep(3.0)
        direct = cpu_rate(origin.pid, args.seconds)
        directAlive = viewers.alive()
        viewers.stop()

        # latency: one viewer at the origin, one at an edge, at once
        d = Arrivals(origin, args.seconds + 4)
        e = Arrivals(edge1, args.seconds + 4)
        d.start()
        e.start()
        d.join(args.seconds + 30)
        e.join(args.seconds + 30)
        deltas = added_latency(d, e)

        print("origin CPU (core fraction): publisher only {:.3f}".format(baseline))
        print("  1 viewer per edge ({} alive): {:.3f}".format(oneAlive, one))
        print("  {} viewers per edge ({} alive): {:.3f}".format(args.viewers, manyAlive, many))
        print("  {} viewers at the origin directly ({} alive): {:.3f}".format(
            2 * args.viewers, directAlive, direct))
        print("ratio origin CPU, {} vs 1 viewer per edge: {:.2f} (one copy per edge: ~1)".format(
            args.viewers, many / one if one else float("nan")))
        print("ratio origin CPU, {} direct viewers vs {} behind edges: {:.2f}".format(
            2 * args.viewers, 2 * args.viewers, direct / many if many else float("nan")))
        if deltas:
            deltas.sort()
            p95 = deltas[min(len(deltas) - 1, int(len(deltas) * 0.95))]
            print("added latency through an edge over {} frames: median {:.1f} ms, p95 {:.1f} ms "
                  "(bound 500 ms)".format(len(deltas), 1000 * statistics.median(deltas),
                                          1000 * p95))
        else:
            print("added latency: no frame seen by both viewers")
    finally:
        viewers.stop()
        if publisher is not None:
            publisher.kill()
            publisher.wait(10)
        for node in nodes:
            node.stop()
        redis.kill()
        redis.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
