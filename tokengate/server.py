# -*- test-case-name: tests.test_rest -*-
"""
The composition root's product: the object graph of one node.

L{Server} is built from the inputs (applications, token store, clock,
settings, data directory, the Redis client of a cluster) and builds every
collaborator in dependency order: the gate (throttle, cred portal, session
registry), the hub, the outputs (packagers, recorder), the playback
credentials' signer, the HTTP sessions, the revocation service, and the
access service over them.  Only the composition root reads it:
L{tokengate.tap.makeService} (listeners, timers), L{tokengate.web.resource}
(the site), and the tests; each listener, resource and service gets the
narrow collaborators it uses, never the server.
"""

from __future__ import annotations

import os
import secrets
from typing import TYPE_CHECKING, Any, Optional, Sequence, cast

from attrs import Factory, define, field
from twisted.internet.interfaces import IReactorTime

from tokengate.access.jwks import JWKSSources
from tokengate.access.outbound import Outbound
from tokengate.access.revocation import (
    HORIZON_MARGIN,
    LocalTransport,
    RedisTransport,
    RevocationTransport,
    Revoker,
)
from tokengate.access.clusterpolicy import ClusterPolicy
from tokengate.access.datastore import DatastorePolicy
from tokengate.access.publisheraddress import PublisherAddressPolicy
from tokengate.access.service import AccessService, IAccessPolicy
from tokengate.access.webhookpolicy import WebhookPolicy, newOutbound
from tokengate.access.subscriberpolicy import SubscriberPolicy
from tokengate.access.subscribers import ISubscriberStore, MemorySubscriberStore
from tokengate.apps import Applications, AppSettings
from tokengate.auth import Gate, Throttle, build_gate
from tokengate.cluster.feed import feedKey
from tokengate.cluster.pull import EdgePuller, HTTPFeedClient, IFeedClient
from tokengate.cluster.remote import RemoteMedia
from tokengate.cluster.remote import newOutbound as newMediaOutbound
from tokengate.cluster.registry import (
    IRegistryBackend,
    MemoryBackend,
    RedisBackend,
    StreamRegistry,
)
from tokengate.config import ServerConfig
from tokengate.logsafe import Logger
from tokengate.media.hub import Hub
from tokengate.media.outputs import Outputs
from tokengate.metrics import Metrics
from tokengate.store import ITokenStore
from tokengate.store.broadcasts import IBroadcastRegistry, registryFor
from tokengate.tokens import PUBLISH
from tokengate.web.playback import HTTPSessions
from tokengate.web.sessions import SessionSigner, load_or_create_secret

if TYPE_CHECKING:
    from tokengate.redisclient import RedisClient
    from tokengate.web.site import TokengateSite

_log = Logger()


