"""
Hostile HTTP clients (issue 10, findings 6, 7, 13 and 14): slowloris and
per-address connection limits, multi-range floods against MP4 recordings, a
token spelled so the access log missed it, management JWTs without expiry.
The floods against a real C{twistd tokengate} are in
L{tests.interop.test_hostile_http}.
"""

from __future__ import annotations

import os
import re
from typing import Any, Optional

import jwt as pyjwt
from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet import reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http import parse_qs
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from tokengate.auth import Refused, check_jwt
from tokengate.limits import PerAddressLimit
from tokengate.metrics import Metrics
from tokengate.config import ServerConfig
from tokengate.server import Server
from tests.fixtures import restAPI
from tokengate.tokens import Outcome
from tokengate.web.site import SECRET_PARAMS, TokengateSite, redact_uri, redacting_log_formatter
from tokengate.web.vod import MAX_RANGES, RecordingFile, parseRanges

from .helpers import NOW
from .test_playback import PlaybackBase
from .test_rest import RestBase


def _refusals(metrics: Metrics, protocol: str, action: str, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "tokengate_refusals_total", {"protocol": protocol, "action": action, "reason": reason})
    return value or 0.0


# --- finding 6: request deadlines ------------------------------------------------------


class _Slow(Resource):
    """
    /slow answers only when told to (a long-lived response); / at once.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        if request.path == b"/slow":
            self.pending.append(request)
            return NOT_DONE_YET
        return b"ok"

    def render_POST(self, request: Any) -> bytes:
        return b"got %d" % (len(request.content.read()),)


class DeadlineTests(SynchronousTestCase):
    """
    L{DeadlineChannel} on a Clock and a string transport.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics()
        self.resource = _Slow()
        self.site = TokengateSite(self.resource, metrics=self.metrics, reactor=self.clock,
                                  requestTimeout=20.0)

    def connect(self) -> tuple[Any, StringTransport]:
        channel = self.site.buildProtocol(IPv4Address("TCP", "192.0.2.1", 5000))
        transport = StringTransport()
        channel.makeConnection(transport)
        self.addCleanup(lambda: channel.connectionLost(None) if not transport.disconnecting
                        else None)
        return channel, transport

    def timeouts(self, reason: str = "request_timeout") -> float:
        return _refusals(self.metrics, "http", "request", reason)

    def test_slowloris(self) -> None:
        """
        A header byte every 5 s (the idle timeout never fires): the request
        is cut 20 s after the connection, with a 408.
        """
        channel, transport = self.connect()
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\n":
            channel.dataReceived(bytes([byte]))
            self.clock.advance(5)
            if transport.disconnecting:
                break
        self.assertTrue(transport.disconnecting)
        self.assertLessEqual(self.clock.seconds(), 20.0)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertEqual(self.timeouts(), 1)
        # what it sends after is ignored; a client that does not read is
        # aborted once twisted.web's abort timeout passes
        channel.dataReceived(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        self.assertEqual(transport.value().count(b"HTTP/1.1"), 1)
        self.clock.advance(channel.abortTimeout)
        self.assertEqual(self.timeouts(), 1)

    def test_silentConnection(self) -> None:
        channel, transport = self.connect()
        self.clock.advance(19.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.timeouts(), 1)

    def test_longResponseNotCut(self) -> None:
        """
        Once a request is complete the deadline stops: a response pending for
        ten minutes (a blocking reload, a download) is not cut.
        """
        channel, transport = self.connect()
        channel.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        # pipelined bytes of a next request while the first is pending
        channel.dataReceived(b"GET / HT")
        for _ in range(60):
            self.clock.advance(10)
        self.assertFalse(transport.disconnecting)
        request = self.resource.pending.pop()
        request.write(b"late")
        request.finish()
        self.assertFalse(transport.disconnecting)
        self.assertIn(b"late", transport.value())
        # the pipelined request's deadline starts once it is read
        self.clock.advance(19)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.timeouts(), 1)

    def test_keepAlive(self) -> None:
        """
        Between kept-alive requests only twisted.web's idle timeout (60 s)
        runs; a request's own deadline starts at its first byte.
        """
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"200 OK", transport.value())
        transport.clear()
        self.clock.advance(50)
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
        self.clock.advance(19)
        channel.dataReceived(b"Host: x\r\n\r\n")
        self.assertIn(b"200 OK", transport.value())
        self.clock.advance(50)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.timeouts(), 0)

    def test_slowBody(self) -> None:
        """
        A body must average 1 KiB/s: one sent at 10 bytes/s is cut (408,
        counted as a body timeout); one sent at 2 KiB/s for longer than the
        request timeout is not.
        """
        channel, transport = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(100):
            channel.dataReceived(b"x" * 10)
            self.clock.advance(1)
            if transport.disconnecting:
                break
        self.assertTrue(transport.disconnecting)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertEqual(self.timeouts("body_timeout"), 1)

        channel, transport = self.connect()
        length = 2048 * 40
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % length)
        for _ in range(40):
            self.clock.advance(1)
            channel.dataReceived(b"x" * 2048)
        self.assertFalse(transport.disconnecting)
        self.assertIn(b"got %d" % length, transport.value())


