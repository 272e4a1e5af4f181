# -*- test-case-name: tests.test_hostile_http,tests.interop.test_hostile_http -*-
"""
Per-address concurrent-connection limits for TCP listeners.

L{PerAddressLimit} wraps a listener's factory.  Each accepted connection is
counted against its peer's address for as long as it is open; a connection
past the limit is closed as soon as it is accepted (before any byte of it is
read, and before a TLS handshake) and counted as a refusal.

The wrapper sits between the socket and the protocol above it
(L{twisted.protocols.policies.ProtocolWrapper}), so the count follows the
connection, not the protocol: a WebSocket that takes over an HTTP
connection (Autobahn swaps the C{wrappedProtocol} of the wrapper, or of
the TLS layer above it) is still counted, and uncounted when it closes.
L{LimitingReactor} places it below TLS for C{ssl:} endpoints.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.interfaces import IAddress, IProtocol, IProtocolFactory
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import directlyProvides, providedBy

from tokengate.logsafe import Logger

class CountedProtocol(ProtocolWrapper):
    """
    A connection counted against its peer's address while it is open.
    """

    factory: "PerAddressLimit"

    def __init__(self, factory: "PerAddressLimit", wrappedProtocol: IProtocol,
                 host: Optional[str]) -> None:
        super().__init__(factory, wrappedProtocol)
        self.host = host


class _Refuse(Protocol):
    """
    Closes the connection it is given at once.  Under TLS, closing before the
    handshake completed aborts the TCP connection.
    """

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.loseConnection()


class PerAddressLimit(WrappingFactory[CountedProtocol]):
    """
    Wraps a listener's factory: at most C{limit} connections per peer
    address at once; the rest are closed when accepted and counted by
    C{onRefused}.

    @ivar counts: open connections per address (addresses without any are
        not kept).
    """

    protocol = CountedProtocol
    _log = Logger()

    def __init__(self, wrappedFactory: IProtocolFactory, limit: int,
                 onRefused: Callable[[str], object] = lambda host: None,
                 what: str = "TCP") -> None:
        """
        @param wrappedFactory: the listener's own factory.
        @param limit: connections allowed per address at once; 0 for no limit.
        @param onRefused: called with the address of each refused connection
            (counts it in the metrics).
        @param what: the listener's name, for the log.
        """
        super().__init__(wrappedFactory)
        self.limit = limit
        self.counts: dict[str, int] = {}
        self._onRefused = onRefused
        self._what = what
        self._warned: set[str] = set()

    def buildProtocol(  # type: ignore[override]  # a refused connection gets a _Refuse
            self, addr: IAddress) -> Optional[Protocol]:
        host: Optional[str] = getattr(addr, "host", None)
        if host is not None and self.limit and self.counts.get(host, 0) >= self.limit:
            self._onRefused(host)
            if host not in self._warned:
                # once per address while it stays at its limit: a flood does
                # not turn into a log flood
                self._warned.add(host)
                self._log.warn("{what}: refusing connections from {host}: "
                               "{limit} already open", what=self._what, host=host,
                               limit=self.limit)
            return _Refuse()
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return CountedProtocol(self, wrapped, host)

    def registerProtocol(self, p: CountedProtocol) -> None:
        host = p.host
        if host is not None:
            self.counts[host] = self.counts.get(host, 0) + 1

    def unregisterProtocol(self, p: CountedProtocol) -> None:
        host = p.host
        if host is None:
            return
        n = self.counts.get(host, 0) - 1
        if n > 0:
            self.counts[host] = n
        else:
            self.counts.pop(host, None)
        if n < self.limit:
            self._warned.discard(host)


class LimitingReactor:
    """
    A reactor for C{serverFromString} whose TCP listeners (plain, and TLS
    over TCP) accept through C{wrap(factory)}: the limit then sits below TLS,
    so a refused connection costs no TLS state, and TLS stays the transport
    that the application protocol sees (Autobahn reads its channel binding
    from it).  TLS is layered as the reactor's own C{listenSSL} does
    (L{TLSMemoryBIOFactory} over C{listenTCP}).  Everything else is the
    reactor's.
    """

    def __init__(self, reactor: Any, wrap: Callable[[IProtocolFactory], IProtocolFactory]) -> None:
        self._reactor = reactor
        self._wrap = wrap
        directlyProvides(self, providedBy(reactor))

    def listenTCP(self, port: int, factory: IProtocolFactory, backlog: int = 50,
                  interface: str = "") -> Any:
        return self._reactor.listenTCP(port, self._wrap(factory), backlog, interface)

    def listenSSL(self, port: int, factory: IProtocolFactory, contextFactory: Any,
                  backlog: int = 50, interface: str = "") -> Any:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        tls = TLSMemoryBIOFactory(contextFactory, False, factory)
        return self._reactor.listenTCP(port, self._wrap(tls),
                                       backlog, interface)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)
