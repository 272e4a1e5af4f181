"""
L{tokengate.store.redis.RedisTokenStore} against a real redis-server.

Each test starts its own redis-server (L{tests.redisserver}) on a free
loopback port; the test is skipped, not passed, when redis-server is not
installed (CI installs it and counts such skips as failures).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time

import redis as redis_py
from attrs import evolve
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tokengate.store import StoreUnavailable, open_store
from tokengate.store.redis import RedisTokenStore
from tokengate.tokens import (
    PLAY,
    PUBLISH,
    Outcome,
    Probe,
    StoredToken,
    digest,
    judge,
    masked,
    new_token,
)

from tests.redisserver import start_redis, start_redis_server
from tests.test_store import NOW, StoreSuiteMixin, probe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def eventually(f, timeout: float, interval: float = 0.05):
    """
    Call the async C{f} until it does not raise L{StoreUnavailable}; give up
    after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await f()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await sleep(interval)


class RedisStoreTests(StoreSuiteMixin, TestCase):
    """
    The shared store suite, plus what is particular to Redis.
    """

    def makeStore(self):
        self.host, self.port = start_redis(self)
        self.redis = redis_py.Redis(
            host=self.host, port=self.port, decode_responses=True,
            socket_timeout=5,
        )
        self.addCleanup(self.redis.close)
        return RedisTokenStore.open(self.host, self.port, reactor)

    async def test_keepsOnlyDigests(self):
        """
        Nothing in Redis contains the token itself; its digest is there, and
        every key is under the prefix.
        """
        t = await self.mint(room="r1")
        raw = []
        for key in self.redis.scan_iter("*"):
            self.assertTrue(key.startswith("tokengate:"), key)
            raw.append(key)
            kind = self.redis.type(key)
            if kind == "hash":
                raw.extend(itertools.chain(*self.redis.hgetall(key).items()))
            elif kind == "zset":
                raw.extend(self.redis.zrange(key, 0, -1))
            elif kind == "set":
                raw.extend(self.redis.smembers(key))
            else:
                raw.append(self.redis.get(key))
        blob = "\n".join(raw)
        self.assertNotIn(t.tokenId, blob)
        self.assertIn(digest(t.tokenId), blob)

    async def test_keyLayout(self):
        t = await self.mint("s1", expire=NOW + 60, room="r1")
        d = digest(t.tokenId)
        h = self.redis.hgetall("tokengate:t:" + d)
        self.assertEqual(
            h,
            {
                "app": "LiveApp", "hint": masked(t.tokenId), "streamId": "s1",
                "expireDate": str(NOW + 60), "type": PLAY, "roomId": "r1",
                "ix": "LiveApp:s1",
            },
        )
        self.assertEqual(self.redis.zrange("tokengate:s:LiveApp:s1", 0, -1), [d])
        self.assertEqual(self.redis.smembers("tokengate:a:LiveApp"), {"s1"})
        self.assertEqual(
            self.redis.zrange("tokengate:exp", 0, -1, withscores=True),
            [("LiveApp:s1:" + d, NOW + 60)],
        )
        # Redis drops the hash by itself an hour after its expiry date
        expected = (NOW + 60 + 3600) * 1000 - time.time() * 1000
        self.assertLess(abs(self.redis.pttl("tokengate:t:" + d) - expected), 10_000)
        # and a spent token leaves nothing behind
        plain = await self.mint("s1")
        self.assertEqual(
            await self.store.redeem(digest(plain.tokenId), probe("s1")), Outcome.GRANTED
        )
        self.assertFalse(self.redis.exists("tokengate:t:" + digest(plain.tokenId)))
        self.assertEqual(self.redis.zrange("tokengate:s:LiveApp:s1", 0, -1), [d])
        self.assertEqual(self.redis.zcard("tokengate:exp"), 1)

    async def test_pastExpiryNotDroppedAtOnce(self):
        """
        A token whose expiry (plus the grace) is already past by Redis' clock
        gets no Redis expiry, which would delete it at once: it is EXPIRED,
        not UNKNOWN, until purged.
        """
        t = await self.mint(expire=1000)
        d = digest(t.tokenId)
        self.assertEqual(self.redis.ttl("tokengate:t:" + d), -1)
        self.assertEqual(await self.store.redeem(d, probe("s1", now=1000)), Outcome.EXPIRED)
        self.assertEqual(await self.store.redeem(d, probe("s1", now=999)), Outcome.GRANTED)

    async def test_awkwardNames(self):
        """
        Separators and escapes in app and stream names cannot make two
        streams share an index; numeric-looking values stay strings.
        """
        a = await self.mint("b:c", app="a")
        b = await self.mint("c", app="a:b")
        c = await self.mint("123", app="%41", room="007")
        d = await self.mint("ünï cødé/%3A", app="a")
        self.assertEqual(
            [x.digest for x in await self.store.listStream("a", "b:c", 0, 10)],
            [digest(a.tokenId)],
        )
        self.assertEqual(
            [x.digest for x in await self.store.listStream("a:b", "c", 0, 10)],
            [digest(b.tokenId)],
        )
        listed = await self.store.listStream("%41", "123", 0, 10)
        self.assertEqual(listed[0].streamId, "123")
        self.assertEqual(listed[0].roomId, "007")
        self.assertEqual(listed[0].expireDate, NOW + 60)
        self.assertEqual(await self.store.listStream("A", "123", 0, 10), [])
        self.assertEqual(await self.store.revokeStream("a", "c"), 0)
        self.assertEqual(
            await self.store.redeem(digest(d.tokenId), probe("ünï cødé/%3A", app="a")),
            Outcome.GRANTED,
        )
        self.assertEqual(await self.store.deleteApp("a"), 1)
        self.assertEqual(
            await self.store.redeem(digest(b.tokenId), probe("c", app="a:b")),
            Outcome.GRANTED,
        )

    async def test_judgeEquivalence(self):
        """
        The Lua script agrees with L{judge} on every combination of app,
        type, stream, room and time that the rules distinguish, and consumes
        exactly when judge says so.
        """
        E = NOW + 100
        rooms = (None, "r1")
        probes = itertools.product(
            ("LiveApp", "Other"), (PLAY, PUBLISH), ("s1", "s2"),
            (None, "", "r1", "r2"), (E - 1, E - 0.5, E, E + 1),
        )
        probes = list(probes)
        for room in rooms:
            for app, type_, stream, proom, now in probes:
                token = new_token("s1", PLAY, E, room)
                stored = StoredToken.fromToken("LiveApp", token)
                await self.store.add(stored)
                p = Probe(app=app, streamId=stream, type=type_, roomId=proom, now=now)
                expected, consumed = judge(stored, p)
                case = (room, app, type_, stream, proom, now)
                self.assertEqual(await self.store.redeem(stored.digest, p), expected, case)
                left = await self.store.redeem(stored.digest, probe("s1", now=E - 1))
                self.assertEqual(
                    left, Outcome.UNKNOWN if consumed else Outcome.GRANTED, case
                )
                await self.store.revokeStream("LiveApp", "s1")

    async def test_readdReplaces(self):
        """
        Adding a digest again replaces the token and its index entries.
        """
        t = new_token("s1", PLAY, NOW + 60)
        await self.store.add(StoredToken.fromToken("LiveApp", t))
        moved = evolve(StoredToken.fromToken("LiveApp", t), streamId="s2")
        await self.store.add(moved)
        self.assertEqual(await self.store.listStream("LiveApp", "s1", 0, 10), [])
        self.assertEqual(
            [x.streamId for x in await self.store.listStream("LiveApp", "s2", 0, 10)],
            ["s2"],
        )
        self.assertEqual(self.redis.smembers("tokengate:a:LiveApp"), {"s2"})
        self.assertEqual(self.redis.zcard("tokengate:exp"), 1)

    async def test_purgeCleansIndexesOfVanishedTokens(self):
        """
        When Redis has dropped a token hash by itself, purgeExpired still
        removes its index entries (and does not count it); listing and
        revoking skip and drop such entries too.
        """
        gone = await self.mint("s1", expire=NOW + 10)
        keep = await self.mint("s1", expire=NOW + 100)
        other = await self.mint("s2", expire=NOW + 10)
        self.redis.delete("tokengate:t:" + digest(gone.tokenId))
        self.redis.delete("tokengate:t:" + digest(other.tokenId))
        self.assertEqual(await self.store.purgeExpired(NOW + 10), 0)
        self.assertEqual(self.redis.zrange("tokengate:s:LiveApp:s1", 0, -1), [digest(keep.tokenId)])
        self.assertFalse(self.redis.exists("tokengate:s:LiveApp:s2"))
        self.assertEqual(self.redis.smembers("tokengate:a:LiveApp"), {"s1"})
        self.assertEqual(self.redis.zcard("tokengate:exp"), 1)

        late = await self.mint("s1", expire=NOW + 100)
        self.redis.delete("tokengate:t:" + digest(keep.tokenId))
        listed = await self.store.listStream("LiveApp", "s1", 0, 10)
        self.assertEqual([x.digest for x in listed], [digest(late.tokenId)])
        self.assertEqual(self.redis.zcard("tokengate:s:LiveApp:s1"), 1)
        self.assertEqual(await self.store.revokeStream("LiveApp", "s1"), 1)
        self.assertEqual(self.redis.keys("*"), ["tokengate:seq"])

    async def test_batches(self):
        """
        revoke, purge and deleteApp work in batches; list pages by live
        tokens.
        """
        store = RedisTokenStore.open(self.host, self.port, reactor, batch=7, prefix="b:")
        self.addCleanup(store.close)
        tokens = []
        for i in range(30):
            t = new_token("s%d" % (i % 3), PLAY, NOW + i)
            tokens.append(t)
            await store.add(StoredToken.fromToken("App", t))
        page = await store.listStream("App", "s0", 3, 4)
        self.assertEqual(
            [x.digest for x in page], [digest(t.tokenId) for t in tokens[0::3][3:7]]
        )
        self.assertEqual(await store.purgeExpired(NOW + 14), 15)
        self.assertEqual(await store.revokeStream("App", "s0"), 5)
        self.assertEqual(await store.deleteApp("App"), 10)
        self.assertEqual(self.redis.keys("b:*"), ["b:seq"])

    def test_fromURL(self):
        store = RedisTokenStore.fromURL(
            "redis://:s%40cret@127.0.0.1:{}/3?prefix=x:&timeout=0.5&grace=none".format(
                self.port
            ),
            reactor,
        )
        self.addCleanup(store.close)
        self.assertEqual(store.prefix, "x:")
        self.assertEqual(store.client.timeout, 0.5)
        self.assertIsNone(store._grace)
        self.assertEqual(store.client._factory.dbid, 3)
        self.assertEqual(store.client._factory.password, "s@cret")
        self.assertIsInstance(
            open_store("redis://127.0.0.1:%d/0" % self.port, "unused", reactor),
            RedisTokenStore,
        )

    def test_defaults(self):
        self.assertEqual(self.store.client.timeout, 2.0)
        self.assertEqual(self.store.prefix, "tokengate:")
        self.assertEqual(self.store.name, "redis")

    def test_fromURLErrors(self):
        for bad in (
            "redis://localhost:6379/zero",
            "redis://localhost:99999/0",
            "redis://localhost/0?colour=blue",
            "redis://localhost/0?ca=/x.pem",
            "http://localhost/0",
        ):
            self.assertRaises(ValueError, RedisTokenStore.fromURL, bad, reactor)

    async def test_otherDatabase(self):
        store = RedisTokenStore.fromURL(
            "redis://127.0.0.1:%d/5" % self.port, reactor
        )
        self.addCleanup(store.close)
        t = new_token("s1", PLAY, NOW + 60)
        await store.add(StoredToken.fromToken("LiveApp", t))
        self.assertEqual(self.redis.dbsize(), 0)
        db5 = redis_py.Redis(host=self.host, port=self.port, db=5, decode_responses=True)
        self.addCleanup(db5.close)
        self.assertTrue(db5.exists("tokengate:t:" + digest(t.tokenId)))

    async def test_password(self):
        self.redis.config_set("requirepass", "hunter2")
        good = RedisTokenStore.fromURL(
            "redis://:hunter2@127.0.0.1:%d/0" % self.port, reactor
        )
        self.addCleanup(good.close)
        t = new_token("s1", PLAY, NOW + 60)
        await good.add(StoredToken.fromToken("LiveApp", t))
        bad = RedisTokenStore.fromURL(
            "redis://:not-hunter3@127.0.0.1:%d/0?timeout=0.5" % self.port, reactor
        )
        self.addCleanup(bad.close)
        e = await self.assertFailure(bad.redeem(digest(t.tokenId), probe("s1")), StoreUnavailable)
        self.assertIn("auth", str(e).lower())
        self.assertNotIn("hunter3", str(e))


