"""
SDP offers and fragments for the WHIP/WHEP tests, shaped as browsers and
aiortc send them (not answerable by a real engine: the fingerprint and the
candidates are made up).
"""

from __future__ import annotations


def offer(direction: str = "sendonly", video: str = "H264", audio: str = "opus",
          ufrag: str = "uFrA", pwd: str = "pAsSwOrDpAsSwOrDpAsSwOrD") -> str:
    lines = [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=msid-semantic: WMS",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 0.0.0.0",
        "a=ice-ufrag:" + ufrag,
        "a=ice-pwd:" + pwd,
        "a=ice-options:trickle",
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
        "a=setup:actpass",
        "a=mid:0",
        "a=" + direction,
        "a=rtcp-mux",
        "a=rtpmap:111 {}/48000/2".format(audio),
        "m=video 9 UDP/TLS/RTP/SAVPF 102",
        "c=IN IP4 0.0.0.0",
        "a=ice-ufrag:" + ufrag,
        "a=ice-pwd:" + pwd,
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
        "a=setup:actpass",
        "a=mid:1",
        "a=" + direction,
        "a=rtcp-mux",
        "a=rtpmap:102 {}/90000".format(video),
        "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
    ]
    return "\r\n".join(lines) + "\r\n"


CANDIDATE = "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host"


def fragment(ufrag: str = "uFrA", pwd: str = "pAsSwOrDpAsSwOrDpAsSwOrD",
             candidates: tuple[str, ...] = (CANDIDATE,), end: bool = True) -> str:
    lines = ["a=ice-ufrag:" + ufrag, "a=ice-pwd:" + pwd, "m=audio 9 UDP/TLS/RTP/SAVPF 0",
             "a=mid:0"]
    lines += ["a=" + c for c in candidates]
    if end:
        lines.append("a=end-of-candidates")
    return "\r\n".join(lines) + "\r\n"
