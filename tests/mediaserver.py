"""
The WebRTC-capable test server: tests/webrtc_media_script.py C{serve} (a
tokengate on its own asyncio reactor, LiveApp with publish and play token
control), started from a trial test, and minting tokens over its REST API.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from twisted.internet import reactor, task

from . import procs

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "webrtc_media_script.py")


async def serve(testcase: Any, timeout: float = 150) -> tuple[str, dict]:
    """
    Start the server for C{testcase} (killed at its cleanup, and after
    C{timeout} seconds whatever happens).

    @return: its HTTP base URL, and the ports it printed (C{http}, C{rtmp}).
    """
    r = procs.start([sys.executable, SCRIPT, "-", "serve"], timeout)
    testcase.addCleanup(lambda: (r.kill(), r.done)[1])
    ports = None
    for _ in range(200):
        text = b"".join(r.proto.out).decode()
        if text.strip():
            ports = json.loads(text.splitlines()[0])
            break
        await task.deferLater(reactor, 0.05)
    testcase.assertIsNotNone(ports, r.stderrSoFar())
    return "http://127.0.0.1:{}".format(ports["http"]), ports


async def mint(web: str, streamId: str, type: str, app: str = "LiveApp") -> str:
    """
    A token minted over the REST API of the server at C{web}.
    """
    import treq

    resp = await treq.get(
        "{}/{}/rest/v2/broadcasts/{}/token?expireDate={}&type={}".format(
            web, app, streamId, int(time.time()) + 600, type), persistent=False)
    return json.loads(await resp.content())["tokenId"]
