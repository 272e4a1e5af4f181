# -*- test-case-name: tests.test_rest,tests.test_rest_subscribers -*-
"""
The REST API, with the reference server's paths, JSON shapes, status codes
and messages:

* C{/rest/v2/applications...}: list, create and delete applications, read
  and replace their settings (the management API);
* C{/{App}/rest/v2/broadcasts/...}: mint, validate, revoke and list tokens;
  add, list, block and delete TOTP subscribers, their current codes and
  connection events;
  create, read, list and delete broadcasts (L{tokengate.store.broadcasts});
* C{/metrics}: Prometheus.

Every request passes L{RestGuard} first, as Ant Media maps its C{IPFilter}
and C{JWTFilter} on C{/rest/*}: B{each filter that is on must pass}.  For
an application's calls (C{/{App}/rest/...}) the address filter
(C{ipFilterEnabled}, C{remoteAllowedCIDR}: loopback only by default) and,
when C{jwtControlEnabled}, a bearer JWT (HS256 over C{jwtSecretKey}, or
RS256 with the keys of C{jwksURL} when set); C{ipFilterEnabled} may be
false only when the JWT filter is on.  For the management calls, metrics
and any other path (an unknown application is not revealed), the
server-wide C{restAllowedCIDR} and, when C{restJwtSecretKey} is set, a JWT
signed with it.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Callable, Optional, Sequence, TypeVar

from klein import Klein
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from tokengate.access.jwks import KeySources
from tokengate.access.names import isValidStreamId
from tokengate.access.revocation import Revoker
from tokengate.access.subscribers import (
    BLOCK_TYPES,
    ConnectionEvent,
    MAX_BLOCK_SECONDS,
    MAX_EVENTS_PER_STREAM,
    PUBLISH,
    PUBLISH_AND_PLAY,
    TYPES,
    ISubscriberStore,
    Subscriber,
    isValidSubscriberId,
    subscriberFromJSON,
)
from tokengate.access.totp import SecretError, totpAt
from tokengate.apps import (
    MAX_NAMED_FIELDS,
    Applications,
    AppSettings,
    SettingsError,
    SettingsUnavailable,
    address_allowed,
)
from tokengate.auth import (
    Gate,
    Refused,
    StreamCredentials,
    check_jwt,
    mint_jwt,
    verifyJWKSToken,
)
from tokengate.cluster.registry import IClusterStreams, RegistryUnavailable, StreamLocation
from tokengate.jsonvalue import (
    JSONError,
    JSONValue,
    decimalText,
    readJSON,
    requireObject,
    stringValue,
)
from tokengate.logsafe import Logger
from tokengate.media.hub import PULLED, BroadcastRecord, Hub
from tokengate.metrics import CONTENT_TYPE_LATEST, Metrics
from tokengate.config import ServerConfig
from tokengate.store import ITokenStore, StoreUnavailable
from tokengate.store.broadcasts import (
    MAX_DESCRIPTION,
    MAX_NAME,
    Broadcast,
    BroadcastExists,
    IBroadcastRegistry,
    TooManyBroadcasts,
)
from tokengate.tokens import (
    MAX_TOKEN_LENGTH,
    MSG_BAD_STREAM_ID,
    Outcome,
    RequestError,
    StoredToken,
    check_mint_request,
    new_token,
)

#: the reference server's cap on one page of a listing
MAX_LIST_SIZE = 250

T = TypeVar("T")
#: path integers (offsets and sizes of listings) are Java ints there
MAX_PATH_INT = 2**31 - 1
#: the largest expireDate read (beyond, it is "not a positive integer")
MAX_EXPIRE_DATE = 2**63 - 1

MSG_NOT_ALLOWED_IP = "Not allowed IP"
MSG_INVALID_APP_JWT = "Invalid App JWT Token"
MSG_JWKS_DOWN = "The JWT keys (jwksURL) are unavailable, try again later"
MSG_JWKS_MINT = (
    "Cannot create JWT token: this application verifies JWTs with the keys of its "
    "jwksURL; sign them with the matching private key"
)
MSG_NO_JWT_KEY = (
    "Cannot create JWT token. The problem can be ->  this is community edition "
    "or JWT stream key is not set or it's length is less than 32"
)
MSG_STORE_DOWN = "Token store is unavailable, try again later"
MSG_NO_APP = "Application not found"
MSG_NO_BROADCAST = "Broadcast is not found"
MSG_SUBSCRIBERS_DOWN = "Subscriber store is unavailable, try again later"
MSG_BAD_SUBSCRIBER_ID = "subscriberId must be 4 to 128 of A-Z a-z 0-9 _ . @ -"
MSG_NO_TIME_SECRET = ("Secret is not set in AppSettings. Please set timetokensecret publish or "
                      "play in Application settings")
MSG_BROADCAST_EXISTS = "Stream id is already being used. Please change stream id or keep it empty"
MSG_TOO_MANY_BROADCASTS = "An application holds at most {} broadcasts; delete some first"
MSG_REGISTRY_DOWN = "Broadcast store is unavailable, try again later"
MSG_SETTINGS_DOWN = "Application settings are unavailable, try again later"
#: Ant Media's answers to a broadcast's deletion (the second is theirs too,
#: word for word, for a broadcast that was not live)
MSG_DELETED_STOPPED = "broadcast is deleted and stopped successfully"
MSG_DELETED_NOT_STOPPED = "broadcast is deleted but could not stopped "


class HTTPError(Exception):
    """
    Answer with C{code} and a reference Result body carrying C{message}.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