class RedisFailureTests(TestCase):
    """
    Redis going away, hanging and coming back.
    """

    TIMEOUT = 1.0
    SLACK = 0.75

    def setUp(self):
        self.server = start_redis_server(self)
        self.store = RedisTokenStore.open(
            self.server.host, self.server.port, reactor, timeout=self.TIMEOUT
        )
        self.addCleanup(self.store.close)

    async def assertUnavailableSoon(self, d):
        started = time.monotonic()
        await self.assertFailure(d, StoreUnavailable)
        elapsed = time.monotonic() - started
        self.assertLess(elapsed, self.TIMEOUT + self.SLACK)
        return elapsed

    async def mint(self, store=None):
        t = new_token("s1", PLAY, NOW + 60)
        await (store or self.store).add(StoredToken.fromToken("LiveApp", t))
        return digest(t.tokenId)

    async def test_redisDownThenBack(self):
        """
        With redis-server stopped, add and redeem fail with StoreUnavailable
        within the timeout; once it is started again on the same port, the
        same store object works again by itself.
        """
        await self.mint()
        self.server.stop()
        t = StoredToken.fromToken("LiveApp", new_token("s1", PLAY, NOW + 60))
        await self.assertUnavailableSoon(self.store.add(t))
        await self.assertUnavailableSoon(self.store.redeem(t.digest, probe("s1")))
        # a while later, calls fail at once instead of waiting
        await sleep(self.TIMEOUT)
        elapsed = await self.assertUnavailableSoon(self.store.redeem(t.digest, probe("s1")))
        self.assertLess(elapsed, 0.1)
        results = await gatherResults(
            [self.store.redeem(t.digest, probe("s1")).addErrback(lambda f: f.type)
             for _ in range(100)]
        )
        self.assertEqual(set(results), {StoreUnavailable})

        self.server.start()
        await eventually(lambda: self.store.add(t), timeout=15)
        self.assertEqual(await self.store.redeem(t.digest, probe("s1")), Outcome.GRANTED)
        self.assertEqual(await self.store.redeem(t.digest, probe("s1")), Outcome.UNKNOWN)

    async def test_redisFrozenThenThawed(self):
        """
        A server that accepts connections but does not answer (SIGSTOP) makes
        calls fail within the timeout; after SIGCONT the store works again.
        """
        first = await self.mint()
        second = await self.mint()
        self.server.freeze()
        self.addCleanup(self.server.thaw)
        await self.assertUnavailableSoon(self.store.redeem(first, probe("s1")))
        await self.assertUnavailableSoon(self.store.add(
            StoredToken.fromToken("LiveApp", new_token("s1", PLAY, NOW + 60))))
        self.server.thaw()
        self.assertEqual(
            await eventually(lambda: self.store.redeem(second, probe("s1")), timeout=15),
            Outcome.GRANTED,
        )
        # The refused redemption reached Redis before it froze and ran when
        # it woke up: the token is spent although the caller was refused.
        # That is failing closed, as documented.
        self.assertIn(
            await self.store.redeem(first, probe("s1")),
            (Outcome.UNKNOWN, Outcome.GRANTED),
        )

    async def test_neverUp(self):
        """
        A store whose Redis never answers fails within the timeout from the
        first call on.
        """
        self.server.stop()
        store = RedisTokenStore.open(self.server.host, self.server.port, reactor, timeout=0.5)
        self.addCleanup(store.close)
        started = time.monotonic()
        await self.assertFailure(store.purgeExpired(NOW), StoreUnavailable)
        self.assertLess(time.monotonic() - started, 0.5 + self.SLACK)

    async def test_closeFailsCallAwaitingAnswer(self):
        """
        close() fails a call waiting for Redis' answer with StoreUnavailable
        at once, and leaves no timer behind (trial fails a test that leaves
        a pending delayed call).
        """
        d = await self.mint()
        self.server.freeze()
        self.addCleanup(self.server.thaw)
        answering = self.store.redeem(d, probe("s1"))
        await sleep(0.05)
        started = time.monotonic()
        await self.store.close()
        await self.assertFailure(answering, StoreUnavailable)
        self.assertLess(time.monotonic() - started, 0.5)
        await self.assertFailure(self.store.redeem(d, probe("s1")), StoreUnavailable)
        self.assertEqual(self.store.client._pending, set())

    async def test_closeFailsCallAwaitingConnection(self):
        """
        close() fails a call waiting for a connection with StoreUnavailable
        at once.
        """
        d = await self.mint()
        self.server.stop()
        deadline = time.monotonic() + 5
        while self.store.client._factory.pool and time.monotonic() < deadline:
            await sleep(0.01)
        waiting = self.store.redeem(d, probe("s1"))
        self.assertEqual(len(self.store.client._waiters), 1)
        started = time.monotonic()
        await self.store.close()
        await self.assertFailure(waiting, StoreUnavailable)
        self.assertLess(time.monotonic() - started, 0.5)
        self.assertEqual(self.store.client._pending, set())
        self.assertEqual(self.store.client._waiters, [])

    async def test_closeWhileConnecting(self):
        store = RedisTokenStore.open(self.server.host, self.server.port, reactor)
        await store.close()


