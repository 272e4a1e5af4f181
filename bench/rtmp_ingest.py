"""
RTMP ingest benchmark: N concurrent 2 Mbps H.264/AAC publishers (plus
optional players) against tokengate and against nginx with the RTMP module
(libnginx-mod-rtmp, ``on_publish`` with ``notify_method get`` to a tiny auth
endpoint), one after the other in the same run.  Reports the server's
CPU-seconds per stream-second for both and their ratio.

    python bench/rtmp_ingest.py [--publishers 200] [--players 0] [--seconds 15]
    python bench/rtmp_ingest.py --ffmpeg [--publishers 30] [--hls both] [--rounds 2]

With C{--ffmpeg} the publishers are real ffmpeg processes (C{-re
-stream_loop -1 -c copy}, FLV over RTMP, the publish name carrying the
token), HLS packaging is off, on or both in turn on both servers
(tokengate's C{hlsMuxingEnabled}; nginx-rtmp's C{hls on}, 2 s fragments
written to a directory) and the servers run alternately, C{--rounds}
times, so a drift of the shared machine shows in the spread.  Printed:
CPU-ms per stream-second of each server and their ratio per round.

Otherwise the load generator is light: it pre-encodes a 2 Mbps clip into RTMP chunks
once and each publisher replays the bytes in real time (100 ms slices), so
the generator spends its CPU on socket writes, not on encoding.  The server
runs pinned to CPU 0 and the generator to CPU 1 when ``taskset`` exists.
Needs ffmpeg (to make the clip once, cached in bench/out/) and nginx with
libnginx-mod-rtmp for the comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from twisted.internet import defer, protocol, reactor, task  # noqa: E402

from bench.common import Tokengate, cpu_seconds, free_port, make_cbr_clip, pinned  # noqa: E402
from twisted.web import resource, server as webserver  # noqa: E402

from tokengate.media.flv import iter_flv_tags  # noqa: E402
from tokengate.rtmp.core import CLIENT, Command, RTMPConnection, encode_message  # noqa: E402

CHUNK = 4096
SLICE = 0.1


def make_clip(seconds: int) -> str:
    """
    The 2 Mbps 720p clip the ingest benchmarks replay.
    """
    return make_cbr_clip("clip-2mbps-{}s.flv".format(seconds), seconds, "1280x720", 1870,
                         "ultrafast", 128)


def slices_of(path: str) -> tuple[list[bytes], float]:
    """
    The clip's media as pre-chunked RTMP bytes (stream id 1, chunk size
    4096), grouped in 100 ms slices; and the clip's bitrate.
    """
    messages, bitrate = messages_of(path)
    return [b"".join(s) for s in messages], bitrate


def messages_of(path: str) -> tuple[list[list[bytes]], float]:
    """
    The clip's media as pre-chunked RTMP messages (stream id 1, chunk size
    4096), one list per 100 ms slice; and the clip's bitrate.
    """
    with open(path, "rb") as f:
        data = f.read()
    slices: list[list[bytes]] = []
    total = 0
    for tag in iter_flv_tags(data):
        if tag.tag_type == 8:
            csid, type_id = 6, 8
        elif tag.tag_type == 9:
            csid, type_id = 7, 9
        elif tag.tag_type == 18:
            csid, type_id = 5, 18
        else:
            continue
        i = int(tag.timestamp / 1000 / SLICE)
        while len(slices) <= i:
            slices.append([])
        body = bytes(tag.data)
        if type_id == 18:
            # onMetaData -> @setDataFrame onMetaData, as encoders send it
            from tokengate.rtmp import amf0
            body = amf0.encode("@setDataFrame") + body
        slices[i].append(encode_message(csid, 1, type_id, tag.timestamp, body, CHUNK))
        total += len(body)
    return slices, total * 8 / (len(slices) * SLICE)


class Client(protocol.Protocol):
    """
    A publisher (replays slices) or a player (counts and acknowledges).
    """

    def __init__(self, bench: "Bench", name: str, publish: bool) -> None:
        self.bench = bench
        self.name = name
        self.publishing = publish
        self.conn = RTMPConnection(CLIENT)
        self.state = "handshake"
        self.received = 0
        self.acked = 0
        self.window = 2500000
        self.loop = None
        self.index = 0

    def connectionMade(self) -> None:
        self.transport.write(self.conn.data_to_send())

    def dataReceived(self, data: bytes) -> None:
        if self.state == "streaming":
            self.received += len(data)
            if not self.publishing and self.received - self.acked >= self.window:
                self.acked = self.received
                self.conn.send_acknowledgement(self.received & 0xFFFFFFFF)
                self.transport.write(self.conn.data_to_send())
            return
        for ev in self.conn.receive_data(data):
            self.event(ev)
        out = self.conn.data_to_send()
        if out:
            self.transport.write(out)

    def event(self, ev) -> None:
        app, _, stream = self.name.partition("/")
        if type(ev).__name__ == "HandshakeComplete":
            self.conn.send_set_chunk_size(CHUNK)
            self.conn.send_command(0, "connect", 1, {
                "app": app, "type": "nonprivate", "flashVer": "FMLE/3.0 (bench)",
                "tcUrl": "rtmp://127.0.0.1/" + app})
            self.conn.send_command(0, "createStream", 2, None)
        elif isinstance(ev, Command) and ev.name == "onStatus":
            code = ev.args[0].get("code") if ev.args and isinstance(ev.args[0], dict) else ""
            if code in ("NetStream.Publish.Start", "NetStream.Play.Start"):
                self.state = "streaming"
                self.bench.started(self)
                if self.publishing:
                    self.index = random.randrange(len(self.bench.slices) // 4)
                    self.loop = task.LoopingCall(self.tick)
                    self.loop.start(SLICE, now=False)
            elif ev.args and ev.args[0].get("level") == "error":
                self.bench.failed(self, code)
        elif isinstance(ev, Command) and ev.name == "_result" and ev.transaction_id == 2.0:
            if self.publishing:
                self.conn.send_command(1, "publish", 3, None, stream, "live")
            else:
                self.conn.send_command(1, "play", 3, None, stream, -2000.0)

    def tick(self) -> None:
        slices = self.bench.slices
        if self.index >= len(slices):
            self.index = len(slices) // 2  # loop well after the start (timestamps drift: fine)
        self.transport.write(slices[self.index])
        self.index += 1
        buffered = len(self.transport.dataBuffer) + self.transport._tempDataLen
        self.bench.maxBuffered = max(self.bench.maxBuffered, buffered)

    def connectionLost(self, reason) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        self.bench.lost(self)


class Bench:
    def __init__(self, slices: list[bytes]) -> None:
        self.slices = slices
        self.clients: list[Client] = []
        self.ready = 0
        self.errors: list[str] = []
        self.dropped = 0
        self.maxBuffered = 0
        self.allReady: defer.Deferred = defer.Deferred()
        self.expected = 0

    def started(self, c: Client) -> None:
        self.ready += 1
        if self.ready == self.expected and not self.allReady.called:
            self.allReady.callback(None)

    def failed(self, c: Client, code: str) -> None:
        self.errors.append(code)

    def lost(self, c: Client) -> None:
        self.dropped += 1


async def drive(port: int, names: list[str], players: list[str], slices: list[bytes],
                pids_of, seconds: float, bytes_in=None) -> dict:
    bench = Bench(slices)
    bench.expected = len(names) + len(players)
    for i, name in enumerate(names):
        c = Client(bench, name, True)
        await protocol.ClientCreator(reactor, lambda c=c: c).connectTCP("127.0.0.1", port)
        if i % 20 == 19:
            await task.deferLater(reactor, 0.05)
    await task.deferLater(reactor, 1.0)
    for name in players:
        c = Client(bench, name, False)
        await protocol.ClientCreator(reactor, lambda c=c: c).connectTCP("127.0.0.1", port)
    try:
        await bench.allReady.addTimeout(60, reactor)
    except defer.TimeoutError:
        return {"error": "only {} of {} started; errors: {}".format(
            bench.ready, bench.expected, bench.errors[:5])}
    await task.deferLater(reactor, 3.0)  # warm up
    pids = pids_of()
    b0 = bytes_in() if bytes_in else None
    c0, t0 = cpu_seconds(pids), time.monotonic()
    await task.deferLater(reactor, seconds)
    c1, t1 = cpu_seconds(pids), time.monotonic()
    b1 = bytes_in() if bytes_in else None
    dropped = bench.dropped
    result = {
        "publishers": len(names),
        "players": len(players),
        "cpu_seconds": c1 - c0,
        "wall": t1 - t0,
        "cpu_per_stream_second": (c1 - c0) / ((t1 - t0) * len(names)),
        "cpu_fraction_of_core": (c1 - c0) / (t1 - t0),
        "dropped": dropped,
        "max_client_buffer": bench.maxBuffered,
    }
    if b0 is not None:
        result["server_in_mbps"] = (b1 - b0) * 8 / (t1 - t0) / 1e6
    return result


def run_tokengate(args, slices, tmp) -> dict:
    tg = Tokengate(tmp)
    try:
        # ingest and RTMP relay only, as nginx-rtmp is configured here (live
        # on, no hls)
        tg.settings(publishTokenControlEnabled=True, playTokenControlEnabled=True,
                    hlsMuxingEnabled=False)
        names = ["LiveApp/b{}?token={}".format(i, tg.token("b{}".format(i), "publish"))
                 for i in range(args.publishers)]
        players = []
        for j in range(args.players):
            sid = "b{}".format(j % args.publishers)
            players.append("LiveApp/{}?token={}".format(sid, tg.token(sid, "play")))

        def bytes_in():
            text = urllib.request.urlopen(tg.base + "/metrics").read().decode()
            m = re.search(r'tokengate_bytes_total\{direction="in",protocol="rtmp"\} ([0-9.e+]+)',
                          text)
            return float(m.group(1)) if m else 0.0

        return run_driver(tg.rtmp, names, players, slices, lambda: [tg.pid], args.seconds,
                          bytes_in)
    finally:
        tg.stop()


class Auth(resource.Resource):
    isLeaf = True
    calls = 0

    def render_GET(self, request):
        Auth.calls += 1
        if request.args.get(b"token"):
            return b"ok"
        request.setResponseCode(403)
        return b"no"


def run_nginx(args, slices, tmp) -> dict:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    module = "/usr/lib/nginx/modules/ngx_rtmp_module.so"
    if not os.path.exists(nginx) or not os.path.exists(module):
        return {"error": "nginx with libnginx-mod-rtmp is not installed"}
    rtmp, auth = free_port(), free_port()
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write("""
load_module {module};
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 8192; }}
rtmp {{
  server {{
    listen 127.0.0.1:{rtmp};
    chunk_size 4096;
    application LiveApp {{
      live on;
      on_publish http://127.0.0.1:{auth}/auth;
      on_play http://127.0.0.1:{auth}/auth;
      notify_method get;
    }}
  }}
}}
""".format(module=module, tmp=tmp, rtmp=rtmp, auth=auth))
    argv = pinned([nginx, "-c", conf, "-p", tmp], 0)
    port = reactor.listenTCP(auth, webserver.Site(Auth()), interface="127.0.0.1")
    proc = subprocess.Popen(argv)
    try:
        time.sleep(1)
        names = ["LiveApp/b{}?token=t{}".format(i, i) for i in range(args.publishers)]
        players = ["LiveApp/b{}?token=p{}".format(j % args.publishers, j) for j in range(args.players)]

        def pids():
            out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout
            return [proc.pid] + [int(p) for p in out.split()]

        return run_driver(rtmp, names, players, slices, pids, args.seconds)
    finally:
        proc.terminate()
        proc.wait(20)
        port.stopListening()


class _AuthHandler(BaseHTTPRequestHandler):
    """
    nginx-rtmp's C{on_publish} endpoint in the ffmpeg mode: 2xx when the
    publish name carries a token, 403 otherwise.
    """

    calls = 0

    def do_GET(self) -> None:
        _AuthHandler.calls += 1
        ok = "token=" in self.path
        self.send_response(200 if ok else 403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def ffmpeg_publishers(clip: str, urls: list[str], log: str) -> list[subprocess.Popen]:
    """
    One ffmpeg per URL, pinned to CPU 1, publishing C{clip} in real time in
    a loop with C{-c copy}; started in small batches.
    """
    procs = []
    with open(log, "ab") as err:
        for i, url in enumerate(urls):
            procs.append(subprocess.Popen(
                pinned(["ffmpeg", "-hide_banner", "-v", "error", "-nostdin", "-re",
                        "-stream_loop", "-1", "-i", clip, "-c", "copy", "-f", "flv", url], 1),
                stdout=subprocess.DEVNULL, stderr=err))
            if i % 10 == 9:
                time.sleep(0.2)
    return procs


def user_system(pids: list[int]) -> tuple[float, float]:
    """
    User and system CPU seconds of processes, from /proc.
    """
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0.0
    for pid in pids:
        with open("/proc/{}/stat".format(pid)) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        user += int(fields[11]) / tick
        system += int(fields[12]) / tick
    return user, system


def measure_ffmpeg(procs: list[subprocess.Popen], pids: list[int], seconds: float,
                   warmup: float) -> dict:
    """
    Server CPU per stream-second over C{seconds} after C{warmup}, with
    every publisher still running at the end.
    """
    time.sleep(warmup)
    u0, s0 = user_system(pids)
    t0 = time.monotonic()
    time.sleep(seconds)
    u1, s1 = user_system(pids)
    t1 = time.monotonic()
    alive = sum(1 for p in procs if p.poll() is None)
    used = (u1 - u0) + (s1 - s0)
    per = 1000 / ((t1 - t0) * len(procs))
    result = {"publishers": len(procs), "alive": alive, "cpu_seconds": used,
              "wall": t1 - t0,
              "cpu_ms_per_stream_second": used * per,
              "user_ms_per_stream_second": (u1 - u0) * per,
              "system_ms_per_stream_second": (s1 - s0) * per,
              "cpu_fraction_of_core": used / (t1 - t0)}
    if alive != len(procs):
        result["error"] = "{} of {} publishers exited".format(len(procs) - alive, len(procs))
    return result


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def ffmpeg_tokengate(args, clip: str, hls: bool, tmp: str, root: str = ROOT) -> dict:
    tg = Tokengate(tmp, root=root)
    procs: list[subprocess.Popen] = []
    try:
        tg.settings(publishTokenControlEnabled=True, hlsMuxingEnabled=hls)
        urls = ["rtmp://127.0.0.1:{}/LiveApp/f{}?token={}".format(
            tg.rtmp, i, tg.token("f{}".format(i), "publish")) for i in range(args.publishers)]
        procs = ffmpeg_publishers(clip, urls, os.path.join(tmp, "ffmpeg-tokengate.log"))
        result = measure_ffmpeg(procs, [tg.pid], args.seconds, args.warmup)
        text = urllib.request.urlopen(tg.base + "/metrics").read().decode()
        m = re.search(r'tokengate_bytes_total\{direction="in",protocol="rtmp"\} ([0-9.e+]+)',
                      text)
        result["rtmp_bytes_in"] = float(m.group(1)) if m else 0.0
        if hls:
            # every stream packaged: its playlist is served
            missing = 0
            for i in range(args.publishers):
                try:
                    urllib.request.urlopen("{}/LiveApp/streams/f{}.m3u8".format(tg.base, i),
                                           timeout=5).read()
                except OSError:
                    missing += 1
            if missing:
                result["error"] = "{} streams without a playlist".format(missing)
        return result
    finally:
        stop_all(procs)
        tg.stop()


def ffmpeg_nginx(args, clip: str, hls: bool, tmp: str) -> dict:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    module = "/usr/lib/nginx/modules/ngx_rtmp_module.so"
    if not os.path.exists(nginx) or not os.path.exists(module):
        return {"error": "nginx with libnginx-mod-rtmp is not installed"}
    rtmp = free_port()
    auth = ThreadingHTTPServer(("127.0.0.1", 0), _AuthHandler)
    threading.Thread(target=auth.serve_forever, daemon=True).start()
    hls_dir = os.path.join(tmp, "hls")
    os.makedirs(hls_dir, exist_ok=True)
    os.chmod(tmp, 0o755)
    os.chmod(hls_dir, 0o777)  # nginx workers may run as nobody
    conf = os.path.join(tmp, "nginx-ffmpeg.conf")
    with open(conf, "w") as f:
        f.write("""
