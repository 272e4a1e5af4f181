# -*- test-case-name: tests.test_reuseport -*-
"""
Listening sockets shared by several processes (C{SO_REUSEPORT}, Linux).

The workers of C{twistd tokengate --workers N} (L{tokengate.workers}) each
open every listening port of the node with C{SO_REUSEPORT}: the kernel then
spreads the new TCP connections over the workers' sockets, and the UDP
datagrams by their 4-tuple (source and destination address and port), so
that one SRT caller's packets all reach the same worker while the set of
workers stays the same.

Twisted's C{listenTCP} and C{listenUDP} do not set the option: L{ReusePortReactor}
wraps a reactor for C{serverFromString} (and the SRT listener) and creates
each socket itself, then hands it to the reactor (C{adoptStreamPort},
C{adoptDatagramPort}).  TLS is layered as the reactor's own C{listenSSL}
does (L{TLSMemoryBIOFactory} over the TCP port), so
L{tokengate.limits.LimitingReactor} composes over it unchanged.

L{checkFree} is the other half: with C{SO_REUSEPORT} a second server of
the same user on the same ports would silently share them; the supervisor
first binds each port without the option, which fails while anyone
listens there.
"""

from __future__ import annotations

import socket
from typing import Any, Optional

from twisted.internet import error
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import DatagramProtocol
from zope.interface import directlyProvides, providedBy

__all__ = ["ReusePortReactor", "checkFree", "reusePortSupported"]


def reusePortSupported() -> bool:
    """
    Whether this system balances connections over C{SO_REUSEPORT} sockets
    (Linux: other systems accept the option without spreading the load).
    """
    import sys

    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _family(interface: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in interface else socket.AF_INET


def _bound(kind: socket.SocketKind, port: int, interface: str, reusePort: bool,
           reuseAddress: bool) -> socket.socket:
    """
    A socket of C{kind} bound to C{interface}:C{port}.

    @raise error.CannotListenError: when it cannot be bound.
    """
    family = _family(interface)
    if not interface:
        interface = "0.0.0.0"
    sock = socket.socket(family, kind)
    try:
        if reuseAddress:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reusePort:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.bind((interface, port, 0, 0))
        else:
            sock.bind((interface, port))
    except OSError as e:
        sock.close()
        raise error.CannotListenError(interface, port, e)
    return sock


class ReusePortReactor:
    """
    A reactor whose TCP (plain and TLS) and UDP listeners are opened with
    C{SO_REUSEPORT}; everything else is the wrapped reactor's.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        directlyProvides(self, providedBy(reactor))

    def listenTCP(self, port: int, factory: IProtocolFactory, backlog: int = 50,
                  interface: str = "") -> Any:
        # SO_REUSEADDR as Twisted's own TCP ports: a restarted worker binds
        # again while its old connections are in TIME_WAIT
        sock = _bound(socket.SOCK_STREAM, port, interface, True, True)
        try:
            sock.listen(backlog)
            sock.setblocking(False)
            # the reactor's port holds a duplicate of the descriptor
            return self._reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
        finally:
            sock.close()

    def listenSSL(self, port: int, factory: IProtocolFactory, contextFactory: Any,
                  backlog: int = 50, interface: str = "") -> Any:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        return self.listenTCP(port, TLSMemoryBIOFactory(contextFactory, False, factory),
                              backlog, interface)

    def listenUDP(self, port: int, protocol: DatagramProtocol, interface: str = "",
                  maxPacketSize: int = 8192) -> Any:
        sock = _bound(socket.SOCK_DGRAM, port, interface, True, False)
        try:
            sock.setblocking(False)
            return self._reactor.adoptDatagramPort(sock.fileno(), sock.family, protocol,
                                                   maxPacketSize)
        finally:
            sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


class _Probe:
    """
    A reactor for C{serverFromString} that binds each port it is asked to
    listen on without C{SO_REUSEPORT}, then lets it go.
    """

    def __init__(self) -> None:
        self.checked: list[tuple[str, int, str]] = []

    def _check(self, kind: socket.SocketKind, port: int, interface: str) -> None:
        # TCP with SO_REUSEADDR (a listener there still conflicts, old
        # connections in TIME_WAIT do not); UDP without (it would share)
        sock = _bound(kind, port, interface, False, kind == socket.SOCK_STREAM)
        try:
            if kind == socket.SOCK_STREAM:
                try:
                    sock.listen(1)
                except OSError as e:
                    raise error.CannotListenError(interface, port, e)
            self.checked.append(("tcp" if kind == socket.SOCK_STREAM else "udp", port,
                                 interface))
        finally:
            sock.close()

    def listenTCP(self, port: int, factory: Any, backlog: int = 50,
                  interface: str = "") -> None:
        self._check(socket.SOCK_STREAM, port, interface)

    def listenSSL(self, port: int, factory: Any, contextFactory: Any, backlog: int = 50,
                  interface: str = "") -> None:
        self._check(socket.SOCK_STREAM, port, interface)

    def listenUDP(self, port: int, protocol: Any, interface: str = "",
                  maxPacketSize: int = 8192) -> None:
        self._check(socket.SOCK_DGRAM, port, interface)


def checkFree(streams: list[str], datagrams: list[tuple[int, str]]) -> Optional[str]:
    """
    Whether the listening ports are free: C{streams} are TCP endpoint
    descriptions (C{tcp:5080:interface=...}, C{ssl:...}), C{datagrams}
    UDP (port, interface) pairs.  Nothing listens afterwards.

    @return: None when every port is free, else what is wrong with the
        first that is not (the description and the error).
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.protocol import Factory

    probe = _Probe()
    for description in streams:
        try:
            endpoint = serverFromString(probe, description)
            d = endpoint.listen(Factory())
        except Exception as e:  # a description the endpoint parser refuses
            return "{}: {}".format(description, e)
        failure: list[Any] = []
        d.addErrback(failure.append)
        if failure:
            return "{}: {}".format(description, failure[0].getErrorMessage())
    for port, interface in datagrams:
        try:
            probe._check(socket.SOCK_DGRAM, port, interface)
        except error.CannotListenError as e:
            return "udp:{}: {}".format(port, e)
    return None