@define
class Server:
    """
    One node's collaborators, built in dependency order (see the module's
    docstring).  The first fields are the inputs; the others are built.
    """

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
    #: the broadcasts created through REST; by default in the token
    #: store's backend (L{registryFor})
    broadcasts: IBroadcastRegistry = field(
        default=Factory(lambda self: registryFor(self.store, self.config.maxBroadcasts),
                        takes_self=True))
    #: the TOTP subscribers' records, blocks and live connections (in this
    #: process's memory unless the composition root gives a persistent one)
    subscribers: ISubscriberStore = field(
        default=Factory(lambda self: MemorySubscriberStore(self.clock), takes_self=True))
    #: the key sources of the applications' jwksURLs (RS256 JWTs), shared by
    #: the stream JWT checker and the REST API; by default fetched on the
    #: server's clock, which is then the reactor
    jwks: JWKSSources = field(default=Factory(lambda self: JWKSSources(self.clock),
                                              takes_self=True))
    #: security policies asked after the applications' own (the composition
    #: root gives none; tests give one that records what it is asked)
    extraPolicies: Sequence[IAccessPolicy] = ()
    #: the authorization webhooks' HTTP client (None: one on C{clock}, the
    #: reactor, with C{config.webhookTimeout})
    webhookOutbound: Optional[Outbound] = None
    #: where the stream registry keeps its entries (None: in C{redis} when
    #: given, else in this process; tests share one between nodes)
    streamBackend: Optional[IRegistryBackend] = None
    #: how the edge puller opens origins' feeds (None: over HTTP on
    #: C{clock}, the reactor, with the feed key of C{config.clusterSecret})
    feedClient: Optional[IFeedClient] = None
    #: how this node fetches other nodes' packaged media (None: over HTTP
    #: on C{clock}, the reactor, L{tokengate.cluster.remote.newOutbound})
    mediaOutbound: Optional[Outbound] = None
    gate: Gate = field(init=False)
    #: the one door of every protocol's publish and play
    access: AccessService = field(init=False)
    hub: Hub = field(init=False)
    outputs: Outputs = field(init=False)
    signer: SessionSigner = field(init=False)
    #: the HTTP playback sessions of this node, over the gate's registry
    httpSessions: HTTPSessions = field(init=False)
    #: the revocation service: this node, then the rest of the cluster
    revoker: Revoker = field(init=False)
    #: which node holds each live stream (in Redis with a Redis store, else
    #: in this process); the locator of the edge puller
    streams: StreamRegistry = field(init=False)
    #: pulls the streams other nodes publish for this node's viewers (None
    #: without C{config.clusterSecret}: nothing is pulled)
    puller: Optional[EdgePuller] = field(init=False, default=None)
    #: the HLS and DASH of streams other nodes package, fetched from them
    #: for this node's viewers (None without C{config.clusterSecret})
    remoteMedia: Optional[RemoteMedia] = field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self.gate = build_gate(
            self.apps,
            self.store,
            self.clock,
            self.metrics,
            kickOnExpiry=self.config.kickOnExpiry,
            throttle=self.throttle,
            keys=self.jwks,
        )
        self.hub = Hub(self.clock)
        self.outputs = Outputs(self.apps, self.hub, self.clock, self.metrics, self.dataDir,
                               partTarget=self.config.partTarget)
        if self.config.sessionSecret:
            secret = self.config.sessionSecret.encode("utf-8")
        elif self.dataDir:
            secret = load_or_create_secret(os.path.join(self.dataDir, "session.key"))
        else:
            secret = secrets.token_bytes(32)
        self.signer = SessionSigner(secret, idle=self.config.sessionIdle,
                                    vodIdle=self.config.vodIdle)
        self.httpSessions = HTTPSessions(self.gate.registry, self.signer, self.clock)
        self.hub.addViewerCounter(self.httpSessions.count)
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
        backend = self.streamBackend
        if backend is None:
            backend = (MemoryBackend(self.clock) if self.redis is None
                       else RedisBackend(self.redis))
        self.streams = StreamRegistry(backend, self.clock, self.metrics,
                                      self.config.nodeAddress, self._endPublisher)
        self.hub.onPublish(lambda stream: self.streams.streamLive(
            stream.app, stream.streamId, stream.started))
        # the applications' security policies, asked in this order: the
        # cluster's claim first (a stream published elsewhere is in use, as
        # one published here), then the cheapest and most local first, the
        # webhook last: publisher address, datastore-only streams, TOTP
        # subscribers, authorization webhook
        policies: list[IAccessPolicy] = [
            ClusterPolicy(self.streams),
            PublisherAddressPolicy(),
            DatastorePolicy(self.broadcasts),
            SubscriberPolicy(self.subscribers, self.clock),
        ]
        # the webhook last: it is the slowest (a remote call)
        outbound = self.webhookOutbound
        if outbound is None:
            outbound = newOutbound(self.clock, self.config.webhookTimeout)
        policies.append(WebhookPolicy(outbound, self.clock))
        if self.config.clusterSecret:
            client = self.feedClient
            if client is None:
                client = HTTPFeedClient(self.clock, feedKey(self.config.clusterSecret),
                                        self.streams.localNodeId)
            self.puller = EdgePuller(self.hub, self.streams, client, self.clock, self.metrics,
                                     linger=self.config.edgeLinger)
            outbound = self.mediaOutbound
            if outbound is None:
                outbound = newMediaOutbound(self.clock)
            self.remoteMedia = RemoteMedia(self.streams, outbound,
                                           feedKey(self.config.clusterSecret), self.clock,
                                           self.metrics, self.apps)
        self.access = AccessService(self.apps, self.gate, self.hub, self.outputs.hasRecording,
                                    [*policies, *self.extraPolicies], remote=self.puller)
        self.apps.onChange(self._appChanged)
        m = self.metrics
        m.callbackGauge("tokengate_live_streams", "Streams being published",
                        lambda: len(self.hub.liveStreams()))

    def _endPublisher(self, app: str, streamId: str) -> None:
        registry = self.gate.registry
        registry.kick([g for g in registry.grants(app, streamId) if g.action == PUBLISH],
                      "revoked")

    def _appChanged(self, name: str, settings: Optional[AppSettings]) -> None:
        if settings is None:
            self.gate.registry.kick(self.gate.registry.grants(name), "revoked")
            self.hub.forget(name)
            self.outputs.forget(name)

    @classmethod
    def inMemory(cls, clock: Optional[IReactorTime] = None, **kw: Any) -> "Server":
        """
        A server with an in-memory store and unpersisted applications (on
        the global reactor unless C{clock} is given).
        """
        from tokengate.store.memory import MemoryTokenStore

        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        return cls(apps=Applications(None), store=MemoryTokenStore(), clock=clock, **kw)


