"""
Run by tests/interop/test_datastore_webrtc.py in a subprocess (on its own
asyncio reactor, as L{tests.webrtc_media_script}):

    python tests/webrtc_publish_script.py CLIP WS_URL STREAMID[:TOKEN] ...

For each stream, aiortc publishes CLIP over the WebSocket signalling at
WS_URL (with the token, if given) and stops once the server has answered
(C{publish_started}, or an error).  Prints one JSON line: for each stream,
the answer's C{definition}.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tests.webrtc_media_script as media  # noqa: E402  (installs the asyncio reactor)


async def main(clip: str, url: str, *streams: str) -> None:
    answers: dict[str, object] = {}
    for spec in streams:
        streamId, _, token = spec.partition(":")
        ws, pc, m = await media.publish(url, clip, token or None, streamId=streamId)
        answers[streamId] = m.get("definition")
        if pc is not None:
            await media.aw(pc.close())
        ws.proto.sendClose()
    print(json.dumps(answers), flush=True)


if __name__ == "__main__":
    media.run(main, *sys.argv[1:])
