# -*- test-case-name: tests.test_access_service -*-
"""
The access service: the one door every protocol's publish and play go
through.

An adapter (RTMP, SRT, WebSocket/WebRTC, HTTP playback) translates a wire
request into an L{AccessRequest} and calls L{AccessService.publish} or
L{AccessService.play} with itself as the I{mind} (an
L{tokengate.access.sessions.IKickable}: how the server ends the session).  The service
alone:

 1. checks what keeps a token, before any redemption: the stream id's
    grammar (L{tokengate.access.names}), the application, the switch of the
    protocol (C{webRTCEnabled}, C{rtmpPlaybackEnabled}, C{hlsMuxingEnabled},
    C{dashMuxingEnabled}), whether the stream is taken (publish), live
    (play) or recorded (MP4);
 2. logs in through the L{tokengate.auth.Gate} (throttle, then the checks
    of step 1 again after any throttle wait, then the token the application
    demands, redeemed once);
 3. attaches the session to the hub: a publish claims its stream (nobody
    else may publish it; L{Publication.start} makes it live), a play gets
    the live stream;
 4. counts and logs every refusal.

Between steps 1 and 2 (after the throttle, before the token is looked at)
run the application's security policies (L{IAccessPolicy}, in the order the
composition root gives them: publisher address, datastore, subscriber,
webhook...): each admits, refuses with an outcome, or admits holding
something (a subscriber's lease) that the session keeps until it ends.  A
refusal there keeps the token.

It answers with a L{Publication} or a L{Viewing} (the grant and the stream
attachment) or fails with one L{Refused} carrying an L{Outcome}; the adapter
turns the outcome into its protocol's refusal (see the table in
C{docs/development.md}).  Nothing else of the settings, the store or the hub
is the adapters' business.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Protocol, Sequence

from attrs import define, evolve, field, frozen
from twisted.internet.defer import Deferred

from tokengate.access.names import MAX_STREAM_ID, isValidStreamId
from tokengate.access.sessions import Grant
from tokengate.apps import AppSettings, ISettingsLookup
from tokengate.auth import Gate, IStreamCredentials, Refused, StreamCredentials, attemptOf
from tokengate.logsafe import Logger
from tokengate.media.hub import Claim, Hub, LiveStream, StreamInUse
from tokengate.tokens import PLAY, PUBLISH, Outcome

#: the protocols that publish, and the hub's name for each (WHIP is WebRTC
#: signalled over HTTP: its streams are WebRTC streams)
PUBLISH_TYPES = {"rtmp": "RTMP", "srt": "SRT", "webrtc": "WebRTC", "whip": "WebRTC"}

#: the protocols that play
PLAY_PROTOCOLS = frozenset({"rtmp", "webrtc", "whep", "hls", "dash", "vod"})

#: the protocols whose media is WebRTC (the WebSocket signalling, WHIP and
#: WHEP): the application's C{webRTCEnabled} switches them all
WEBRTC_PROTOCOLS = frozenset({"webrtc", "whip", "whep"})


#: a request with more parameters than this (L{AccessRequest.params}) is
#: refused as C{invalid}
MAX_PARAMS = 32

#: the longest subscriber id, TOTP code and parameters (names and values
#: together) a request may carry: beyond, it is refused as C{invalid} before
#: anything is looked at, as an over-long token is (a valid subscriber id
#: has at most 128 characters, a code 6 digits; judging them is the
#: subscriber policy's business)
MAX_SUBSCRIBER_ID = 256
MAX_SUBSCRIBER_CODE = 64
MAX_PARAMS_CHARS = 8192


def _params(pairs: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple(pairs)


@frozen
class AccessRequest:
    """
    A publish or play of one stream, as any protocol asks it.

    @ivar app: the application's name.
    @ivar streamId: the stream's name.
    @ivar action: L{PUBLISH} or L{PLAY}.
    @ivar protocol: C{rtmp}, C{srt}, C{webrtc}, C{whip}, C{whep}, C{hls},
        C{dash} or C{vod}.
    @ivar peer: the client's address (host), for throttling and logs.
    @ivar token: the token presented (one-time or JWT), or None.
    @ivar roomId: the conference room named by the request, or None.
    @ivar deadline: the clock's time by which the client must have its
        answer (an SRT caller's connect timeout), or None.
    @ivar subscriberId: the TOTP subscriber the request names, or None.
    @ivar subscriberCode: the subscriber's TOTP code, or None.
    @ivar params: the request's other parameters, as (name, value) pairs in
        the order the client sent them (the query of a URL, an RTMP
        C{?...}): what an authorization webhook is told (C{queryParams}).
        More than L{MAX_PARAMS}, or more than L{MAX_PARAMS_CHARS}
        characters, and L{AccessService.check} refuses the request.
    """

    app: str
    streamId: str
    action: str
    protocol: str
    peer: str = ""
    token: Optional[str] = field(default=None, repr=False)
    roomId: Optional[str] = None
    deadline: Optional[float] = None
    subscriberId: Optional[str] = None
    subscriberCode: Optional[str] = field(default=None, repr=False)
    params: tuple[tuple[str, str], ...] = field(default=(), repr=False, converter=_params)

    def credentials(self) -> StreamCredentials:
        """
        The gate's credentials for this request.
        """
        return StreamCredentials(self.app, self.streamId, self.action, self.token or None,
                                 self.peer, self.protocol, self.roomId or None,
                                 self.subscriberId or None, self.subscriberCode or None)

#: what an admitted session holds until it ends (L{IAccessPolicy.admit})
Release = Callable[[], None]


class IAccessPolicy(Protocol):
    """
    One security mechanism of an application (publisher address filter,
    datastore-only streams, TOTP subscribers, authorization webhook...),
    asked after the throttle and before the token is redeemed.

    @ivar mechanism: its name, for logs and docs.
    """

    mechanism: str

    def applies(self, settings: AppSettings, action: str) -> bool:
        """
        Whether C{settings} turn this policy on for C{action}: an HTTP play
        of an application without play tokens opens a session (is admitted)
        only when some policy applies to play (L{AccessService.admissionRequired}).
        """

    async def admit(self, request: AccessRequest, settings: AppSettings) -> Optional[Release]:
        """
        Admit C{request} under C{settings} (return None, or what the session
        must release when it ends), or raise L{Refused} with the outcome.
        A policy the application does not turn on admits at once.
        """


RecordingLookup = Callable[[str, str], bool]


class IRemoteStreams(Protocol):
    """
    Streams live on other nodes of a cluster (the edge puller,
    L{tokengate.cluster.pull.EdgePuller}).
    """

    def pull(self, app: str, streamId: str) -> "Deferred[bool]":
        """
        Make C{app}/C{streamId} live in this node's hub by pulling it from
        the node that holds it: fires True once it is live here, False when
        it cannot be (in a bounded time); never fails.
        """


class IAccess(Protocol):
    """
    What a protocol adapter may ask of the access service.
    """

    def knowsApplication(self, app: str) -> bool:
        """
        Whether C{app} names an application.
        """

    def tokenKind(self, app: str, action: str) -> Optional[str]:
        """
        C{"onetime"}, C{"jwt"} or None: what C{app} demands for C{action}.
        """

    def admissionRequired(self, app: str, action: str) -> bool:
        """
        Whether C{app} admits C{action} (a token, or a security policy that
        applies): when not, HTTP delivery needs no session.
        """

    def check(self, request: "AccessRequest") -> Optional[Outcome]:
        """
        The checks that keep a token: None, or the refusal's outcome.
        """

    def ready(self, request: "AccessRequest") -> "Deferred[Optional[Outcome]]":
        """
        L{check}, once a live stream that is live on another node has been
        pulled here (bounded); for delivery without admission.
        """

    def refuse(self, request: "AccessRequest", outcome: Outcome,
               attempt: Optional[bytes] = None) -> None:
        """
        Count and log a refusal the adapter decided.
        """

    def publish(self, request: "AccessRequest", mind: Any) -> "Deferred[Publication]":
        """
        Admit a publisher, or fail with L{Refused}.
        """

    def play(self, request: "AccessRequest", mind: Any) -> "Deferred[Viewing]":
        """
        Admit a player, or fail with L{Refused}.
        """


@define(eq=False)
class Publication:
    """
    An admitted publisher: its grant, and its stream claimed on the hub
    until L{start} makes it live.

    @ivar stream: the live stream once started, else None.
    """

    request: AccessRequest
    grant: Grant
    _claim: Claim = field(repr=False)
    _hub: Hub = field(repr=False)
    stream: Optional[LiveStream] = None
    ended: bool = False

    def start(self) -> LiveStream:
        """
        Make the stream live (RTMP and WebRTC at once, SRT at its first
        media packet).

        @raise StreamInUse: the claim was lost meanwhile (the application
            was deleted); the publication has ended.
        """
        if self.stream is not None:
            return self.stream
        if self.ended:
            raise StreamInUse(self.request.streamId)
        try:
            self.stream = self._hub.publish(self.request.app, self.request.streamId,
                                            PUBLISH_TYPES[self.request.protocol],
                                            claim=self._claim)
        except StreamInUse:
            self.end()
            raise
        return self.stream

    def end(self) -> None:
        """
        The publisher is gone: end the stream (or give up the claim) and the
        grant.  Idempotent.
        """
        if self.ended:
            return
        self.ended = True
        if self.stream is not None:
            self.stream.end()
        else:
            self._claim.release()
        self.grant.logout()


@define(eq=False)
class Viewing:
    """
    An admitted player: its grant and the live stream it plays (None for
    an MP4 recording).
    """

    request: AccessRequest
    grant: Grant
    stream: Optional[LiveStream] = None
    ended: bool = False

    def end(self) -> None:
        """
        The player is gone: end the grant.  Idempotent.  (Unsubscribing from
        the stream is the adapter's business: it subscribed.)
        """
        if not self.ended:
            self.ended = True
            self.grant.logout()


class AccessService:
    """
    The one door.  See the module's docstring.
    """

    _log = Logger()

    def __init__(self, apps: ISettingsLookup, gate: Gate, hub: Hub,
                 hasRecording: Optional[RecordingLookup] = None,
                 policies: Sequence[IAccessPolicy] = (),
                 remote: Optional[IRemoteStreams] = None) -> None:
        """
        @param apps: the applications' settings.
        @param gate: logs in (throttle, token) and counts.
        @param hub: the live streams.
        @param hasRecording: whether an MP4 recording of C{(app, streamId)}
            exists (MP4 plays need one); None: no recordings.
        @param policies: the security policies, asked in this order.
        @param remote: streams live on other nodes: a live play of a stream
            not live here is pulled from its node before the token is
            looked at (None: a single node).
        """
        self._apps = apps
        self._gate = gate
        self._hub = hub
        self._hasRecording = hasRecording
        self._policies = tuple(policies)
        self._remote = remote

    # --- what adapters ask before a request -------------------------------

    def knowsApplication(self, app: str) -> bool:
        """
        Whether C{app} names an application (RTMP asks at C{connect}).
        """
        return self._apps.get(app) is not None

    def tokenKind(self, app: str, action: str) -> Optional[str]:
        """
        Which token C{app} demands for C{action}: C{"onetime"}, C{"jwt"},
        or None when it has no token control (or is unknown).
        """
        settings = self._apps.get(app)
        return settings.tokenKind(action) if settings is not None else None

    def admissionRequired(self, app: str, action: str) -> bool:
        """
        Whether C{app} demands a token for C{action} or has a security
        policy that applies to it (unknown applications: True, so that the
        request goes on to be refused).  HTTP delivery asks: without either,
        an application's streams are served without a session.
        """
        settings = self._apps.get(app)
        if settings is None:
            return True
        if settings.tokenKind(action) is not None:
            return True
        return any(policy.applies(settings, action) for policy in self._policies)

    def check(self, request: AccessRequest) -> Optional[Outcome]:
        """
        The checks that keep a token, decided now: None when the request may
        go on to redemption, else the refusal's outcome (not counted: see
        L{refuse}).  In order: the stream id's grammar, the application, the
        protocol's switch, then whether the stream is taken (publish), live
        (play) or recorded (MP4 play).  Before all, a subscriber id, code
        or parameters longer than any a client needs (L{MAX_SUBSCRIBER_ID},
        L{MAX_SUBSCRIBER_CODE}, L{MAX_PARAMS}, L{MAX_PARAMS_CHARS}) are
        C{invalid}.
        """
        if not _bounded(request):
            return Outcome.INVALID
        if not isValidStreamId(request.streamId):
            return Outcome.INVALID
        settings = self._apps.get(request.app)
        if settings is None:
            return Outcome.NO_APP
        if request.action == PUBLISH:
            if request.protocol not in PUBLISH_TYPES:
                return Outcome.INVALID
        elif request.action == PLAY:
            if request.protocol not in PLAY_PROTOCOLS:
                return Outcome.INVALID
        else:
            return Outcome.INVALID
        if not _enabled(settings, request.protocol, request.action):
            return Outcome.DISABLED
        if request.action == PUBLISH:
            return Outcome.IN_USE if self._hub.isTaken(request.app, request.streamId) else None
        if request.protocol == "vod":
            found = self._hasRecording is not None and self._hasRecording(
                request.app, request.streamId)
            return None if found else Outcome.NOT_LIVE
        return None if self._hub.isLive(request.app, request.streamId) else Outcome.NOT_LIVE

    def refuse(self, request: AccessRequest, outcome: Outcome,
               attempt: Optional[bytes] = None) -> None:
        """
        Count and log a refusal an adapter decided by itself (a request it
        could not parse, say) or after L{check}.  C{attempt} identifies what
        was tried, for the throttle (see L{tokengate.auth.Gate.refused}).
        """
        creds = request.credentials()
        if len(creds.streamId) > MAX_STREAM_ID:
            # a name too long to be one, cut for the log (the throttle's
            # attempt is what the client sent)
            if attempt is None:
                attempt = attemptOf(creds)
            creds = evolve(creds, streamId=creds.streamId[:MAX_STREAM_ID])
        self._gate.refused(creds, outcome, attempt)

    # --- admission ----------------------------------------------------------

    def publish(self, request: AccessRequest, mind: Any) -> "Deferred[Publication]":
        """
        Admit a publisher: fires with a L{Publication} whose stream is
        claimed, or fails with L{Refused}.
        """
        return Deferred.fromCoroutine(self._publish(request, mind))

    def play(self, request: AccessRequest, mind: Any) -> "Deferred[Viewing]":
        """
        Admit a player: fires with a L{Viewing} of the live stream (or of a
        recording, for C{vod}), or fails with L{Refused}.
        """
        return Deferred.fromCoroutine(self._play(request, mind))

    async def _login(self, request: AccessRequest, mind: Any, action: str) -> Grant:
        outcome: Optional[Outcome]
        if request.action != action:
            outcome = Outcome.INVALID
        else:
            outcome = await self._checkPulling(request)
        if outcome is not None:
            self.refuse(request, outcome)
            raise Refused(outcome)
        holds: list[Release] = []

        async def precheck(creds: IStreamCredentials) -> Optional[Outcome]:
            return await self._admissible(request, holds)

        try:
            grant: Grant = await self._gate.login(request.credentials(), mind,
                                                  deadline=request.deadline,
                                                  precheck=precheck)
        except BaseException:
            _releaseAll(holds)
            raise
        for release in holds:
            grant.hold(release)
        return grant

    async def _checkPulling(self, request: AccessRequest) -> Optional[Outcome]:
        """
        L{check}; a live play of a stream that is not live here but on
        another node of the cluster waits (bounded) for this node to pull
        it, then is checked again.  Nothing has been redeemed yet.
        """
        outcome = self.check(request)
        if (outcome is Outcome.NOT_LIVE and self._remote is not None
                and request.action == PLAY and request.protocol != "vod"):
            if await self._remote.pull(request.app, request.streamId):
                outcome = self.check(request)
        return outcome

    def ready(self, request: AccessRequest) -> "Deferred[Optional[Outcome]]":
        """
        L{check}, after pulling a live stream that is live on another node
        of the cluster (bounded): for HTTP delivery without admission,
        which opens no session.  Not counted (see L{refuse}).
        """
        return Deferred.fromCoroutine(self._checkPulling(request))

    async def _admissible(self, request: AccessRequest, holds: list[Release]
                          ) -> Optional[Outcome]:
        """
        After the throttle's wait: L{check} again (the stream may have been
        taken or ended meanwhile), then each policy, then L{check} once more
        (a policy may have waited); what the policies hold is appended to
        C{holds}.
        """
        outcome = self.check(request)
        if outcome is not None:
            return outcome
        settings = self._apps.get(request.app)
        if settings is None:
            return Outcome.NO_APP
        for policy in self._policies:
            try:
                release = await policy.admit(request, settings)
            except Refused as e:
                return e.outcome
            if release is not None:
                holds.append(release)
        if self._policies:
            # a policy may have waited (a webhook): the stream may have been
            # taken or ended meanwhile
            return self.check(request)
        return None

    async def _publish(self, request: AccessRequest, mind: Any) -> Publication:
        grant = await self._login(request, mind, PUBLISH)
        try:
            claim = self._hub.claim(request.app, request.streamId)
        except StreamInUse:
            # lost a race with another publisher during the redemption
            grant.logout()
            self.refuse(request, Outcome.IN_USE)
            raise Refused(Outcome.IN_USE)
        return Publication(request, grant, claim, self._hub)

    async def _play(self, request: AccessRequest, mind: Any) -> Viewing:
        grant = await self._login(request, mind, PLAY)
        if request.protocol == "vod":
            return Viewing(request, grant, None)
        stream = self._hub.get(request.app, request.streamId)
        if stream is None:
            # the stream ended during the redemption
            grant.logout()
            self.refuse(request, Outcome.NOT_LIVE)
            raise Refused(Outcome.NOT_LIVE)
        return Viewing(request, grant, stream)


def _releaseAll(holds: list[Release]) -> None:
    """
    Release what policies took for an admission that failed.
    """
    for release in holds:
        try:
            release()
        except Exception:
            AccessService._log.failure("releasing what a refused admission held failed")
    holds.clear()


def _bounded(request: AccessRequest) -> bool:
    """
    Whether the request's subscriber id, code and parameters are within
    their bounds.
    """
    if request.subscriberId is not None and len(request.subscriberId) > MAX_SUBSCRIBER_ID:
        return False
    if request.subscriberCode is not None and len(request.subscriberCode) > MAX_SUBSCRIBER_CODE:
        return False
    if len(request.params) > MAX_PARAMS:
        return False
    size = 0
    for name, value in request.params:
        size += len(name) + len(value)
        if size > MAX_PARAMS_CHARS:
            return False
    return True


def _enabled(settings: AppSettings, protocol: str, action: str) -> bool:
    """
    Whether the application's switches let C{protocol} do C{action}.
    """
    if protocol in WEBRTC_PROTOCOLS:
        return settings.webRTCEnabled
    if action == PLAY:
        if protocol == "rtmp":
            return settings.rtmpPlaybackEnabled
        if protocol == "hls":
            return settings.hlsMuxingEnabled
        if protocol == "dash":
            return settings.dashMuxingEnabled
    return True


__all__ = ["AccessRequest", "AccessService", "IAccess", "IAccessPolicy", "IRemoteStreams",
           "Release", "MAX_PARAMS",
           "MAX_PARAMS_CHARS", "MAX_SUBSCRIBER_CODE", "MAX_SUBSCRIBER_ID",
           "Publication", "Viewing", "Refused",
           "ISettingsLookup", "PUBLISH_TYPES", "PLAY_PROTOCOLS", "WEBRTC_PROTOCOLS"]
