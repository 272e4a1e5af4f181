"""
Segment serving: requests/s for one live CMAF segment fetched through
tokengate with session checks on (a signed session credential on every
request) and with token control off, and the same bytes served from disk by
nginx and by a bare twisted.web static File, all measured with wrk in one
run, one after the other.

    python bench/hls_serving.py [--seconds 8] [--connections 32]

Needs ffmpeg (to publish), wrk and nginx.  Prints requests/s and ratios.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import Tokengate, free_port, pinned  # noqa: E402
from bench.rtmp_ingest import make_clip  # noqa: E402

STATIC = r"""
import sys
from twisted.internet import reactor
from twisted.web.server import Site
from twisted.web.static import File
reactor.listenTCP(int(sys.argv[1]), Site(File(sys.argv[2])), interface="127.0.0.1")
reactor.run()
"""


def wrk(url: str, seconds: int, connections: int) -> float:
    out = subprocess.run(pinned(["wrk", "-t1", "-c{}".format(connections),
                                 "-d{}s".format(seconds), url], 1),
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m or "Non-2xx" in out:
        raise SystemExit("wrk said:\n" + out)
    return float(m.group(1))


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternate session/plain runs this many times; keep the best of each")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    for tool in ("wrk", "nginx", "ffmpeg"):
        if not shutil.which(tool) and not os.path.exists("/usr/sbin/" + tool):
            raise SystemExit("{} is not installed".format(tool))
    clip = make_clip(40)
    tmp = tempfile.mkdtemp()
    procs: list[subprocess.Popen] = []
    try:
        tg = Tokengate(tmp)
        procs.append(tg.proc)
        base, rtmp = tg.base, tg.rtmp
        pub = subprocess.Popen(["ffmpeg", "-v", "error", "-nostdin", "-re", "-stream_loop", "-1",
                                "-i", clip, "-c", "copy", "-f", "flv",
                                "rtmp://127.0.0.1:{}/LiveApp/s1".format(rtmp)])
        procs.append(pub)
        time.sleep(8)
        gated = plain = 0.0
        for _ in range(args.rounds):
            # token control off: the newest complete segment (it stays in the
            # window longest), by its plain URL
            master = get(base + "/LiveApp/streams/s1.m3u8").decode()
            media = [l for l in master.splitlines() if l and not l.startswith("#")][0]
            playlist = get(base + "/LiveApp/streams/" + media).decode()
            seg = [l for l in playlist.splitlines() if l and not l.startswith("#")][-1]
            open_url = base + "/LiveApp/streams/s1/" + seg
            body = get(open_url)
            # token control on: the same segment through a session credential
            tg.settings(playTokenControlEnabled=True)
            master = get(base + "/LiveApp/streams/s1.m3u8?token=" + tg.token("s1", "play")).decode()
            media = [l for l in master.splitlines() if l and not l.startswith("#")][0]
            playlist = get(base + "/LiveApp/streams/" + media).decode()
            session_seg = [l for l in playlist.splitlines() if l.startswith(seg + "?")][0]
            gated_url = base + "/LiveApp/streams/s1/" + session_seg
            assert get(gated_url) == body, "the gated segment differs"
            gated = max(gated, wrk(gated_url, args.seconds, args.connections))
            tg.settings(playTokenControlEnabled=False)
            plain = max(plain, wrk(open_url, args.seconds, args.connections))
        pub.terminate()
        tg.stop()

        # the same bytes from disk
        root = os.path.join(tmp, "www")
        os.makedirs(root)
        with open(os.path.join(root, "seg.m4s"), "wb") as f:
            f.write(body)
        # nginx workers may run as another user (nobody): let them read it
        for path in (tmp, root):
            os.chmod(path, 0o755)
        os.chmod(os.path.join(root, "seg.m4s"), 0o644)
        port = free_port()
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write("""
worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; sendfile on; server {{ listen 127.0.0.1:{port}; root {root}; }} }}
""".format(tmp=tmp, port=port, root=root))
        ngx = subprocess.Popen(pinned([shutil.which("nginx") or "/usr/sbin/nginx", "-c", conf,
                                       "-p", tmp], 0))
        procs.append(ngx)
        time.sleep(1)
        nginx = wrk("http://127.0.0.1:{}/seg.m4s".format(port), args.seconds, args.connections)
        ngx.terminate()
        port = free_port()
        bare = subprocess.Popen(pinned([sys.executable, "-c", STATIC, str(port), root], 0))
        procs.append(bare)
        time.sleep(1.5)
        static = wrk("http://127.0.0.1:{}/seg.m4s".format(port), args.seconds, args.connections)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    print("segment of {} bytes, wrk -c{} for {} s each, best of {} alternating runs".format(
        len(body), args.connections, args.seconds, args.rounds))
    print("  tokengate, session checked:  {:8.0f} req/s".format(gated))
    print("  tokengate, token control off:{:8.0f} req/s".format(plain))
    print("  nginx from disk:             {:8.0f} req/s".format(nginx))
    print("  twisted.web static File:     {:8.0f} req/s".format(static))
    print("  session-check overhead: {:.1%}".format(1 - gated / plain))
    print("  tokengate (session) / nginx: {:.2f}".format(gated / nginx))
    print("  twisted.web File / nginx:    {:.2f}".format(static / nginx))


if __name__ == "__main__":
    main()
