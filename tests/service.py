"""
Run tokengate as a real ``twistd`` subprocess for end-to-end tests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class TokengateProcess:
    """
    ``twistd -n tokengate`` on loopback ports, in a data directory;
    C{reactor="asyncio"} runs it on the asyncio reactor (WebRTC media).
    """

    def __init__(self, dataDir: str, extra: tuple[str, ...] = (), http: Optional[int] = None,
                 rtmp: Optional[int] = None, srt: Optional[int] = None,
                 reactor: Optional[str] = None) -> None:
        self.reactor = reactor
        self.dataDir = os.path.abspath(dataDir)
        self.http = http or free_port()
        self.rtmp = rtmp or free_port()
        self.srt = srt or free_port(socket.SOCK_DGRAM)
        self.extra = extra
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.log = os.path.join(self.dataDir, "twistd.log")

    @property
    def base(self) -> str:
        return "http://127.0.0.1:{}".format(self.http)

    def argv(self) -> list[str]:
        return [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "--logfile", self.log,
            *(("-r", self.reactor) if self.reactor else ()),
            "tokengate",
            "--data-dir", self.dataDir,
            "--http", "tcp:{}:interface=127.0.0.1".format(self.http),
            "--rtmp", "tcp:{}:interface=127.0.0.1".format(self.rtmp),
            "--srt", "udp:{}:interface=127.0.0.1".format(self.srt),
            *self.extra,
        ]

    def start(self, timeout: float = 20.0) -> "TokengateProcess":
        os.makedirs(self.dataDir, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            self.argv(), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise RuntimeError("tokengate exited: {}\n{}".format(err.decode(), self.logText()))
            try:
                urllib.request.urlopen(self.base + "/rest/v2/applications", timeout=1).read()
                return self
            except OSError:
                time.sleep(0.1)
        self.kill()
        raise RuntimeError("tokengate did not start in {} s\n{}".format(timeout, self.logText()))

    def logText(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc.communicate()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc.communicate()
            self.proc = None

    def get(self, path: str) -> tuple[int, Any]:
        import json
        import urllib.error

        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        import json
        import urllib.error

        req = urllib.request.Request(
            self.base + path, data=json.dumps(body).encode(), method="POST",
            headers={"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")
