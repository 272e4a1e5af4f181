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

HTTP needs more: a player's requests (playlist, then segments, on one or
several connections) must all reach the worker that serves its stream,
since every worker packages its own copy (with its own segment names) and
only a playlist request starts a pull.  With C{affinity=N} the listening
sockets get a classic BPF program (C{SO_ATTACH_REUSEPORT_CBPF}) that picks
the socket from a hash of the client's IP address (IPv4, or the four words
of an IPv6 one) modulo N: every connection from one address reaches the
same worker while the workers stay the same.  Clients behind one address
(a NAT, a proxy on the same machine) then all reach one worker.

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

__all__ = ["ReusePortReactor", "addressAffinity", "checkFree", "reusePortSupported"]

#: setsockopt option number of SO_ATTACH_REUSEPORT_CBPF (Linux 4.5)
SO_ATTACH_REUSEPORT_CBPF = 51
#: classic BPF's offset of the network header (SKF_NET_OFF), as a u32
_NET = 0x100000000 - 0x100000

# classic BPF opcodes (linux/filter.h)
_LD_B_ABS = 0x30
_LD_W_ABS = 0x20
_RSH_K = 0x74
_XOR_X = 0xAC
_MUL_K = 0x24
_MOD_K = 0x94
_JEQ_K = 0x15
_JA = 0x05
_TAX = 0x07
_RET_A = 0x16


def addressAffinity(count: int) -> list[tuple[int, int, int, int]]:
    """
    The classic BPF program (C{(code, jt, jf, k)} instructions) that picks
    a socket of a C{SO_REUSEPORT} group from a hash of the packet's source
    IP address, modulo C{count}.
    """
    if not 1 <= count <= 0xFFFF:
        raise ValueError("count must be from 1 to 65535")
    return [
        (_LD_B_ABS, 0, 0, _NET + 0),    # 0: A = the IP header's first byte
        (_RSH_K, 0, 0, 4),              # 1: A = the IP version
        (_JEQ_K, 2, 0, 6),              # 2: IPv6: to 5; IPv4: on
        (_LD_W_ABS, 0, 0, _NET + 12),   # 3: A = the IPv4 source address
        (_JA, 0, 0, 10),                # 4: to 15
        (_LD_W_ABS, 0, 0, _NET + 8),    # 5: A = the IPv6 source address's words,
        (_TAX, 0, 0, 0),                # 6:     xored
        (_LD_W_ABS, 0, 0, _NET + 12),   # 7
        (_XOR_X, 0, 0, 0),              # 8
        (_TAX, 0, 0, 0),                # 9
        (_LD_W_ABS, 0, 0, _NET + 16),   # 10
        (_XOR_X, 0, 0, 0),              # 11
        (_TAX, 0, 0, 0),                # 12
        (_LD_W_ABS, 0, 0, _NET + 20),   # 13
        (_XOR_X, 0, 0, 0),              # 14
        (_TAX, 0, 0, 0),                # 15: mix: A ^= A >> 16; A *= 0x45d9f3b;
        (_RSH_K, 0, 0, 16),             # 16:      A ^= A >> 16
        (_XOR_X, 0, 0, 0),              # 17
        (_MUL_K, 0, 0, 0x45D9F3B),      # 18
        (_TAX, 0, 0, 0),                # 19
        (_RSH_K, 0, 0, 16),             # 20
        (_XOR_X, 0, 0, 0),              # 21
        (_MOD_K, 0, 0, count),          # 22: the socket's index in the group
        (_RET_A, 0, 0, 0),              # 23
    ]


def _attach(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    """
    Attach a classic BPF program to C{sock}'s C{SO_REUSEPORT} group.
    """
    import ctypes
    import struct

    code = b"".join(struct.pack("HBBI", *instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


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

    def __init__(self, reactor: Any, affinity: Optional[int] = None) -> None:
        """
        @param affinity: with a number of workers, the TCP listeners send
            every connection of one client address to the same worker
            (L{addressAffinity}); None: the kernel's spreading by the
            connection's 4-tuple.
        """
        self._reactor = reactor
        self._program = None if affinity is None else addressAffinity(affinity)
        directlyProvides(self, providedBy(reactor))

    def listenTCP(self, port: int, factory: IProtocolFactory, backlog: int = 50,
                  interface: str = "") -> Any:
        # SO_REUSEADDR as Twisted's own TCP ports: a restarted worker binds
        # again while its old connections are in TIME_WAIT
        sock = _bound(socket.SOCK_STREAM, port, interface, True, True)
        try:
            sock.listen(backlog)
            if self._program is not None:
                # once listening: the socket is then in the port's group
                try:
                    _attach(sock, self._program)
                except OSError as e:
                    raise error.CannotListenError(interface, port, e)
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
            if failure[0].check(error.CannotListenError):
                return "{}: in use, by another server? ({})".format(
                    description, failure[0].getErrorMessage())
            return "{}: {}".format(description, failure[0].getErrorMessage())
    for port, interface in datagrams:
        try:
            probe._check(socket.SOCK_DGRAM, port, interface)
        except error.CannotListenError as e:
            return "udp:{}: in use, by another server? ({})".format(port, e)
    return None
