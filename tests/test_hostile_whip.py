"""
Hostile WHIP/WHEP clients, in memory (the real site on loopback, a
test-double engine): what a client can make the server hold is bounded
(sessions per address, a session that never connects, candidates per
session, the offer's and the fragment's size), and garbage is refused with a
reason and leaves nothing behind.  The floods against a real server process,
with its RSS bound, are in L{tests.interop.test_hostile_whip}.
"""

from __future__ import annotations

import random

from twisted.internet.task import Clock

from tokengate.webrtc import whip
from tokengate.webrtc.whipwire import MAX_FRAGMENT

from tests.test_webrtc_whip import WhipBase
from tests.whipoffers import CANDIDATE, fragment, offer


class SessionsPerAddress(WhipBase):
    perAddress = 2

    async def test_perAddress(self) -> None:
        """
        An address holds at most C{maxConnectionsPerAddress} sessions: the
        next is 429 (counted, its token kept) until one ends.
        """
        first = await self.publish("s1")
        await self.publish("s2")
        token = self.mint("s3")
        r, body = await self.post(streamId="s3", token=token)
        self.assertEqual(r.code, 429, body)
        self.assertEqual(self.refusals("whip", "publish", "too_many_sessions"), 1)
        self.assertEqual(len(self.engine.peers), 2)
        await self.call("DELETE", first)
        r, body = await self.post(streamId="s3", token=token)
        self.assertEqual(r.code, 201, body)


class Bounds(WhipBase):
    async def test_neverConnects(self) -> None:
        """
        A session whose client never connects ends after CONNECT_TIMEOUT:
        peer closed, stream and grant gone.
        """
        clock = Clock()
        self.endpoints.clock = clock
        self.engine.connect = False
        await self.publish()
        clock.advance(whip.CONNECT_TIMEOUT - 1)
        self.assertEqual(self.endpoints.count("whip"), 1)
        clock.advance(1)
        self.assertTrue(self.engine.peers[0].closed)
        self.assertNothingLeft()

    async def test_candidates(self) -> None:
        """
        At most MAX_SESSION_CANDIDATES candidates per session, 64 per
        fragment, a fragment of at most MAX_FRAGMENT bytes.
        """
        location = await self.publish()
        h = {"content-type": "application/trickle-ice-sdpfrag", "if-match": "*"}
        many = (CANDIDATE,) * 64
        for _ in range(whip.MAX_SESSION_CANDIDATES // 64):
            r, body = await self.call("PATCH", location, fragment(candidates=many).encode(), h)
            self.assertEqual(r.code, 204, body)
        r, body = await self.call("PATCH", location, fragment().encode(), h)
        self.assertEqual(r.code, 400, body)
        self.assertEqual(len(self.engine.peers[0].candidates), whip.MAX_SESSION_CANDIDATES)
        r, body = await self.call("PATCH", location, fragment(candidates=many + (CANDIDATE,))
                                  .encode(), h)
        self.assertEqual(r.code, 400, body)
        r, body = await self.call("PATCH", location, b"a=x" * MAX_FRAGMENT, h)
        self.assertEqual(r.code, 400, body)
        self.assertEqual(self.endpoints.count("whip"), 1)  # bad input ends nothing

    async def test_garbage(self) -> None:
        """
        Random bodies, headers and paths: every answer is a refusal with a
        reason, no peer connection is made, the token is kept.
        """
        rng = random.Random(13)
        token = self.mint()
        good = offer()
        for i in range(150):
            cut = rng.randrange(len(good))
            body = rng.choice([
                good[:cut],
                good[:cut] + "".join(chr(rng.randrange(1, 0x3000)) for _ in range(40)),
                "".join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(200))),
                good.replace("sendonly", "recvonly"),
            ])
            contentType = rng.choice(["application/sdp", "application/SDP; x=1", "text/plain",
                                      "application/trickle-ice-sdpfrag"])
            r, answer = await self.post(body=body, contentType=contentType,
                                        token=rng.choice([None, "x" * rng.randrange(1, 300)]))
            self.assertIn(r.code, (400, 401, 415), (body, answer))
            self.assertTrue(answer.strip())
        for path in ("/LiveApp/whip", "/LiveApp/whip/", "/LiveApp/whip/s1/x/y/z",
                     "/LiveApp/whip/%ff%fe", "/LiveApp/whep/s1/" + "A" * 32):
            r, _ = await self.call("DELETE", path)
            self.assertIn(r.code, (400, 404, 405), (path, r.code, _))
        self.assertEqual(self.engine.peers, [])
        self.assertNothingLeft()
        r, body = await self.post(token=token)
        self.assertEqual(r.code, 201, body)
