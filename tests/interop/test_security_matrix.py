"""
Issue 12's matrix, each stream-security mechanism on each protocol path
with real clients, for the cells no other interop module covers (the
table "Where each action asks" in docs/tokens.md; the cells already covered
are listed in L{COVERED_ELSEWHERE}).  Each cell: (1) allowed; (2) refused
with the protocol's own answer (RTMP C{onStatus} description as ffmpeg
prints it, the SRT reject code on the wire, the WebSocket C{definition},
the HTTP status and body); (3) for refusals decided before redemption
(policies, switches), with one-time token control also on, the same
one-time token works once the cause is removed.

One tokengate (a C{twistd} subprocess on the asyncio reactor, WebRTC on)
per test class, its settings changed over REST between cases.  Clients:
ffmpeg (RTMP publish and play, SRT publish, HLS, DASH and MP4 play),
srt-live-transmit (SRT publish), aiortc (WebRTC publish and play, through
tests/webrtc_access_script.py), Ant Media's JavaScript SDK in headless
Chromium (JWT publish and play).

Every client reaches the server through a relay started by the test
(L{TCPRelay}, L{SRTRelay}) from an address of its own in 127/8: the
server's throttle slows down an address after a few suspicious refusals,
and a matrix of refusals from one address would test the throttle instead
of the mechanisms.  The SRT relay also reads the server's answer off the
wire: the handshake's request type, 1000 + the reject code (ffmpeg and
srt-live-transmit print only "REJECT").
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Optional

import jwt as pyjwt
import pyotp
from twisted.internet import reactor, task
from twisted.internet.protocol import ClientFactory, DatagramProtocol, Factory, Protocol
from twisted.trial.unittest import TestCase

from tests import procs
from tests.fixtures import frames, test_clip
from tests.helpers import http_client, require
from tests.httpreceiver import Receiver, hang
from tests.interop.test_srt_interop import ts_clip
from tests.service import TokengateProcess

#: what other modules already prove, cell by cell (mechanism: paths)
COVERED_ELSEWHERE = {
    "one-time token": "every path (test_rtmp_interop, test_srt_interop, test_webrtc_media, "
                      "test_ams_sdk, test_playback_interop)",
    "JWT RS256 (jwksURL)": "RTMP publish (test_jwks_interop)",
    "hash token": "RTMP publish and play (test_rtmp_interop); SRT publish with ffmpeg, "
                  "beside TOTP (test_totp_interop)",
    "TOTP": "RTMP publish and play, SRT publish with ffmpeg, HLS, WebRTC publish with "
            "the SDK (test_totp_interop)",
    "webhook": "RTMP and SRT (ffmpeg) publish, HLS play, WebSocket publish "
               "(test_webhook_interop)",
    "acceptOnlyStreamsInDataStore": "RTMP, SRT (ffmpeg, srt-live-transmit), WebRTC publish "
                                    "(test_datastore_service, test_datastore_webrtc)",
    "allowedPublisherCIDR": "RTMP, SRT (ffmpeg), WebRTC publish (same)",
    "webRTCEnabled": "WebRTC publish and play, token kept (test_ams_sdk)",
}

SETTINGS = "/rest/v2/applications/settings/LiveApp"
REFUSED_PUBLISH = "You are not allowed to publish the stream."
REFUSED_PLAY = "You are not allowed to play the stream due to security."
JWT_SECRET = "a stream JWT secret of at least 32 characters"
HASH_SECRET = "a hash secret of 24 chars"
PUBLISH_SECRET = "publish secret"
PLAY_SECRET = "play secret"
#: SRT reject codes (tokengate.srt.errors), as the handshake carries them:
#: C{invalid} (a bad JWT or hash) is 1400, C{bad_code} 1401, a policy's
#: refusal 1403, C{unavailable} 1503 (docs/development.md, "Access outcomes")
SRT_BAD_REQUEST, SRT_UNAUTHORIZED, SRT_FORBIDDEN, SRT_DOWN = 1400, 1401, 1403, 1503
#: the SRT handshake request type of a conclusion (an accepted call)
SRT_CONCLUSION = -1
#: every muxer on, so the live stream has HLS and DASH and records MP4
MUXERS = {"hlsMuxingEnabled": True, "dashMuxingEnabled": True, "mp4MuxingEnabled": True}

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "webrtc_access_script.py")


# --- credentials ---------------------------------------------------------------------

def streamJWT(streamId: str, type: str, secret: str = JWT_SECRET) -> str:
    return pyjwt.encode({"streamId": streamId, "type": type, "exp": int(time.time()) + 600},
                        secret, algorithm="HS256")


def jwksReceiver(testcase: TestCase) -> Receiver:
    """
    A receiver serving, at C{/jwks}, the key set of
    L{tests.interop.test_jwks_interop}'s C{KEY} as C{k1}.
    """
    from jwt.algorithms import RSAAlgorithm

    from tests.interop.test_jwks_interop import KEY

    receiver = Receiver().start(testcase)
    jwk = json.loads(RSAAlgorithm.to_jwk(KEY.public_key()))
    jwk["kid"] = "k1"
    receiver.answers["/jwks"] = (200, {"Content-Type": "application/json"},
                                 json.dumps({"keys": [jwk]}).encode())
    return receiver


def rs256(streamId: str, type: str, good: bool = True) -> str:
    """
    An RS256 stream JWT signed by the key set's key (or by another key).
    """
    from tests.interop.test_jwks_interop import KEY, OTHER_KEY, streamJWT as signed

    return signed(KEY if good else OTHER_KEY, "k1", streamId, type)


def hashToken(streamId: str, role: str) -> str:
    return hashlib.sha256((streamId + role + HASH_SECRET).encode()).hexdigest()


def totp(subscriberId: str, streamId: str, type: str) -> str:
    """
    The current code of a subscriber not recorded through REST, from Ant
    Media's key derivation (written again here) by pyotp.
    """
    text = (PUBLISH_SECRET if type == "publish" else PLAY_SECRET) + subscriberId + streamId + type
    text += "X" * (-len(text) % 8)
    return pyotp.TOTP(base64.b32encode(text.encode("ascii")).decode("ascii"),
                      interval=60).now()


def wrongCode(good: str) -> str:
    return "{:06d}".format((int(good) + 500000) % 10**6)


# --- relays from addresses of their own ----------------------------------------------

_sources = itertools.count(1)


def freshSource() -> str:
    """
    An address of 127/8 not used before in this run.
    """
    n = next(_sources)
    return "127.0.{}.{}".format(1 + n // 250, 1 + n % 250)


class _Pipe(Protocol):
    peer: Optional["_Pipe"] = None
    buffered: list[bytes]

    def connectionMade(self) -> None:
        self.factory.relay.open.append(self)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.buffered.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.relay.open.remove(self)  # type: ignore[attr-defined]
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class _Inbound(_Pipe):
    def connectionMade(self) -> None:
        super().connectionMade()
        self.buffered = []
        self.transport.pauseProducing()
        relay = self.factory.relay  # type: ignore[attr-defined]
        out = _OutboundFactory()
        out.protocol = _Outbound
        out.relay = relay
        out.inbound = self
        reactor.connectTCP("127.0.0.1", relay.target, out, timeout=5,
                           bindAddress=(relay.source, 0))


class _OutboundFactory(ClientFactory):
    relay: "TCPRelay"
    inbound: _Inbound

    def buildProtocol(self, addr: Any) -> Optional[Protocol]:
        if self.inbound.transport is None or not self.inbound.connected:
            return None
        return super().buildProtocol(addr)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.inbound.transport.loseConnection()


class _Outbound(_Pipe):
    factory: _OutboundFactory

    def connectionMade(self) -> None:
        super().connectionMade()
        self.buffered = []
        inbound = self.factory.inbound  # type: ignore[attr-defined]
        self.peer, inbound.peer = inbound, self
        for data in inbound.buffered:
            self.transport.write(data)
        inbound.buffered.clear()
        inbound.transport.resumeProducing()


class TCPRelay:
    """
    Listens on 127.0.0.1 and connects each client to the server's C{target}
    port from C{source}; closed at the test's cleanup.
    """

    def __init__(self, testcase: TestCase, target: int) -> None:
        self.target = target
        self.source = freshSource()
        self.open: list[_Pipe] = []
        factory = Factory.forProtocol(_Inbound)
        factory.relay = self  # type: ignore[attr-defined]
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        testcase.addCleanup(self.close)

    @property
    def number(self) -> int:
        return int(self.port.getHost().port)

    async def close(self) -> None:
        await self.port.stopListening()
        for pipe in list(self.open):
            pipe.transport.abortConnection()
        for _ in range(100):
            if not self.open:
                break
            await task.deferLater(reactor, 0.02)


class SRTRelay(DatagramProtocol):
    """
    Relays one SRT caller's datagrams to the server from C{source}, and
    records the request type of every handshake the server answers.
    """

    def __init__(self, testcase: TestCase, target: int) -> None:
        self.target = ("127.0.0.1", target)
        self.caller: Optional[tuple[str, int]] = None
        self.answers: list[int] = []
        self.inbound = reactor.listenUDP(0, self, interface="127.0.0.1")
        self.outbound = reactor.listenUDP(0, _Back(self), interface=freshSource())
        testcase.addCleanup(self.inbound.stopListening)
        testcase.addCleanup(self.outbound.stopListening)

    @property
    def number(self) -> int:
        return int(self.inbound.getHost().port)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.caller = addr
        self.outbound.write(data, self.target)

    def fromServer(self, data: bytes) -> None:
        control = data[0] & 0x80 and ((data[0] & 0x7F) << 8 | data[1]) == 0
        if control and len(data) >= 40:
            self.answers.append(int.from_bytes(data[36:40], "big", signed=True))
        if self.caller is not None:
            self.transport.write(data, self.caller)

    @property
    def rejectCode(self) -> Optional[int]:
        """
        The reject code the server answered, if it rejected the call.
        """
        codes = [a - 1000 for a in self.answers if a >= 1000]
        return codes[-1] if codes else None


class _Back(DatagramProtocol):
    def __init__(self, relay: SRTRelay) -> None:
        self.relay = relay

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.relay.fromServer(data)


# --- one server per test class -------------------------------------------------------

class _Shared:
    """
    The test class whose server runs, its server and its long-running
    helpers (processes): only one at a time, stopped when the next class
    starts its own, when no test has used it for L{IDLE} seconds (after its
    class's last test, whatever order trial runs them in), or when the run
    ends.
    """

    IDLE = 10.0
    lock = threading.Lock()
    owner: Optional[type] = None
    server: Optional[TokengateProcess] = None
    helpers: list[subprocess.Popen[bytes]] = []
    state: dict[str, Any] = {}
    busy = False
    idleSince = 0.0
    watchdog: Optional[threading.Thread] = None

    @classmethod
    def acquire(cls, owner: type) -> TokengateProcess:
        """
        C{owner}'s server, started when it does not run yet; in use until
        L{release}.
        """
        with cls.lock:
            server = cls.server
            if cls.owner is not owner or server is None or server.proc is None \
                    or server.proc.poll() is not None:
                cls._stop()
                dataDir = os.path.abspath(os.path.join("security-matrix", owner.__name__))
                shutil.rmtree(dataDir, ignore_errors=True)
                server = TokengateProcess(dataDir, reactor="asyncio",
                                          extra=("--webhook-timeout", "1")).start(60)
                cls.owner, cls.server = owner, server
            cls.busy = True
            if cls.watchdog is None:
                cls.watchdog = threading.Thread(target=cls._watch, daemon=True)
                cls.watchdog.start()
            return server

    @classmethod
    def release(cls) -> None:
        with cls.lock:
            cls.busy = False
            cls.idleSince = time.monotonic()

    @classmethod
    def _watch(cls) -> None:
        while True:
            time.sleep(1)
            with cls.lock:
                if cls.server is not None and not cls.busy \
                        and time.monotonic() - cls.idleSince > cls.IDLE:
                    cls._stop()

    @classmethod
    def stop(cls) -> None:
        with cls.lock:
            cls._stop()

    @classmethod
    def _stop(cls) -> None:
        for p in cls.helpers:
            if p.poll() is None:
                p.kill()
            p.wait(5)
        cls.helpers = []
        if cls.server is not None:
            cls.server.kill()
        cls.owner, cls.server, cls.state = None, None, {}


atexit.register(_Shared.stop)


class MatrixBase(TestCase):
    timeout = 240

    def setUp(self) -> None:
        self.ffmpeg = require("ffmpeg")
        self.tg = _Shared.acquire(type(self))
        self.addCleanup(_Shared.release)
        self.shared = _Shared.state
        self.running: list[procs.Running] = []
        self.addCleanup(self._killClients)

    async def _killClients(self) -> None:
        for r in self.running:
            r.kill()
        for r in self.running:
            await r.done

    def start(self, argv: list[str], timeout: float = 60.0) -> procs.Running:
        r = procs.start(argv, timeout)
        self.running.append(r)
        return r

    # --- REST -----------------------------------------------------------------------

    def settings(self, **values: Any) -> None:
        """
        Replace LiveApp's settings (a POST replaces them all).
        """
        code, body = self.tg.post(SETTINGS, values)
        self.assertEqual((code, body["success"]), (200, True), body)

    def mint(self, streamId: str, type: str) -> str:
        code, body = self.tg.get(
            "/LiveApp/rest/v2/broadcasts/{}/token?expireDate={}&type={}".format(
                streamId, int(time.time()) + 600, type))
        self.assertEqual(code, 200, body)
        return str(body["tokenId"])

    def create(self, streamId: str) -> None:
        code, body = self.tg.post("/LiveApp/rest/v2/broadcasts/create", {"streamId": streamId})
        self.assertEqual(code, 200, body)

    def broadcast(self, streamId: str) -> Any:
        return self.tg.get("/LiveApp/rest/v2/broadcasts/" + streamId)[1]

    def refusals(self, protocol: str, action: str, reason: str) -> float:
        with urllib.request.urlopen(self.tg.base + "/metrics", timeout=10) as r:
            text = r.read().decode()
        m = re.search(r'tokengate_refusals_total\{action="%s",protocol="%s",reason="%s"\} '
                      r'([0-9.]+)' % (action, protocol, reason), text)
        return float(m.group(1)) if m else 0.0

    def counting(self, protocol: str, action: str, reason: str) -> Callable[[], float]:
        """
        How many more such refusals there were since this was called.
        """
        before = self.refusals(protocol, action, reason)
        return lambda: self.refusals(protocol, action, reason) - before

    async def waitFor(self, condition: Callable[[], Any], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            await task.deferLater(reactor, 0.2)
        self.fail("timed out waiting for " + what)

    # --- clients --------------------------------------------------------------------

    def rtmpURL(self, path: str) -> str:
        return "rtmp://127.0.0.1:{}{}".format(TCPRelay(self, self.tg.rtmp).number, path)

    def httpURL(self, path: str) -> str:
        return "http://127.0.0.1:{}{}".format(TCPRelay(self, self.tg.http).number, path)

    async def rtmpPublish(self, path: str, seconds: int = 2) -> procs.Result:
        return await self.start([self.ffmpeg, "-hide_banner", "-nostdin", "-i",
                                 test_clip(seconds), "-c", "copy", "-f", "flv",
                                 self.rtmpURL(path)]).done

    async def srtPublish(self, streamid: str) -> tuple[procs.Result, SRTRelay]:
        """
        ffmpeg publishing a short clip over SRT.
        """
        relay = SRTRelay(self, self.tg.srt)
        url = "srt://127.0.0.1:{}?streamid={}&linger=2".format(relay.number, streamid)
        result = await self.start([self.ffmpeg, "-hide_banner", "-nostdin", "-re", "-i",
                                   ts_clip(2), "-c", "copy", "-f", "mpegts", url]).done
        return result, relay

    async def sltPublish(self, streamid: str) -> tuple[procs.Result, SRTRelay]:
        """
        srt-live-transmit publishing a short clip (ffmpeg feeds it MPEG-TS
        at its pace); it exits 0 when rejected too.
        """
        slt = require("srt-live-transmit")
        relay = SRTRelay(self, self.tg.srt)
        cmd = "{} -v error -re -i {} -c copy -f mpegts - | {} -a:no -t:10 file://con " \
              "'srt://127.0.0.1:{}?streamid={}'".format(self.ffmpeg, ts_clip(2), slt,
                                                         relay.number, streamid)
        result = await self.start(["/bin/sh", "-c", cmd], 40).done
        return result, relay

    async def play(self, url: str, seconds: Optional[float] = 1) -> procs.Result:
        """
        ffmpeg reading C{url} (RTMP, HLS, DASH, MP4) for C{seconds}.
        """
        argv = [self.ffmpeg, "-hide_banner", "-nostdin", "-i", url]
        if seconds:
            argv += ["-t", str(seconds)]
        return await self.start(argv + ["-f", "null", "-"], 60).done

    async def httpGet(self, path: str) -> tuple[int, Any]:
        """
        One GET from an address of its own: status and JSON body.
        """
        client = http_client(self, source=freshSource())
        r = await client.get(self.tg.base + path)
        body = await r.content()
        try:
            return r.code, json.loads(body)
        except ValueError:
            return r.code, body

    def assertRefusedHTTP(self, answer: tuple[int, Any], status: int, message: str) -> None:
        self.assertEqual(answer, (status, {"success": False, "message": message,
                                           "dataId": "", "errorId": 0}))

    def assertAllowed(self, result: procs.Result, minFrames: int = 1) -> None:
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        self.assertGreaterEqual(frames(result.stderr), minFrames, result.stderr[-2000:])

    def assertSRTAccepted(self, result: procs.Result, relay: SRTRelay) -> None:
        """
        The server answered the caller's conclusion with its own (the call
        accepted), and rejected nothing.
        """
        self.assertEqual(relay.rejectCode, None, result.stderr[-2000:])
        self.assertIn(SRT_CONCLUSION, relay.answers, result.stderr[-2000:])

    def assertRefused(self, result: procs.Result, text: str) -> None:
        self.assertNotEqual(result.code, 0, result.stderr[-2000:])
        self.assertIn(text, result.stderr)

    async def webrtc(self) -> "WebRTCClient":
        try:
            import aiortc  # noqa: F401
        except ImportError:
            if os.environ.get("TOKENGATE_REQUIRE_CLIENTS"):
                raise
            self.skipTest("aiortc not installed")
        clip = os.path.abspath(self.mktemp()) + ".mp4"
        from tests.interop.test_webrtc_media import h264_clip

        made = await procs.start(h264_clip(self.ffmpeg, clip), 60).done
        self.assertEqual(made.code, 0, made.stderr)
        return WebRTCClient(self, clip)


class WebRTCClient:
    """
    tests/webrtc_access_script.py, asked one request at a time.
    """

    def __init__(self, testcase: MatrixBase, clip: str) -> None:
        self.testcase = testcase
        self.running = testcase.start([sys.executable, SCRIPT, clip], 200)
        self.answered = 0
        testcase.addCleanup(self.close)

    def url(self) -> str:
        return "ws://127.0.0.1:{}/LiveApp/websocket".format(
            TCPRelay(self.testcase, self.testcase.tg.http).number)

    async def ask(self, op: str, streamId: str, **fields: Any) -> dict[str, Any]:
        request = {"op": op, "url": self.url(), "streamId": streamId, "fields": fields}
        self.running.proto.transport.write(json.dumps(request).encode() + b"\n")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lines = [ln for ln in b"".join(self.running.proto.out).decode().splitlines()
                     if ln.startswith("{")]
            if len(lines) > self.answered:
                self.answered += 1
                answer: dict[str, Any] = json.loads(lines[self.answered - 1])
                self.testcase.assertNotIn("exception", answer, self.running.stderrSoFar()[-3000:])
                return answer
            if self.running.done.called:
                break
            await task.deferLater(reactor, 0.1)
        self.testcase.fail("aiortc did not answer {}: {}".format(
            request, self.running.stderrSoFar()[-3000:]))

    async def close(self) -> None:
        if not self.running.done.called:
            self.running.proto.transport.closeStdin()
        await self.running.done


# --- publishing --------------------------------------------------------------------

class PublishMatrix(MatrixBase):
    """
    Publishing over RTMP and SRT (ffmpeg), SRT (srt-live-transmit) and
    WebRTC (aiortc).
    """

    async def test_jwt(self) -> None:
        """
        HS256 stream JWTs (C{publishJwtControlEnabled}): one signed with
        another secret is refused as C{invalid} on each path; a good one
        publishes.
        """
        self.settings(publishJwtControlEnabled=True, jwtStreamSecretKey=JWT_SECRET)
        invalid = {p: self.counting(p, "publish", "invalid") for p in ("rtmp", "srt", "webrtc")}
        bad = streamJWT("j1", "publish", secret="another secret of at least 32 characters")
        self.assertRefused(await self.rtmpPublish("/LiveApp/j1?token=" + bad), REFUSED_PUBLISH)
        result, relay = await self.srtPublish("LiveApp/j2,token=" + bad)
        self.assertNotEqual(result.code, 0)
        self.assertEqual(relay.rejectCode, SRT_BAD_REQUEST)
        result, relay = await self.sltPublish("LiveApp/j3,token=" + bad)
        self.assertIn("REJECT", result.stderr)
        self.assertEqual(relay.rejectCode, SRT_BAD_REQUEST)
        client = await self.webrtc()
        answer = await client.ask("publish", "j4", token=bad)
        self.assertEqual(answer["definition"], "unauthorized_access")
        self.assertEqual({p: c() for p, c in invalid.items()},
                         {"rtmp": 1, "srt": 2, "webrtc": 1})
        # allowed, each with its own stream's JWT
        result = await self.rtmpPublish("/LiveApp/j1?token=" + streamJWT("j1", "publish"))
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        result, relay = await self.srtPublish("LiveApp/j2,token=" + streamJWT("j2", "publish"))
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        self.assertSRTAccepted(result, relay)
        result, relay = await self.sltPublish("LiveApp/j3,token=" + streamJWT("j3", "publish"))
        self.assertSRTAccepted(result, relay)
        answer = await client.ask("publish", "j4", token=streamJWT("j4", "publish"))
        self.assertEqual(answer["definition"], "publish_started")
        self.assertEqual({s: self.broadcast(s)["publishType"] for s in ("j1", "j2", "j3", "j4")},
                         {"j1": "RTMP", "j2": "SRT", "j3": "SRT", "j4": "WebRTC"})

    async def test_jwksOutage(self) -> None:
        """
        RS256 stream JWTs (C{jwksURL}) over srt-live-transmit: while the
        key set cannot be fetched, a good JWT is rejected 1503
        (C{unavailable}, fail closed); signed by another key, 1400; with
        the keys reachable, it publishes.
        """
        from tests.httpreceiver import closedPortURL

        receiver = jwksReceiver(self)
        self.settings(publishJwtControlEnabled=True, jwksURL=await closedPortURL("/jwks"))
        unavailable = self.counting("srt", "publish", "unavailable")
        result, relay = await self.sltPublish("LiveApp/k1,token=" + rs256("k1", "publish"))
        self.assertIn("REJECT", result.stderr)
        self.assertEqual((relay.rejectCode, unavailable()), (SRT_DOWN, 1))
        self.settings(publishJwtControlEnabled=True, jwksURL=receiver.url("/jwks"))
        result, relay = await self.sltPublish("LiveApp/k1,token=" + rs256("k1", "publish",
                                                                         good=False))
        self.assertEqual(relay.rejectCode, SRT_BAD_REQUEST)
        result, relay = await self.sltPublish("LiveApp/k1,token=" + rs256("k1", "publish"))
        self.assertSRTAccepted(result, relay)
        self.assertEqual(self.broadcast("k1")["publishType"], "SRT")

    async def test_hash(self) -> None:
        """
        Hash tokens (C{hashControlPublishEnabled}) over srt-live-transmit
        and WebRTC: the play role's hash is refused, the publish role's
        publishes.
        """
        self.settings(hashControlPublishEnabled=True, tokenHashSecret=HASH_SECRET)
        invalid = {p: self.counting(p, "publish", "invalid") for p in ("srt", "webrtc")}
        result, relay = await self.sltPublish("LiveApp/h1,token=" + hashToken("h1", "play"))
        self.assertIn("REJECT", result.stderr)
        self.assertEqual(relay.rejectCode, SRT_BAD_REQUEST)
        client = await self.webrtc()
        answer = await client.ask("publish", "h2", token=hashToken("h2", "play"))
        self.assertEqual(answer["definition"], "unauthorized_access")
        self.assertEqual({p: c() for p, c in invalid.items()}, {"srt": 1, "webrtc": 1})
        result, relay = await self.sltPublish("LiveApp/h1,token=" + hashToken("h1", "publish"))
        self.assertSRTAccepted(result, relay)
        answer = await client.ask("publish", "h2", token=hashToken("h2", "publish"))
        self.assertEqual(answer["definition"], "publish_started")
        self.assertEqual({s: self.broadcast(s)["publishType"] for s in ("h1", "h2")},
                         {"h1": "SRT", "h2": "WebRTC"})

    async def test_totp(self) -> None:
        """
        TOTP subscribers (C{enableTimeTokenForPublish}) over
        srt-live-transmit and WebRTC (aiortc): a wrong code is refused as
        C{bad_code}, the right one publishes.
        """
        self.settings(enableTimeTokenForPublish=True, timeTokenSecretForPublish=PUBLISH_SECRET)
        badCode = {p: self.counting(p, "publish", "bad_code") for p in ("srt", "webrtc")}
        streamid = "LiveApp/t1,subscriberId=alice,subscriberCode="
        result, relay = await self.sltPublish(streamid + wrongCode(totp("alice", "t1",
                                                                        "publish")))
        self.assertIn("REJECT", result.stderr)
        self.assertEqual(relay.rejectCode, SRT_UNAUTHORIZED)
        client = await self.webrtc()
        answer = await client.ask("publish", "t2", subscriberId="bobby",
                                  subscriberCode=wrongCode(totp("bobby", "t2", "publish")))
        self.assertEqual(answer["definition"], "unauthorized_access")
        self.assertEqual({p: c() for p, c in badCode.items()}, {"srt": 1, "webrtc": 1})
        result, relay = await self.sltPublish(streamid + totp("alice", "t1", "publish"))
        self.assertSRTAccepted(result, relay)
        answer = await client.ask("publish", "t2", subscriberId="bobby",
                                  subscriberCode=totp("bobby", "t2", "publish"))
        self.assertEqual(answer["definition"], "publish_started")

    async def test_webhookKeepsToken(self) -> None:
        """
        The publish webhook (C{webhookAuthenticateURL}) over
        srt-live-transmit and WebRTC (aiortc), with one-time tokens: a 403
        refuses (SRT 1403, WebSocket C{unauthorized_access}), no answer in
        time refuses (SRT 1503), and the token is kept: it publishes once
        the webhook answers 200.
        """
        receiver = Receiver().start(self)
        receiver.answers["/publish"] = (403, {}, b"no")
        self.settings(publishTokenControlEnabled=True,
                      webhookAuthenticateURL=receiver.url("/publish"))
        refused = {p: self.counting(p, "publish", "webhook_refused") for p in ("srt", "webrtc")}
        t1, t2 = self.mint("w1", "publish"), self.mint("w2", "publish")
        result, relay = await self.sltPublish("LiveApp/w1,token=" + t1)
        self.assertIn("REJECT", result.stderr)
        self.assertEqual(relay.rejectCode, SRT_FORBIDDEN)
        client = await self.webrtc()
        answer = await client.ask("publish", "w2", token=t2)
        self.assertEqual(answer["definition"], "unauthorized_access")
        self.assertEqual({p: c() for p, c in refused.items()}, {"srt": 1, "webrtc": 1})
        asked = [json.loads(r.body) for r in receiver.received]
        self.assertEqual([(b["streamId"], b["mode"], b["token"]) for b in asked],
                         [("w1", "live", t1), ("w2", "live", t2)])
        # a webhook that does not answer in time (--webhook-timeout 1): 1503
        receiver.answers["/publish"] = hang
        unavailable = self.counting("srt", "publish", "webhook_unavailable")
        result, relay = await self.sltPublish("LiveApp/w1,token=" + t1)
        self.assertEqual((relay.rejectCode, unavailable()), (SRT_DOWN, 1))
        receiver.answers["/publish"] = (200, {}, b"")
        result, relay = await self.sltPublish("LiveApp/w1,token=" + t1)
        self.assertSRTAccepted(result, relay)
        answer = await client.ask("publish", "w2", token=t2)
        self.assertEqual(answer["definition"], "publish_started")

    async def test_publisherCIDRKeepsToken(self) -> None:
        """
        C{allowedPublisherCIDR} with srt-live-transmit: outside the
        networks, rejected 1403 and the token kept; inside, it publishes
        with that token.
        """
        self.settings(publishTokenControlEnabled=True, allowedPublisherCIDR="10.0.0.0/8")
        address = self.counting("srt", "publish", "address")
        token = self.mint("c1", "publish")
        result, relay = await self.sltPublish("LiveApp/c1,token=" + token)
        self.assertIn("REJECT", result.stderr)
        self.assertEqual((relay.rejectCode, address()), (SRT_FORBIDDEN, 1))
        self.settings(publishTokenControlEnabled=True, allowedPublisherCIDR="127.0.0.0/8")
        result, relay = await self.sltPublish("LiveApp/c1,token=" + token)
        self.assertSRTAccepted(result, relay)
        self.assertEqual(self.broadcast("c1")["publishType"], "SRT")

    async def test_onlyRoomsInDataStoreKeepsToken(self) -> None:
        """
        C{acceptOnlyRoomsInDataStore}: a WebRTC publisher naming a room
        that was not created through REST gets
        C{not_allowed_unregistered_streams}, its token kept; once the room
        is created, the same token publishes.
        """
        self.settings(publishTokenControlEnabled=True, acceptOnlyRoomsInDataStore=True)
        unregistered = self.counting("webrtc", "publish", "unregistered")
        token = self.mint("r1", "publish")
        client = await self.webrtc()
        answer = await client.ask("publish", "r1", token=token, room="room1")
        self.assertEqual(answer["definition"], "not_allowed_unregistered_streams")
        self.assertEqual(unregistered(), 1)
        self.create("room1")
        answer = await client.ask("publish", "r1", token=token, room="room1")
        self.assertEqual(answer["definition"], "publish_started")


# --- playing -----------------------------------------------------------------------

HLS = "/LiveApp/streams/s1.m3u8"
DASH = "/LiveApp/streams/s1/s1.mpd"
MP4 = "/LiveApp/streams/rec.mp4"


class PlayMatrix(MatrixBase):
    """
    Playing over RTMP, HLS, DASH and MP4 (ffmpeg) and WebRTC (aiortc): one
    live stream C{s1}, published by ffmpeg over RTMP for the whole class
    (HLS and DASH on), and the MP4 recording of C{rec}.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        super().setUp()
        if self.shared.get("live"):
            return
        self.settings(**MUXERS)
        result = await self.rtmpPublish("/LiveApp/rec", seconds=3)
        self.assertEqual(result.code, 0, result.stderr[-2000:])
        log = open(os.path.join(self.tg.dataDir, "publisher.log"), "wb")
        self.addCleanup(log.close)
        _Shared.helpers.append(subprocess.Popen(  # stopped with the server
            [self.ffmpeg, "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i",
             test_clip(4), "-c", "copy", "-t", "600", "-f", "flv",
             "rtmp://127.0.0.1:{}/LiveApp/s1".format(self.tg.rtmp)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log))
        ready: dict[str, int] = {}

        async def probe() -> None:
            for path in (MP4, HLS, DASH):
                ready[path] = (await self.httpGet(path))[0]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and set(ready.values()) != {200}:
            await probe()
            await task.deferLater(reactor, 0.5)
        self.assertEqual(ready, {MP4: 200, HLS: 200, DASH: 200})
        await task.deferLater(reactor, 4)  # a few segments
        self.shared["live"] = True

    async def test_jwt(self) -> None:
        """
        HS256 stream JWTs (C{playJwtControlEnabled}) on every play path: one
        signed with another secret is refused as C{invalid}, a good one
        plays.
        """
        self.settings(**MUXERS, playJwtControlEnabled=True, jwtStreamSecretKey=JWT_SECRET)
        other = "another secret of at least 32 characters"
        bad, badRec = streamJWT("s1", "play", other), streamJWT("rec", "play", other)
        invalid = {p: self.counting(p, "play", "invalid")
                   for p in ("rtmp", "webrtc", "hls", "dash", "vod")}
        self.assertRefused(await self.play(self.rtmpURL("/LiveApp/s1?token=" + bad)),
                           REFUSED_PLAY)
        for path, token in ((HLS, bad), (DASH, bad), (MP4, badRec)):
            self.assertRefused(await self.play(self.httpURL(path + "?token=" + token)), "403")
            self.assertRefusedHTTP(await self.httpGet(path + "?token=" + token), 403,
                                   "Invalid JWT Token")
        client = await self.webrtc()
        answer = await client.ask("play", "s1", token=bad)
        self.assertEqual(answer["definition"], "unauthorized_access")
        self.assertEqual({p: c() for p, c in invalid.items()},
                         {"rtmp": 1, "webrtc": 1, "hls": 2, "dash": 2, "vod": 2})
        good = streamJWT("s1", "play")
        self.assertAllowed(await self.play(self.rtmpURL("/LiveApp/s1?token=" + good)), 10)
        self.assertAllowed(await self.play(self.httpURL(HLS + "?token=" + good)), 10)
        self.assertAllowed(await self.play(self.httpURL(DASH + "?token=" + good)), 10)
        self.assertAllowed(await self.play(self.httpURL(
            MP4 + "?token=" + streamJWT("rec", "play")), None), 50)
        answer = await client.ask("play", "s1", token=good)
        self.assertEqual(answer["definition"], "play_started")
        self.assertGreater(answer["frames"], 0)

    async def test_jwksOutage(self) -> None:
        """
        RS256 stream JWTs (C{jwksURL}) on RTMP, WebRTC and HLS play: while
        the key set cannot be fetched a good JWT is refused as
        C{unavailable} (RTMP's play refusal, C{data_store_not_available},
        HTTP 503); signed by another key, C{invalid}; with the keys, it
        plays.
        """
        from tests.httpreceiver import closedPortURL

        receiver = jwksReceiver(self)
        self.settings(**MUXERS, playJwtControlEnabled=True, jwksURL=await closedPortURL("/jwks"))
        unavailable = {p: self.counting(p, "play", "unavailable")
                       for p in ("rtmp", "webrtc", "hls")}
        good = rs256("s1", "play")
        self.assertRefused(await self.play(self.rtmpURL("/LiveApp/s1?token=" + good)),
                           REFUSED_PLAY)
        self.assertRefused(await self.play(self.httpURL(HLS + "?token=" + good)), "503")
        self.assertRefusedHTTP(await self.httpGet(HLS + "?token=" + good), 503,
                               "Token store is unavailable, try again later")
        client = await self.webrtc()
        answer = await client.ask("play", "s1", token=good)
        self.assertEqual(answer["definition"], "data_store_not_available")
        self.assertEqual({p: c() for p, c in unavailable.items()},
                         {"rtmp": 1, "webrtc": 1, "hls": 2})
        self.settings(**MUXERS, playJwtControlEnabled=True, jwksURL=receiver.url("/jwks"))
        self.assertRefusedHTTP(await self.httpGet(HLS + "?token=" + rs256("s1", "play", False)),
                               403, "Invalid JWT Token")
        self.assertAllowed(await self.play(self.rtmpURL("/LiveApp/s1?token=" + good)), 10)
        self.assertAllowed(await self.play(self.httpURL(HLS + "?token=" + good)), 10)
        answer = await client.ask("play", "s1", token=good)
        self.assertEqual(answer["definition"], "play_started")

    async def test_hash(self) -> None:
        """
        Hash tokens (C{hashControlPlayEnabled}) on WebRTC, HLS, DASH and
        MP4: the publish role's hash is refused as C{invalid}, the play
        role's plays.
        """
        self.settings(**MUXERS, hashControlPlayEnabled=True, tokenHashSecret=HASH_SECRET)
        invalid = {p: self.counting(p, "play", "invalid") for p in ("webrtc", "hls", "dash", "vod")}
        for path, stream in ((HLS, "s1"), (DASH, "s1"), (MP4, "rec")):
            query = "?token=" + hashToken(stream, "publish")
            self.assertRefused(await self.play(self.httpURL(path + query)), "403")
            self.assertRefusedHTTP(await self.httpGet(path + query), 403,
                                   "Invalid Token for streamId:" + stream)
        client = await self.webrtc()
        answer = await client.ask("play", "s1", token=hashToken("s1", "publish"))
        self.assertEqual(answer["definition"], "unauthorized_access")
        self.assertEqual({p: c() for p, c in invalid.items()},
                         {"webrtc": 1, "hls": 2, "dash": 2, "vod": 2})
        good = "?token=" + hashToken("s1", "play")
        self.assertAllowed(await self.play(self.httpURL(HLS + good)), 10)
        self.assertAllowed(await self.play(self.httpURL(DASH + good)), 10)
        self.assertAllowed(await self.play(self.httpURL(
            MP4 + "?token=" + hashToken("rec", "play")), None), 50)
        answer = await client.ask("play", "s1", token=hashToken("s1", "play"))
        self.assertEqual(answer["definition"], "play_started")

    async def test_totp(self) -> None:
        """
        TOTP subscribers (C{enableTimeTokenForPlay}) on WebRTC, DASH and
        MP4: a wrong code is refused as C{bad_code}, the right one plays
        (each cell its own subscriber: a subscriber is on one connection at
        a time).
        """
        self.settings(**MUXERS, enableTimeTokenForPlay=True, timeTokenSecretForPlay=PLAY_SECRET)
        badCode = {p: self.counting(p, "play", "bad_code") for p in ("webrtc", "dash", "vod")}

        def query(subscriberId: str, stream: str, ok: bool) -> str:
            code = totp(subscriberId, stream, "play")
            return "?subscriberId={}&subscriberCode={}".format(
                subscriberId, code if ok else wrongCode(code))

        for path, stream in ((DASH, "s1"), (MP4, "rec")):
            self.assertRefused(await self.play(self.httpURL(path + query("dave", stream, False))),
                               "403")
            self.assertRefusedHTTP(await self.httpGet(path + query("erin", stream, False)), 403,
                                   "Time Based subscriber id or code is invalid")
        client = await self.webrtc()
        code = totp("frank", "s1", "play")
        answer = await client.ask("play", "s1", subscriberId="frank",
                                  subscriberCode=wrongCode(code))
        self.assertEqual(answer["definition"], "unauthorized_access")
        self.assertEqual({p: c() for p, c in badCode.items()},
                         {"webrtc": 1, "dash": 2, "vod": 2})
        self.assertAllowed(await self.play(self.httpURL(DASH + query("dave", "s1", True))), 10)
        self.assertAllowed(await self.play(self.httpURL(MP4 + query("dave", "rec", True)), None),
                           50)
        answer = await client.ask("play", "s1", subscriberId="frank", subscriberCode=code)
        self.assertEqual(answer["definition"], "play_started")

    async def test_webhookKeepsToken(self) -> None:
        """
        The play webhook (C{webhookPlayAuthUrl}) on RTMP, WebRTC, DASH and
        MP4, with one-time play tokens: a 403 refuses each (RTMP's play
        refusal, C{unauthorized_access}, HTTP 403 C{Not authorized}), no
        answer in time refuses (HTTP 503), and the token is kept: it plays
        once the webhook answers 200.
        """
        receiver = Receiver().start(self)
        receiver.answers["/play"] = (403, {}, b"no")
        self.settings(**MUXERS, playTokenControlEnabled=True,
                      webhookPlayAuthUrl=receiver.url("/play"))
        refused = {p: self.counting(p, "play", "webhook_refused")
                   for p in ("rtmp", "webrtc", "dash", "vod")}
        tokens = {"rtmp": self.mint("s1", "play"), "webrtc": self.mint("s1", "play"),
                  "dash": self.mint("s1", "play"), "vod": self.mint("rec", "play")}
        self.assertRefused(await self.play(self.rtmpURL("/LiveApp/s1?token=" + tokens["rtmp"])),
                           REFUSED_PLAY)
        self.assertRefused(await self.play(self.httpURL(DASH + "?token=" + tokens["dash"])),
                           "403")
        self.assertRefused(await self.play(self.httpURL(MP4 + "?token=" + tokens["vod"])),
                           "403")
        self.assertRefusedHTTP(await self.httpGet(MP4 + "?token=" + tokens["vod"]), 403,
                               "Not authorized")
        client = await self.webrtc()
        answer = await client.ask("play", "s1", token=tokens["webrtc"])
        self.assertEqual(answer["definition"], "unauthorized_access")
        self.assertEqual({p: c() for p, c in refused.items()},
                         {"rtmp": 1, "webrtc": 1, "dash": 1, "vod": 2})
        asked = [json.loads(r.body) for r in receiver.received]
        self.assertEqual(sorted((b["streamId"], b["mode"], b["token"]) for b in asked),
                         sorted([("s1", "play", tokens["rtmp"]), ("s1", "play", tokens["dash"]),
                                 ("rec", "play", tokens["vod"]), ("rec", "play", tokens["vod"]),
                                 ("s1", "play", tokens["webrtc"])]))
        # a webhook that does not answer in time (--webhook-timeout 1)
        receiver.answers["/play"] = hang
        unavailable = self.counting("dash", "play", "webhook_unavailable")
        self.assertRefusedHTTP(await self.httpGet(DASH + "?token=" + tokens["dash"]), 503,
                               "Authorization is unavailable, try again later")
        self.assertEqual(unavailable(), 1)
        receiver.answers["/play"] = (200, {}, b"")
        self.assertAllowed(await self.play(self.rtmpURL("/LiveApp/s1?token=" + tokens["rtmp"])),
                           10)
        self.assertAllowed(await self.play(self.httpURL(DASH + "?token=" + tokens["dash"])), 10)
        self.assertAllowed(await self.play(self.httpURL(MP4 + "?token=" + tokens["vod"]), None),
                           50)
        answer = await client.ask("play", "s1", token=tokens["webrtc"])
        self.assertEqual(answer["definition"], "play_started")

    async def test_switchesKeepToken(self) -> None:
        """
        C{rtmpPlaybackEnabled}, C{hlsMuxingEnabled}, C{dashMuxingEnabled}
        off, with one-time play tokens: RTMP play answers C{NetStream.Failed}
        "RTMP playback is disabled.", HLS and DASH a 404 saying the format
        is off; the tokens are kept and play once the switches are on.
        """
        self.settings(mp4MuxingEnabled=True, playTokenControlEnabled=True,
                      rtmpPlaybackEnabled=False, hlsMuxingEnabled=False, dashMuxingEnabled=False)
        disabled = {p: self.counting(p, "play", "disabled") for p in ("rtmp", "hls", "dash")}
        tokens = {p: self.mint("s1", "play") for p in ("rtmp", "hls", "dash")}
        self.assertRefused(await self.play(self.rtmpURL("/LiveApp/s1?token=" + tokens["rtmp"])),
                           "RTMP playback is disabled.")
        self.assertRefused(await self.play(self.httpURL(HLS + "?token=" + tokens["hls"])), "404")
        self.assertRefusedHTTP(await self.httpGet(HLS + "?token=" + tokens["hls"]), 404,
                               "HLS is not enabled for this application")
        self.assertRefused(await self.play(self.httpURL(DASH + "?token=" + tokens["dash"])),
                           "404")
        self.assertRefusedHTTP(await self.httpGet(DASH + "?token=" + tokens["dash"]), 404,
                               "DASH is not enabled for this application")
        self.assertEqual({p: c() for p, c in disabled.items()}, {"rtmp": 1, "hls": 2, "dash": 2})
        self.settings(**MUXERS, playTokenControlEnabled=True)
        self.assertAllowed(await self.play(self.rtmpURL("/LiveApp/s1?token=" + tokens["rtmp"])),
                           10)
        self.assertAllowed(await self.play(self.httpURL(HLS + "?token=" + tokens["hls"])), 10)
        self.assertAllowed(await self.play(self.httpURL(DASH + "?token=" + tokens["dash"])), 10)

    async def test_onlyRoomsInDataStoreKeepsToken(self) -> None:
        """
        C{acceptOnlyRoomsInDataStore}: a WebRTC player naming a room that
        was not created through REST gets
        C{not_allowed_unregistered_streams}, its one-time token kept; once
        the room is created, the same token plays.
        """
        self.settings(**MUXERS, playTokenControlEnabled=True, acceptOnlyRoomsInDataStore=True)
        unregistered = self.counting("webrtc", "play", "unregistered")
        token = self.mint("s1", "play")
        client = await self.webrtc()
        answer = await client.ask("play", "s1", token=token, room="room2")
        self.assertEqual(answer["definition"], "not_allowed_unregistered_streams")
        self.assertEqual(unregistered(), 1)
        self.create("room2")
        answer = await client.ask("play", "s1", token=token, room="room2")
        self.assertEqual(answer["definition"], "play_started")


# --- Ant Media's JavaScript SDK ----------------------------------------------------

class SDKMatrix(MatrixBase):
    """
    Ant Media's own JavaScript SDK (the page of L{tests.interop.test_ams_sdk})
    in headless Chromium with a fake camera, publishing and playing with
    HS256 stream JWTs.
    """

    async def test_jwtPublishAndPlay(self) -> None:
        from tests import browser as browser_mod
        from tests.interop.test_ams_sdk import PAGE, SDK_JS, SELFIE_JS, AntMediaSDK
        from twisted.web.resource import Resource
        from twisted.web.server import Site
        from twisted.web.static import Data, File

        require("chromium")
        await AntMediaSDK.ensureSDK(self)  # type: ignore[arg-type]
        self.settings(publishJwtControlEnabled=True, playJwtControlEnabled=True,
                      jwtStreamSecretKey=JWT_SECRET)
        invalid = {a: self.counting("webrtc", a, "invalid") for a in ("publish", "play")}
        root = Resource()
        root.putChild(b"", Data(PAGE, "text/html; charset=utf-8"))
        root.putChild(b"webrtc_adaptor.js", File(SDK_JS, defaultType="text/javascript"))
        root.putChild(b"selfie_segmentation.js", File(SELFIE_JS, defaultType="text/javascript"))
        site = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(site.stopListening)
        page = "http://127.0.0.1:{}/".format(site.getHost().port)
        b = await browser_mod.launch(self, args=[
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
        other = "another secret of at least 32 characters"

        async def start(mode: str, token: str) -> Any:
            ws = "ws://127.0.0.1:{}/LiveApp/websocket".format(TCPRelay(self, self.tg.http).number)
            p = await b.open(page)
            await p.evaluate("start({}, {}, 'sdk1', {})".format(
                json.dumps(ws), json.dumps(mode), json.dumps(token)))
            await p.wait_for("sdk.events.indexOf({}) >= 0 || sdk.errors.length > 0".format(
                json.dumps(mode + ":" + mode + "_started")), timeout=40)
            return p

        p = await start("publish", streamJWT("sdk1", "publish", other))
        self.assertEqual(await p.evaluate("sdk.errors"), ["publish:unauthorized_access"])
        pub = await start("publish", streamJWT("sdk1", "publish"))
        self.assertEqual(await pub.evaluate("sdk.errors"), [], pub.debug())
        await self.waitFor(lambda: self.broadcast("sdk1")["status"] == "broadcasting", 20,
                           "sdk1 to be live")
        p = await start("play", streamJWT("sdk1", "play", other))
        self.assertEqual(await p.evaluate("sdk.errors"), ["play:unauthorized_access"])
        play = await start("play", streamJWT("sdk1", "play"))
        self.assertEqual(await play.evaluate("sdk.errors"), [], play.debug())
        shown = await play.wait_for(
            "(function () { var v = document.getElementById('remoteVideo');"
            " var q = v.getVideoPlaybackQuality();"
            " return q.totalVideoFrames > 10 ? q.totalVideoFrames : 0; })()", timeout=30)
        self.assertGreater(shown, 10)
        self.assertEqual({a: c() for a, c in invalid.items()}, {"publish": 1, "play": 1})
        await pub.evaluate("publish.stop('sdk1')")
        await pub.wait_for("sdk.events.indexOf('publish:publish_finished') >= 0", timeout=20)
