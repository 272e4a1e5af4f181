"""
A GStreamer webrtcbin client (the stack of simple-whip-client and
GStreamer's whipsink) of tokengate's Ant Media WebSocket signalling, run by
tests/interop/test_webrtc_dtls.py with the system Python (python3-gi,
GStreamer 1.22), bounded in time:

    python3 tests/webrtcbin_client.py publish WS_URL STREAMID TOKEN SECONDS
    python3 tests/webrtcbin_client.py play WS_URL STREAMID TOKEN SECONDS

C{publish}: videotestsrc ! openh264enc ! rtph264pay and audiotestsrc !
opusenc ! rtpopuspay into webrtcbin, which offers (C{a=setup:actpass}, its
own RSA certificate); the answer is taken, candidates are trickled both
ways; the media flows for SECONDS, then the client sends C{stop}.

C{play}: takes the server's offer, answers, and decodes the video it
receives (decodebin) for SECONDS, counting frames.

Prints one JSON line per signalling message received (C{{"message": ...}})
and, last, a summary: the peer connection states webrtcbin went through,
the errors on its bus (a DTLS handshake failure shows there), and for
C{play} the decoded video frames and their size.  Nothing here logs the
token.

Only the standard library and gi: the WebSocket client is a minimal
RFC 6455 one (text frames, masked, ping/pong, close).
"""

from __future__ import annotations

import base64
import json
import os
import queue
import socket
import struct
import sys
import threading
import time
from typing import Any, Optional
from urllib.parse import urlsplit

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import Gst, GstSdp, GstWebRTC  # noqa: E402

#: the largest WebSocket message taken from the server
MAX_MESSAGE = 1 << 20


