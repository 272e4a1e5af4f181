# -*- test-case-name: tests.test_rest -*-
"""
The core shared by every listener: applications, token store, the gate,
metrics and the server-wide settings.  One instance per process; every
protocol factory and the web site get it at construction.
"""

from __future__ import annotations

import ipaddress
import os
from typing import TYPE_CHECKING, Any, Optional

from attrs import define, field
from twisted.internet.interfaces import IReactorTime

from tokengate.access.revocation import (
    HORIZON_MARGIN,
    LocalTransport,
    RedisTransport,
    RevocationTransport,
    Revoker,
)
from tokengate.access.service import AccessService
from .apps import Applications, AppSettings, parse_cidrs
from .auth import Gate, IStreamCredentials, Throttle, build_gate
from .media.hub import Hub
from .metrics import Metrics
from .store import ITokenStore
from .tokens import PUBLISH, Outcome

if TYPE_CHECKING:
    from tokengate.redisclient import RedisClient


@define
class ServerConfig:
    """
    Server-wide settings that are not per application.
    """

    #: networks allowed to call the management REST API and /metrics
    restAllowedCIDR: str = "127.0.0.1"
    #: when set, a bearer JWT signed with it also opens them
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
    #: LL-HLS part duration target, seconds
    partTarget: float = 0.5
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


@define
class Server:
    apps: Applications
    store: ITokenStore
    clock: IReactorTime
    config: ServerConfig = field(factory=ServerConfig)
    metrics: Metrics = field(factory=Metrics)
    throttle: Optional[Throttle] = None
    dataDir: Optional[str] = None
    #: the Redis client shared by a Redis token store and the revocation
    #: service's cluster transport (None: revocation is local)
    redis: Optional[RedisClient] = None
    gate: Gate = field(init=False)
    #: the one door of every protocol's publish and play
    access: AccessService = field(init=False)
    hub: Hub = field(init=False)
    outputs: Any = field(init=False)
    signer: Any = field(init=False)
    #: the HTTP playback gate, once the site is built
    playback: Any = field(init=False, default=None)
    #: the revocation service: this node, then the rest of the cluster
    revoker: Revoker = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.gate = build_gate(
            self.apps,
            self.store,
            self.clock,
            self.metrics,
            kickOnExpiry=self.config.kickOnExpiry,
            throttle=self.throttle,
        )
        self.hub = Hub(self.clock)
        from .media.outputs import Outputs
        from .web.sessions import SessionSigner, load_or_create_secret

        self.outputs = Outputs(self.apps, self.hub, self.clock, self.metrics, self.dataDir,
                               partTarget=self.config.partTarget)
        if self.config.sessionSecret:
            secret = self.config.sessionSecret.encode("utf-8")
        elif self.dataDir:
            secret = load_or_create_secret(os.path.join(self.dataDir, "session.key"))
        else:
            import secrets

            secret = secrets.token_bytes(32)
        self.signer = SessionSigner(secret, idle=self.config.sessionIdle,
                                    vodIdle=self.config.vodIdle)
        transport: RevocationTransport
        if self.redis is not None:
            horizon = max(self.signer.idle, self.signer.vodIdle) + HORIZON_MARGIN
            transport = RedisTransport(self.redis, self.clock, horizon)
        else:
            transport = LocalTransport()
        self.revoker = Revoker(
            registry=self.gate.registry,
            credentials=self.signer,
            apps=self.apps,
            clock=self.clock,
            metrics=self.metrics,
            transport=transport,
        )
        self.access = AccessService(self.apps, self.gate, self.hub, self.outputs.hasRecording)
        self.gate.addPrecheck(self._liveness)
        self.apps.onChange(self._appChanged)
        m = self.metrics
        m.callbackGauge("tokengate_live_streams", "Streams being published",
                        lambda: len(self.hub.liveStreams()))

    def _liveness(self, creds: IStreamCredentials) -> Optional[Outcome]:
        """
        Decided before any token is redeemed, so a refused request keeps its
        token: a stream already live cannot be published again, and a
        stream that is not live cannot be played (VOD decides for itself).
        """
        if creds.action != PUBLISH and creds.protocol == "rtmp":
            settings = self.apps.get(creds.app)
            if settings is not None and not settings.rtmpPlaybackEnabled:
                return Outcome.DISABLED
        if creds.action == PUBLISH:
            return Outcome.IN_USE if self.hub.isTaken(creds.app, creds.streamId) else None
        live = self.hub.isLive(creds.app, creds.streamId)
        if creds.protocol == "vod":
            return None
        return None if live else Outcome.NOT_LIVE

    def _appChanged(self, name: str, settings: Optional[AppSettings]) -> None:
        if settings is None:
            self.gate.registry.kick(self.gate.registry.grants(name), "revoked")
            self.hub.forget(name)
            self.outputs.forget(name)

    @classmethod
    def inMemory(cls, clock: Optional[Any] = None, **kw: Any) -> "Server":
        """
        A server with an in-memory store and unpersisted applications.
        """
        from .store.memory import MemoryTokenStore

        if clock is None:
            from twisted.internet import reactor as clock
        return cls(apps=Applications(None), store=MemoryTokenStore(), clock=clock, **kw)
