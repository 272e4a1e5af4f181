"""
Segment serving: requests/s for one live CMAF segment fetched through
tokengate with session checks on (a signed session credential on every
request) and with token control off, and the same bytes served from disk by
nginx and by a bare twisted.web static File, all measured with wrk.

    python bench/hls_serving.py [--seconds 4] [--rounds 5] [--connections 32]
                                [--access-log off|file]

nginx and tokengate both log no request (C{--access-log off}, the default)
or both append a line per request to a file of their own (C{file}).

All four servers run for the whole benchmark (each pinned to CPU 0, wrk and
the publishing ffmpeg on CPU 1).  Each round picks the newest complete
segment, writes it to disk for nginx and the static File, and runs wrk
against the four (tokengate's two first, while the segment is fresh; each
pair in an order alternating from round to round); the ratios are
computed within each round (so a slow drift of the shared machine cancels)
and the median over the rounds is reported, with its range.  Also printed:
the server processes' CPU time per request (user + system, from /proc),
which is steadier than requests/s.

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
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import (  # noqa: E402
    Tokengate, cpu_seconds, free_port, pinned, publish_clip, segment_file, spread, wait_http)
from bench.rtmp_ingest import make_clip  # noqa: E402

STATIC = r"""
import sys
from twisted.internet import reactor
from twisted.web.server import Site
from twisted.web.static import File
reactor.listenTCP(int(sys.argv[1]), Site(File(sys.argv[2])), interface="127.0.0.1")
reactor.run()
"""

NAMES = ("session", "plain", "nginx", "static")


def wrk(url: str, seconds: float, connections: int) -> tuple[float, int]:
    """
    C{(requests/s, requests)} of a wrk run.
    """
    run = subprocess.run(pinned(["wrk", "-t1", "-c{}".format(connections),
                                 "-d{:g}s".format(seconds), url], 1),
                         capture_output=True, text=True, timeout=seconds + 30)
    out = run.stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    if not m or not n or "Non-2xx" in out:
        raise SystemExit("wrk ({}) exited {} and said:\n{}{}".format(
            url, run.returncode, out, run.stderr))
    return float(m.group(1)), int(n.group(1))


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/{}/stat".format(entry)) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return kids


def lines(text: str) -> list[str]:
    return [l for l in text.splitlines() if l and not l.startswith("#")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of the four runs; medians over the rounds are reported")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--access-log", choices=("off", "file"), default="off",
                        help="off: neither nginx nor tokengate logs requests; file: each "
                             "appends a line per request to a file of its own")
    args = parser.parse_args()
    for tool in ("wrk", "nginx", "ffmpeg"):
        if not shutil.which(tool) and not os.path.exists("/usr/sbin/" + tool):
            raise SystemExit("{} is not installed".format(tool))
    clip = make_clip(40)
    tmp = tempfile.mkdtemp()
    procs: list[subprocess.Popen] = []
    rps: dict[str, list[float]] = {name: [] for name in NAMES}
    cpu: dict[str, list[float]] = {name: [] for name in NAMES}
    sizes = []
    try:
        tg = Tokengate(tmp, "--access-log", "off" if args.access_log == "off"
                       else os.path.join(tmp, "tokengate-access.log"))
        procs.append(tg.proc)
        base, rtmp = tg.base, tg.rtmp
        procs.append(publish_clip(clip, rtmp))

        # the same bytes from disk (rewritten each round)
        root, disk = segment_file(tmp)
        port = free_port()
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write("""
worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{ access_log {log}; sendfile on; server {{ listen 127.0.0.1:{port}; root {root}; }} }}
""".format(tmp=tmp, port=port, root=root,
           log="off" if args.access_log == "off" else tmp + "/nginx-access.log"))
        ngx = subprocess.Popen(pinned([shutil.which("nginx") or "/usr/sbin/nginx", "-c", conf,
                                       "-p", tmp], 0))
        procs.append(ngx)
        nginx_url = "http://127.0.0.1:{}/seg.m4s".format(port)
        port = free_port()
        bare = subprocess.Popen(pinned([sys.executable, "-c", STATIC, str(port), root], 0))
        procs.append(bare)
        static_url = "http://127.0.0.1:{}/seg.m4s".format(port)
        wait_http(nginx_url, ngx)
        wait_http(static_url, bare)
        time.sleep(8)
        ngx_pids = [ngx.pid] + children(ngx.pid)
        pids = {"session": [tg.pid], "plain": [tg.pid], "nginx": ngx_pids, "static": [bare.pid]}

        for n in range(args.rounds + 1):
            # token control off: the newest complete segment (it stays in the
            # window longest), by its plain URL
            tg.settings(playTokenControlEnabled=False)
            media = lines(get(base + "/LiveApp/streams/s1.m3u8").decode())[0]
            seg = lines(get(base + "/LiveApp/streams/" + media).decode())[-1]
            plain_url = base + "/LiveApp/streams/s1/" + seg
            body = get(plain_url)
            with open(disk + ".tmp", "wb") as f:
                f.write(body)
            os.chmod(disk + ".tmp", 0o644)
            os.replace(disk + ".tmp", disk)
            # token control on: the same segment through a session credential
            tg.settings(playTokenControlEnabled=True)
            master = get(base + "/LiveApp/streams/s1.m3u8?token=" + tg.token("s1", "play"))
            media = lines(master.decode())[0]
            playlist = get(base + "/LiveApp/streams/" + media).decode()
            session_seg = [l for l in playlist.splitlines() if l.startswith(seg + "?")][0]
            session_url = base + "/LiveApp/streams/s1/" + session_seg
            for url in (session_url, nginx_url, static_url):
                assert get(url) == body, "{} serves other bytes".format(url)
            urls = {"session": session_url, "plain": plain_url, "nginx": nginx_url,
                    "static": static_url}
            # tokengate first (the segment must stay in the window), each
            # pair in alternating order
            order = (("session", "plain") if n % 2 else ("plain", "session")) + (
                ("nginx", "static") if n % 2 else ("static", "nginx"))
            if n == 0:
                # warm-up round, not counted
                for name in order:
                    if name == "plain":
                        tg.settings(playTokenControlEnabled=False)
                    wrk(urls[name], 1, args.connections)
                continue
            sizes.append(len(body))
            for name in order:
                tg.settings(playTokenControlEnabled=name != "plain")
                before = cpu_seconds(pids[name])
                rate, count = wrk(urls[name], args.seconds, args.connections)
                used = cpu_seconds(pids[name]) - before
                rps[name].append(rate)
                cpu[name].append(used / count * 1e6)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    def ratios(a: str, b: str) -> list[float]:
        return [x / y for x, y in zip(rps[a], rps[b])]

    print("segment of {}–{} bytes, wrk -c{} for {:g} s each, {} rounds (medians, range), "
          "access log {}".format(min(sizes), max(sizes), args.connections, args.seconds,
                                 args.rounds, args.access_log))
    labels = {"session": "tokengate, session checked:  ",
              "plain": "tokengate, token control off:",
              "nginx": "nginx from disk:             ",
              "static": "twisted.web static File:     "}
    for name in NAMES:
        print("  {} {} req/s, {:5.0f} µs CPU/request".format(
            labels[name], spread(rps[name], "{:6.0f}"), statistics.median(cpu[name])))
    overhead = [1 - r for r in ratios("session", "plain")]
    print("  session-check overhead:       " + spread([o * 100 for o in overhead], "{:5.1f} %"))
    print("  tokengate (session) / nginx:   " + spread(ratios("session", "nginx"), "{:.2f}"))
    print("  tokengate (plain) / nginx:     " + spread(ratios("plain", "nginx"), "{:.2f}"))
    print("  twisted.web File / nginx:      " + spread(ratios("static", "nginx"), "{:.2f}"))


if __name__ == "__main__":
    main()
