# -*- test-case-name: tests.test_cluster_registry -*-
"""
The cluster's claim as a policy of the access service
(L{tokengate.access.service.IAccessPolicy}), asked first.

A publish claims its stream in the cluster's stream registry
(L{tokengate.cluster.registry.StreamRegistry}) after the throttle and before
its token is redeemed: a stream claimed or live on another node (or claimed
by another publisher of this node) is refused C{in_use}, and a registry out
of reach C{unavailable} (fail closed), both with the token kept.  The
admitted session holds the claim: its end (logout or kick) releases it,
which deletes the registry entry if this node still owns it.  Plays are not
its business.
"""

from __future__ import annotations

from typing import Optional

from tokengate.access.service import PUBLISH_TYPES, AccessRequest, Release
from tokengate.apps import AppSettings
from tokengate.auth import Refused
from tokengate.cluster.registry import RegistryUnavailable, StreamRegistry, StreamTaken
from tokengate.logsafe import Logger
from tokengate.tokens import PUBLISH, Outcome


class ClusterPolicy:
    """
    See the module's docstring.
    """

    mechanism = "cluster"
    _log = Logger()

    def __init__(self, registry: StreamRegistry) -> None:
        self._registry = registry

    def applies(self, settings: AppSettings, action: str) -> bool:
        # a publish always claims; HTTP delivery (plays) needs no session for it
        return action == PUBLISH

    async def admit(self, request: AccessRequest, settings: AppSettings) -> Optional[Release]:
        if request.action != PUBLISH:
            return None
        publishType = PUBLISH_TYPES.get(request.protocol)
        if publishType is None:
            raise Refused(Outcome.INVALID)
        try:
            return await self._registry.claim(request.app, request.streamId, publishType)
        except StreamTaken:
            raise Refused(Outcome.IN_USE)
        except RegistryUnavailable as e:
            self._log.warn("publish of {app}/{streamId} refused: the stream registry is "
                           "out of reach ({error})", app=request.app,
                           streamId=request.streamId, error=str(e))
            raise Refused(Outcome.UNAVAILABLE)


__all__ = ["ClusterPolicy"]
