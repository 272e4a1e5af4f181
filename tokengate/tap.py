# -*- test-case-name: tests.test_tap -*-
"""
C{twistd tokengate}: options and the service tree.

Every listener is a Twisted endpoint string.  Settings come from the command
line, then from C{--config FILE} (TOML, same names), then from the
defaults; the command line wins.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.python import usage
from tokengate.logsafe import Logger

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import (
        IListeningPort,
        IProtocolFactory,
        IStreamServerEndpoint,
    )
    from twisted.internet.protocol import DatagramProtocol

    from tokengate.metrics import Metrics

DEFAULTS: dict[str, Any] = {
    "http": "tcp:5080",
    "https": None,
    "certificate": None,
    "private-key": None,
    "rtmp": "tcp:1935",
    "srt": "udp:4200",
    "data-dir": "./tokengate-data",
    "store": "",
    "rest-allowed-cidr": "127.0.0.1",
    "rest-jwt-secret": "",
    "kick-on-expiry": False,
    "session-secret": "",
    "session-reuse-window": None,
    "part-target": 0.5,
    "offload-secret": "",
    "offload-ttl": 30.0,
    "access-log": "",
    "ice-servers": "",
    "turn-username": "",
    "turn-credential": "",
    "turn-secret": "",
    "turn-credential-ttl": 86400,
    "ice-transport-policy": "all",
    "server-stun": "",
    "webrtc-transcodes": None,
    "max-connections-per-address": 256,
    "max-broadcasts": 10_000,
    "http-request-timeout": 20.0,
    "rest-jwt-max-lifetime": 86400.0,
    "webhook-timeout": 3.0,
    "cluster-secret": "",
    "node-address": None,
    "workers": 1,
    "edge-linger": 10.0,
}

_log = Logger()


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "A streaming server in which every publish and every play can be gated "
        "by a one-time token (Ant Media Server compatible REST, RTMP, SRT, "
        "WebRTC, HLS, DASH)."
    )
    optParameters = [
        ["http", None, None, "HTTP endpoint: REST, playback, WebSocket [default: tcp:5080]"],
        ["https", None, None,
         "HTTPS endpoint [default: ssl:5443 when --certificate is given]"],
        ["certificate", None, None, "PEM certificate (chain) for HTTPS"],
        ["private-key", None, None, "PEM private key for HTTPS [default: the certificate file]"],
        ["rtmp", None, None, "RTMP endpoint [default: tcp:1935]"],
        ["srt", None, None, "SRT endpoint, udp:PORT[:interface=ADDR] [default: udp:4200]"],
        ["data-dir", None, None, "Where settings, tokens and recordings live [default: ./tokengate-data]"],
        ["store", None, None,
         "Token store: sqlite (default, in the data dir), sqlite:PATH, memory, or "
         "redis://host:port/db for a cluster"],
        ["config", None, None, "A TOML file with any of these settings"],
        ["rest-allowed-cidr", None, None,
         "Networks allowed to call the management REST API and /metrics [default: 127.0.0.1]"],
        ["rest-jwt-secret", None, None,
         "Management calls and /metrics must also bear a JWT signed with this (32+ "
         "characters), from an address --rest-allowed-cidr allows: both must pass (changed: "
         "the JWT no longer opens them from other addresses; see docs/rest.md)"],
        ["session-secret", None, None,
         "Secret signing playback session credentials; give every node of a cluster "
         "the same (32+ characters) [default: made once, kept in the data dir]"],
        ["session-reuse-window", None, None,
         "Deprecated, no effect: a spent play token continues the session it opened "
         "from the same address while that session is alive (docs/playback.md)", float],
        ["part-target", None, None, "LL-HLS part duration, seconds [default: 0.5]", float],
        ["offload-secret", None, None,
         "Segment offload: the secret shared with an nginx (secure_link) or CDN edge in "
         "front (32+ characters of A-Z a-z 0-9 _ -): playlists and MPDs then carry "
         "links it verifies by itself (docs/offload.md) [default: off]"],
        ["offload-ttl", None, None,
         "Seconds an offload link stays valid; each playlist reload carries fresh ones "
         "[default: 30]", float],
        ["access-log", None, None,
         "HTTP access log: a file the lines are appended to (tokens redacted; rotate it "
         "with logrotate's copytruncate), or 'off' [default: the server's log]"],
        ["ice-servers", None, None,
         "STUN/TURN URIs handed to WebRTC browsers, comma-separated, e.g. "
         "stun:stun.example.com:3478,turn:turn.example.com:3478?transport=udp"],
        ["turn-username", None, None, "Static TURN username (with --turn-credential)"],
        ["turn-credential", None, None, "Static TURN password (with --turn-username)"],
        ["turn-secret", None, None,
         "Secret shared with coturn (use-auth-secret, static-auth-secret): each browser "
         "gets fresh time-limited TURN credentials"],
        ["turn-credential-ttl", None, None,
         "Seconds time-limited TURN credentials stay valid [default: 86400]", int],
        ["ice-transport-policy", None, None,
         "all, or relay: browsers use only TURN (needs a turn: URI) [default: all]"],
        ["server-stun", None, None,
         "STUN URI(s) the server's own WebRTC peer connections use, for a "
         "server-reflexive candidate behind 1:1 NAT (aiortc uses the first)"],
        ["webrtc-transcodes", None, None,
         "Streams transcoded to H.264 at once for WebRTC (VP8-only publishers, and "
         "WebRTC viewers of H.264 with B-frames); 0 refuses them [default: 2 per CPU]", int],
        ["max-connections-per-address", None, None,
         "Connections one client address may hold open on each TCP listener (HTTP, "
         "HTTPS, RTMP); more are closed at once; 0 disables [default: 256]", int],
        ["max-broadcasts", None, None,
         "Broadcasts created through REST one application may hold; more are "
         "refused [default: 10000]", int],
        ["http-request-timeout", None, None,
         "Seconds an HTTP client has to send a request's line and headers (its body "
         "then at 1 KiB/s or more), else 408 and closed; 0 disables [default: 20]", float],
        ["rest-jwt-max-lifetime", None, None,
         "A management JWT (--rest-jwt-secret, an application's jwtSecretKey) must "
         "carry an exp at most this many seconds ahead [default: 86400]", float],
        ["webhook-timeout", None, None,
         "Seconds for one authorization webhook exchange (webhookAuthenticateURL, "
         "webhookPlayAuthUrl), then the publish or play is refused [default: 3]", float],
        ["cluster-secret", None, None,
         "Secret the nodes of a cluster share to authenticate each other (32+ "
         "characters; the same on every node); without it a node serves no other "
         "node's streams (docs/cluster.md)"],
        ["node-address", None, None,
         "The internal address host:port this node advertises to the others (its HTTP "
         "listener) [default: 127.0.0.1 or the --http interface, and the --http port]; "
         "with --workers, the first worker's (the others' ports follow it) [default: the "
         "--http port + 1]"],
        ["workers", None, None,
         "Worker processes sharing the listening ports, each a node of one cluster "
         "(needs a Redis --store; docs/cluster.md) [default: 1]", int],
        ["worker", None, None,
         "Internal: this process is worker INDEX of a --workers supervisor", int],
        ["edge-linger", None, None,
         "Seconds a stream pulled from another node of the cluster stays after its last "
         "viewer here left [default: 10]", float],
    ]
    optFlags = [
        ["kick-on-expiry", None, "End JWT-admitted live sessions when their token expires"],
    ]

    def parseOptions(self, options: Optional[list[str]] = None) -> None:
        # the command line as given: a --workers supervisor hands it on
        import sys

        self.arguments = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def postOptions(self) -> None:
        fileValues: dict[str, Any] = {}
        if self["config"]:
            fileValues = load_config(self["config"])
        for key, default in DEFAULTS.items():
            if key == "kick-on-expiry":
                if not self[key]:
                    self[key] = bool(fileValues.get(key, default))
                continue
            if self[key] is None:
                self[key] = fileValues.get(key, default)
        if self["certificate"] and not self["https"]:
            self["https"] = "ssl:5443"
        if self["https"] and "privateKey=" not in self["https"]:
            if not self["certificate"]:
                raise usage.UsageError("--https needs --certificate (and --private-key)")
            self["https"] = "{}:privateKey={}:certKey={}".format(
                self["https"],
                _escape(self["private-key"] or self["certificate"]),
                _escape(self["certificate"]),
            )
        if self["srt"]:
            parse_udp(self["srt"])
        if self["session-secret"] and len(self["session-secret"]) < 32:
            raise usage.UsageError("--session-secret must be at least 32 characters")
        if not 0.1 <= float(self["part-target"]) <= 2.0:
            raise usage.UsageError("--part-target must be between 0.1 and 2 seconds")
        self._checkOffload()
        self._checkAccessLog()
        if self["rest-jwt-secret"] and len(self["rest-jwt-secret"]) < 32:
            raise usage.UsageError("--rest-jwt-secret must be at least 32 characters")
        from tokengate.apps import SettingsError, parse_cidrs

        try:
            parse_cidrs(self["rest-allowed-cidr"])
        except SettingsError as e:
            raise usage.UsageError(str(e))
        self._checkLimits()
        self._checkIce()
        self._checkWorkers()
        self._checkCluster()
        transcodes = self["webrtc-transcodes"]
        if transcodes is not None and (not isinstance(transcodes, int) or transcodes < 0):
            raise usage.UsageError("--webrtc-transcodes must be a whole number, 0 or more")

    def _checkOffload(self) -> None:
        """
        Refuse an offload secret or link lifetime out of range (a value from
        the config file has not been converted by the option parser).
        """
        from tokengate.web.offload import OffloadError, OffloadLinks

        ttl = self["offload-ttl"]
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
            raise usage.UsageError("--offload-ttl must be a number of seconds")
        if not isinstance(self["offload-secret"], str):
            raise usage.UsageError("--offload-secret must be a string")
        if self["offload-secret"]:
            try:
                OffloadLinks(self["offload-secret"], float(ttl))
            except OffloadError as e:
                raise usage.UsageError("--offload-secret/--offload-ttl: {}".format(e))

    def _checkAccessLog(self) -> None:
        """
        Refuse an access log that is neither C{off} nor a file that can be
        appended to (checked now, not when the first request is logged).
        """
        from tokengate.config import ACCESS_LOG_OFF

        path = self["access-log"]
        if not isinstance(path, str):
            raise usage.UsageError("--access-log must be a file path or 'off'")
        if path in ("", ACCESS_LOG_OFF):
            return
        try:
            with open(path, "a", encoding="utf-8"):
                pass
        except OSError as e:
            raise usage.UsageError("--access-log: cannot append to {}: {}".format(
                path, e.strerror or e))

    def _checkLimits(self) -> None:
        """
        Refuse connection limits and deadlines out of range (a value from the
        config file has not been converted by the option parser).
        """
        limit = self["max-connections-per-address"]
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise usage.UsageError(
                "--max-connections-per-address must be a whole number, 0 or more")
        broadcasts = self["max-broadcasts"]
        if isinstance(broadcasts, bool) or not isinstance(broadcasts, int) \
                or not 1 <= broadcasts <= 10_000_000:
            raise usage.UsageError("--max-broadcasts must be a whole number from 1 to 10000000")
        for key, low, high in (("http-request-timeout", 1.0, 3600.0),
                               ("edge-linger", 1.0, 3600.0),
                               ("rest-jwt-max-lifetime", 60.0, 366 * 86400.0),
                               ("webhook-timeout", 1.0, 60.0)):
            value = self[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise usage.UsageError("--{} must be a number of seconds".format(key))
            if key == "http-request-timeout" and value == 0:
                continue  # disabled
            if not low <= value <= high:
                raise usage.UsageError("--{} must be between {:.0f} and {:.0f} seconds".format(
                    key, low, high))
            self[key] = float(value)

    def _checkCluster(self) -> None:
        """
        The cluster secret's length and the node's address (by default
        derived from the HTTP listener).
        """
        from tokengate.config import defaultNodeAddress, parseNodeAddress

        secret = self["cluster-secret"]
        if not isinstance(secret, str):
            raise usage.UsageError("--cluster-secret must be a string")
        if secret and len(secret) < 32:
            raise usage.UsageError("--cluster-secret must be at least 32 characters")
        address = self["node-address"]
        if address is None:
            address = defaultNodeAddress(str(self["http"]))
            if self["workers"] > 1:
                # the workers' own ports follow the shared HTTP port
                from tokengate.workers import workerAddress

                address = workerAddress(address, 1)
            self["node-address"] = address
        elif not isinstance(address, str):
            raise usage.UsageError("--node-address must be host:port")
        else:
            try:
                parseNodeAddress(address)
            except ValueError as e:
                raise usage.UsageError(str(e))
        if self["workers"] > 1:
            from tokengate.workers import workerAddress

            host, port = parseNodeAddress(address)
            if port + self["workers"] - 1 > 65535:
                raise usage.UsageError(
                    "--node-address: the workers' ports {}+0..{} pass 65535".format(
                        port, self["workers"] - 1))
            self["worker-base-address"] = address
            if self["worker"] is not None:
                self["node-address"] = workerAddress(address, self["worker"])

    def _checkWorkers(self) -> None:
        """
        C{--workers N}: a whole number from 1 to L{MAX_WORKERS}; more than
        one needs a Redis store (the workers are the nodes of one cluster).
        C{--worker INDEX} (a supervisor's worker): its cluster secret comes
        from the environment.
        """
        import os

        from tokengate.store import isRedisURL
        from tokengate.workers import MAX_WORKERS, SECRET_ENV

        workers = self["workers"]
        if isinstance(workers, bool) or not isinstance(workers, int) \
                or not 1 <= workers <= MAX_WORKERS:
            raise usage.UsageError(
                "--workers must be a whole number from 1 to {}".format(MAX_WORKERS))
        if workers > 1 and not isRedisURL(str(self["store"])):
            raise usage.UsageError(
                "--workers {} needs a Redis --store (redis://host:port/db): the workers "
                "are the nodes of one cluster and share tokens, settings and streams "
                "through it (docs/cluster.md)".format(workers))
        index = self["worker"]
        if index is None:
            return
        if workers < 2 or not 0 <= index < workers:
            raise usage.UsageError("--worker must be from 0 to --workers - 1")
        secret = os.environ.pop(SECRET_ENV, "")
        if not self["cluster-secret"]:
            self["cluster-secret"] = secret

    def _checkIce(self) -> None:
        """
        Normalize the STUN/TURN settings (the URI options become lists) and
        refuse inconsistent ones.
        """
        from tokengate.webrtc.ice import IceConfigError, IceServers, parse_uris, server_ice_servers

        try:
            self["ice-servers"] = parse_uris(self["ice-servers"])
            self["server-stun"] = [s["urls"] for s in server_ice_servers(self["server-stun"])]
            for key in ("turn-username", "turn-credential", "turn-secret",
                        "ice-transport-policy"):
                if not isinstance(self[key], str):
                    raise IceConfigError("--{} must be a string".format(key))
            IceServers(
                uris=self["ice-servers"],
                turnUsername=self["turn-username"],
                turnCredential=self["turn-credential"],
                turnSecret=self["turn-secret"],
                credentialTtl=self["turn-credential-ttl"],
                transportPolicy=self["ice-transport-policy"],
            )
        except IceConfigError as e:
            raise usage.UsageError(str(e))


def _escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:")


def load_config(path: str) -> dict[str, Any]:
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise usage.UsageError("cannot read config {}: {}".format(path, e))
    unknown = set(data) - set(DEFAULTS)
    if unknown:
        raise usage.UsageError(
            "unknown settings in {}: {}".format(path, ", ".join(sorted(unknown)))
        )
    return data


class ListenerService(StreamServerEndpointService):
    """
    A listener that aborts start-up with a plain message when it cannot
    listen (a port already in use, say).
    """

    def __init__(self, what: str, description: str, endpoint: IStreamServerEndpoint,
                 factory: IProtocolFactory) -> None:
        super().__init__(endpoint, factory)
        self.what = what
        self.description = description
        self._raiseSynchronously = True

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except Exception as e:
            message = "tokengate: cannot listen for {} on {}: {}".format(
                self.what, self.description, e
            )
            raise SystemExit(message)


def parse_udp(description: str) -> tuple[int, str]:
    """
    C{udp:PORT[:interface=ADDR]} -> (port, interface).
    """
    parts = description.split(":")
    if parts[0] != "udp" or len(parts) < 2 or not parts[1].isdigit():
        raise usage.UsageError("--srt must be udp:PORT[:interface=ADDR]")
    interface = ""
    for extra in parts[2:]:
        key, _, value = extra.partition("=")
        if key != "interface":
            raise usage.UsageError("--srt: unknown parameter {!r}".format(key))
        interface = value
    return int(parts[1]), interface


class UDPListenerService(service.Service):
    """
    A UDP listener that, like L{ListenerService}, aborts start-up with a
    plain message when it cannot bind.
    """

    def __init__(self, what: str, description: str, protocol: DatagramProtocol,
                 reactor: Any) -> None:
        self.what = what
        self.description = description
        self.protocol = protocol
        self.reactor = reactor
        self.port: Optional[IListeningPort] = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        port, interface = parse_udp(self.description)
        try:
            self.port = self.reactor.listenUDP(port, self.protocol, interface=interface,
                                               maxPacketSize=65536)
        except Exception as e:
            raise SystemExit("tokengate: cannot listen for {} on {}: {}".format(
                self.what, self.description, e))

    def startService(self) -> None:
        super().startService()
        if self.port is None:
            self.privilegedStartService()

    def stopService(self) -> Optional[Deferred[None]]:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


def listener(what: str, description: str, factory: IProtocolFactory, reactor: object,
             wrap: Optional[Callable[[IProtocolFactory], IProtocolFactory]] = None
             ) -> ListenerService:
    """
    A listener for C{factory} on the endpoint C{description}; with C{wrap},
    its TCP connections (under TLS too) are accepted through
    C{wrap(factory)} (the per-address limit).
    """
    from twisted.internet.endpoints import serverFromString

    if wrap is not None:
        from tokengate.limits import LimitingReactor

        reactor = LimitingReactor(reactor, wrap)
    return ListenerService(what, description, serverFromString(reactor, description), factory)


def addressLimit(limit: int, metrics: "Metrics", protocol: str
                 ) -> Optional[Callable[[Any], Any]]:
    """
    What puts a listener's factory behind the per-address connection limit
    (C{limit} connections, 0: none), refusals counted as
    C{tokengate_refusals_total{protocol=..., action="connect",
    reason="address_limit"}}; None without a limit.
    """
    from tokengate.limits import PerAddressLimit

    if not limit:
        return None
    refusals = metrics.refusals.labels(protocol, "connect", "address_limit")
    return lambda factory: PerAddressLimit(factory, limit, lambda host: refusals.inc(),
                                           protocol.upper())


def makeService(options: Options, reactor: Optional[Any] = None) -> service.MultiService:
    """
    The composition root: the inputs (data directory, token store and its
    Redis client, applications, settings), then the node's object graph
    (L{tokengate.server.Server}, built in dependency order), then the
    listeners, each handed the narrow collaborators it uses, and the timers.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    if options["workers"] > 1 and options["worker"] is None:
        # this process supervises the workers, which are the nodes
        from tokengate.workers import supervise

        return supervise(options, reactor)
    worker = options["worker"]
    listenOn = httpOn = reactor
    if worker is not None:
        from tokengate.reuseport import ReusePortReactor
        from tokengate.workers import followSupervisor

        followSupervisor()
        # every worker listens on the same ports: the kernel spreads clients,
        # HTTP ones by their address (a player's requests reach one worker)
        listenOn = ReusePortReactor(reactor)
        httpOn = ReusePortReactor(reactor, affinity=options["workers"])
    from tokengate.access.subscriberstores import open_subscriber_store
    from tokengate.apps import Applications
    from tokengate.cluster.settings import RedisApplications
    from tokengate.config import ServerConfig
    from tokengate.metrics import Metrics
    from tokengate.server import Server
    from tokengate.store import open_redis, open_store
    from tokengate.server import buildSite

    dataDir = options["data-dir"]
    os.makedirs(dataDir, exist_ok=True)
    if options["session-reuse-window"] is not None:
        _log.warn("--session-reuse-window is deprecated and has no effect: a spent play "
                  "token continues the session it opened, from the same address, while "
                  "that session is alive (see docs/playback.md)")
    try:
        # one Redis client for the token store and the revocation transport
        redis = open_redis(options["store"], reactor)
        store = open_store(options["store"], dataDir, reactor, redis=redis)
    except ValueError as e:
        raise SystemExit("tokengate: {}".format(e))
    if redis is not None and not options["cluster-secret"]:
        _log.warn("no --cluster-secret: this node shares the stream registry and the "
                  "settings, but serves no other node's streams (docs/cluster.md)")
    # one registry for the node, the subscriber store's errors included
    metrics = Metrics()
    # the TOTP subscribers beside the tokens: in memory, in the same SQLite
    # file, or on the same Redis client (shared by the cluster)
    subscribers = open_subscriber_store(store, reactor, metrics)
    apps = Applications(os.path.join(dataDir, "apps.json"))
    if redis is not None:
        # the applications live in Redis, in force on every node; this
        # node's apps.json seeds a Redis that has none yet
        apps = RedisApplications(redis, reactor, metrics, seed=apps)
    server = Server(
        apps=apps,
        store=store,
        clock=reactor,
        metrics=metrics,
        subscribers=subscribers,
        config=ServerConfig(
            restAllowedCIDR=options["rest-allowed-cidr"],
            restJwtSecretKey=options["rest-jwt-secret"],
            kickOnExpiry=options["kick-on-expiry"],
            sessionSecret=options["session-secret"],
            partTarget=float(options["part-target"]),
            offloadSecret=options["offload-secret"],
            offloadTtl=float(options["offload-ttl"]),
            accessLog=options["access-log"] or None,
            iceServers=list(options["ice-servers"]),
            turnUsername=options["turn-username"],
            turnCredential=options["turn-credential"],
            turnSecret=options["turn-secret"],
            turnCredentialTtl=int(options["turn-credential-ttl"]),
            iceTransportPolicy=options["ice-transport-policy"],
            serverIceServers=[{"urls": uri} for uri in options["server-stun"]],
            requestTimeout=float(options["http-request-timeout"]),
            maxConnectionsPerAddress=int(options["max-connections-per-address"]),
            maxBroadcasts=int(options["max-broadcasts"]),
            restJwtMaxLifetime=float(options["rest-jwt-max-lifetime"]),
            webhookTimeout=float(options["webhook-timeout"]),
            clusterSecret=options["cluster-secret"],
            nodeAddress=options["node-address"],
            edgeLinger=float(options["edge-linger"]),
            **({} if options["webrtc-transcodes"] is None
               else {"webrtcTranscodes": options["webrtc-transcodes"]}),
        ),
        dataDir=dataDir,
        redis=redis,
    )
    top = TokengateService(server)
    if isinstance(apps, RedisApplications):
        Running("the cluster's settings", apps.start, apps.stop).setServiceParent(top)
    site = buildSite(server)
    perAddress = server.config.maxConnectionsPerAddress
    listener("HTTP", options["http"], site, httpOn,
             addressLimit(perAddress, server.metrics, "http")).setServiceParent(top)
    if worker is not None:
        from tokengate.workers import internalListener, nodeInfo

        # this worker's own port: its node address, where the other nodes
        # reach it (and where each worker's /metrics is scraped)
        listener("HTTP (this worker)", internalListener(options["node-address"]), site,
                 reactor, addressLimit(perAddress, server.metrics, "http")
                 ).setServiceParent(top)
        nodeInfo(server.metrics, options["node-address"], worker)
    if options["https"]:
        listener("HTTPS", options["https"], site, httpOn,
                 addressLimit(perAddress, server.metrics, "https")).setServiceParent(top)
    if options["rtmp"]:
        from tokengate.rtmp.protocol import RTMPFactory

        rtmp = RTMPFactory(server.access, server.clock, server.metrics)
        listener("RTMP", options["rtmp"], rtmp, listenOn,
                 addressLimit(perAddress, server.metrics, "rtmp")).setServiceParent(top)
    if options["srt"]:
        from tokengate.srt.protocol import SRTListener

        UDPListenerService("SRT", options["srt"],
                           SRTListener(server.access, server.clock, server.metrics),
                           listenOn).setServiceParent(top)
    purge = TimerService(server.config.purgeInterval, top.purge)
    purge.setServiceParent(top)
    TimerService(10.0, top.sweep).setServiceParent(top)
    if worker is not None:
        from tokengate.workers import workerRunning

        # last: every listener above is bound once the reactor runs
        Running("the supervisor's readiness",
                lambda: reactor.callWhenRunning(workerRunning),
                lambda: None).setServiceParent(top)
    return top


class Running(service.Service):
    """
    A collaborator with a life of its own (a subscription), started and
    stopped with the service tree.
    """

    def __init__(self, name: str, start: Callable[[], None],
                 stop: Callable[[], "Optional[Deferred[None]]"]) -> None:
        self.name = name
        self._start = start
        self._stop = stop

    def startService(self) -> None:
        super().startService()
        self._start()

    def stopService(self) -> "Optional[Deferred[None]]":
        super().stopService()
        return self._stop()


class TokengateService(service.MultiService):
    """
    The root service: owns the server core and closes it on shutdown.
    """

    _log = Logger()

    def __init__(self, server: Any) -> None:
        super().__init__()
        self.server = server

    async def _purge(self) -> None:
        from tokengate.store import StoreUnavailable

        try:
            n = await self.server.store.purgeExpired(self.server.clock.seconds())
        except StoreUnavailable as e:
            self.server.metrics.store_errors.labels("purge").inc()
            self._log.warn("purging expired tokens failed: {error}", error=str(e))
            return
        except Exception:
            self._log.failure("purging expired tokens failed")
            return
        if n:
            self.server.metrics.purged.inc(n)
            self._log.info("purged {n} expired tokens", n=n)

    def sweep(self) -> None:
        """
        End idle playback sessions and drop packagers of long-ended streams.
        """
        try:
            self.server.httpSessions.sweep()
            self.server.outputs.sweep()
        except Exception:
            self._log.failure("sweeping sessions failed")

    def startService(self) -> None:
        super().startService()
        self.server.revoker.start()
        self.server.streams.start()
        # Recover recordings cut short by a crash once the reactor runs (the
        # work happens on a thread).
        self.server.clock.callWhenRunning(self._recover)

    def _recover(self) -> None:
        d = self.server.outputs.recover()

        def recovered(paths: Any) -> None:
            for path in paths or ():
                self._log.info("recovered recording {path}", path=path)

        d.addCallbacks(recovered, lambda f: self._log.failure("recovering recordings failed", f))

    def purge(self) -> Any:
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(self._purge())

    def stopService(self) -> Any:
        from twisted.internet.defer import maybeDeferred

        self.server.gate.registry.kickAll("shutdown")
        if self.server.puller is not None:
            self.server.puller.stopAll()
        for stream in self.server.hub.liveStreams():
            stream.end()
        d = maybeDeferred(super().stopService)
        d.addBoth(lambda _: self.server.streams.stop())
        d.addBoth(lambda _: self.server.revoker.stop())
        d.addBoth(lambda _: self.server.outputs.close())
        # after the kicks above (their leases' releases are in flight),
        # before the token store and the Redis client they run on
        d.addBoth(lambda _: self.server.subscribers.close())
        d.addBoth(lambda _: self.server.store.close())
        if self.server.redis is not None:
            redis = self.server.redis
            d.addBoth(lambda _: redis.close())
        return d
