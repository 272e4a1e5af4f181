"""
A real nginx as tokengate's segment-offload edge, for the interop tests and
C{bench/offload.py}: its own prefix, pid, logs and cache in a temporary
directory, C{daemon off}, on a loopback port, including
C{contrib/nginx/tokengate-offload.conf} verbatim (docs/offload.md).
"""

from __future__ import annotations

import os
import shutil
import socket
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNIPPET = os.path.join(ROOT, "contrib", "nginx", "tokengate-offload.conf")

#: the edge's access log: no query (the links are credentials), the cache
#: status of each request ("-" when nginx answered without the upstream),
#: and the _HLS_msn of a blocking playlist reload ("-" when none)
LOG_FORMAT = "$uri $status $upstream_cache_status $arg__HLS_msn"


def nginxBinary() -> Optional[str]:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def freePort() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def writeConfig(tmp: str, port: int, upstream: int, secret: str, extra: str = "") -> str:
    """
    Write the edge's nginx.conf into C{tmp} (created, with the cache and
    temporary directories nginx's workers write, which may run as
    C{nobody}): the operator's part of docs/offload.md's example, and the
    shipped snippet included verbatim.  C{extra} is added to the C{http}
    block (the benchmark's static server).

    @return: the configuration file's path.
    """
    for sub in ("", "cache", "temp"):
        path = os.path.join(tmp, sub)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, 0o777)
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        # as root, nginx's workers would run as nobody, who may not reach a
        # private temporary directory: keep them as the user running the test
        user = "user root;" if os.geteuid() == 0 else ""
        f.write("""
{user}
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log notice;
events {{ worker_connections 1024; }}
http {{
    log_format edge '{log}';
    access_log {tmp}/access.log edge;
    client_body_temp_path {tmp}/temp/body;
    proxy_temp_path {tmp}/temp/proxy;
    fastcgi_temp_path {tmp}/temp/fastcgi;
    uwsgi_temp_path {tmp}/temp/uwsgi;
    scgi_temp_path {tmp}/temp/scgi;
    proxy_cache_path {tmp}/cache keys_zone=tokengate_segments:10m max_size=256m
                     inactive=2m use_temp_path=off;
    upstream tokengate {{
        server 127.0.0.1:{upstream};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        set $tokengate_offload_secret "{secret}";
        include {snippet};
    }}
    {extra}
}}
""".format(tmp=tmp, log=LOG_FORMAT, upstream=upstream, port=port, secret=secret,
           snippet=SNIPPET, extra=extra, user=user))
    return conf


def argv(binary: str, tmp: str, conf: str) -> list[str]:
    return [binary, "-p", tmp + "/", "-c", conf]


def accessLog(tmp: str, blocking: bool = False) -> list[tuple[str, int, str]]:
    """
    The edge's access log so far: C{(uri, status, cache status)}; only the
    blocking playlist reloads (LL-HLS C{_HLS_msn}) when C{blocking}.
    """
    try:
        with open(os.path.join(tmp, "access.log"), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        uri, status, cache, msn = line.rsplit(" ", 3)
        if msn != "-" or not blocking:
            out.append((uri, int(status), cache))
    return out