def _write_certificates(directory: str) -> tuple[str, str, str, str]:
    """
    A CA, a server certificate it signs for 127.0.0.1, and an unrelated CA.

    @return: paths of the CA, the server certificate, its key, the other CA.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca(cn):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn)).issuer_name(name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    ca_key, ca_cert = ca("tokengate test CA")
    _, other_cert = ca("some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1")).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = []
    for filename, data in (
        ("ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM)),
        ("server.pem", cert.public_bytes(serialization.Encoding.PEM)),
        ("server.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())),
        ("other-ca.pem", other_cert.public_bytes(serialization.Encoding.PEM)),
    ):
        path = os.path.join(directory, filename)
        with open(path, "wb") as f:
            f.write(data)
        paths.append(path)
    return tuple(paths)


class RedisTLSTests(TestCase):
    """
    rediss:// speaks TLS and checks the server's certificate.
    """

    def setUp(self):
        from tests.redisserver import free_port

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.ca, cert, key, self.otherCA = _write_certificates(directory)
        self.tlsPort = free_port()
        start_redis_server(self, extra_args=[
            "--tls-port", str(self.tlsPort),
            "--tls-cert-file", cert,
            "--tls-key-file", key,
            "--tls-ca-cert-file", self.ca,
            "--tls-auth-clients", "no",
        ])

    async def test_tls(self):
        store = RedisTokenStore.fromURL(
            "rediss://127.0.0.1:{}/0?ca={}".format(self.tlsPort, self.ca), reactor
        )
        self.addCleanup(store.close)
        t = new_token("s1", PLAY, NOW + 60)
        await store.add(StoredToken.fromToken("LiveApp", t))
        self.assertEqual(await store.redeem(digest(t.tokenId), probe("s1")), Outcome.GRANTED)

    async def test_untrustedCertificate(self):
        store = RedisTokenStore.fromURL(
            "rediss://127.0.0.1:{}/0?ca={}&timeout=0.5".format(self.tlsPort, self.otherCA),
            reactor,
        )
        self.addCleanup(store.close)
        await self.assertFailure(store.redeem(digest("x"), probe("s1")), StoreUnavailable)


# The script each of the two processes runs.
_CHILD = r"""
import json, os, sys, time
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from tokengate.store.redis import RedisTokenStore
from tokengate.tokens import Outcome, Probe