# --- per-address limits ------------------------------------------------------------


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class PerAddressLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.refused: list[str] = []
        self.factory = PerAddressLimit(Factory.forProtocol(_Echo), 3, self.refused.append)

    def connect(self, host: str) -> tuple[Any, StringTransport]:
        protocol = self.factory.buildProtocol(IPv4Address("TCP", host, 1234))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_limit(self) -> None:
        open_ = [self.connect("192.0.2.1") for _ in range(3)]
        for protocol, transport in open_:
            self.assertFalse(transport.disconnecting)
            protocol.dataReceived(b"hi")
            self.assertEqual(transport.value(), b"hi")
        _, transport = self.connect("192.0.2.1")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.refused, ["192.0.2.1"])
        # another address is not affected
        _, other = self.connect("192.0.2.2")
        self.assertFalse(other.disconnecting)
        # one closes: one more is admitted
        open_[0][0].connectionLost(None)
        _, again = self.connect("192.0.2.1")
        self.assertFalse(again.disconnecting)
        self.assertEqual(self.factory.counts, {"192.0.2.1": 3, "192.0.2.2": 1})

    def test_uncountedWhenClosed(self) -> None:
        conns = [self.connect("192.0.2.%d" % (i % 5)) for i in range(15)]
        for protocol, _ in conns:
            protocol.connectionLost(None)
        self.assertEqual(self.factory.counts, {})