class WebSocket:
    """
    A minimal blocking RFC 6455 client: text messages only.
    """

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port or 80), timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        path = parts.path + ("?" + parts.query if parts.query else "")
        self.sock.sendall((
            "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n").format(
                path, parts.hostname, parts.port, key).encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            data = self.sock.recv(4096)
            if not data or len(self.buffer) > 65536:
                raise IOError("no WebSocket handshake")
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise IOError("WebSocket refused: " + head.split(b"\r\n")[0].decode())
        self.lock = threading.Lock()
        self.closed = False
        self.fragments: list[bytes] = []

    def _frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        mask = os.urandom(4)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        with self.lock:
            if not self.closed:
                self.sock.sendall(header + mask + body)

    def send(self, message: dict[str, Any]) -> None:
        self._frame(1, json.dumps(message).encode())

    def close(self) -> None:
        try:
            self._frame(8, struct.pack("!H", 1000))
        except OSError:
            pass
        self.closed = True
        self.sock.close()

    def _take(self, n: int) -> Optional[bytes]:
        if len(self.buffer) < n:
            return None
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def _parse(self) -> Optional[tuple[int, bool, bytes]]:
        if len(self.buffer) < 2:
            return None
        b0, b1 = self.buffer[0], self.buffer[1]
        n, offset = b1 & 0x7F, 2
        if n == 126:
            if len(self.buffer) < 4:
                return None
            n, offset = struct.unpack("!H", self.buffer[2:4])[0], 4
        elif n == 127:
            if len(self.buffer) < 10:
                return None
            n, offset = struct.unpack("!Q", self.buffer[2:10])[0], 10
        if n > MAX_MESSAGE:
            raise IOError("WebSocket frame too big")
        if len(self.buffer) < offset + n:
            return None
        payload = self.buffer[offset:offset + n]
        self.buffer = self.buffer[offset + n:]
        return b0 & 0x0F, bool(b0 & 0x80), payload

    def receive(self, wait: float) -> Optional[dict[str, Any]]:
        """
        The next message, or L{None} after C{wait} seconds without one (or
        once closed).
        """
        deadline = time.monotonic() + wait
        while not self.closed:
            frame = self._parse()
            if frame is not None:
                opcode, fin, payload = frame
                if opcode == 9:
                    self._frame(10, payload)
                elif opcode == 8:
                    self.closed = True
                    return None
                elif opcode in (0, 1):
                    self.fragments.append(payload)
                    if fin:
                        text = b"".join(self.fragments)
                        self.fragments = []
                        return json.loads(text)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None
            if not data:
                self.closed = True
                return None
            self.buffer += data
        return None


PUBLISH_PIPELINE = (
    "webrtcbin name=w bundle-policy=max-bundle "
    "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=25/1 "
    "! videoconvert ! openh264enc gop-size=25 ! video/x-h264,profile=constrained-baseline "
    "! h264parse ! rtph264pay config-interval=-1 aggregate-mode=zero-latency "
    "! application/x-rtp,media=video,encoding-name=H264,payload=96 ! w. "
    "audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample ! opusenc "
    "! rtpopuspay ! application/x-rtp,media=audio,encoding-name=OPUS,payload=97 ! w. "
)


class Client:
    """
    One webrtcbin peer connection, signalled over the WebSocket.
    """

    def __init__(self, mode: str, url: str, streamId: str, token: str, seconds: float) -> None:
        self.mode = mode
        self.streamId = streamId
        self.token = token
        self.seconds = seconds
        self.events: "queue.Queue[tuple[str, Any]]" = queue.Queue()
        self.states: list[str] = []
        self.errors: list[str] = []
        self.frames = 0
        self.size: Optional[list[int]] = None
        self.lock = threading.Lock()
        if mode == "publish":
            self.pipe = Gst.parse_launch(PUBLISH_PIPELINE)
        else:
            self.pipe = Gst.Pipeline.new("player")
            self.pipe.add(Gst.ElementFactory.make("webrtcbin", "w"))
        self.w = self.pipe.get_by_name("w")
        self.w.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
        self.w.connect("on-negotiation-needed", lambda w: self.events.put(("negotiate", None)))
        self.w.connect("on-ice-candidate", self._candidate)
        self.w.connect("notify::connection-state", self._state)
        self.w.connect("pad-added", self._padAdded)
        self.ws = WebSocket(url)

    # --- webrtcbin's threads ------------------------------------------------------------

    def _candidate(self, w: Any, mline: int, candidate: str) -> None:
        self.events.put(("candidate", (mline, candidate)))

    def _state(self, w: Any, spec: Any) -> None:
        state = w.get_property("connection-state").value_nick
        with self.lock:
            self.states.append(state)

    def _padAdded(self, w: Any, pad: Any) -> None:
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        decode = Gst.ElementFactory.make("decodebin")
        decode.connect("pad-added", self._decoded)
        self.pipe.add(decode)
        decode.sync_state_with_parent()
        pad.link(decode.get_static_pad("sink"))

    def _decoded(self, decode: Any, pad: Any) -> None:
        caps = pad.get_current_caps() or pad.query_caps(None)
        name = caps.get_structure(0).get_name()
        sink = Gst.ElementFactory.make("fakesink")
        sink.set_property("sync", False)
        if name.startswith("video/"):
            sink.set_property("signal-handoffs", True)
            sink.connect("handoff", self._frame)
        self.pipe.add(sink)
        sink.sync_state_with_parent()
        pad.link(sink.get_static_pad("sink"))

    def _frame(self, sink: Any, buffer: Any, pad: Any) -> None:
        with self.lock:
            self.frames += 1
            if self.size is None:
                caps = pad.get_current_caps()
                if caps is not None:
                    s = caps.get_structure(0)
                    self.size = [s.get_value("width"), s.get_value("height")]

    # --- the main thread ------------------------------------------------------------------

    def _mids(self, sdp: str) -> list[str]:
        return [line[len("a=mid:"):].strip() for line in sdp.splitlines()
                if line.startswith("a=mid:")]

    def _description(self, kind: Any, text: str) -> Any:
        result, message = GstSdp.SDPMessage.new_from_text(text)
        if result != GstSdp.SDPResult.OK:
            raise ValueError("the server's SDP does not parse")
        return GstWebRTC.WebRTCSessionDescription.new(kind, message)

    def _call(self, signal: str, *args: Any) -> Any:
        promise = Gst.Promise.new()
        self.w.emit(signal, *args, promise)
        promise.wait()
        return promise.get_reply()

    def _sendLocal(self, kind: str) -> None:
        reply = self._call("create-" + kind, None)
        description = reply.get_value(kind)
        self._call("set-local-description", description)
        self.localSdp = description.sdp.as_text()
        self.ws.send({"command": "takeConfiguration", "streamId": self.streamId,
                      "type": kind, "sdp": self.localSdp})

    def _bus(self) -> None:
        bus = self.pipe.get_bus()
        while True:
            m = bus.pop_filtered(Gst.MessageType.ERROR | Gst.MessageType.WARNING)
            if m is None:
                return
            if m.type == Gst.MessageType.ERROR:
                err, debug = m.parse_error()
            else:
                err, debug = m.parse_warning()
            self.errors.append("{}: {} ({})".format(m.src.get_name(), err.message, debug))

    def run(self) -> dict[str, Any]:
        self.localSdp = self.remoteSdp = ""
        self.ws.send({"command": self.mode, "streamId": self.streamId, "token": self.token,
                      "video": True, "audio": True})
        deadline = time.monotonic() + self.seconds
        started = False
        messages: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            m = self.ws.receive(0.1)
            if m is not None:
                messages.append(m)
                print(json.dumps({"message": {k: v for k, v in m.items() if k != "sdp"}}),
                      flush=True)
                command = m.get("command")
                if command == "start" and self.mode == "publish" and not started:
                    started = True
                    self.pipe.set_state(Gst.State.PLAYING)
                if command == "takeConfiguration":
                    self.remoteSdp = str(m.get("sdp"))
                if command == "takeConfiguration" and m.get("type") == "offer":
                    self.pipe.set_state(Gst.State.PLAYING)
                    self._call("set-remote-description",
                               self._description(GstWebRTC.WebRTCSDPType.OFFER, m["sdp"]))
                    self._sendLocal("answer")
                elif command == "takeConfiguration" and m.get("type") == "answer":
                    self._call("set-remote-description",
                               self._description(GstWebRTC.WebRTCSDPType.ANSWER, m["sdp"]))
                elif command == "takeCandidate":
                    candidate = m.get("candidate") or ""
                    if candidate and not candidate.startswith("candidate:"):
                        candidate = "candidate:" + candidate
                    if candidate:
                        self.w.emit("add-ice-candidate", int(m.get("label") or 0), candidate)
                elif command == "error" or m.get("definition") in ("publish_finished",
                                                                   "play_finished"):
                    break
            if self.ws.closed:
                break
            while not self.events.empty():
                event, value = self.events.get()
                if event == "negotiate" and self.mode == "publish":
                    self._sendLocal("offer")
                elif event == "candidate":
                    mline, candidate = value
                    mids = self._mids(self.localSdp)
                    self.ws.send({"command": "takeCandidate", "streamId": self.streamId,
                                  "label": mline,
                                  "id": mids[mline] if mline < len(mids) else str(mline),
                                  "candidate": candidate})
            self._bus()
        self.ws.send({"command": "stop", "streamId": self.streamId})
        self._bus()
        self.pipe.set_state(Gst.State.NULL)
        self.ws.close()
        def setup(sdp: str) -> list[str]:
            return [line.strip() for line in sdp.splitlines() if line.startswith("a=setup:")][:1]

        with self.lock:
            return {"states": self.states, "errors": self.errors, "frames": self.frames,
                    "size": self.size, "localSetup": setup(self.localSdp), "remoteSetup": setup(self.remoteSdp),
                    "notifications": [m.get("definition") for m in messages
                                      if m.get("command") in ("notification", "error")]}


def main(mode: str, url: str, streamId: str, token: str, seconds: str) -> None:
    Gst.init(None)
    out = Client(mode, url, streamId, token, float(seconds)).run()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:6])