url, digest, ready, go, n = sys.argv[1:6]
n = int(n)
probe = Probe(app="LiveApp", streamId="s1", type="play", roomId=None,
              now=1_800_000_000)
out = {}

async def main():
    store = RedisTokenStore.fromURL(url, reactor, timeout=10)
    try:
        # connect the whole pool before the race
        await gatherResults([store.redeem("warm-up", probe) for _ in range(8)])
        open(ready, "w").close()
        deadline = time.monotonic() + 20
        while not os.path.exists(go):
            if time.monotonic() > deadline:
                raise RuntimeError("no go signal")
            await deferLater(reactor, 0.002, lambda: None)
        results = await gatherResults([store.redeem(digest, probe) for _ in range(n)])
        out["granted"] = results.count(Outcome.GRANTED)
        out["unknown"] = results.count(Outcome.UNKNOWN)
        out["total"] = len(results)
    finally:
        await store.close()

def done(result):
    if hasattr(result, "getTraceback"):
        out["error"] = result.getTraceback()
    reactor.stop()

reactor.callWhenRunning(
    lambda: __import__("twisted.internet.defer", fromlist=["Deferred"])
    .Deferred.fromCoroutine(main()).addBoth(done))
reactor.run()
print(json.dumps(out))
"""


class TwoProcessTests(TestCase):
    """
    Two OS processes, each with its own store on its own reactor, race to
    redeem the same token.
    """

    N = 200

    async def test_oneWinnerAcrossProcesses(self):
        server = start_redis_server(self)
        store = RedisTokenStore.open(server.host, server.port, reactor)
        self.addCleanup(store.close)
        t = new_token("s1", PLAY, NOW + 60)
        await store.add(StoredToken.fromToken("LiveApp", t))

        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        go = os.path.join(work, "go")
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        children = []
        for i in range(2):
            ready = os.path.join(work, "ready%d" % i)
            out = open(os.path.join(work, "out%d" % i), "w+")
            self.addCleanup(out.close)
            p = subprocess.Popen(
                [sys.executable, "-c", _CHILD, server.url, digest(t.tokenId),
                 ready, go, str(self.N)],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
            )
            self.addCleanup(self._reap, p)
            children.append((p, ready, out))

        deadline = time.monotonic() + 30
        while not all(os.path.exists(ready) for _, ready, _ in children):
            for p, _, out in children:
                if p.poll() is not None:
                    out.seek(0)
                    self.fail("a child exited early:\n" + out.read())
            if time.monotonic() > deadline:
                self.fail("the children did not get ready in time")
            await sleep(0.02)
        open(go, "w").close()
        while any(p.poll() is None for p, _, _ in children):
            if time.monotonic() > deadline:
                self.fail("the children did not finish in time")
            await sleep(0.02)

        reports = []
        for p, _, out in children:
            out.seek(0)
            text = out.read()
            self.assertEqual(p.returncode, 0, text)
            report = json.loads(text.strip().splitlines()[-1])
            self.assertNotIn("error", report, report.get("error"))
            reports.append(report)
        self.assertEqual([r["total"] for r in reports], [self.N, self.N])
        self.assertEqual(sum(r["granted"] for r in reports), 1, reports)
        self.assertEqual(sum(r["unknown"] for r in reports), 2 * self.N - 1, reports)
        self.assertEqual(
            await store.redeem(digest(t.tokenId), probe("s1")), Outcome.UNKNOWN
        )

    @staticmethod
    def _reap(p):
        if p.poll() is None:
            p.kill()
        p.wait(10)
