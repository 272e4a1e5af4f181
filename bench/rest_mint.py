"""
REST mint requests/s (default SQLite store) against a bare twisted.web
resource answering a token-sized JSON body, both measured with wrk in the
same run, one after the other, each server in its own process, both run by
twistd with its access log going to a file (as an operator runs them).

    python bench/rest_mint.py [--seconds 8] [--connections 32] [--access-log server|file]

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

from bench.common import Tokengate, cpu_seconds, free_port, pinned, wait_http  # noqa: E402

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
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--access-log", choices=("server", "file"), default="server",
                        help="server: both servers log requests through twistd's log; "
                             "file: each appends a line per request to a file of its own")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    tmp = tempfile.mkdtemp()
    procs = []
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
        url = "http://127.0.0.1:{}/".format(port)
        wait_http(url, bare)
        base, baseCpu = measured(bare.pid, url, args.seconds, args.connections)
        bare.terminate()

        tg = Tokengate(tmp, *(["--access-log", os.path.join(tmp, "tokengate-access.log")]
                              if args.access_log == "file" else []))
        procs.append(tg.proc)
        url = "{}/LiveApp/rest/v2/broadcasts/s1/token?type=play&expireDate={}".format(
            tg.base, int(time.time()) + 3600)
        mint, mintCpu = measured(tg.pid, url, args.seconds, args.connections)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    print("bare twisted.web resource: {:8.0f} requests/s, {:5.0f} us CPU/request".format(
        base, baseCpu * 1e6))
    print("tokengate REST mint:       {:8.0f} requests/s, {:5.0f} us CPU/request "
          "(SQLite store)".format(mint, mintCpu * 1e6))
    print("ratio mint / bare:         {:8.3f} (requests/s), {:.3f} (CPU per request, "
          "bare / mint), access log: {}".format(mint / base, baseCpu / mintCpu, args.access_log))


if __name__ == "__main__":
    main()