class _Transport(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    def render_GET(self, request: Any) -> bytes:
        self.seen.append(request.channel.transport)
        return b"x" * (128 * 1024)


class LimitedSiteTests(TestCase):
    """
    The site behind the limit over real TCP: the channel's transport is the
    counting wrapper around the socket, which L{CappedRequest} looks through
    to send a large body without copying it.
    """

    async def test_transport(self) -> None:
        from twisted.internet.abstract import FileDescriptor

        from tokengate.limits import CountedProtocol, LimitingReactor

        resource = _Transport()
        limited = LimitingReactor(reactor, lambda f: PerAddressLimit(f, 2))
        port = limited.listenTCP(0, TokengateSite(resource), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        from .helpers import http_client

        http = http_client(self)
        r = await http.get("http://127.0.0.1:{}/big".format(port.getHost().port))
        self.assertEqual(len(await r.content()), 128 * 1024)
        self.assertIsInstance(resource.seen[0], CountedProtocol)
        self.assertIsInstance(resource.seen[0].transport, FileDescriptor)


class OptionsTests(SynchronousTestCase):
    def test_options(self) -> None:
        from twisted.python.usage import UsageError

        from tokengate.tap import Options

        o = Options()
        o.parseOptions([])
        self.assertEqual((o["max-connections-per-address"], o["http-request-timeout"],
                          o["rest-jwt-max-lifetime"]), (256, 20.0, 86400.0))
        o = Options()
        o.parseOptions(["--max-connections-per-address", "0", "--http-request-timeout", "0"])
        self.assertEqual((o["max-connections-per-address"], o["http-request-timeout"]), (0, 0))
        for bad in (["--max-connections-per-address", "-1"], ["--http-request-timeout", "nan"],
                    ["--http-request-timeout", "0.5"], ["--rest-jwt-max-lifetime", "inf"]):
            self.assertRaises(UsageError, Options().parseOptions, bad)


# --- finding 7: multi-range requests -------------------------------------------------


class _ProducingRequest(DummyRequest):
    """
    A DummyRequest that records the status and checks every read length.
    """

    def __init__(self, range_: Optional[bytes]) -> None:
        super().__init__([b""])
        if range_ is not None:
            self.requestHeaders.setRawHeaders(b"range", [range_])

    def setLastModified(self, when: float) -> None:
        return None


def _serve(path: str, range_: Optional[bytes]) -> _ProducingRequest:
    request = _ProducingRequest(range_)
    resource = RecordingFile(path, defaultType="video/mp4")
    resource.type, resource.encoding = "video/mp4", None
    resource.render(request)
    return request


def _parts(request: _ProducingRequest) -> list[tuple[int, int, bytes]]:
    """
    The (first, last, bytes) parts of a 206 answer.
    """
    body = b"".join(request.written)
    contentType = request.responseHeaders.getRawHeaders(b"content-type")[0]
    if not contentType.startswith(b"multipart/byteranges"):
        m = re.fullmatch(rb"bytes (\d+)-(\d+)/\d+",
                         request.responseHeaders.getRawHeaders(b"content-range")[0])
        assert m is not None
        return [(int(m.group(1)), int(m.group(2)), body)]
    boundary = re.search(rb'boundary="([^"]+)"', contentType).group(1)  # type: ignore[union-attr]
    chunks = body.split(b"\r\n--" + boundary)
    assert chunks[0] == b"" and chunks[-1] == b"--\r\n", (chunks[0], chunks[-1])
    parts = []
    for chunk in chunks[1:-1]:
        head, _, data = chunk.partition(b"\r\n\r\n")
        m = re.search(rb"Content-Range: bytes (\d+)-(\d+)/\d+", head)
        assert m is not None
        parts.append((int(m.group(1)), int(m.group(2)), data))
    return parts


def _wanted(header: bytes, size: int) -> Optional[set[int]]:
    """
    The byte positions a Range header asks for (a model of RFC 9110 written
    apart from the code under test), None if it is not a valid one.
    """
    unit, eq, specs = header.partition(b"=")
    if not eq or unit.strip().lower() != b"bytes":
        return None
    wanted: set[int] = set()
    any_ = False
    for spec in specs.split(b","):
        spec = spec.strip(b" \t")
        if not spec:
            continue
        any_ = True
        m = re.fullmatch(rb"(\d*)[ \t]*-[ \t]*(\d*)", spec)
        if m is None or not (m.group(1) or m.group(2)):
            return None
        if m.group(1):
            first = int(m.group(1))
            last = int(m.group(2)) if m.group(2) else size - 1
            if m.group(2) and last < first:
                return None
            wanted.update(range(first, min(last, size - 1) + 1))
        else:
            wanted.update(range(max(0, size - int(m.group(2))), size))
    return wanted if any_ else None


_specs = st.one_of(
    st.tuples(st.integers(0, 700), st.integers(0, 700)).map(
        lambda t: b"%d-%d" % (min(t), max(t))),
    st.integers(0, 700).map(lambda n: b"%d-" % n),
    st.integers(0, 700).map(lambda n: b"-%d" % n),
    st.tuples(st.integers(0, 700), st.integers(0, 700)).map(lambda t: b"%d-%d" % t),
    st.text(alphabet="0123456789-, \t=bytes", max_size=12).map(str.encode),
)
_headers = st.one_of(
    st.lists(_specs, min_size=0, max_size=40).map(lambda s: b"bytes=" + b",".join(s)),
    st.text(alphabet="0123456789-, =bytesBYTES;x", max_size=40).map(str.encode),
)


class RangeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        # larger than twisted.web's producer buffer, so parts straddle writes
        self.content = os.urandom(3 * 65536 + 123)
        with open(self.path, "wb") as f:
            f.write(self.content)
        self.small = self.path + ".small"
        with open(self.small, "wb") as f:
            f.write(self.content[:700])

    def check(self, path: str, content: bytes, header: bytes) -> None:
        request = _serve(path, header)
        self.assertTrue(request.finished, header)
        code = request.responseCode or 200
        self.assertIn(code, (200, 206, 416), header)
        length = request.responseHeaders.getRawHeaders(b"content-length")
        body = b"".join(request.written)
        if length is not None:
            self.assertEqual(int(length[0]), len(body), header)
        wanted = _wanted(header, len(content))
        if code == 200:
            self.assertEqual(body, content)
            # ignored only when invalid, or when it asks for too many pieces
            if wanted is not None:
                runs = sum(1 for i in wanted if i - 1 not in wanted)
                self.assertGreater(runs, MAX_RANGES, header)
        elif code == 416:
            self.assertEqual(wanted, set(), header)
            self.assertEqual(request.responseHeaders.getRawHeaders(b"content-range"),
                             [b"bytes */%d" % len(content)])
        else:
            self.assertIsNotNone(wanted, header)
            served: set[int] = set()
            for first, last, data in _parts(request):
                self.assertEqual(data, content[first:last + 1], header)
                served.update(range(first, last + 1))
            self.assertEqual(served, wanted, header)

    @given(_headers)
    @settings(max_examples=300, deadline=None)
    def test_anyRangeHeader(self, header: bytes) -> None:
        self.check(self.small, self.content[:700], header)

    def test_straddling(self) -> None:
        """
        Parts whose separators fall where twisted.web's producer read a
        negative length.
        """
        for first_end in range(65536 - 400, 65536 + 1, 7):
            self.check(self.path, self.content,
                       b"bytes=0-%d,%d-%d" % (first_end, first_end + 2, first_end + 5000))

    def test_thousandParts(self) -> None:
        """
        Finding 7: a 1,000-part header (disjoint parts) gets the whole file;
        1,000 overlapping parts are merged into one range.
        """
        header = b"bytes=" + b",".join(b"%d-%d" % (i * 10, i * 10 + 4) for i in range(1000))
        request = _serve(self.path, header)
        self.assertEqual((request.responseCode or 200), 200)
        self.assertEqual(b"".join(request.written), self.content)
        header = b"bytes=" + b",".join(b"%d-%d" % (i, i + 100) for i in range(1000))
        request = _serve(self.path, header)
        self.assertEqual(request.responseCode, 206)
        self.assertEqual(b"".join(request.written), self.content[:1100])
        for n in (MAX_RANGES, MAX_RANGES + 1):
            header = b"bytes=" + b",".join(b"%d-%d" % (i * 10, i * 10 + 4) for i in range(n))
            self.check(self.path, self.content, header)
            self.assertEqual(len(parseRanges(header, len(self.content)) or ()), n)

    def test_unsatisfiable(self) -> None:
        request = _serve(self.path, b"bytes=%d-" % len(self.content))
        self.assertEqual(request.responseCode, 416)
        request = _serve(self.path, b"bytes=-0")
        self.assertEqual(request.responseCode, 416)


class VodRangeTests(PlaybackBase):
    """
    The same through the playback gate: a viewer's valid session.
    """

    async def test_multiRangeFlood(self) -> None:
        stream = self.live(until_ms=None)
        stream.end()
        path = self.server.outputs.recordingPath("LiveApp", "s1")
        for _ in range(100):
            if os.path.exists(path):
                break
            await task.deferLater(reactor, 0.1)
        with open(path, "rb") as f:
            content = f.read()
        r, _ = await self.get("s1.mp4?token=" + self.mint())
        self.assertEqual(r.code, 200)
        final = r.request.absoluteURI.decode()
        many = b"bytes=" + b",".join(b"%d-%d" % (i * 7, i * 7 + 2) for i in range(1000))
        for _ in range(20):
            r, body = await self.get(final, headers={b"range": many})
            self.assertEqual((r.code, body), (200, content))
        r, body = await self.get(final, headers={b"range": b"bytes=0-9,20-29"})
        self.assertEqual(r.code, 206)
        self.assertIn(content[20:30], body)
        # (trial fails the test for any error logged, as twisted.web's
        # producer's ValueError was)


# --- finding 13: redaction on parsed arguments ---------------------------------------


_SECRETS = [p.encode() for p in SECRET_PARAMS]


def _spellings(name: bytes) -> st.SearchStrategy[bytes]:
    """
    Ways to write C{name} in a query that the server decodes to it (or to
    another case of it).
    """
    def spell(flags: list[int]) -> bytes:
        out = b""
        for c, flag in zip(name, flags):
            ch = bytes([c])
            if flag == 1:
                out += b"%%%02X" % c
            elif flag == 2:
                out += b"%%%02x" % c
            elif flag == 3:
                out += ch.upper()
            else:
                out += ch
        return out
    return st.lists(st.integers(0, 3), min_size=len(name), max_size=len(name)).map(spell)


_secretNames = st.sampled_from(_SECRETS).flatmap(_spellings)
_plainNames = st.sampled_from([b"id", b"x", b"mytoken", b"tokens", b"t%6F", b"_HLS_msn", b"a+b"])
_values = st.text(alphabet="abcdefXYZ0123456789%+#=.", min_size=0, max_size=12).map(str.encode)
_items = st.tuples(st.one_of(_secretNames, _plainNames), _values).map(
    lambda kv: kv[0] + b"=" + kv[1])
_queries = st.lists(st.tuples(_items, st.sampled_from([b"&", b";", b"#", b"&&"])),
                    max_size=8).map(lambda items: b"".join(i + s for i, s in items))


class RedactionTests(SynchronousTestCase):
    def test_finding13(self) -> None:
        self.assertEqual(redact_uri(b"/LiveApp/streams/x.m3u8?%74oken=T1234"),
                         b"/LiveApp/streams/x.m3u8?%74oken=REDACTED")
        for uri in (b"/a?%74%6F%6B%65%6E=T1234", b"/a?x=1;token=T1234", b"/a?TOKEN=T1234",
                    b"/a?token=1&token=T1234", b"/a?x=1#token=T1234", b"/a#token=T1234",
                    b"/a?tgs=T1234#frag", b"/a?id=1&subscriber%43ode=T1234"):
            self.assertNotIn(b"T1234", redact_uri(uri), uri)

    @given(_queries)
    @settings(max_examples=500, deadline=None)
    def test_whatTheServerReads(self, query: bytes) -> None:
        """
        For any query: every value the server reads under a secret name is
        redacted, and what it reads under any other name (outside a
        fragment) is unchanged.
        """
        redacted = redact_uri(b"/LiveApp/streams/x.m3u8?" + query)
        path, _, rquery = redacted.partition(b"?")
        self.assertEqual(path, b"/LiveApp/streams/x.m3u8")
        before, after = parse_qs(query, 1), parse_qs(rquery, 1)
        self.assertEqual(list(before), list(after))
        secrets = {s.lower() for s in _SECRETS}
        for name, values in before.items():
            if name.lower() in secrets:
                self.assertEqual(after[name], [b"REDACTED"] * len(values), query)
            else:
                for old, new in zip(values, after[name]):
                    if b"#" not in old:
                        self.assertEqual(old, new, query)

    @given(_queries, st.binary(min_size=8, max_size=8))
    @settings(max_examples=200, deadline=None)
    def test_logLine(self, query: bytes, secret: bytes) -> None:
        """
        A secret the server would read never reaches the log line, from the
        request line or the referrer.
        """
        token = b"Q" + secret.hex().encode() + b"Z"
        uri = b"/LiveApp/streams/x.m3u8?" + query + b"&%74oken=" + token
        self.assertEqual(parse_qs(uri.partition(b"?")[2], 1)[b"token"][-1], token)
        request = DummyRequest([b""])
        request.code, request.sentLength, request.clientproto = 200, 10, b"HTTP/1.1"
        request.method, request.uri = b"GET", uri
        request.requestHeaders.addRawHeader(b"referer", b"http://h/LiveApp/play.html?" + query
                                            + b";T%4fKEN=" + token)
        line = redacting_log_formatter("[ts]", request)
        self.assertNotIn(token.decode(), line)


# --- finding 14: JWTs without exp ------------------------------------------------------


SECRET = "s" * 32


class JwtTests(SynchronousTestCase):
    def test_expRequired(self) -> None:
        for claims in ({}, {"exp": None}, {"exp": "9999999999"}, {"exp": True},
                       {"exp": 10 ** 30}, {"sub": "ops"}):
            token = pyjwt.encode(claims, SECRET, algorithm="HS256")
            with self.assertRaises(Refused) as e:
                check_jwt(SECRET, token, NOW)
            self.assertEqual(e.exception.outcome, Outcome.INVALID, claims)

    def test_lifetimeBound(self) -> None:
        far = pyjwt.encode({"exp": NOW + 7 * 86400}, SECRET, algorithm="HS256")
        near = pyjwt.encode({"exp": NOW + 3600}, SECRET, algorithm="HS256")
        self.assertEqual(check_jwt(SECRET, far, NOW)["exp"], NOW + 7 * 86400)
        with self.assertRaises(Refused):
            check_jwt(SECRET, far, NOW, maxLifetime=86400)
        self.assertEqual(check_jwt(SECRET, near, NOW, maxLifetime=86400)["exp"], NOW + 3600)


class ManagementJwtTests(RestBase):
    async def test_noExpRefused(self) -> None:
        self.server = Server.inMemory(clock=self.clock,
                                      config=ServerConfig(restJwtSecretKey=SECRET))
        self.resource = restAPI(self.server).resource()
        cases = (({"sub": "ops"}, 403), ({"exp": NOW + 30 * 86400}, 403),
                 ({"exp": NOW + 3600}, 200), ({"exp": NOW - 1}, 403))
        local = StubTreq(self.resource)  # the JWT and the address filter must both pass
        for claims, expected in cases:
            token = pyjwt.encode(claims, SECRET, algorithm="HS256")
            code, _ = await self.get("/rest/v2/applications", local,
                                     headers={"Authorization": "Bearer " + token})
            self.assertEqual(code, expected, claims)
        self.assertEqual(self.server.metrics.registry.get_sample_value(
            "tokengate_rest_refusals_total", {"reason": "invalid_jwt"}), 3)

    async def test_appJwtNoExp(self) -> None:
        self.server.apps.replace("LiveApp", jwtControlEnabled=True, jwtSecretKey=SECRET)
        token = pyjwt.encode({"sub": "ops"}, SECRET, algorithm="HS256")
        code, _ = await self.get("/LiveApp/rest/v2/broadcasts/s1/tokens/list/0/10",
                                 headers={"Authorization": token})
        self.assertEqual(code, 403)


class JWKSFloodTests(TestCase):
    """
    REST callers flooding an application whose JWT filter uses a jwksURL
    (with the address filter off, anyone may try): tokens naming unknown
    keys, garbage and forged algorithms cost no more than one fetch of the
    key set per refetch interval, and every one is refused.
    """

    async def test_unknownKidsFetchOnce(self) -> None:
        from tests.test_rest_protection import KEY, Harness, rs256

        harness = Harness()
        harness.setUpHarness()
        harness.server.apps.replace("LiveApp", ipFilterEnabled=False, jwtControlEnabled=True,
                                    jwksURL="http://jwks.example/keys")
        path = "/LiveApp/rest/v2/broadcasts/s1/tokens/list/0/10"
        codes = []
        for n in range(200):
            token = (rs256(KEY, "kid{}".format(n), NOW + 600) if n % 3 == 0
                     else pyjwt.encode({"exp": NOW + 600}, "x" * 32, algorithm="HS256")
                     if n % 3 == 1 else "x" * (n * 50))
            codes.append((await harness.call(path, "198.51.100.{}".format(n % 250), token))[0])
        self.assertEqual(set(codes), {403})
        self.assertEqual(harness.jwks.requests, 1)
        harness.clock.advance(31)  # an unknown kid may fetch again after the interval, once
        for n in range(20):
            await harness.call(path, "198.51.100.1", rs256(KEY, "again{}".format(n), NOW + 600))
        self.assertEqual(harness.jwks.requests, 2)
        code, _ = await harness.call(path, "198.51.100.1", rs256(KEY, "k1", NOW + 600))
        self.assertEqual(code, 200)
