"""
REST mint requests/s (default SQLite store) against a bare twisted.web
resource answering a token-sized JSON body, both measured with wrk in the
same run, alternately for C{--rounds} (the ratios paired within a round,
medians reported), each server in its own process pinned to CPU 0, both run
by twistd with its log going to a file (as an operator runs them).

    python bench/rest_mint.py [--seconds 5] [--rounds 3] [--connections 32]
                              [--access-log server|file]

Needs wrk (Debian package wrk).  Prints requests/s of both and the ratio,
and the server processes' CPU time per request (user + system, from /proc)
and its ratio (bare / mint), which a machine shared with other jobs
disturbs much less than requests/s.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import Tokengate, cpu_seconds, free_port, pinned, spread, wait_http  # noqa: E402

BARE = r"""
import os
from twisted.application import internet, service
from twisted.web.resource import Resource
from twisted.web.server import Site

BODY = (b'{"tokenId":"0123456789012345678901234567890123456789","streamId":"s1",'
        b'"expireDate":1900000000,"type":"play","roomId":null}')

class Bare(Resource):
    isLeaf = True
    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        return BODY

application = service.Application("bare")
internet.TCPServer(int(os.environ["BARE_PORT"]),
                   Site(Bare(), logPath=os.environ.get("BARE_ACCESS_LOG") or None),
                   interface="127.0.0.1").setServiceParent(application)
"""


def wrk(url: str, seconds: int, connections: int) -> tuple[float, int]:
    """
    C{(requests/s, requests)} of a wrk run.
    """
    out = subprocess.run(
        pinned(["wrk", "-t1", "-c{}".format(connections), "-d{}s".format(seconds), url], 1),
        capture_output=True, text=True, timeout=seconds + 30,
    ).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise SystemExit("wrk said:\n" + out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise SystemExit("{} error responses:\n{}".format(non2xx.group(1), out))
    n = re.search(r"(\d+) requests in", out)
    return float(m.group(1)), int(n.group(1)) if n else 0


def measured(pid: int, url: str, seconds: int, connections: int) -> tuple[float, float]:
    """
    C{(requests/s, CPU seconds of process pid per request)} of a wrk run.
    """
    before = cpu_seconds([pid])
    rate, count = wrk(url, seconds, connections)
    return rate, (cpu_seconds([pid]) - before) / max(count, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of both runs, alternating which goes first; "
                             "ratios are paired within a round, medians reported")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--access-log", choices=("server", "file"), default="server",
                        help="server: both servers log requests through twistd's log; "
                             "file: each appends a line per request to a file of its own")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    tmp = tempfile.mkdtemp()
    procs = []
    runs: dict[str, list[tuple[float, float]]] = {"bare": [], "mint": []}
    try:
        port = free_port()
        tac = os.path.join(tmp, "bare.tac")
        with open(tac, "w") as f:
            f.write(BARE)
        bare = subprocess.Popen(pinned(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
             "--pidfile=", "--logfile", os.path.join(tmp, "bare.log"), "-y", tac], 0),
            env=dict(os.environ, BARE_PORT=str(port), BARE_ACCESS_LOG=(
                os.path.join(tmp, "bare-access.log") if args.access_log == "file" else "")))
        procs.append(bare)
        bareURL = "http://127.0.0.1:{}/".format(port)
        wait_http(bareURL, bare)
        tg = Tokengate(tmp, *(["--access-log", os.path.join(tmp, "tokengate-access.log")]
                              if args.access_log == "file" else []))
        procs.append(tg.proc)
        mintURL = "{}/LiveApp/rest/v2/broadcasts/s1/token?type=play&expireDate={}".format(
            tg.base, int(time.time()) + 3600)
        targets = {"bare": (bare.pid, bareURL), "mint": (tg.pid, mintURL)}
        # both warmed up, then measured alternately (both idle servers on
        # CPU 0, wrk on CPU 1), so a drift of the machine falls on both
        for name in ("bare", "mint"):
            wrk(targets[name][1], 1, args.connections)
        for n in range(args.rounds):
            for name in (("bare", "mint") if n % 2 == 0 else ("mint", "bare")):
                pid, url = targets[name]
                runs[name].append(measured(pid, url, args.seconds, args.connections))
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)

    for name, label in (("bare", "bare twisted.web resource:"), ("mint", "tokengate REST mint:      ")):
        print("{} {} requests/s, {} us CPU/request{}".format(
            label, spread([r for r, _ in runs[name]], "{:.0f}"),
            spread([c * 1e6 for _, c in runs[name]], "{:.0f}"),
            " (SQLite store)" if name == "mint" else ""))
    rates = [m[0] / b[0] for m, b in zip(runs["mint"], runs["bare"])]
    cpus = [b[1] / m[1] for m, b in zip(runs["mint"], runs["bare"])]
    print("ratio mint / bare, {} rounds: {} (requests/s), {} (CPU per request, bare / mint), "
          "access log: {}".format(args.rounds, spread(rates, "{:.3f}"), spread(cpus, "{:.3f}"),
                                  args.access_log))


if __name__ == "__main__":
    main()