load_module {module};
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 8192; }}
rtmp {{
  server {{
    listen 127.0.0.1:{rtmp};
    chunk_size 4096;
    application LiveApp {{
      live on;
      on_publish http://127.0.0.1:{auth}/auth;
      notify_method get;
      {hls}
    }}
  }}
}}
""".format(module=module, tmp=tmp, rtmp=rtmp, auth=auth.server_address[1],
           hls="hls on; hls_path {}; hls_fragment 2s; hls_playlist_length 10s;".format(hls_dir)
           if hls else "hls off;"))
    proc = subprocess.Popen(pinned([nginx, "-c", conf, "-p", tmp], 0))
    procs: list[subprocess.Popen] = []
    try:
        time.sleep(1)
        _AuthHandler.calls = 0
        urls = ["rtmp://127.0.0.1:{}/LiveApp/f{}?token=t{}".format(rtmp, i, i)
                for i in range(args.publishers)]
        procs = ffmpeg_publishers(clip, urls, os.path.join(tmp, "ffmpeg-nginx.log"))
        out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                             text=True).stdout
        pids = [proc.pid] + [int(p) for p in out.split()]
        result = measure_ffmpeg(procs, pids, args.seconds, args.warmup)
        result["auth_calls"] = _AuthHandler.calls
        if _AuthHandler.calls < args.publishers:
            result["error"] = "only {} publishes were authorised".format(_AuthHandler.calls)
        if hls:
            playlists = [n for n in os.listdir(hls_dir) if n.endswith(".m3u8")]
            if len(playlists) < args.publishers:
                result["error"] = "{} of {} playlists written".format(
                    len(playlists), args.publishers)
        return result
    finally:
        stop_all(procs)
        proc.terminate()
        proc.wait(20)
        auth.shutdown()
        auth.server_close()


def main_ffmpeg(args) -> None:
    if not shutil.which("ffmpeg"):
        raise SystemExit("ffmpeg is not installed")
    clip = make_clip(args.clip_seconds)
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.hls]
    if args.ab:
        return main_ab(args, clip, modes)
    rows: dict[bool, list[tuple[float, float]]] = {m: [] for m in modes}
    users: dict[bool, list[tuple[float, float]]] = {m: [] for m in modes}
    for n in range(args.rounds):
        for hls in modes:
            # alternate which server goes first, round to round
            pair = {}
            for name in (("tokengate", "nginx") if n % 2 == 0 else ("nginx", "tokengate")):
                tmp = tempfile.mkdtemp()
                try:
                    run = ffmpeg_tokengate if name == "tokengate" else ffmpeg_nginx
                    pair[name] = run(args, clip, hls, tmp)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                print("round {} HLS {}: {}: {}".format(n + 1, "on" if hls else "off", name,
                                                      json.dumps(pair[name])), flush=True)
                if "error" in pair[name]:
                    raise SystemExit(1)
            rows[hls].append((pair["tokengate"]["cpu_ms_per_stream_second"],
                              pair["nginx"]["cpu_ms_per_stream_second"]))
            users[hls].append((pair["tokengate"]["user_ms_per_stream_second"],
                               pair["nginx"]["user_ms_per_stream_second"]))
    print("{} ffmpeg publishers (-re -c copy, {} s clip), {:g} s measured per run:".format(
        args.publishers, args.clip_seconds, args.seconds))
    for hls in modes:
        tg = [t for t, _ in rows[hls]]
        ng = [g for _, g in rows[hls]]
        ratios = [t / g for t, g in rows[hls]]
        print("  HLS {:3}: tokengate {} CPU-ms/stream-s, nginx-rtmp {}, ratio {} (per round)".format(
            "on" if hls else "off", " ".join("{:.2f}".format(x) for x in tg),
            " ".join("{:.2f}".format(x) for x in ng),
            " ".join("{:.2f}".format(x) for x in ratios)))
        print("           user time only: tokengate {}, nginx-rtmp {}".format(
            " ".join("{:.2f}".format(t) for t, _ in users[hls]),
            " ".join("{:.2f}".format(g) for _, g in users[hls])))


def main_ab(args, clip: str, modes: list[bool]) -> None:
    """
    tokengate from another tree (C{--ab}, the base) and from this one, run
    alternately under the same ffmpeg load: the paired ratio this / base
    of CPU per stream-second, per round.
    """
    trees = {"base": os.path.abspath(args.ab), "this": ROOT}
    rows: dict[bool, list[tuple[float, float]]] = {m: [] for m in modes}
    for n in range(args.rounds):
        for hls in modes:
            pair = {}
            for name in (("base", "this") if n % 2 == 0 else ("this", "base")):
                tmp = tempfile.mkdtemp()
                try:
                    pair[name] = ffmpeg_tokengate(args, clip, hls, tmp, trees[name])
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                print("round {} HLS {}: {}: {}".format(n + 1, "on" if hls else "off", name,
                                                      json.dumps(pair[name])), flush=True)
                if "error" in pair[name]:
                    raise SystemExit(1)
            rows[hls].append((pair["base"]["cpu_ms_per_stream_second"],
                              pair["this"]["cpu_ms_per_stream_second"]))
    print("{} ffmpeg publishers, tokengate from {} (base) and {} (this):".format(
        args.publishers, trees["base"], trees["this"]))
    for hls in modes:
        ratios = sorted(t / b for b, t in rows[hls])
        print("  HLS {:3}: base {} CPU-ms/stream-s, this {}; this/base median {:.3f} ({})".format(
            "on" if hls else "off", " ".join("{:.2f}".format(b) for b, _ in rows[hls]),
            " ".join("{:.2f}".format(t) for _, t in rows[hls]),
            ratios[len(ratios) // 2], " ".join("{:.3f}".format(r) for r in ratios)))


def run_driver(port, names, players, slices, pids, seconds, bytes_in=None) -> dict:
    """
    Run the load from this process's reactor until done (the reactor runs
    once per benchmark target, iterating until the Deferred fires).
    """
    d = defer.Deferred.fromCoroutine(drive(port, names, players, slices, pids, seconds, bytes_in))
    box: list = []
    d.addBoth(box.append)
    while not box:
        reactor.iterate(0.01)
    for conn in list(getattr(reactor, "_selectables", {}).values()):
        if isinstance(getattr(conn, "protocol", None), Client):
            conn.loseConnection()
    for _ in range(100):
        reactor.iterate(0.01)
    if isinstance(box[0], Exception) or hasattr(box[0], "getTraceback"):
        raise SystemExit(box[0].getTraceback())
    return box[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--publishers", type=int, default=200)
    parser.add_argument("--players", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--clip-seconds", type=int, default=40)
    parser.add_argument("--ffmpeg", action="store_true",
                        help="real ffmpeg publishers (-re -c copy) instead of the replaying client")
    parser.add_argument("--hls", choices=("off", "on", "both"), default="both",
                        help="with --ffmpeg: HLS packaging on both servers")
    parser.add_argument("--rounds", type=int, default=1,
                        help="with --ffmpeg: rounds of the servers run alternately")
    parser.add_argument("--ab", metavar="TREE",
                        help="with --ffmpeg: compare tokengate from TREE (the base) with this "
                             "tree's, alternately, instead of with nginx-rtmp")
    parser.add_argument("--warmup", type=float, default=5,
                        help="with --ffmpeg: seconds after the publishers start")
    args = parser.parse_args()
    if args.ffmpeg:
        return main_ffmpeg(args)
    if shutil.which("taskset"):
        os.sched_setaffinity(0, {1})
    clip = make_clip(args.clip_seconds)
    slices, bitrate = slices_of(clip)
    print("clip: {:.2f} Mbps, {} slices".format(bitrate / 1e6, len(slices)))
    reactor.startRunning(installSignalHandlers=False)
    tmp = tempfile.mkdtemp()
    try:
        tg = run_tokengate(args, slices, tmp)
        print("tokengate:", json.dumps(tg, indent=None))
        ng = run_nginx(args, slices, tmp)
        print("nginx-rtmp:", json.dumps(ng, indent=None))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if "error" in tg or "error" in ng:
        raise SystemExit(1)
    print("{} publishers x {:.1f} Mbps{}:".format(
        args.publishers, bitrate / 1e6, ", {} players".format(args.players) if args.players else ""))
    print("  tokengate  CPU per stream-second {:.5f} s ({:.0%} of a core), dropped {}".format(
        tg["cpu_per_stream_second"], tg["cpu_fraction_of_core"], tg["dropped"]))
    print("  nginx-rtmp CPU per stream-second {:.5f} s ({:.0%} of a core), dropped {}".format(
        ng["cpu_per_stream_second"], ng["cpu_fraction_of_core"], ng["dropped"]))
    print("  ratio tokengate / nginx-rtmp: {:.2f}".format(
        tg["cpu_per_stream_second"] / ng["cpu_per_stream_second"]))


if __name__ == "__main__":
    main()