def buildSite(server: Server, engine: Any = None) -> "TokengateSite":
    """
    The HTTP site of a node: the REST API, HTTP playback, the WebSocket
    signalling, WHIP and WHEP, and the pages, each given its collaborators
    from the graph.

    @param engine: the WebRTC media engine; by default the one
        L{tokengate.webrtc.media.make_engine} makes for the running reactor.
    """
    from twisted.internet import reactor

    from tokengate.web.offload import OffloadLinks
    from tokengate.web.playback import PlaybackGate
    from tokengate.web.resource import Root
    from tokengate.web.rest import RestAPI
    from tokengate.web.site import TokengateSite
    from tokengate.webrtc.ice import IceServers
    from tokengate.webrtc.media import make_engine
    from tokengate.webrtc.pages import WebRTCPages
    from tokengate.webrtc.signalling import SignallingFactory
    from tokengate.webrtc.whip import WhipEndpoints
    from tokengate.cluster.origin import FeedResource
    from tokengate.cluster.mediaorigin import MediaResource

    config = server.config
    api = RestAPI(server.apps, server.store, server.hub, server.gate, server.revoker,
                  server.clock, server.metrics, config, server.subscribers, server.jwks,
                  broadcasts=server.broadcasts, streams=server.streams)
    offload = None
    if config.offloadSecret:
        offload = OffloadLinks(config.offloadSecret, config.offloadTtl)
    playback = PlaybackGate(server.access, server.clock, server.metrics, server.signer,
                            server.outputs, server.httpSessions, offload=offload,
                            remote=server.remoteMedia)
    if engine is None:
        engine = make_engine(reactor, config, server.metrics)
    ice = IceServers.fromConfig(config)
    if ice.uris:
        _log.info("WebRTC ICE servers for browsers: {ice}", ice=ice.describe())
    own = [s["urls"] for s in config.serverIceServers]
    if own:
        _log.info("The server's WebRTC peer connections use ICE servers {uris}",
                  uris=", ".join(map(str, own)))
    signalling = SignallingFactory(server.access, server.clock, server.metrics, server.hub,
                                   engine, ice=ice)
    webrtc = WebRTCPages(server.apps, signalling, engine)
    whip = WhipEndpoints(server.access, server.clock, server.metrics, engine, ice,
                         perAddress=config.maxConnectionsPerAddress)
    secret = config.clusterSecret
    feed = FeedResource(server.hub, server.clock, server.metrics,
                        feedKey(secret) if secret else None)
    media = MediaResource(server.outputs, server.clock, server.metrics,
                          feedKey(secret) if secret else None,
                          blockTimeoutFactor=playback.blockTimeoutFactor)
    root = Root(server.apps, server.clock, api.resource(), playback, webrtc, whip, feed,
                media)
    return TokengateSite(root, maxBodySize=config.maxBodySize, metrics=server.metrics,
                         requestTimeout=config.requestTimeout, accessLog=config.accessLog)
