"""
aiortc as a WHIP and as a WHEP client (RFC 9725), run by
tests/interop/test_whip.py in a subprocess with its own asyncio loop:

    python tests/whip_client_script.py publish ENDPOINT TOKEN CLIP SECONDS
    python tests/whip_client_script.py play ENDPOINT TOKEN SECONDS [FRAMES]

C{publish} sends CLIP (H.264 and Opus) to the WHIP endpoint with
C{Authorization: Bearer TOKEN} for SECONDS once connected, then DELETEs
the session; C{play} receives from the WHEP endpoint until FRAMES video
frames were decoded (or SECONDS passed), then DELETEs it.  An empty TOKEN
sends no Authorization.  Prints one JSON line: the POST's status, headers
and body (when refused), whether the peer connection connected, the frames
(play), and the DELETE's status.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Optional
from urllib.parse import urljoin


def http(method: str, url: str, body: bytes = b"",
         headers: Optional[dict[str, str]] = None) -> tuple[int, dict[str, list[str]], bytes]:
    req = urllib.request.Request(url, data=body or None, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, _headers(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, _headers(e.headers), e.read()


def _headers(h: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in h.items():
        out.setdefault(k.lower(), []).append(v)
    return out


async def connect(pc: Any, endpoint: str, token: str, out: dict[str, Any]) -> Optional[str]:
    """
    POST the offer; set the answer; the session's URL, or None (refused).
    """
    from aiortc import RTCSessionDescription

    await pc.setLocalDescription(await pc.createOffer())
    headers = {"content-type": "application/sdp"}
    if token:
        headers["authorization"] = "Bearer " + token
    started = time.monotonic()
    status, h, body = await asyncio.to_thread(
        http, "POST", endpoint, pc.localDescription.sdp.encode(), headers)
    out.update(status=status, answerSeconds=round(time.monotonic() - started, 3),
               location=h.get("location", [None])[0], etag=h.get("etag", [None])[0],
               acceptPatch=h.get("accept-patch", [None])[0], link=h.get("link", []),
               contentType=h.get("content-type", [None])[0])
    if status != 201:
        out["body"] = body.decode("utf-8", "replace")
        return None
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body.decode(), type="answer"))
    return urljoin(endpoint, out["location"])


async def waitConnected(pc: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pc.connectionState == "connected":
            return True
        if pc.connectionState in ("failed", "closed"):
            return False
        await asyncio.sleep(0.1)
    return False


async def publish(endpoint: str, token: str, clip: str, seconds: str) -> dict[str, Any]:
    from aiortc import RTCPeerConnection, RTCRtpSender
    from aiortc.contrib.media import MediaPlayer

    out: dict[str, Any] = {}
    player = MediaPlayer(clip)
    pc = RTCPeerConnection()
    t = pc.addTransceiver(player.video, direction="sendonly")
    t.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                           if c.mimeType == "video/H264"])
    if player.audio is not None:
        pc.addTransceiver(player.audio, direction="sendonly")
    try:
        session = await connect(pc, endpoint, token, out)
        if session is None:
            return out
        out["connected"] = await waitConnected(pc, 20)
        if out["connected"]:
            # publish for that long, or until the server ends the session
            deadline = asyncio.get_running_loop().time() + float(seconds)
            while (asyncio.get_running_loop().time() < deadline
                   and pc.connectionState not in ("failed", "closed")):
                await asyncio.sleep(0.2)
        out["stateBeforeDelete"] = pc.connectionState
        out["delete"] = (await asyncio.to_thread(http, "DELETE", session))[0]
        out["deleteAgain"] = (await asyncio.to_thread(http, "DELETE", session))[0]
        return out
    finally:
        await pc.close()


async def play(endpoint: str, token: str, seconds: str, frames: str = "50") -> dict[str, Any]:
    from aiortc import RTCPeerConnection
    from aiortc.mediastreams import MediaStreamError

    out: dict[str, Any] = {"frames": 0, "audioFrames": 0, "size": None}
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    enough = asyncio.Event()
    tasks = []

    async def pump(track: Any) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if track.kind == "video":
                out["frames"] += 1
                out["size"] = [frame.width, frame.height]
                if out["frames"] >= int(frames):
                    enough.set()
            else:
                out["audioFrames"] += 1
                out["audioRate"] = frame.sample_rate

    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(pump(track))))
    try:
        session = await connect(pc, endpoint, token, out)
        if session is None:
            return out
        out["connected"] = await waitConnected(pc, 20)
        # enough frames, the tracks ended (the server ended the session), or
        # the time is up
        deadline = asyncio.get_running_loop().time() + float(seconds)
        while (not enough.is_set() and asyncio.get_running_loop().time() < deadline
               and not (tasks and all(t.done() for t in tasks))
               and pc.connectionState not in ("failed", "closed")):
            await asyncio.sleep(0.2)
        out["delete"] = (await asyncio.to_thread(http, "DELETE", session))[0]
        return out
    finally:
        for t in tasks:
            t.cancel()
        await pc.close()


def main() -> None:
    command, *args = sys.argv[1:]
    out: dict[str, Any]
    try:
        out = asyncio.run(asyncio.wait_for(
            publish(*args) if command == "publish" else play(*args), 150))
    except BaseException as e:  # report, never hang
        out = {"exception": repr(e)}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
