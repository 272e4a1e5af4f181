"""
C{acceptOnlyStreamsInDataStore} and C{allowedPublisherCIDR} with real
clients against tokengate as operators run it (a C{twistd} subprocess on
loopback, the default SQLite store): ffmpeg publishing over RTMP and SRT,
srt-live-transmit over SRT.  Refused publishes keep their token; broadcasts
created through REST survive a restart.

Only loopback is used, so a refusal by address is proven by configuring
networks that exclude 127.0.0.1.
"""

from __future__ import annotations

import re
import time
import urllib.request

from twisted.trial.unittest import TestCase

from tests import procs
from tests.fixtures import test_clip
from tests.helpers import eventually, require
from tests.interop.test_srt_interop import ts_clip
from tests.service import TokengateProcess

SETTINGS = "/rest/v2/applications/settings/LiveApp"
#: what ffmpeg prints of the RTMP refusal (NetStream.Publish.BadName)
REFUSED = "You are not allowed to publish the stream."


class DatastoreServiceTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        self.ffmpeg = require("ffmpeg")
        self.tg = TokengateProcess(self.mktemp())
        self.addCleanup(self.tg.kill)
        self.tg.start()
        self.running: list[procs.Running] = []
        self.addCleanup(self._killClients)

    async def _killClients(self) -> None:
        for r in self.running:
            r.kill()
        for r in self.running:
            await r.done

    def settings(self, **values: object) -> None:
        code, body = self.tg.post(SETTINGS, values)
        self.assertEqual((code, body["success"]), (200, True), body)

    def mint(self, streamId: str) -> str:
        code, body = self.tg.get(
            "/LiveApp/rest/v2/broadcasts/{}/token?expireDate={}&type=publish".format(
                streamId, int(time.time()) + 600))
        self.assertEqual(code, 200)
        return str(body["tokenId"])

    def create(self, streamId: str) -> None:
        code, body = self.tg.post("/LiveApp/rest/v2/broadcasts/create", {"streamId": streamId})
        self.assertEqual((code, body["status"]), (200, "created"), body)

    def refusals(self, protocol: str, reason: str) -> float:
        with urllib.request.urlopen(self.tg.base + "/metrics", timeout=10) as r:
            text = r.read().decode()
        m = re.search(r'tokengate_refusals_total\{action="publish",protocol="%s",'
                      r'reason="%s"\} ([0-9.]+)' % (protocol, reason), text)
        return float(m.group(1)) if m else 0.0

    def start(self, argv: list[str], timeout: float = 60.0) -> procs.Running:
        r = procs.start(argv, timeout)
        self.running.append(r)
        return r

    async def rtmp(self, path: str) -> procs.Result:
        url = "rtmp://127.0.0.1:{}{}".format(self.tg.rtmp, path)
        return await self.start([self.ffmpeg, "-hide_banner", "-nostdin", "-i", test_clip(),
                                 "-c", "copy", "-f", "flv", url]).done

    async def srt(self, streamid: str) -> procs.Result:
        # linger: libsrt's live mode closes at once by default, dropping what
        # it has not sent yet; ffmpeg pushes a clip faster than real time, so
        # on a loaded machine it could leave without sending any of it (the
        # other SRT interop tests linger too)
        url = "srt://127.0.0.1:{}?streamid={}&linger=3".format(self.tg.srt, streamid)
        return await self.start([self.ffmpeg, "-hide_banner", "-nostdin", "-i", ts_clip(3),
                                 "-c", "copy", "-f", "mpegts", url]).done

    async def srtLiveTransmit(self, streamid: str) -> procs.Result:
        slt = require("srt-live-transmit")
        cmd = "{} -v error -i {} -c copy -f mpegts - | {} -a:no -t:8 file://con " \
              "'srt://127.0.0.1:{}?streamid={}'".format(self.ffmpeg, ts_clip(3), slt,
                                                         self.tg.srt, streamid)
        return await self.start(["/bin/sh", "-c", cmd], timeout=40).done

    def broadcast(self, streamId: str) -> tuple[int, object]:
        return self.tg.get("/LiveApp/rest/v2/broadcasts/" + streamId)

    async def test_rtmpOnlyCreatedStreams(self) -> None:
        """
        ffmpeg over RTMP: an unregistered stream is refused and its token
        kept; once created (and after a restart) the same token publishes.
        """
        self.settings(publishTokenControlEnabled=True, acceptOnlyStreamsInDataStore=True)
        token = self.mint("cam1")
        result = await self.rtmp("/LiveApp/cam1?token=" + token)
        self.assertNotEqual(result.code, 0, result.stderr[-1500:])
        self.assertIn(REFUSED, result.stderr)
        self.assertEqual(self.refusals("rtmp", "unregistered"), 1)
        self.create("cam1")
        # a restart: the broadcast is in the SQLite database
        self.tg.stop()
        self.tg.start()
        code, body = self.broadcast("cam1")
        self.assertEqual((code, body["status"]), (200, "created"))
        result = await self.rtmp("/LiveApp/cam1?token=" + token)
        self.assertEqual(result.code, 0, result.stderr[-1500:])
        self.assertEqual(self.broadcast("cam1")[1]["status"], "finished")
        # deleted: refused again
        self.assertEqual(self.tg.get("/LiveApp/rest/v2/broadcasts/cam1")[0], 200)
        req = urllib.request.Request(self.tg.base + "/LiveApp/rest/v2/broadcasts/cam1",
                                     method="DELETE")
        with urllib.request.urlopen(req, timeout=10) as r:
            self.assertEqual(r.status, 200)
        result = await self.rtmp("/LiveApp/cam1?token=" + self.mint("cam1"))
        self.assertNotEqual(result.code, 0)
        self.assertEqual(self.refusals("rtmp", "unregistered"), 1)  # counted since the restart

    async def test_srtOnlyCreatedStreams(self) -> None:
        """
        ffmpeg and srt-live-transmit over SRT: an unregistered stream is
        rejected, its token kept; a created one publishes with it.
        """
        self.settings(publishTokenControlEnabled=True, acceptOnlyStreamsInDataStore=True)
        token = self.mint("cam2")
        result = await self.srt("LiveApp/cam2,token=" + token)
        self.assertNotEqual(result.code, 0, result.stderr[-1500:])
        result = await self.srtLiveTransmit("LiveApp/cam2,token=" + token)
        self.assertIn("REJECT", result.stderr)
        self.assertEqual(self.refusals("srt", "unregistered"), 2)
        self.create("cam2")
        result = await self.srt("LiveApp/cam2,token=" + token)
        self.assertEqual(result.code, 0, result.stderr[-1500:])
        # ffmpeg sends the clip at once (no -re) and leaves: under load the
        # server may still be reading its datagrams when ffmpeg has exited
        await eventually(lambda: self.broadcast("cam2")[1]["status"] == "finished", 15)
        self.assertEqual(self.refusals("srt", "unregistered"), 2)

    async def test_publisherCIDR(self) -> None:
        """
        C{allowedPublisherCIDR}: 10.0.0.0/8 refuses a publisher on 127.0.0.1
        (RTMP and SRT), keeping its token; 127.0.0.1/32 admits it.
        """
        code, body = self.tg.post(SETTINGS, {"allowedPublisherCIDR": "10.0.0.0/8,nonsense"})
        self.assertEqual(body["success"], False)
        self.settings(publishTokenControlEnabled=True, allowedPublisherCIDR="10.0.0.0/8")
        token = self.mint("cam3")
        result = await self.rtmp("/LiveApp/cam3?token=" + token)
        self.assertNotEqual(result.code, 0)
        self.assertIn(REFUSED, result.stderr)
        result = await self.srt("LiveApp/cam3,token=" + token)
        self.assertNotEqual(result.code, 0)
        self.assertEqual((self.refusals("rtmp", "address"), self.refusals("srt", "address")),
                         (1, 1))
        self.settings(publishTokenControlEnabled=True, allowedPublisherCIDR="127.0.0.1/32")
        result = await self.rtmp("/LiveApp/cam3?token=" + token)
        self.assertEqual(result.code, 0, result.stderr[-1500:])
        result = await self.srt("LiveApp/cam3,token=" + self.mint("cam3"))
        self.assertEqual(result.code, 0, result.stderr[-1500:])
