"""
Every core: the throughput of C{twistd tokengate --workers W} against one
process, in the same run, on the same machine, both on a Redis store (a
fresh redis-server for each).

    python bench/workers.py [--workers W] [--publishers 60] [--seconds 10]
                            [--connections 32] [--wrk-seconds 5] [--rounds 3]

For one process, then for W workers (default: the number of CPUs):

 - HLS: ffmpeg publishes one stream over RTMP to the shared port (it lands
   on one worker; the others pull it from there when asked for its
   playlist), then wrk fetches live CMAF segments (token control off) with
   C{--connections} keep-alive connections in all: one wrk per worker, on
   that worker's own port, for that worker's newest complete segment (each
   worker packages its own copy, so the segment names differ between
   workers): segment requests/s of all together, and the server's CPU time
   per request;
 - RTMP ingest: C{--publishers} 2 Mbps publishers (the pre-chunked clip of
   L{bench.rtmp_ingest}, replayed in real time from this process) to the
   shared RTMP port: the media the server took in, as a share of what was
   sent (one process saturates one core), the cores it used, and its CPU
   seconds per stream-second.

Printed: each measure for both, and the ratios W/1 (the median over the
rounds for HLS).  Nothing is pinned: the point is to use every core; the
load generators (wrk, this process) share the machine with the server, so
on a small machine the ratios understate what W workers do on a larger
one.  Needs ffmpeg, wrk and redis-server.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import cpu_seconds, free_port  # noqa: E402
from bench.rtmp_ingest import make_clip, run_driver, slices_of  # noqa: E402


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def lines(text: str) -> list[str]:
    return [l for l in text.splitlines() if l and not l.startswith("#")]


def children(pid: int) -> list[int]:
    try:
        with open("/proc/{}/task/{}/children".format(pid, pid)) as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


class Server:
    """
    A redis-server and tokengate (one process, or a supervisor and its
    workers) on free loopback ports.
    """

    def __init__(self, tmp: str, workers: int) -> None:
        self.workers = workers
        self.redisPort = free_port()
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redisPort), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL)
        self.http, self.rtmp = free_port(), free_port()
        # the workers' own ports: consecutive, after a free one
        self.internal = [free_port()]
        for _ in range(workers - 1):
            self.internal.append(self.internal[-1] + 1)
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "--logfile", os.path.join(tmp, "tokengate.log"),
                "tokengate", "--data-dir", os.path.join(tmp, "data"),
                "--http", "tcp:{}:interface=127.0.0.1".format(self.http),
                "--rtmp", "tcp:{}:interface=127.0.0.1:backlog=1024".format(self.rtmp),
                "--srt", "udp:{}:interface=127.0.0.1".format(free_port(udp=True)),
                "--store", "redis://127.0.0.1:{}/0".format(self.redisPort),
                "--max-connections-per-address", "0"]
        if workers > 1:
            argv += ["--workers", str(workers),
                     "--node-address", "127.0.0.1:{}".format(self.internal[0])]
        else:
            self.internal = [self.http]
        time.sleep(0.5)
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
        self.base = "http://127.0.0.1:{}".format(self.http)
        for port in self.internal:
            self.waitFor(lambda port=port: b"LiveApp" in get(
                "http://127.0.0.1:{}/rest/v2/applications".format(port)), 90,
                "node at {}".format(port))

    def waitFor(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit("tokengate exited early")
            try:
                if predicate():
                    return
            except (OSError, IndexError):
                pass  # not yet: no answer, or a playlist without segments
            time.sleep(0.2)
        raise SystemExit("not within {} s: {}".format(timeout, what))

    def pids(self) -> list[int]:
        """The processes that serve: the workers (or the one process)."""
        if self.workers == 1:
            return [self.proc.pid]
        return children(self.proc.pid)

    def settings(self, **changes: object) -> None:
        import json

        req = urllib.request.Request(self.base + "/rest/v2/applications/settings/LiveApp",
                                     data=json.dumps(changes).encode(), method="POST",
                                     headers={"content-type": "application/json"})
        urllib.request.urlopen(req, timeout=10).read()

    def bytesIn(self) -> float:
        total = 0.0
        for port in self.internal:
            text = get("http://127.0.0.1:{}/metrics".format(port)).decode()
            m = re.search(r'tokengate_bytes_total\{direction="in",protocol="rtmp"\} '
                          r'([0-9.e+]+)', text)
            total += float(m.group(1)) if m else 0.0
        return total

    def stop(self) -> None:
        for p in (self.proc, self.redis):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()


def wrkArgv(url: str, seconds: float, connections: int) -> list[str]:
    return ["wrk", "-t1", "-c{}".format(connections), "-d{:g}s".format(seconds), url]


def wrkResult(url: str, run: subprocess.Popen) -> tuple[float, int]:
    out, err = run.communicate(timeout=60)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    if not m or not n or "Non-2xx" in out:
        raise SystemExit("wrk ({}) exited {} and said:\n{}{}".format(
            url, run.returncode, out, err))
    return float(m.group(1)), int(n.group(1))


def wrkAll(urls: list[str], seconds: float, connections: int) -> tuple[float, int]:
    """
    One wrk per URL at once, C{connections} shared among them: the total
    requests/s and requests.
    """
    each = max(1, connections // len(urls))
    runs = [subprocess.Popen(wrkArgv(url, seconds, each), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for url in urls]
    results = [wrkResult(url, run) for url, run in zip(urls, runs)]
    return sum(r for r, _ in results), sum(n for _, n in results)


def newestSegment(port: int) -> str:
    """
    The URL of the newest complete segment of s1 on the node at C{port}
    (asking for its playlist has an edge pull the stream).
    """
    base = "http://127.0.0.1:{}/LiveApp/streams/".format(port)
    media = lines(get(base + "s1.m3u8").decode())[0]
    seg = lines(get(base + media).decode())[-2]
    url = base + "s1/" + seg
    get(url)
    return url


def hls(server: Server, clip: str, args) -> dict:
    """
    Segment requests/s of the server's processes together, and CPU µs per
    request.  Each worker packages its own copy of the stream (the ones
    that pull it too), so its segments have names of their own: one wrk per
    worker fetches that worker's newest complete segment from its own port
    (the shared port's spreading is what tests/interop/test_workers.py
    checks).
    """
    server.settings(playTokenControlEnabled=False)
    pub = subprocess.Popen(["ffmpeg", "-v", "error", "-nostdin", "-re", "-stream_loop", "-1",
                            "-i", clip, "-c", "copy", "-f", "flv",
                            "rtmp://127.0.0.1:{}/LiveApp/s1".format(server.rtmp)])
    try:
        rates, costs = [], []
        for n in range(args.rounds + 1):
            urls: dict[int, str] = {}

            def found() -> bool:
                for port in server.internal:
                    urls[port] = newestSegment(port)
                return True

            server.waitFor(found, 60, "a complete segment of s1 on every worker")
            if n == 0:
                wrkAll(list(urls.values()), 1, args.connections)  # warm-up, not counted
                continue
            pids = server.pids()
            before = cpu_seconds(pids)
            rate, count = wrkAll(list(urls.values()), args.wrk_seconds, args.connections)
            rates.append(rate)
            costs.append((cpu_seconds(pids) - before) / count * 1e6)
        return {"segments_per_s": statistics.median(rates), "range": (min(rates), max(rates)),
                "cpu_us_per_request": statistics.median(costs),
                "cores": statistics.median(rates) * statistics.median(costs) / 1e6}
    finally:
        pub.terminate()
        pub.wait(10)


def ingest(server: Server, slices: list[bytes], bitrate: float, args) -> dict:
    names = ["LiveApp/b{}".format(i) for i in range(args.publishers)]
    result = run_driver(server.rtmp, names, [], slices, server.pids, args.seconds,
                        server.bytesIn)
    if "error" in result:
        raise SystemExit("RTMP ingest: " + result["error"])
    result["share_taken"] = result["server_in_mbps"] / (args.publishers * bitrate / 1e6)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--publishers", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--wrk-seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for tool in ("wrk", "ffmpeg", "redis-server"):
        if not shutil.which(tool):
            raise SystemExit("{} is not installed".format(tool))
    clip = make_clip(40)
    slices, bitrate = slices_of(clip)
    results = {}
    for count in (1, args.workers):
        tmp = tempfile.mkdtemp()
        server = Server(tmp, count)
        try:
            results[count] = {"ingest": ingest(server, slices, bitrate, args)}
            results[count]["hls"] = hls(server, clip, args)
        finally:
            server.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    one, many = results[1], results[args.workers]
    print("{} CPUs (load average {:.1f} at the end: other work on the machine leaves the "
          "workers less than that); {} workers against one process".format(
              os.cpu_count(), os.getloadavg()[0], args.workers))
    for label, r in (("1 process", one), ("{} workers".format(args.workers), many)):
        print("{:>10}: HLS {:8.0f} segments/s ({:.0f}-{:.0f}), {:5.0f} µs CPU/request, "
              "{:.2f} cores; "
              "RTMP ingest {} publishers: {:5.1%} of the media taken, {:.2f} cores, "
              "{:.4f} CPU-s per stream-second".format(
                  label, r["hls"]["segments_per_s"], *r["hls"]["range"],
                  r["hls"]["cpu_us_per_request"], r["hls"]["cores"], args.publishers,
                  r["ingest"]["share_taken"], r["ingest"]["cpu_fraction_of_core"],
                  r["ingest"]["cpu_per_stream_second"]))
    print("ratios {}/1: HLS segments/s {:.2f} (cores used {:.2f}); RTMP media taken {:.2f}; "
          "cores used {:.2f}; CPU per stream-second {:.2f}".format(
              args.workers,
              many["hls"]["segments_per_s"] / one["hls"]["segments_per_s"],
              many["hls"]["cores"] / one["hls"]["cores"],
              many["ingest"]["share_taken"] / one["ingest"]["share_taken"],
              many["ingest"]["cpu_fraction_of_core"] / one["ingest"]["cpu_fraction_of_core"],
              many["ingest"]["cpu_per_stream_second"] / one["ingest"]["cpu_per_stream_second"]))


if __name__ == "__main__":
    main()
