"""
Run by tests/interop/test_security_matrix.py in a subprocess, on its own
asyncio reactor (as L{tests.webrtc_media_script}), to ask a tokengate over
its WebSocket signalling with a real WebRTC peer (aiortc):

    python tests/webrtc_access_script.py CLIP

Reads one JSON request a line on stdin, C{{"op": "publish" | "play",
"url": WS_URL, "streamId": ..., "fields": {...}}} (C{fields}: the message's
C{token}, C{subscriberId}, C{subscriberCode}, C{room}), and answers each,
in order, with one JSON line: the server's C{definition} (an error's, or
C{publish_started} / C{play_started}), its C{information} when it gave
one, and for a play the video frames aiortc decoded.  An admitted
publisher (which sends CLIP) is stopped once it is live
(C{publish_finished}); a player once it has decoded 10 frames (or after 8
seconds).  Exits when stdin closes.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tests.webrtc_media_script as media  # noqa: E402  (installs the asyncio reactor)
from twisted.internet import defer, reactor, stdio  # noqa: E402
from twisted.internet.interfaces import IHalfCloseableProtocol  # noqa: E402
from twisted.protocols.basic import LineReceiver  # noqa: E402
from zope.interface import implementer  # noqa: E402

#: the longest request line read
MAX_LINE = 16384


async def answer(clip: str, request: dict[str, Any]) -> dict[str, Any]:
    fields = dict(request.get("fields") or {})
    token = fields.pop("token", None)
    streamId = request["streamId"]
    if request["op"] == "publish":
        ws, pc, m = await media.publish(request["url"], clip, token, streamId=streamId,
                                        fields=fields)
        out = {"definition": m.get("definition"), "information": m.get("information")}
        if pc is not None:
            ws.proto.send(command="stop", streamId=streamId)
            await ws.expect(lambda m: m.get("definition") == "publish_finished")
            await media.aw(pc.close())
        ws.proto.sendClose()
        return out
    played = await media.play(request["url"], token, streamId=streamId, want=10, seconds=8.0,
                              fields=fields)
    if "error" in played:
        m = played["error"]
        return {"definition": m.get("definition"), "information": m.get("information")}
    return {"definition": played["notification"], "frames": played["frames"]}


@implementer(IHalfCloseableProtocol)
class Requests(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self, clip: str) -> None:
        self.clip = clip
        self.lock = defer.DeferredLock()
        self.stopping = False

    def lineReceived(self, line: bytes) -> None:
        self.lock.run(lambda: defer.ensureDeferred(self.one(line)))

    async def one(self, line: bytes) -> None:
        try:
            out = await answer(self.clip, json.loads(line))
        except Exception as e:
            import traceback

            traceback.print_exc()
            out = {"exception": repr(e)}
        self.transport.write(json.dumps(out).encode() + b"\n")

    def stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            reactor.stop()

    def readConnectionLost(self) -> None:
        # stdin closed: stop once the requests read are answered
        self.lock.run(self.stop)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        self.lock.run(self.stop)


if __name__ == "__main__":
    stdio.StandardIO(Requests(sys.argv[1]))
    reactor.run()