def result(success: bool, message: str = "", dataId: str = "") -> dict[str, Any]:
    """
    The reference server's C{Result} object.
    """
    return {"success": success, "message": message, "dataId": dataId, "errorId": 0}


def send_json(request: IRequest, obj: object, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def read_json(request: IRequest) -> JSONValue:
    """
    The request body as JSON (L{tokengate.jsonvalue.readJSON}: depth,
    numbers and encoding bounded); its L{JSONError} is answered 400 by
    L{RestAPI}.  (The body's size was capped by the site before it was
    buffered.)
    """
    raw = request.content.read() if request.content is not None else b""
    return readJSON(raw)


def _arg(request: IRequest, name: str) -> Optional[str]:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    try:
        value: str = values[0].decode("utf-8")
        return value
    except UnicodeDecodeError:
        raise HTTPError(400, "Query parameter {} is not UTF-8".format(name))


def _page(offset: str, size: str) -> tuple[int, int]:
    """
    A listing's page from its path: ASCII digits within a Java int (a 400
    naming the part otherwise), the size capped at L{MAX_LIST_SIZE}.
    """
    first = decimalText(offset, "offset", 0, MAX_PATH_INT)
    return first, min(decimalText(size, "size", 0, MAX_PATH_INT), MAX_LIST_SIZE)


def _bearer(request: IRequest) -> Optional[str]:
    header = request.getHeader(b"authorization")
    if not header:
        return None
    value = header.decode("latin-1").strip()
    if value[:7].lower() == "bearer ":
        value = value[7:].strip()
    return value or None


class RestAPI:
    """
    The Klein application behind the REST API (class-based: one per server).
    """

    app = Klein()
    _log = Logger()

    def __init__(self, apps: Applications, store: ITokenStore, hub: Hub, gate: Gate,
                 revoker: Revoker, clock: IReactorTime, metrics: Metrics,
                 config: ServerConfig, subscribers: ISubscriberStore,
                 keys: KeySources, *, broadcasts: IBroadcastRegistry,
                 streams: Optional[IClusterStreams] = None) -> None:
        """
        @param apps: the applications (created, changed, deleted here).
        @param store: the tokens (minted, listed, deleted here).
        @param hub: the live streams' and the ended ones' records.
        @param gate: redeems tokens for C{validate-token}.
        @param revoker: ends sessions here and across the cluster.
        @param config: the server-wide REST protection (allowed networks,
            management JWT).
        @param subscribers: the TOTP subscribers (added, listed, blocked,
            deleted here).
        @param keys: the key sources of the applications' C{jwksURL}s.
        @param broadcasts: the broadcasts created through REST (created,
            listed, deleted here).
        @param streams: the streams live on the cluster's nodes (the stream
            registry), or None: only this node's.
        """
        self._apps = apps
        self._store = store
        self._hub = hub
        self._gate = gate
        self._revoker = revoker
        self._clock = clock
        self._metrics = metrics
        self._config = config
        self._subscribers = subscribers
        self._keys = keys
        self._broadcasts = broadcasts
        self._streams = streams

    def resource(self) -> Any:
        """
        The REST API's resource: the routes behind L{RestGuard}.
        """
        return RestGuard(self, self.app.resource())

    # --- errors and protection ---------------------------------------------------

    @app.handle_errors(HTTPError)
    def _httpError(self, request: IRequest, failure: Failure) -> bytes:
        e = failure.value
        assert isinstance(e, HTTPError)
        return send_json(request, result(False, e.message), e.code)

    @app.handle_errors(JSONError)
    def _jsonError(self, request: IRequest, failure: Failure) -> bytes:
        """
        Malformed JSON, or a value (body field, path or query integer) of
        the wrong type or out of range: 400 with the reason, counted.
        """
        e = failure.value
        assert isinstance(e, JSONError)
        self._metrics.malformed.labels("rest", e.kind).inc()
        return send_json(request, result(False, str(e)), 400)

    def directRoute(self, request: IRequest) -> Optional[tuple[str, Callable[[], Any]]]:
        """
        The calls L{RestGuard} serves without Klein's routing (the hot ones:
        a token minted for every viewer), recognized by their route's exact
        shape: C{GET /{appName}/rest/v2/broadcasts/{streamId}/token} and
        C{.../jwt-token} with plain segments.  Anything else (another
        method, a percent-escape, a segment that is not UTF-8) is left to
        Klein, which routes it as before.

        @return: the application the route names and the call, or None.
        """
        path = request.postpath
        if request.method != b"GET" or path is None or len(path) != 6:
            return None
        handler = _DIRECT.get(path[5])
        appPart, streamPart = path[0], path[4]
        if (handler is None or path[1] != b"rest" or path[2] != b"v2"
                or path[3] != b"broadcasts" or not appPart or not streamPart
                or b"%" in appPart or b"%" in streamPart):
            return None
        try:
            appName, streamId = appPart.decode("utf-8"), streamPart.decode("utf-8")
        except UnicodeDecodeError:
            return None
        method = getattr(self, handler)
        return appName, lambda: method(request, appName, streamId)

    def failed(self, request: IRequest, failure: Failure) -> Optional[bytes]:
        """
        What Klein's error handlers answer for a direct call's failure
        (L{HTTPError}, L{JSONError}); None for any other.
        """
        answer: Optional[bytes] = None
        if failure.check(HTTPError):
            answer = self._httpError(request, failure)
        elif failure.check(JSONError):
            answer = self._jsonError(request, failure)
        return answer

    def scopeOf(self, request: IRequest) -> Optional[AppSettings]:
        """
        Whose protection a request falls under, found as Klein routes it:
        the settings of the application a route names (its C{appName}), or
        L{None} for the server's (management calls, metrics, an unknown
        application, any path no route takes).
        """
        path = b"/" + b"/".join(request.postpath or [])
        try:
            adapter = self.app.url_map.bind(
                "localhost", path_info=path.decode("utf-8"),
                default_method=(request.method or b"GET").decode("ascii", "replace"))
            _, arguments = adapter.match(return_rule=True)
        except (UnicodeDecodeError, HTTPException, RequestRedirect):
            return None
        appName = arguments.get("appName")
        return self._apps.get(appName) if isinstance(appName, str) else None

    async def protect(self, request: IRequest) -> None:
        """
        Ant Media's C{IPFilter} and C{JWTFilter}: each one that is on must
        pass (see the module's docstring).

        @raise HTTPError: 403 C{Not allowed IP} or C{Invalid App JWT Token};
            503 when the C{jwksURL}'s keys are unavailable; counted in
            C{tokengate_rest_refusals{reason}}.
        """
        jwt = self.screen(request)
        if jwt is not None:
            await self._checkJwt(request, *jwt)

    def screen(self, request: IRequest, appName: Optional[str] = None
               ) -> Optional[tuple[str, str]]:
        """
        The part of L{protect} that needs no waiting: the IP filter, and
        whether a JWT check is due.

        @param appName: the application the request's route names, when
            already known (L{directRoute}); otherwise found by routing
            (L{scopeOf}).
        @return: L{None} when the request is allowed, or the C{(secret,
            jwksURL)} its JWT must be checked with (L{protect} does).
        @raise HTTPError: 403 C{Not allowed IP}, counted.
        """
        settings = self.scopeOf(request) if appName is None else self._apps.get(appName)
        if settings is None:
            config = self._config
            ipFilter, networks = True, config.restNetworks
            jwtFilter, secret, jwksURL = bool(config.restJwtSecretKey), config.restJwtSecretKey, ""
        else:
            ipFilter, networks = settings.ipFilterEnabled, settings.allowedNetworks()
            jwtFilter, secret = settings.jwtControlEnabled, settings.jwtSecretKey
            jwksURL = settings.jwksURL
        if ipFilter and not address_allowed(request.getClientAddress().host, networks):
            self._metrics.http_refusals.labels("ip").inc()
            raise HTTPError(403, MSG_NOT_ALLOWED_IP)
        if jwtFilter:
            return secret, jwksURL
        if not ipFilter:
            # the settings refuse this; were it stored anyway, nothing protects
            self._metrics.http_refusals.labels("no_filter").inc()
            raise HTTPError(403, MSG_NOT_ALLOWED_IP)
        return None

    async def _checkJwt(self, request: IRequest, secret: str, jwksURL: str) -> None:
        token = _bearer(request)
        try:
            if not token or len(token) > MAX_TOKEN_LENGTH:
                raise Refused(Outcome.MISSING)
            maxLifetime = self._config.restJwtMaxLifetime
            if jwksURL:
                await verifyJWKSToken(self._keys, jwksURL, token, maxLifetime)
            else:
                check_jwt(secret, token, self._clock.seconds(), maxLifetime)
        except Refused as e:
            if e.outcome is Outcome.UNAVAILABLE:
                self._metrics.http_refusals.labels("jwks_unavailable").inc()
                raise HTTPError(503, MSG_JWKS_DOWN)
            self._metrics.http_refusals.labels("invalid_jwt").inc()
            raise HTTPError(403, MSG_INVALID_APP_JWT)

    def _appSettings(self, request: IRequest, appName: str) -> AppSettings:
        """
        The settings of the application a route names (L{RestGuard} has
        already applied its protection, or the server's when it does not
        exist): 404 when there is none.
        """
        self._requireApplications()
        settings = self._apps.get(appName)
        if settings is None:
            raise HTTPError(404, MSG_NO_APP)
        return settings

    def _requireApplications(self) -> None:
        """
        @raise HTTPError: 503 while the applications are not known yet (a
            cluster node that has not read them from Redis).
        """
        if not self._apps.loaded:
            raise HTTPError(503, MSG_SETTINGS_DOWN)

    # --- management: applications and settings -----------------------------------

    @app.route("/rest/v2/applications", methods=["GET"])
    def listApplications(self, request: IRequest) -> bytes:
        self._requireApplications()
        return send_json(request, {"applications": list(self._apps)})

    @app.route("/rest/v2/applications/<string:name>", methods=["POST"])
    async def createApplication(self, request: IRequest, name: str) -> bytes:
        self._requireApplications()
        try:
            await self._apps.add(name)
        except SettingsError as e:
            return send_json(request, result(False, str(e)))
        except SettingsUnavailable:
            raise self._settingsDown("app_create")
        return send_json(request, result(True))

    @app.route("/rest/v2/applications/<string:name>", methods=["DELETE"])
    async def deleteApplication(self, request: IRequest, name: str) -> bytes:
        self._requireApplications()
        if name not in self._apps:
            raise HTTPError(404, MSG_NO_APP)
        try:
            await self._apps.remove(name)  # ends its sessions and streams, on every node
        except KeyError:
            raise HTTPError(404, MSG_NO_APP)
        except SettingsUnavailable:
            raise self._settingsDown("app_delete")
        left = []
        try:
            await self._broadcasts.deleteApp(name)
        except StoreUnavailable:
            self._metrics.store_errors.labels("broadcast_delete_app").inc()
            left.append("its broadcasts could not be deleted (the broadcast store is "
                        "unavailable): they are back if an application of that name is "
                        "created again")
        try:
            await self._store.deleteApp(name)
        except StoreUnavailable:
            self._metrics.store_errors.labels("delete_app").inc()
            left.append("its tokens will expire by themselves")
        try:
            # records, blocks, replay marks, connection events (the leases
            # of the sessions just ended included)
            await self._subscribers.deleteApp(name)
        except StoreUnavailable:
            self._metrics.store_errors.labels("subscribers_delete_app").inc()
            left.append("its TOTP subscribers could not be deleted")
        if left:
            return send_json(request, result(True, "Application deleted; " + "; ".join(left)))
        return send_json(request, result(True))

    @app.route("/rest/v2/applications/settings/<string:name>", methods=["GET"])
    def getSettings(self, request: IRequest, name: str) -> bytes:
        self._requireApplications()
        settings = self._apps.get(name)
        if settings is None:
            raise HTTPError(404, MSG_NO_APP)
        return send_json(request, settings.asJSON())

    @app.route("/rest/v2/applications/settings/<string:name>", methods=["POST"])
    async def setSettings(self, request: IRequest, name: str) -> bytes:
        self._requireApplications()
        if name not in self._apps:
            raise HTTPError(404, MSG_NO_APP)
        body = read_json(request)
        try:
            # a field of the wrong type or out of range: JSONError, a 400
            settings, ignored = AppSettings.fromJSON(body)
            await self._apps.store(name, settings)
        except SettingsError as e:
            return send_json(request, result(False, str(e)))
        except KeyError:
            raise HTTPError(404, MSG_NO_APP)
        except SettingsUnavailable:
            raise self._settingsDown("app_settings")
        if ignored:
            named = ignored[:MAX_NAMED_FIELDS]
            more = len(ignored) - len(named)
            message = "Unknown settings ignored: " + ", ".join(named)
            if more:
                message += " and {} more".format(more)
            return send_json(request, result(True, message))
        return send_json(request, result(True))

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return self._metrics.render()

    # --- tokens -----------------------------------------------------------------

    def _mintArgs(self, request: IRequest, streamId: str, checkType: bool = True) -> tuple[str, int, Optional[str]]:
        type_ = _arg(request, "type")
        raw = _arg(request, "expireDate")
        expireDate: Optional[int]
        try:
            expireDate = (decimalText(raw, "expireDate", 0, MAX_EXPIRE_DATE)
                          if raw is not None else None)
        except JSONError:
            expireDate = None  # the reference message: "Define ... Expire Date"
        roomId = _arg(request, "roomId") or None
        try:
            check_mint_request(
                streamId, type_, expireDate, self._clock.seconds(), checkType, roomId
            )
        except RequestError as e:
            raise HTTPError(400, str(e))
        assert type_ is not None and expireDate is not None
        return type_, expireDate, roomId

    @app.route("/<string:appName>/rest/v2/broadcasts/<string:streamId>/token", methods=["GET"])
    async def mintToken(self, request: IRequest, appName: str, streamId: str) -> bytes:
        self._appSettings(request, appName)
        type_, expireDate, roomId = self._mintArgs(request, streamId)
        token = new_token(streamId, type_, expireDate, roomId)
        try:
            await self._store.add(StoredToken.fromToken(appName, token))
        except StoreUnavailable:
            self._metrics.store_errors.labels("add").inc()
            raise HTTPError(503, MSG_STORE_DOWN)
        self._metrics.minted.labels(appName, type_, "onetime").inc()
        return send_json(request, token.asJSON())

    @app.route("/<string:appName>/rest/v2/broadcasts/<string:streamId>/jwt-token", methods=["GET"])
    def mintJwt(self, request: IRequest, appName: str, streamId: str) -> bytes:
        settings = self._appSettings(request, appName)
        type_, expireDate, roomId = self._mintArgs(request, streamId)
        if settings.jwksURL:
            raise HTTPError(400, MSG_JWKS_MINT)
        if len(settings.jwtStreamSecretKey) < 32:
            raise HTTPError(400, MSG_NO_JWT_KEY)
        tokenId = mint_jwt(settings.jwtStreamSecretKey, streamId, type_, expireDate, roomId)
        self._metrics.minted.labels(appName, type_, "jwt").inc()
        return send_json(
            request,
            {"tokenId": tokenId, "streamId": streamId, "expireDate": expireDate,
             "type": type_, "roomId": roomId},
        )

    @app.route("/<string:appName>/rest/v2/broadcasts/validate-token", methods=["POST"])
    async def validateToken(self, request: IRequest, appName: str) -> bytes:
        """
        Validate a one-time token and, like the reference server, consume it.
        """
        self._appSettings(request, appName)
        body = requireObject(read_json(request), "Token")
        tokenId, streamId, type_ = body.get("tokenId"), body.get("streamId"), body.get("type")
        roomId = body.get("roomId") or None
        if not all(isinstance(v, str) and v for v in (tokenId, streamId, type_)) or (
            roomId is not None and not isinstance(roomId, str)
        ):
            return send_json(request, result(False, "Define tokenId, streamId and type"))
        assert isinstance(tokenId, str) and isinstance(streamId, str) and isinstance(type_, str)
        if len(tokenId) > MAX_TOKEN_LENGTH:
            return send_json(request, result(False))
        # No peer: the management caller is never throttled by the gate.
        creds = StreamCredentials(appName, streamId, type_, tokenId, "", "rest", roomId)
        outcome = await self._gate.validate(creds)
        if outcome is Outcome.UNAVAILABLE:
            self._metrics.store_errors.labels("redeem").inc()
            raise HTTPError(503, MSG_STORE_DOWN)
        return send_json(request, result(outcome is Outcome.GRANTED))

    @app.route("/<string:appName>/rest/v2/broadcasts/<string:streamId>/tokens", methods=["DELETE"])
    async def revokeTokens(self, request: IRequest, appName: str, streamId: str) -> bytes:
        """
        Delete every token of the stream and end the live sessions that
        tokens admitted.
        """
        self._appSettings(request, appName)
        # ends this node's sessions at once, then tells the other nodes
        # (never fails; a failure to tell them is counted and logged)
        revoking = self._revoker.revokeTokens(appName, streamId)
        try:
            deleted = await self._store.revokeStream(appName, streamId)
        except StoreUnavailable:
            await revoking
            self._metrics.store_errors.labels("revoke").inc()
            raise HTTPError(503, MSG_STORE_DOWN)
        kicked = await revoking
        self._metrics.revoked.labels(appName).inc(deleted)
        return send_json(
            request,
            result(
                deleted > 0 or kicked > 0,
                "{} tokens revoked, {} sessions ended".format(deleted, kicked),
                str(deleted),
            ),
        )

    @app.route(
        "/<string:appName>/rest/v2/broadcasts/<string:streamId>/tokens/list/<string:offset>/<string:size>",
        methods=["GET"],
    )
    async def listTokens(self, request: IRequest, appName: str, streamId: str,
                         offset: str, size: str) -> bytes:
        self._appSettings(request, appName)
        first, count = _page(offset, size)
        try:
            tokens = await self._store.listStream(appName, streamId, first, count)
        except StoreUnavailable:
            self._metrics.store_errors.labels("list").inc()
            raise HTTPError(503, MSG_STORE_DOWN)
        return send_json(request, [t.asListedJSON() for t in tokens])

    # --- broadcasts -----------------------------------------------------------------

    async def _clusterLive(self, app: str) -> dict[str, StreamLocation]:
        """
        The streams of C{app} live on other nodes, by stream id (none when
        the registry is out of reach: counted, and this node's view is
        answered).
        """
        if self._streams is None:
            return {}
        try:
            live = await self._streams.liveStreams(app)
        except RegistryUnavailable:
            self._metrics.store_errors.labels("cluster_list").inc()
            return {}
        local = self._streams.localNodeId
        return {sid: loc for sid, loc in live.items() if loc.nodeId != local}

    def _publishedHere(self, app: str, streamId: str) -> bool:
        """
        Whether this node publishes the stream (live here, not pulled from
        another node).
        """
        stream = self._hub.get(app, streamId)
        return stream is not None and stream.publishType != PULLED

    async def _clusterRecord(self, app: str, streamId: str
                             ) -> tuple[Optional[BroadcastRecord], Optional[str]]:
        """
        The stream's record and origin: this node's when it publishes it,
        else the node's that does (as the registry says), else this node's
        record of it (ended, or unknown) and no origin.
        """
        record = self._hub.record(app, streamId)
        if record is not None and record.status == "broadcasting" \
                and record.publishType != PULLED:
            return record, self._config.nodeAddress
        if self._streams is None:
            return record, None
        try:
            location = await self._streams.locate(app, streamId)
        except RegistryUnavailable:
            self._metrics.store_errors.labels("cluster_locate").inc()
            return record, None
        if location is None or location.nodeId == self._streams.localNodeId:
            return record, None
        return _remoteRecord(app, streamId, location), location.address

    def _broadcastJSON(self, app: str, streamId: str, record: Optional[BroadcastRecord],
                       registered: Optional[Broadcast],
                       origin: Optional[str] = None) -> dict[str, Any]:
        """
        A broadcast as the reference server shows it: what the registry keeps
        of it (when it was created through REST) merged with its live status
        (when it is or was published: the hub's, or the stream registry's
        for a stream live on another node) and the node that publishes it
        (C{originAdress}, Ant Media's spelling: its internal address).
        """
        viewers = record.viewers if record is not None else {}
        stream = self._hub.get(app, streamId)
        if origin is None and stream is not None:
            origin = self._config.nodeAddress
        startTime = record.startTime if record is not None else 0
        return {
            "streamId": streamId,
            "status": record.status if record is not None else "created",
            "type": "liveStream",
            "name": registered.name if registered is not None else streamId,
            "description": registered.description if registered is not None else "",
            "publishType": record.publishType if record is not None else None,
            "date": registered.date if registered is not None else startTime,
            "startTime": startTime,
            "endTime": record.endTime if record is not None else 0,
            "hlsViewerCount": viewers.get("hls", 0),
            "dashViewerCount": viewers.get("dash", 0),
            "webRTCViewerCount": viewers.get("webrtc", 0),
            "rtmpViewerCount": viewers.get("rtmp", 0),
            "receivedBytes": stream.bytesIn if stream is not None else 0,
            "originAdress": origin,
        }

    def _settingsDown(self, operation: str) -> HTTPError:
        self._metrics.store_errors.labels(operation).inc()
        return HTTPError(503, MSG_SETTINGS_DOWN)

    def _registryDown(self, operation: str) -> HTTPError:
        self._metrics.store_errors.labels(operation).inc()
        return HTTPError(503, MSG_REGISTRY_DOWN)

    @app.route("/<string:appName>/rest/v2/broadcasts/<string:streamId>", methods=["GET"])
    async def getBroadcast(self, request: IRequest, appName: str, streamId: str) -> bytes:
        self._appSettings(request, appName)
        record, origin = await self._clusterRecord(appName, streamId)
        try:
            registered = await self._broadcasts.get(appName, streamId)
        except StoreUnavailable:
            raise self._registryDown("broadcast_get")
        if record is None and registered is None:
            raise HTTPError(404, MSG_NO_BROADCAST)
        return send_json(request, self._broadcastJSON(appName, streamId, record, registered,
                                                      origin))

    @app.route("/<string:appName>/rest/v2/broadcasts/list/<string:offset>/<string:size>",
               methods=["GET"])
    async def listBroadcasts(self, request: IRequest, appName: str, offset: str,
                             size: str) -> bytes:
        """
        The broadcasts created through REST, in creation order, then the
        streams published without being created (live here, live on other
        nodes, then recently ended here), one page of the two.
        """
        self._appSettings(request, appName)
        first, count = _page(offset, size)
        remote = await self._clusterLive(appName)

        def recordOf(streamId: str) -> tuple[Optional[BroadcastRecord], Optional[str]]:
            record = self._hub.record(appName, streamId)
            if not self._publishedHere(appName, streamId) and streamId in remote:
                location = remote[streamId]
                return _remoteRecord(appName, streamId, location), location.address
            return record, None

        try:
            total = await self._broadcasts.count(appName)
            registered = (await self._broadcasts.list(appName, first, count)
                          if first < total and count else [])
            page = [self._broadcastJSON(appName, b.streamId, *_withBroadcast(
                        recordOf(b.streamId), b)) for b in registered]
            rest = count - len(page)
            if rest > 0:
                records = self._hub.records(appName)
                # a stream pulled from its origin is listed as the origin's
                live = [r for r in records if r.status == "broadcasting"
                        and (r.publishType != PULLED or r.streamId not in remote)]
                ended = [r for r in records if r.status != "broadcasting"]
                elsewhere = [_remoteRecord(appName, sid, remote[sid]) for sid in sorted(remote)
                             if not self._publishedHere(appName, sid)]
                records = live + elsewhere + [r for r in ended if r.streamId not in remote]
                known = await self._broadcasts.registered(
                    appName, [r.streamId for r in records])
                unregistered = [r for r in records if r.streamId not in known]
                skip = max(0, first - total)
                page += [self._broadcastJSON(appName, r.streamId, r, None,
                                             remote[r.streamId].address
                                             if r.streamId in remote
                                             and not self._publishedHere(appName, r.streamId)
                                             else None)
                         for r in unregistered[skip:skip + rest]]
        except StoreUnavailable:
            raise self._registryDown("broadcast_list")
        return send_json(request, page)

    @app.route("/<string:appName>/rest/v2/broadcasts/create", methods=["POST"])
    async def createBroadcast(self, request: IRequest, appName: str) -> bytes:
        """
        Register a broadcast ahead of its publication (status C{created}),
        in the broadcast registry: it survives a restart, and it is what
        C{acceptOnlyStreamsInDataStore} admits.  Kept of the body:
        C{streamId} (a random one when absent or empty), C{name},
        C{description}; other fields are ignored.
        """
        self._appSettings(request, appName)
        body = requireObject(
            read_json(request) if request.getHeader(b"content-length") not in (None, b"0") else {},
            "Broadcast")
        streamId = body.get("streamId")
        if isinstance(streamId, str):
            streamId = streamId.strip()
        streamId = streamId or secrets.token_hex(8)
        if not isinstance(streamId, str) or not isValidStreamId(streamId):
            raise HTTPError(400, MSG_BAD_STREAM_ID)
        name = body.get("name")
        name = stringValue(name, "name", MAX_NAME) if name is not None else ""
        description = body.get("description")
        description = (stringValue(description, "description", MAX_DESCRIPTION)
                       if description is not None else "")
        broadcast = Broadcast(appName, streamId, name or streamId, description,
                              int(self._clock.seconds() * 1000))
        try:
            await self._broadcasts.create(broadcast)
        except BroadcastExists:
            raise HTTPError(400, MSG_BROADCAST_EXISTS)
        except TooManyBroadcasts as e:
            self._metrics.http_refusals.labels("broadcast_limit").inc()
            raise HTTPError(400, MSG_TOO_MANY_BROADCASTS.format(e.limit))
        except StoreUnavailable:
            raise self._registryDown("broadcast_create")
        record = self._hub.record(appName, streamId)
        return send_json(request, self._broadcastJSON(appName, streamId, record, broadcast))

    @app.route("/<string:appName>/rest/v2/broadcasts/<string:streamId>", methods=["DELETE"])
    async def deleteBroadcast(self, request: IRequest, appName: str, streamId: str) -> bytes:
        """
        Delete a broadcast: forget it in the registry and the hub, and stop
        it when it is live (its publisher is kicked).  Ant Media's answers:
        C{success} false when there was no such broadcast.
        """
        self._appSettings(request, appName)
        try:
            registered = await self._broadcasts.delete(appName, streamId)
        except StoreUnavailable:
            raise self._registryDown("broadcast_delete")
        # its publishers end on every node of a cluster
        stopped = await self._revoker.stopPublishers(appName, streamId)
        forgotten = self._hub.discard(appName, streamId)
        if not (registered or stopped or forgotten):
            return send_json(request, result(False))
        return send_json(request, result(True, MSG_DELETED_STOPPED if stopped
                                         else MSG_DELETED_NOT_STOPPED))

    @app.route("/<string:appName>/rest/v2/broadcasts/<string:streamId>/sessions", methods=["DELETE"])
    async def revokeSessions(self, request: IRequest, appName: str, streamId: str) -> bytes:
        """
        End every viewing session of the stream, whatever admitted it: RTMP
        and WebRTC players are disconnected, and the next HLS, DASH or MP4
        request of any session started before now is refused; on every node
        of a cluster on Redis (see L{tokengate.access.revocation}).
        """
        self._appSettings(request, appName)
        kicked = await self._revoker.revokeSessions(appName, streamId)
        return send_json(request, result(True, "{} sessions ended".format(kicked), str(kicked)))


    # --- TOTP subscribers -------------------------------------------------------------

    def _subscriberPath(self, request: IRequest, appName: str, streamId: str,
                        subscriberId: Optional[str] = None) -> AppSettings:
        """
        Protect as every per-application call, then check the path's
        stream and subscriber ids (a 400 naming them).
        """
        settings = self._appSettings(request, appName)
        if not isValidStreamId(streamId):
            raise HTTPError(400, MSG_BAD_STREAM_ID)
        if subscriberId is not None and not isValidSubscriberId(subscriberId):
            raise HTTPError(400, MSG_BAD_SUBSCRIBER_ID)
        return settings

    async def _subscriberCall(self, what: str, d: "Deferred[T]") -> T:
        """
        The subscriber store's answer, or a 503 when it cannot answer
        (logged and counted, never its details).
        """
        try:
            return await d
        except Exception:
            self._log.failure("the subscriber store failed to {what}", what=what)
            self._metrics.store_errors.labels("subscribers_" + what).inc()
            raise HTTPError(503, MSG_SUBSCRIBERS_DOWN)

    @app.route("/<string:appName>/rest/v2/broadcasts/<string:streamId>/subscribers",
               methods=["POST"])
    async def addSubscriber(self, request: IRequest, appName: str, streamId: str) -> bytes:
        """
        Record a subscriber of the stream (Ant Media's C{Subscriber} JSON);
        its C{b32Secret} is never shown again.
        """
        settings = self._subscriberPath(request, appName, streamId)
        body = read_json(request)
        try:
            subscriber = subscriberFromJSON(body, streamId, settings.timeTokenPeriod)
        except JSONError as e:
            # Ant Media answers its checks of a subscriber as a Result
            return send_json(request, result(False, str(e)))
        added = await self._subscriberCall(
            "add", self._subscribers.addSubscriber(appName, subscriber))
        return send_json(request, result(added, "" if added else "Too many subscribers"))

    @app.route("/<string:appName>/rest/v2/broadcasts/<string:streamId>/subscribers/list/"
               "<string:offset>/<string:size>", methods=["GET"])
    async def listSubscribers(self, request: IRequest, appName: str, streamId: str,
                              offset: str, size: str) -> bytes:
        self._subscriberPath(request, appName, streamId)
        first, count = _page(offset, size)
        records = await self._subscriberCall(
            "list", self._subscribers.listSubscribers(appName, streamId, first, count))
        return send_json(request, [r.toJSON() for r in records])

    @app.route("/<string:appName>/rest/v2/broadcasts/<string:streamId>/subscribers/"
               "<string:subscriberId>/totp", methods=["GET"])
    async def subscriberCode(self, request: IRequest, appName: str, streamId: str,
                             subscriberId: str) -> bytes:
        """
        The subscriber's current code, in C{dataId}: from its own
        C{b32Secret} and period when it has one, else derived from the
        application's secret for C{?type=} and C{timeTokenPeriod} (the key
        and period the check uses).
        """
        settings = self._subscriberPath(request, appName, streamId, subscriberId)
        type_ = _arg(request, "type")
        record = await self._subscriberCall(
            "get", self._subscribers.getSubscriber(appName, streamId, subscriberId))
        if record is None:
            record = Subscriber(subscriberId=subscriberId, streamId=streamId, type=None)
        if not record.b32Secret:
            if type_ not in TYPES:
                return send_json(request, result(False, "type must be publish or play"))
            assert type_ is not None
            if not settings.timeTokenSecret(type_):
                return send_json(request, result(False, MSG_NO_TIME_SECRET))
        try:
            key = record.key(settings.timeTokenSecret(type_ or PUBLISH), type_ or PUBLISH)
        except SecretError:
            return send_json(request, result(False, MSG_NO_TIME_SECRET))
        code = totpAt(key, self._clock.seconds(), record.period(settings.timeTokenPeriod))
        return send_json(request, result(True, "", code))

    @app.route("/<string:appName>/rest/v2/broadcasts/<string:streamId>/subscribers/"
               "<string:subscriberId>", methods=["DELETE"])
    async def deleteSubscriber(self, request: IRequest, appName: str, streamId: str,
                               subscriberId: str) -> bytes:
        self._subscriberPath(request, appName, streamId, subscriberId)
        found = await self._subscriberCall(
            "delete", self._subscribers.deleteSubscriber(appName, streamId, subscriberId))
        return send_json(request, result(found))

    @app.route("/<string:appName>/rest/v2/broadcasts/<string:streamId>/subscribers",
               methods=["DELETE"])
    async def revokeSubscribers(self, request: IRequest, appName: str, streamId: str) -> bytes:
        self._subscriberPath(request, appName, streamId)
        revoked = await self._subscriberCall(
            "revoke", self._subscribers.revokeSubscribers(appName, streamId))
        # as Ant Media: success when subscribers or connection events went
        return send_json(request, result(bool(revoked), "", str(revoked.subscribers)))

    @app.route("/<string:appName>/rest/v2/broadcasts/<string:streamId>/subscribers/"
               "<string:subscriberId>/block/<string:seconds>/<string:blockType>",
               methods=["PUT"])
    async def blockSubscriber(self, request: IRequest, appName: str, streamId: str,
                              subscriberId: str, seconds: str, blockType: str) -> bytes:
        """
        Block the subscriber for C{seconds} from now (0 unblocks) for
        C{publish}, C{play} or C{publish_play}, and end at once its live
        sessions of that stream and type, on this node and (through the
        revocation service) on the other nodes of a cluster.
        """
        self._subscriberPath(request, appName, streamId, subscriberId)
        duration = decimalText(seconds, "seconds", 0, MAX_BLOCK_SECONDS)
        if blockType not in BLOCK_TYPES:
            raise HTTPError(400, "block type must be publish, play or publish_play")
        blocked = await self._subscriberCall("block", self._subscribers.blockSubscriber(
            appName, streamId, subscriberId, blockType, duration))
        if not blocked:
            return send_json(request, result(False, "Too many subscribers"))
        kicked = 0
        if duration > 0:
            # here at once, then on the other nodes of a cluster (never fails)
            action = None if blockType == PUBLISH_AND_PLAY else blockType
            kicked = await self._revoker.blockSubscriber(appName, streamId, subscriberId, action)
        return send_json(request, result(True, "", str(kicked)))

    @app.route("/<string:appName>/rest/v2/broadcasts/<string:streamId>/connection-events/"
               "<string:offset>/<string:size>", methods=["GET"])
    async def connectionEvents(self, request: IRequest, appName: str, streamId: str,
                               offset: str, size: str) -> bytes:
        """
        The stream's subscribers' C{connected} and C{disconnected} events,
        oldest first; C{?subscriberId=} keeps one subscriber's.
        """
        self._subscriberPath(request, appName, streamId)
        first, count = _page(offset, size)
        subscriberId = _arg(request, "subscriberId")
        if subscriberId:
            # at most MAX_EVENTS_PER_STREAM are kept: filter them all, then page
            events = await self._subscriberCall("events", self._subscribers.connectionEvents(
                appName, streamId, 0, MAX_EVENTS_PER_STREAM))
            page: Sequence[ConnectionEvent] = [
                e for e in events if e.subscriberId == subscriberId][first:first + count]
        else:
            page = await self._subscriberCall("events", self._subscribers.connectionEvents(
                appName, streamId, first, count))
        return send_json(request, [e.toJSON() for e in page])


def _remoteRecord(app: str, streamId: str, location: StreamLocation) -> BroadcastRecord:
    """
    The record of a stream live on another node (its viewers are counted
    where they play).
    """
    return BroadcastRecord(app, streamId, "broadcasting", location.publishType,
                           int(location.started * 1000), 0, {})


def _withBroadcast(found: tuple[Optional[BroadcastRecord], Optional[str]],
                   broadcast: Broadcast
                   ) -> tuple[Optional[BroadcastRecord], Broadcast, Optional[str]]:
    return found[0], broadcast, found[1]


#: the last path segment of each call L{RestAPI.directRoute} recognizes,
#: and its method
_DIRECT = {b"token": "mintToken", b"jwt-token": "mintJwt"}


class RestGuard(Resource):
    """
    The REST API's front: every request is protected (L{RestAPI.protect})
    before Klein routes it, so no route can forget it.  A route of one
    application names it C{appName} (its protection is that
    application's); every other request gets the server's.  The token
    mints are routed here directly (L{RestAPI.directRoute}), answered as
    Klein would.
    """

    isLeaf = True

    def __init__(self, api: RestAPI, routes: Any) -> None:
        super().__init__()
        self._api = api
        self._routes = routes

    def render(self, request: IRequest) -> Any:
        gone: list[object] = []
        direct = self._api.directRoute(request)
        try:
            jwt = self._api.screen(request, direct[0] if direct is not None else None)
        except Exception:
            self._refused(Failure(), request, gone)
            return NOT_DONE_YET
        if direct is not None or jwt is not None:
            # IRequest does not declare it; every twisted.web Request has it
            request.notifyFinish().addBoth(gone.append)  # type: ignore[attr-defined]
        call = direct[1] if direct is not None else None
        if jwt is None:
            # decided without waiting (no JWT to check): route at once
            self._allowed(None, request, gone, call)
            return NOT_DONE_YET
        d = Deferred.fromCoroutine(self._api._checkJwt(request, *jwt))
        d.addCallbacks(self._allowed, self._refused, callbackArgs=(request, gone, call),
                       errbackArgs=(request, gone))
        return NOT_DONE_YET

    def _allowed(self, _: None, request: IRequest, gone: list[object],
                 call: Optional[Callable[[], Any]] = None) -> None:
        if gone:
            return  # the client left while its JWT was checked
        if call is not None:
            d = maybeDeferred(call)
            d.addCallbacks(self._answer, self._failed, callbackArgs=(request, gone),
                           errbackArgs=(request, gone))
            return
        body = self._routes.render(request)
        if body is not NOT_DONE_YET:
            request.write(body)
            request.finish()

    def _answer(self, body: bytes, request: IRequest, gone: list[object]) -> None:
        if gone:
            return  # the client left while it was answered
        request.write(body)
        request.finish()

    def _failed(self, failure: Failure, request: IRequest, gone: list[object]) -> None:
        if gone:
            return
        body = self._api.failed(request, failure)
        if body is None:
            self._api._log.failure("a REST call failed", failure)
            body = send_json(request, result(False, "Internal error"), 500)
        request.write(body)
        request.finish()

    def _refused(self, failure: Failure, request: IRequest, gone: list[object]) -> None:
        if gone:
            return
        e = failure.value
        if isinstance(e, HTTPError):
            request.write(send_json(request, result(False, e.message), e.code))
        else:
            self._api._log.failure("protecting a REST call failed", failure)
            request.write(send_json(request, result(False, "Internal error"), 500))
        request.finish()
