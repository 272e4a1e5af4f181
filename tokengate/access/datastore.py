# -*- test-case-name: tests.test_access_datastore -*-
"""
Ant Media's C{acceptOnlyStreamsInDataStore} and C{acceptOnlyRoomsInDataStore}:
only broadcasts created through REST (the broadcast registry,
L{tokengate.store.broadcasts}) may be published, and only rooms created
through REST may be named.

* C{acceptOnlyStreamsInDataStore} concerns publishing only, on every
  protocol (RTMP, SRT, WebRTC), as in Ant Media
  (C{security/AcceptOnlyStreamsInDataStore.java} is a publish security
  check): a publish of a stream that was not created is refused with
  L{Outcome.UNREGISTERED}.  Plays need no rule of their own: with the
  switch on, nothing unregistered can go live (streams live when it was
  turned on go on until they end).
* C{acceptOnlyRoomsInDataStore}: Ant Media's public source only declares
  it (its conference code, which reads it, is closed); there a room is a
  broadcast created through REST (a main track).  tokengate has no
  conference (C{joinRoom} answers C{not_supported}); what it has of rooms is
  a request that names one (the WebSocket C{room} field of C{publish} and
  C{play}), which room tokens admit to any stream of the room.  With the
  switch on, such a request, publish or play, is admitted only when a
  broadcast with the room's id was created through REST; otherwise it is
  refused with L{Outcome.UNREGISTERED}.  A request naming no room is not
  concerned.

Both are decided before the token is looked at, so a refusal keeps it.  A
registry that cannot answer refuses with L{Outcome.UNAVAILABLE} (fail
closed).
"""

from __future__ import annotations

from typing import Optional

from tokengate.access.service import AccessRequest, Release
from tokengate.apps import AppSettings
from tokengate.auth import Refused
from tokengate.logsafe import Logger
from tokengate.store import StoreUnavailable
from tokengate.store.broadcasts import IBroadcastLookup
from tokengate.tokens import PUBLISH, Outcome


class DatastorePolicy:
    """
    The L{tokengate.access.service.IAccessPolicy} of the two switches (see
    the module's docstring).
    """

    mechanism = "datastore"
    _log = Logger()

    def __init__(self, broadcasts: IBroadcastLookup) -> None:
        """
        @param broadcasts: whether a stream was created through REST.
        """
        self._broadcasts = broadcasts

    async def _registered(self, app: str, streamId: str) -> bool:
        try:
            return await self._broadcasts.exists(app, streamId)
        except StoreUnavailable as e:
            self._log.warn("the broadcast registry is unavailable ({error}): refusing",
                           error=str(e))
            raise Refused(Outcome.UNAVAILABLE)

    def applies(self, settings: AppSettings, action: str) -> bool:
        """
        Publishes when either switch is on; plays when the rooms' is (a play
        naming a room).
        """
        if action == PUBLISH:
            return settings.acceptOnlyStreamsInDataStore or settings.acceptOnlyRoomsInDataStore
        return settings.acceptOnlyRoomsInDataStore

    async def admit(self, request: AccessRequest, settings: AppSettings) -> Optional[Release]:
        if (settings.acceptOnlyStreamsInDataStore and request.action == PUBLISH
                and not await self._registered(request.app, request.streamId)):
            raise Refused(Outcome.UNREGISTERED)
        if (settings.acceptOnlyRoomsInDataStore and request.roomId
                and not await self._registered(request.app, request.roomId)):
            raise Refused(Outcome.UNREGISTERED)
        return None


__all__ = ["DatastorePolicy"]
