"""
What the benchmarks share: free loopback ports, CPU pinning, process CPU
time, and a tokengate server run by twistd in a subprocess.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from typing import Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port(udp: bool = False) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pinned(argv: Sequence[str], cpu: int) -> list[str]:
    """
    C{argv} run on one CPU when C{taskset} exists (servers on CPU 0, load
    generators on CPU 1, so they do not measure each other).
    """
    return (["taskset", "-c", str(cpu)] + list(argv)) if shutil.which("taskset") else list(argv)


def cpu_seconds(pids: Sequence[int]) -> float:
    """
    User plus system CPU time of processes, from /proc.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with open("/proc/{}/stat".format(pid)) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def spread(values: Sequence[float], fmt: str) -> str:
    """
    C{median (min … max)} of C{values}, each formatted by C{fmt}.
    """
    return "{} ({} … {})".format(fmt.format(statistics.median(values)),
                                 fmt.format(min(values)).strip(),
                                 fmt.format(max(values)).strip())


def publish_clip(clip: str, rtmp: int) -> subprocess.Popen:
    """
    ffmpeg publishing C{clip} in a loop, in real time, to
    C{rtmp://127.0.0.1:rtmp/LiveApp/s1} (on CPU 1).
    """
    return subprocess.Popen(pinned(["ffmpeg", "-v", "error", "-nostdin", "-re",
                                    "-stream_loop", "-1", "-i", clip, "-c", "copy", "-f", "flv",
                                    "rtmp://127.0.0.1:{}/LiveApp/s1".format(rtmp)], 1))


def segment_file(tmp: str) -> tuple[str, str]:
    """
    C{(root, path)}: a directory under C{tmp} for nginx to serve and the
    segment file in it (a placeholder, rewritten by the bench), both
    readable by nginx workers running as another user (nobody).
    """
    root = os.path.join(tmp, "www")
    os.makedirs(root)
    disk = os.path.join(root, "seg.m4s")
    with open(disk, "wb") as f:
        f.write(b"not yet")
    for path in (tmp, root):
        os.chmod(path, 0o755)
    os.chmod(disk, 0o644)
    return root, disk


def wait_http(url: str, proc: Optional[subprocess.Popen] = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit("the server exited early")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the server did not start: " + url)


class Tokengate:
    """
    ``twistd -n tokengate`` on free loopback ports in a data directory,
    pinned to CPU 0; C{TG_PROFILE=path} in the environment profiles it.
    C{root} is the source tree it runs (another checkout, for A/B runs).
    """

    def __init__(self, tmp: str, *extra: str, asyncio: bool = False, srt: bool = False,
                 root: str = ROOT) -> None:
        self.http, self.rtmp = free_port(), free_port()
        self.srt = free_port(udp=True) if srt else None
        profile = os.environ.get("TG_PROFILE")
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                *(["-r", "asyncio"] if asyncio else []), "-n", "--pidfile=",
                "--logfile", os.path.join(tmp, "tokengate.log"),
                *(["--profile", profile, "--profiler", "cprofile", "--savestats"]
                  if profile else []),
                "tokengate", "--data-dir", os.path.join(tmp, "tokengate-data"),
                "--http", "tcp:{}:interface=127.0.0.1".format(self.http),
                "--rtmp", "tcp:{}:interface=127.0.0.1:backlog=1024".format(self.rtmp),
                "--srt", "udp:{}:interface=127.0.0.1".format(self.srt or free_port(udp=True)),
                *extra]
        self.proc = subprocess.Popen(pinned(argv, 0), cwd=root,
                                     env=dict(os.environ, PYTHONPATH=root))
        self.base = "http://127.0.0.1:{}".format(self.http)
        wait_http(self.base + "/rest/v2/applications", self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def settings(self, **changes: object) -> None:
        """
        POST changed settings of LiveApp (missing ones take their defaults).
        """
        import json

        req = urllib.request.Request(self.base + "/rest/v2/applications/settings/LiveApp",
                                     data=json.dumps(changes).encode(), method="POST")
        urllib.request.urlopen(req).read()

    def token(self, streamId: str, type: str) -> str:
        import json

        return json.loads(urllib.request.urlopen(
            self.base + "/LiveApp/rest/v2/broadcasts/{}/token?type={}&expireDate={}".format(
                streamId, type, int(time.time()) + 3600)).read())["tokenId"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


OUT = os.path.join(ROOT, "bench", "out")


def make_cbr_clip(name: str, seconds: int, size: str, kbps: int, preset: str,
                  audio_kbps: int, bframes: Optional[int] = None) -> str:
    """
    A constant-bitrate testsrc2 H.264 + AAC FLV clip at 30 fps with a 2 s
    GOP, made once with ffmpeg and cached in bench/out/.
    """
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name)
    if not os.path.exists(path):
        rate = "{}k".format(kbps)
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
             "testsrc2=size={}:rate=30".format(size),
             "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
             "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", preset, "-g", "60",
             *(["-bf", str(bframes)] if bframes is not None else []),
             "-b:v", rate, "-minrate", rate, "-maxrate", rate, "-bufsize", rate,
             "-x264-params", "nal-hrd=cbr:force-cfr=1",
             "-c:a", "aac", "-b:a", "{}k".format(audio_kbps), "-f", "flv", path + ".tmp"],
            check=True,
        )
        os.rename(path + ".tmp", path)
    return path
