# -*- test-case-name: tests.test_tap -*-
"""
The server-wide settings that are not per application (the command line's
and the config file's, once checked by L{tokengate.tap.Options}).
"""

from __future__ import annotations

import ipaddress
import os
from typing import Optional

from attrs import define, field

from tokengate.apps import parse_cidrs


def parseNodeAddress(value: str) -> tuple[str, int]:
    """
    Read a node's internal address, C{host:port} (an IPv6 host in
    brackets, C{[::1]:5080}).

    @raise ValueError: naming what is wrong.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError("--node-address must be host:port")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError("--node-address: an IPv6 host goes in brackets, [::1]:5080")
        ipaddress.IPv6Address(host[1:-1])
    elif ":" in host or any(c.isspace() or c in "/@?#" for c in host) or len(host) > 253:
        raise ValueError("--node-address: {!r} is not a host name or address".format(host))
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("--node-address: the port must be 1 to 65535")
    return host, int(port)


def defaultNodeAddress(http: str) -> str:
    """
    The internal address of a node whose HTTP listener is the endpoint
    C{http} (C{tcp:5080}, C{tcp:port=5080:interface=10.0.0.2}): its
    IPv4 interface if it names one, else 127.0.0.1 (one machine), and its
    port (an IPv6 or all-interfaces listener: give C{--node-address}).
    """
    parts = http.split(":")
    port = ""
    interface = ""
    for index, part in enumerate(parts[1:]):
        if part.startswith("port="):
            port = part[5:]
        elif part.startswith("interface="):
            interface = part[10:]
        elif index == 0 and "=" not in part:
            port = part
    if not port.isdigit():
        port = "5080"
    try:
        ipaddress.IPv4Address(interface)
    except ValueError:
        interface = "127.0.0.1"
    if interface == "0.0.0.0":
        interface = "127.0.0.1"
    return "{}:{}".format(interface, port)


#: the access log's setting that turns it off (C{--access-log off})
ACCESS_LOG_OFF = "off"


@define
class ServerConfig:
    """
    Server-wide settings that are not per application.
    """

    #: networks allowed to call the management REST API and /metrics
    restAllowedCIDR: str = "127.0.0.1"
    #: when set, they also need a bearer JWT signed with it (both filters
    #: must pass, as Ant Media's IPFilter and JWTFilter)
    restJwtSecretKey: str = ""
    #: end JWT-admitted live sessions when their token expires
    kickOnExpiry: bool = False
    #: largest accepted request body, bytes
    maxBodySize: int = 1 << 20
    #: seconds an HTTP client has to send a request's line and headers
    #: (then its body at 1 KiB/s or more); 0 disables
    requestTimeout: float = 20.0
    #: most connections one address may hold open on each TCP listener
    #: (HTTP, HTTPS, RTMP); 0 disables
    maxConnectionsPerAddress: int = 256
    #: most broadcasts created through REST one application may hold
    #: (L{tokengate.store.broadcasts})
    maxBroadcasts: int = 10_000
    #: a management (REST bearer) JWT must carry an exp at most this many
    #: seconds ahead
    restJwtMaxLifetime: float = 24 * 3600.0
    #: seconds between sweeps of expired tokens
    purgeInterval: float = 300.0
    #: the secret that signs playback session credentials (share it across
    #: a cluster); empty: one is made and kept in the data directory
    sessionSecret: str = ""
    #: a playback session ends after this many idle seconds (MP4: vodIdle)
    sessionIdle: float = 120.0
    vodIdle: float = 6 * 3600.0
    #: the secret the nodes of a cluster share to authenticate each other
    #: (32+ characters; empty: this node serves no other node's streams)
    clusterSecret: str = field(default="", repr=False)
    #: the internal address this node advertises to the others, host:port
    nodeAddress: str = "127.0.0.1:5080"
    #: seconds a stream pulled from another node stays after its last
    #: viewer here left (docs/cluster.md, "Edge pull")
    edgeLinger: float = 10.0
    #: seconds for one authorization webhook exchange (webhookAuthenticateURL,
    #: webhookPlayAuthUrl), after which the request is refused
    webhookTimeout: float = 3.0
    #: LL-HLS part duration target, seconds
    partTarget: float = 0.5
    #: segment offload: the secret shared with the edge (nginx secure_link)
    #: that signs the segment links of playlists and MPDs; empty: off
    offloadSecret: str = field(default="", repr=False)
    #: seconds an offload link stays valid
    offloadTtl: float = 30.0
    #: the HTTP access log: a file path, L{ACCESS_LOG_OFF}, or None for the
    #: server's log (L{tokengate.web.site.TokengateSite})
    accessLog: Optional[str] = None
    #: ICE servers the server's own WebRTC peer connections use (STUN for a
    #: server-reflexive candidate behind 1:1 NAT): dicts with "urls" and,
    #: for TURN, "username" and "credential"
    serverIceServers: list[dict[str, str]] = field(factory=list)
    #: STUN/TURN URIs handed to browsers in the signalling's iceServerConfig
    #: (see tokengate.webrtc.ice.IceServers)
    iceServers: list[str] = field(factory=list)
    #: static TURN credentials ...
    turnUsername: str = ""
    turnCredential: str = field(default="", repr=False)
    #: ... or the secret shared with coturn (use-auth-secret): time-limited
    #: credentials, valid for turnCredentialTtl seconds
    turnSecret: str = field(default="", repr=False)
    turnCredentialTtl: int = 86400
    #: "all", or "relay": browsers use TURN only
    iceTransportPolicy: str = "all"
    #: VP8-only WebRTC publishers transcoded to H.264 at once (0: refused);
    #: one 720p30 publisher costs about a sixth of a core
    webrtcTranscodes: int = field(factory=lambda: 2 * (os.cpu_count() or 1))
    restNetworks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(
        init=False, factory=list
    )

    def __attrs_post_init__(self) -> None:
        self.restNetworks = parse_cidrs(self.restAllowedCIDR)
