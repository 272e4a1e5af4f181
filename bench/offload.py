"""
Segment offload: requests/s for one live CMAF segment fetched through nginx
in front of tokengate (C{contrib/nginx/tokengate-offload.conf}: the link
checked by nginx's secure_link, the bytes from nginx's cache), against the
same nginx serving the same bytes as a static file, measured with wrk in the
same run.

    python bench/offload.py [--seconds 4] [--rounds 5] [--connections 32]

One nginx (one worker, pinned to CPU 0 with tokengate) serves both: the
offload edge on one port, the static file on another.  Each round picks the
newest complete segment from a live publication (ffmpeg over RTMP, on
CPU 1 with wrk), fetches its link from a playlist (a play token, through
the edge), warms the cache with one request, writes the same bytes to disk,
and runs wrk against both (in an order alternating from round to round).
The ratio is computed within each round; the median over the rounds is
reported, with its range, and the number of segment requests that reached
tokengate (one per round: the cache fill; target ratio >= 0.9).  Also
printed: nginx's CPU time per request (user + system of its processes, from
/proc) and its ratio, which is steadier than requests/s when other jobs load
the machine.

Needs ffmpeg (to publish), wrk and nginx.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import (  # noqa: E402
    Tokengate, cpu_seconds, free_port, pinned, publish_clip, segment_file, spread, wait_http)
from bench.hls_serving import children, get, lines, wrk  # noqa: E402
from bench.rtmp_ingest import make_clip  # noqa: E402
from tests import nginxedge  # noqa: E402

SECRET = "bench-offload-secret-" + "b" * 24
NAMES = ("offload", "static")


def fills(base: str) -> float:
    text = get(base + "/metrics").decode()
    m = re.search(r"^tokengate_offload_fills_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def nginxCpu(pid: int) -> float:
    """
    CPU seconds of nginx's master and its processes now alive (the cache
    loader exits a minute after start).
    """
    total = 0.0
    for p in [pid] + children(pid):
        try:
            total += cpu_seconds([p])
        except OSError:
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of the two runs; medians over the rounds are reported")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    nginx = nginxedge.nginxBinary()
    for tool in ("wrk", "ffmpeg"):
        if not shutil.which(tool):
            raise SystemExit("{} is not installed".format(tool))
    if nginx is None:
        raise SystemExit("nginx is not installed")
    clip = make_clip(40)
    tmp = tempfile.mkdtemp()
    procs: list[subprocess.Popen] = []
    rps: dict[str, list[float]] = {name: [] for name in NAMES}
    cpu: dict[str, list[float]] = {name: [] for name in NAMES}
    sizes: list[int] = []
    reached: list[float] = []
    try:
        # links outlive a round; nginx's cache keeps a segment max-age=30 s
        tg = Tokengate(tmp, "--offload-secret", SECRET, "--offload-ttl", "600")
        procs.append(tg.proc)
        tg.settings(playTokenControlEnabled=True)
        procs.append(publish_clip(clip, tg.rtmp))

        edgeDir = os.path.join(tmp, "edge")
        root, disk = segment_file(tmp)
        edgePort, staticPort = free_port(), free_port()
        conf = nginxedge.writeConfig(edgeDir, edgePort, tg.http, SECRET, extra="""
    sendfile on;
    server {{ listen 127.0.0.1:{port}; root {root}; }}
""".format(port=staticPort, root=root))
        ngx = subprocess.Popen(pinned(nginxedge.argv(nginx, edgeDir, conf), 0))
        procs.append(ngx)
        edge = "http://127.0.0.1:{}".format(edgePort)
        static_url = "http://127.0.0.1:{}/seg.m4s".format(staticPort)
        wait_http(static_url, ngx)
        time.sleep(8)

        for n in range(args.rounds + 1):
            master = get(edge + "/LiveApp/streams/s1.m3u8?token=" + tg.token("s1", "play"))
            media = lines(master.decode())[0]
            playlist = get(edge + "/LiveApp/streams/" + media).decode()
            seg = [l for l in lines(playlist) if re.match(r"^video/\d+\.m4s\?", l)][-1]
            offload_url = edge + "/LiveApp/streams/s1/" + seg
            before = fills(tg.base)
            body = get(offload_url)  # the one fill of nginx's cache
            with open(disk + ".tmp", "wb") as f:
                f.write(body)
            os.chmod(disk + ".tmp", 0o644)
            os.replace(disk + ".tmp", disk)
            assert get(static_url) == body, "the static file serves other bytes"
            urls = {"offload": offload_url, "static": static_url}
            order = ("offload", "static") if n % 2 else ("static", "offload")
            if n == 0:
                for name in order:
                    wrk(urls[name], 1, args.connections)
                continue
            sizes.append(len(body))
            for name in order:
                start = nginxCpu(ngx.pid)
                rate, count = wrk(urls[name], args.seconds, args.connections)
                cpu[name].append((nginxCpu(ngx.pid) - start) / count * 1e6)
                rps[name].append(rate)
            reached.append(fills(tg.base) - before)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    ratios = [a / b for a, b in zip(rps["offload"], rps["static"])]

    print("segment of {}–{} bytes, wrk -c{} for {:g} s each, {} rounds (medians, range)".format(
        min(sizes), max(sizes), args.connections, args.seconds, args.rounds))
    labels = {"offload": "nginx offload edge (link checked, cache):",
              "static": "nginx, the same bytes from disk:         "}
    for name in NAMES:
        print("  {} {} req/s, {:4.0f} µs nginx CPU/request".format(
            labels[name], spread(rps[name], "{:6.0f}"), statistics.median(cpu[name])))
    print("  segment requests that reached tokengate per round: {}".format(
        ", ".join("{:g}".format(r) for r in reached)))
    print("  offload / nginx static, req/s:            " + spread(ratios, "{:.2f}")
          + "   (target >= 0.9)")
    print("  offload / nginx static, by CPU/request:   " + spread(
        [s / o for s, o in zip(cpu["static"], cpu["offload"])], "{:.2f}")
        + "   (steadier on a busy machine)")


if __name__ == "__main__":
    main()
