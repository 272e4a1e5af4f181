"""
L{tokengate.reuseport}: listeners several processes share (SO_REUSEPORT),
on the real reactor and loopback, and the supervisor's check that the ports
are free.
"""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.trial.unittest import SkipTest, TestCase

from tokengate.reuseport import ReusePortReactor, checkFree, reusePortSupported
from tests.service import free_port


class Hello(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(self.factory.greeting)
        self.transport.loseConnection()


def hello(greeting: bytes) -> Factory:
    factory = Factory.forProtocol(Hello)
    factory.greeting = greeting  # type: ignore[attr-defined]
    return factory


class ReusePortTests(TestCase):
    def setUp(self) -> None:
        if not reusePortSupported():
            raise SkipTest("SO_REUSEPORT as Linux has it")
        self.shared = ReusePortReactor(reactor)

    async def listen(self, description: str, factory: Factory):
        port = await serverFromString(self.shared, description).listen(factory)
        self.addCleanup(port.stopListening)
        return port

    def greet(self, port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(5)
            data = b""
            while True:
                chunk = s.recv(100)
                if not chunk:
                    return data
                data += chunk

    async def test_twoListenersOnePort(self) -> None:
        """
        Two TCP listeners bind the same port; a plain listener then cannot
        (the sharing is only among those that ask for it).
        """
        number = free_port()
        description = "tcp:{}:interface=127.0.0.1".format(number)
        a = await self.listen(description, hello(b"a"))
        await self.listen(description, hello(b"b"))
        self.assertEqual(a.getHost().port, number)
        self.assertRaises(CannotListenError, reactor.listenTCP, number, hello(b"c"),
                          interface="127.0.0.1")
        self.assertIsNotNone(checkFree(["tcp:{}:interface=127.0.0.1".format(number)], []))

    async def test_connectionsServed(self) -> None:
        """
        A shared listener serves connections (the greeting reaches the
        client through the adopted port), in a thread so the reactor runs.
        """
        from twisted.internet.threads import deferToThread

        number = free_port()
        await self.listen("tcp:{}:interface=127.0.0.1".format(number), hello(b"a"))
        self.assertEqual(await deferToThread(self.greet, number), b"a")

    async def test_udp(self) -> None:
        """
        Two UDP listeners share a port; one client's datagrams all reach
        the same one (the kernel hashes the 4-tuple).
        """
        from twisted.internet.task import deferLater

        received: dict[str, list[bytes]] = {"a": [], "b": []}

        class Recorder(DatagramProtocol):
            def __init__(self, name: str) -> None:
                self.name = name

            def datagramReceived(self, data: bytes, addr: object) -> None:
                received[self.name].append(data)

        number = free_port(socket.SOCK_DGRAM)
        for name in "ab":
            port = self.shared.listenUDP(number, Recorder(name), interface="127.0.0.1")
            self.addCleanup(port.stopListening)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(client.close)
        for i in range(50):
            client.sendto(b"%d" % i, ("127.0.0.1", number))
        for _ in range(100):
            if sum(map(len, received.values())) == 50:
                break
            await deferLater(reactor, 0.02, lambda: None)
        counts = sorted(len(v) for v in received.values())
        self.assertEqual(counts, [0, 50])
        self.assertIsNotNone(checkFree([], [(number, "127.0.0.1")]))

    async def test_tls(self) -> None:
        """
        An C{ssl:} endpoint listens through the shared TCP port with TLS
        layered over it: a client checking the certificate reads the
        greeting.
        """
        import os
        import ssl

        from twisted.internet.threads import deferToThread

        from tests.interop.test_store_redis import _write_certificates

        directory = self.mktemp()
        os.makedirs(directory)
        ca, cert, key, _ = _write_certificates(directory)
        number = free_port()
        await self.listen("ssl:{}:interface=127.0.0.1:privateKey={}:certKey={}".format(
            number, key, cert), hello(b"secret"))

        def greet() -> bytes:
            context = ssl.create_default_context(cafile=ca)
            with socket.create_connection(("127.0.0.1", number), timeout=5) as raw:
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    s.settimeout(5)
                    data = b""
                    while True:
                        try:
                            chunk = s.recv(100)
                        except ssl.SSLEOFError:
                            return data
                        if not chunk:
                            return data
                        data += chunk

        self.assertEqual(await deferToThread(greet), b"secret")

    async def test_addressAffinity(self) -> None:
        """
        With C{affinity}, every connection from one client address reaches
        the same listener (the greeting says which), and different
        addresses (127.0.0.0/8 is all loopback) reach both.
        """
        from twisted.internet.threads import deferToThread

        number = free_port()
        shared = ReusePortReactor(reactor, affinity=2)
        for greeting in (b"a", b"b"):
            port = await serverFromString(shared, "tcp:{}:interface=127.0.0.1".format(
                number)).listen(hello(greeting))
            self.addCleanup(port.stopListening)

        def greet(source: str) -> bytes:
            with socket.socket() as s:
                s.settimeout(5)
                s.bind((source, 0))
                s.connect(("127.0.0.1", number))
                data = b""
                while True:
                    chunk = s.recv(100)
                    if not chunk:
                        return data
                    data += chunk

        def survey() -> dict[str, set[bytes]]:
            return {source: {greet(source) for _ in range(8)}
                    for source in ("127.0.0.{}".format(n) for n in range(1, 21))}

        seen = await deferToThread(survey)
        for source, greetings in seen.items():
            self.assertEqual(len(greetings), 1, source)
        self.assertEqual(set().union(*seen.values()), {b"a", b"b"})

    def test_affinityProgram(self) -> None:
        """
        The program is 24 instructions whose jumps stay inside it, ending
        with the modulo and the return.
        """
        from tokengate.reuseport import addressAffinity

        program = addressAffinity(3)
        self.assertEqual(len(program), 24)
        self.assertEqual(program[-2][3], 3)
        for index, (code, jt, jf, k) in enumerate(program):
            if code == 0x15:
                self.assertLess(index + 1 + max(jt, jf), len(program))
            if code == 0x05:
                self.assertLess(index + 1 + k, len(program))
        self.assertRaises(ValueError, addressAffinity, 0)

    def test_checkFree(self) -> None:
        """
        Free ports pass (and stay free); a taken one is named.
        """
        tcp, udp = free_port(), free_port(socket.SOCK_DGRAM)
        self.assertIsNone(checkFree(["tcp:{}:interface=127.0.0.1".format(tcp)],
                                    [(udp, "127.0.0.1")]))
        taken = reactor.listenTCP(tcp, hello(b"x"), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        problem = checkFree(["tcp:{}:interface=127.0.0.1".format(tcp)], [])
        self.assertIn(str(tcp), problem or "")
