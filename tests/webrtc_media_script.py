"""
Run by tests/interop/test_webrtc_media.py in a subprocess, on its own asyncio
reactor (trial's reactor is global and is not the asyncio one):

    python tests/webrtc_media_script.py CLIP [serve]

Without C{serve}: a tokengate server (memory store, LiveApp with publish and
play token control) on loopback; aiortc publishes CLIP (H.264 and Opus) over the
WebSocket signalling with a publish token (the hub gets its audio as AAC), aiortc plays it with a play token and
decodes it, a spent token is refused, ffmpeg publishes over RTMP (H.264 and
AAC) and aiortc plays that over WebRTC (H.264 and Opus).  Prints one JSON line with what happened.

With C{serve}: only the server; prints {"http": port, "rtmp": port} and runs
until stdin closes (for the Chromium tests).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

# Import this checkout's tokengate, not an installed one.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)
from twisted.internet import asyncioreactor  # noqa: E402

asyncioreactor.install(loop)

from autobahn.twisted.websocket import (  # noqa: E402
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from twisted.internet import defer, reactor, task  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402

from tokengate.apps import Applications  # noqa: E402
from tokengate.rtmp.protocol import RTMPFactory  # noqa: E402
from tokengate.server import Server  # noqa: E402
from tokengate.store.memory import MemoryTokenStore  # noqa: E402
from tokengate.tokens import StoredToken, new_token  # noqa: E402
from tokengate.server import buildSite  # noqa: E402


class Client(WebSocketClientProtocol):
    def onOpen(self):
        self.factory.opened.callback(self)

    def onMessage(self, payload, isBinary):
        msg = json.loads(payload)
        self.factory.messages.append(msg)
        waiters, self.factory.waiters = self.factory.waiters, []
        for w in waiters:
            if not w.called:  # its timer may have fired it already
                w.callback(None)

    def onClose(self, wasClean, code, reason):
        self.factory.closeCode = code

    def send(self, **msg):
        self.sendMessage(json.dumps(msg).encode())


class WS:
    def __init__(self, url):
        self.factory = WebSocketClientFactory(url)
        self.factory.protocol = Client
        self.factory.opened = Deferred()
        self.factory.messages = []
        self.factory.waiters = []
        connectWS(self.factory)

    async def open(self):
        self.proto = await self.factory.opened
        return self

    async def expect(self, pred, timeout=15.0):
        deadline = time.time() + timeout
        while True:
            for i, m in enumerate(self.factory.messages):
                if pred(m):
                    del self.factory.messages[i]
                    return m
            if time.time() > deadline:
                raise AssertionError("no matching message; got {}".format(self.factory.messages))
            w = Deferred()
            self.factory.waiters.append(w)
            t = reactor.callLater(0.2, lambda: w.called or w.callback(None))
            await w
            if t.active():
                t.cancel()


def aw(coro):
    return Deferred.fromFuture(asyncio.ensure_future(coro))


async def publish(url, clip, token, streamId="s1", video="video/H264", audio=None,
                  fields=None):
    """
    C{fields}: more fields of the publish message (e.g. C{subscriberId},
    C{subscriberCode}, C{room}).
    """
    from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
    from aiortc.contrib.media import MediaPlayer

    ws = await WS(url).open()
    ws.proto.send(command="publish", streamId=streamId, token=token, video=True, audio=True,
                  **(fields or {}))
    m = await ws.expect(lambda m: m.get("command") in ("start", "error"))
    if m["command"] == "error":
        return ws, None, m
    player = MediaPlayer(clip)
    pc = RTCPeerConnection()
    t = pc.addTransceiver(player.video, direction="sendonly")
    t.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                           if c.mimeType == video])
    if player.audio is not None:
        a = pc.addTransceiver(player.audio, direction="sendonly")  # Opus by default
        if audio is not None:
            a.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("audio").codecs
                                   if c.mimeType == audio])
    offer = await aw(pc.createOffer())
    await aw(pc.setLocalDescription(offer))
    ws.proto.send(command="takeConfiguration", streamId=streamId, type="offer",
                  sdp=pc.localDescription.sdp)
    m = await ws.expect(lambda m: m.get("command") in ("takeConfiguration", "error"))
    if m["command"] == "error":
        await aw(pc.close())
        return ws, None, m
    await aw(pc.setRemoteDescription(RTCSessionDescription(sdp=m["sdp"], type="answer")))
    n = await ws.expect(lambda m: m.get("command") == "notification")
    return ws, pc, n


async def play(url, token, streamId="s1", want=50, seconds=12.0, fields=None):
    """
    C{fields}: more fields of the play message (as for L{publish}).
    """
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    ws = await WS(url).open()
    started = time.time()
    ws.proto.send(command="play", streamId=streamId, token=token, **(fields or {}))
    m = await ws.expect(lambda m: m.get("command") in ("takeConfiguration", "error"))
    if m["command"] == "error":
        return {"error": m}
    pc = RTCPeerConnection()
    frames = {"n": 0, "first": None, "size": None, "audio": 0, "rate": None}
    done = Deferred()

    async def consume(track):
        while True:
            try:
                f = await track.recv()
            except MediaStreamError:
                break
            if track.kind == "audio":
                frames["audio"] += 1
                frames["rate"] = f.sample_rate
                continue
            frames["n"] += 1
            if frames["first"] is None:
                frames["first"] = time.time() - started
                frames["size"] = [f.width, f.height]
            if frames["n"] >= want and not done.called:
                done.callback(None)

    pc.on("track", lambda tr: asyncio.ensure_future(consume(tr)))
    await aw(pc.setRemoteDescription(RTCSessionDescription(sdp=m["sdp"], type="offer")))
    answer = await aw(pc.createAnswer())
    await aw(pc.setLocalDescription(answer))
    ws.proto.send(command="takeConfiguration", streamId=streamId, type="answer",
                  sdp=pc.localDescription.sdp)
    n = await ws.expect(lambda m: m.get("command") == "notification")
    timer = reactor.callLater(seconds, lambda: done.called or done.callback(None))
    await done
    if timer.active():
        timer.cancel()
    ws.proto.send(command="stop", streamId=streamId)
    fin = await ws.expect(lambda m: m.get("definition") == "play_finished")
    await aw(pc.close())
    ws.proto.sendClose()
    return {"notification": n["definition"], "frames": frames["n"],
            "firstFrame": frames["first"], "size": frames["size"],
            "audioFrames": frames["audio"], "audioRate": frames["rate"],
            "audioTrack": "m=audio" in m["sdp"],
            "finished": fin["definition"]}


class AudioCounter:
    """
    A hub subscriber counting the AAC it gets.
    """

    def __init__(self):
        self.config = None
        self.frames = 0
        self.last = -1
        self.monotonic = True
        self.samples = 0
        self.rate = None
        self.lastVideo = None
        self.avGap = None

    def streamStarted(self, stream):
        pass

    def metadataChanged(self, metadata):
        pass

    def configChanged(self, kind, body, timestamp):
        if kind == "audio":
            import av

            self.config = body.hex()
            self.decoder = av.CodecContext.create("aac", "r")
            self.decoder.extradata = bytes(body[2:])

    def frameReceived(self, frame):
        if frame.kind == "video":
            self.lastVideo = frame.timestamp
        if frame.kind == "audio" and frame.body[:2] == b"\xaf\x01":
            import av

            self.frames += 1
            if self.frames <= 10:
                for f in self.decoder.decode(av.Packet(bytes(frame.body[2:]))):
                    self.samples += f.samples
                    self.rate = f.sample_rate
            if self.avGap is None and self.lastVideo is not None:
                self.avGap = frame.timestamp - self.lastVideo
            if frame.timestamp < self.last:
                self.monotonic = False
            self.last = frame.timestamp

    def streamEnded(self):
        pass


async def hls_master(port, token, streamId="s1"):
    from twisted.web.client import Agent, readBody

    agent = Agent(reactor)
    r = await agent.request(b"GET", "http://127.0.0.1:{}/LiveApp/streams/{}.m3u8?token={}".format(
        port, streamId, token).encode())
    return {"code": r.code, "body": (await readBody(r)).decode("utf-8", "replace")}


#: id(server) -> its WebRTC media engine
ENGINES = {}


def make_server():
    server = Server(apps=Applications(None), store=MemoryTokenStore(), clock=reactor)
    server.apps.replace("LiveApp", publishTokenControlEnabled=True,
                        playTokenControlEnabled=True)
    http = reactor.listenTCP(0, buildSite(server), interface="127.0.0.1")
    rtmp = reactor.listenTCP(0, RTMPFactory(server.access, server.clock, server.metrics), interface="127.0.0.1")
    ENGINES[id(server)] = http.factory.resource._webrtc.engine  # for the tests' checks
    return server, http, rtmp


async def mint(server, streamId, type):
    t = new_token(streamId, type, int(time.time()) + 600)
    await server.store.add(StoredToken.fromToken("LiveApp", t))
    return t.tokenId


async def main(clip):
    server, http, rtmp = make_server()
    url = "ws://127.0.0.1:{}/LiveApp/websocket".format(http.getHost().port)
    out = {}
    ptok = await mint(server, "s1", "publish")
    ws, pc, n = await publish(url, clip, ptok)
    out["publish"] = n
    out["live"] = server.hub.isLive("LiveApp", "s1")
    if pc is not None:
        # The hub gets the publisher's Opus as AAC: a config, then frames.
        counter = AudioCounter()
        server.hub.get("LiveApp", "s1").subscribe(counter)
        for _ in range(50):
            if server.hub.get("LiveApp", "s1").audioConfig is not None and counter.frames:
                break
            await task.deferLater(reactor, 0.1)
        await task.deferLater(reactor, 1.0)
        for _ in range(20):
            out["hls"] = await hls_master(http.getHost().port, await mint(server, "s1", "play"))
            if out["hls"]["code"] == 200:
                break
            await task.deferLater(reactor, 0.25)
        out["publishAudio"] = {"config": counter.config, "frames": counter.frames,
                               "monotonic": counter.monotonic, "samples": counter.samples,
                               "rate": counter.rate, "avGap": counter.avGap}
        tok = await mint(server, "s1", "play")
        out["play"] = await play(url, tok)
        out["spent"] = await play(url, tok)
        out["publishFrames"] = server.hub.get("LiveApp", "s1").framesIn \
            if server.hub.get("LiveApp", "s1") else None
        ws.proto.send(command="stop", streamId="s1")
        out["publishStop"] = (await ws.expect(lambda m: m.get("command") == "notification"))
        await aw(pc.close())
        out["liveAfterStop"] = server.hub.isLive("LiveApp", "s1")
    # RTMP in, WebRTC out
    rtok = await mint(server, "r1", "publish")
    proc = await aw(asyncio.create_subprocess_exec(
        "ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "2", "-i", clip,
        "-c", "copy", "-f", "flv",
        "rtmp://127.0.0.1:{}/LiveApp/r1?token={}".format(rtmp.getHost().port, rtok),
        stdin=asyncio.subprocess.DEVNULL))
    for _ in range(100):
        if server.hub.isLive("LiveApp", "r1") and server.hub.get("LiveApp", "r1").gop:
            break
        await task.deferLater(reactor, 0.1)
    tok = await mint(server, "r1", "play")
    out["rtmpPlay"] = await play(url, tok, streamId="r1", want=50)
    proc.kill()
    await aw(proc.wait())
    await pages_close(server)
    print(json.dumps(out), flush=True)


async def codecs(clip):
    """
    A VP8-only publisher with G.711 (PCMU) audio: its video is transcoded to
    H.264 and its audio to AAC, so WebRTC viewers and HLS get both; a
    second VP8-only publisher while the only transcoding slot is taken is
    refused with highResourceUsage.  The audio is placed by the RTCP
    sender reports.
    """
    server, http, rtmp = make_server()
    ENGINES[id(server)].transcodeSlots.limit = 1
    url = "ws://127.0.0.1:{}/LiveApp/websocket".format(http.getHost().port)
    out = {}
    ws, pc, n = await publish(url, clip, await mint(server, "v1", "publish"), streamId="v1",
                              video="video/VP8", audio="audio/PCMU")
    out["publish"] = n
    if pc is None:
        print(json.dumps(out), flush=True)
        return
    stream = server.hub.get("LiveApp", "v1")
    counter = AudioCounter()
    stream.subscribe(counter)
    for _ in range(100):
        if stream.videoConfig is not None and counter.frames > 20:
            break
        await task.deferLater(reactor, 0.1)
    peer = server_peer(server, "v1")
    out["videoCodec"] = peer.videoCodec
    out["audioCodec"] = peer.audioCodec
    out["avc"] = stream.videoConfig is not None and stream.videoConfig[0] & 0x0F == 7
    out["publishAudio"] = {"config": counter.config, "frames": counter.frames,
                           "monotonic": counter.monotonic, "rate": counter.rate,
                           "samples": counter.samples}
    for _ in range(40):
        if peer.timeline.syncedBy == "rtcp":
            break
        await task.deferLater(reactor, 0.1)
    out["syncedBy"] = peer.timeline.syncedBy
    out["audioOffset"] = peer.timeline.audioOffset
    out["transcoded"] = peer.transcoder.framesOut if peer.transcoder else 0
    # the only slot is taken: a second VP8-only publisher is refused
    ws2, pc2, m2 = await publish(url, clip, await mint(server, "v2", "publish"), streamId="v2",
                                 video="video/VP8")
    out["second"] = m2
    if pc2 is not None:
        await aw(pc2.close())
    out["secondLive"] = server.hub.isLive("LiveApp", "v2")
    for _ in range(20):
        out["hls"] = await hls_master(http.getHost().port, await mint(server, "v1", "play"),
                                      "v1")
        if out["hls"]["code"] == 200:
            break
        await task.deferLater(reactor, 0.25)
    out["play"] = await play(url, await mint(server, "v1", "play"), streamId="v1", want=100)
    ws.proto.send(command="stop", streamId="v1")
    await ws.expect(lambda m: m.get("definition") == "publish_finished")
    await aw(pc.close())
    await task.deferLater(reactor, 0.2)
    out["slotsAfter"] = ENGINES[id(server)].transcodeSlots.used
    await pages_close(server)
    print(json.dumps(out), flush=True)


def server_peer(server, streamId):
    return ENGINES[id(server)].publishers[("LiveApp", streamId)]


async def pages_close(server):
    for s in server.hub.liveStreams():
        s.end()
    await task.deferLater(reactor, 0.3)


def run(coro_fn, *args):
    async def wrapper():
        try:
            await coro_fn(*args)
        except Exception as e:
            import traceback

            traceback.print_exc()
            print(json.dumps({"exception": repr(e)}), flush=True)
        finally:
            reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(wrapper()))
    reactor.run()


def serve():
    server, http, rtmp = make_server()
    print(json.dumps({"http": http.getHost().port, "rtmp": rtmp.getHost().port}), flush=True)
    from twisted.internet import stdio
    from twisted.internet.protocol import Protocol

    class Stdin(Protocol):
        def connectionLost(self, reason=None):
            reactor.stop()

    stdio.StandardIO(Stdin())
    reactor.run()


if __name__ == "__main__":
    import os

    if os.environ.get("TOKENGATE_SCRIPT_LOG"):
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    if len(sys.argv) > 2 and sys.argv[2] == "serve":
        serve()
    elif len(sys.argv) > 2 and sys.argv[2] == "codecs":
        run(codecs, sys.argv[1])
    else:
        run(main, sys.argv[1])
