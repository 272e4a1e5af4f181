"""
GStreamer's webrtcbin as a WHIP client (what simple-whip-client does), run by
tests/interop/test_whip.py with the system Python (python3-gi, GStreamer
1.22), bounded in time:

    python3 tests/webrtcbin_whip_client.py ENDPOINT TOKEN SECONDS

It offers (H.264 from openh264enc, Opus; webrtcbin's RSA certificate,
C{a=setup:actpass}) before gathering, POSTs the offer with
C{Authorization: Bearer TOKEN}, then trickles its candidates to the
session's resource with C{PATCH} (C{application/trickle-ice-sdpfrag},
C{If-Match} with the ETag), ending with C{a=end-of-candidates}; media flows
for SECONDS once connected, then it DELETEs the session.  Prints one JSON
line: the POST's status and headers, each PATCH's status, the connection
states, the bus errors, and the DELETE's status.  Nothing here logs the
token.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Optional
from urllib.parse import urljoin

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gi  # noqa: E402

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import Gst, GstSdp, GstWebRTC  # noqa: E402

from webrtcbin_client import PUBLISH_PIPELINE  # noqa: E402


def http(method: str, url: str, body: bytes = b"",
         headers: Optional[dict[str, str]] = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body or None, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def main(endpoint: str, token: str, seconds: str) -> dict[str, Any]:
    Gst.init(None)
    pipe = Gst.parse_launch(PUBLISH_PIPELINE)
    w = pipe.get_by_name("w")
    w.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
    events: "queue.Queue[tuple[str, Any]]" = queue.Queue()
    states: list[str] = []
    lock = threading.Lock()
    w.connect("on-negotiation-needed", lambda _: events.put(("negotiate", None)))
    w.connect("on-ice-candidate", lambda _, mline, c: events.put(("candidate", (mline, c))))

    def stateChanged(_: Any, __: Any) -> None:
        with lock:
            states.append(w.get_property("connection-state").value_nick)

    def gathering(_: Any, __: Any) -> None:
        if w.get_property("ice-gathering-state").value_nick == "complete":
            events.put(("gathered", None))

    w.connect("notify::connection-state", stateChanged)
    w.connect("notify::ice-gathering-state", gathering)

    def call(signal: str, *args: Any) -> Any:
        promise = Gst.Promise.new()
        w.emit(signal, *args, promise)
        promise.wait()
        return promise.get_reply()

    out: dict[str, Any] = {"patches": [], "errors": []}
    session: Optional[str] = None
    etag = ""
    local = ""
    pending: list[tuple[int, str]] = []
    ended = False
    pipe.set_state(Gst.State.PLAYING)
    deadline = time.monotonic() + 60
    connectedAt: Optional[float] = None

    def fragment(candidates: list[tuple[int, str]], end: bool) -> bytes:
        lines = [ln for ln in local.splitlines()
                 if ln.startswith(("a=ice-ufrag:", "a=ice-pwd:"))][:2]
        mids = [ln[len("a=mid:"):] for ln in local.splitlines() if ln.startswith("a=mid:")]
        lines += ["m=audio 9 UDP/TLS/RTP/SAVPF 0", "a=mid:" + (mids[0] if mids else "0")]
        lines += ["a=" + c for _, c in candidates]
        if end:
            lines.append("a=end-of-candidates")
        return ("\r\n".join(lines) + "\r\n").encode()

    def patch(end: bool) -> None:
        nonlocal pending
        batch, pending = pending, []
        status, _, _ = http("PATCH", session or "", fragment(batch, end), {
            "content-type": "application/trickle-ice-sdpfrag", "if-match": etag})
        out["patches"].append(status)

    while time.monotonic() < deadline:
        try:
            event, value = events.get(timeout=0.1)
        except queue.Empty:
            event, value = "", None
        if event == "negotiate" and "status" not in out:
            reply = call("create-offer", None)  # owns the offer: keep it
            offer = reply.get_value("offer")
            call("set-local-description", offer)
            local = offer.sdp.as_text()
            headers = {"content-type": "application/sdp"}
            if token:
                headers["authorization"] = "Bearer " + token
            status, h, body = http("POST", endpoint, local.encode(), headers)
            out.update(status=status, location=h.get("location"), etag=h.get("etag"),
                       acceptPatch=h.get("accept-patch"))
            if status != 201:
                out["body"] = body.decode("utf-8", "replace")
                break
            session, etag = urljoin(endpoint, h["location"]), h.get("etag", "")
            result, message = GstSdp.SDPMessage.new_from_text(body.decode())
            out["answerSetup"] = [ln for ln in body.decode().splitlines()
                                  if ln.startswith("a=setup:")][:1]
            call("set-remote-description", GstWebRTC.WebRTCSessionDescription.new(
                GstWebRTC.WebRTCSDPType.ANSWER, message))
        elif event == "candidate":
            pending.append(value)
        elif event == "gathered":
            ended = True
        if session is not None and (pending or ended) and "end" not in out:
            patch(ended)
            if ended:
                out["end"] = True
        with lock:
            connected = "connected" in states
        if connected and connectedAt is None:
            connectedAt = time.monotonic()
            deadline = connectedAt + float(seconds)
        bus = pipe.get_bus()
        while True:
            m = bus.pop_filtered(Gst.MessageType.ERROR)
            if m is None:
                break
            err, debug = m.parse_error()
            out["errors"].append("{}: {}".format(m.src.get_name(), err.message))
    if session is not None:
        out["delete"] = http("DELETE", session)[0]
    pipe.set_state(Gst.State.NULL)
    with lock:
        out["states"] = list(states)
    return out


if __name__ == "__main__":
    try:
        result = main(*sys.argv[1:4])
    except BaseException as e:  # report, never hang
        result = {"exception": repr(e)}
    print(json.dumps(result), flush=True)
