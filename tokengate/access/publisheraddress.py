# -*- test-case-name: tests.test_access_datastore -*-
"""
Ant Media's C{allowedPublisherCIDR} (its Enterprise C{PublishIPFilter}): a
comma-separated list of networks, IPv4 and IPv6; when it is not empty, a
publisher (RTMP, SRT, WebRTC) whose address is outside every one of them
is refused with L{Outcome.ADDRESS}, before the token is looked at (so the
token is kept).  An IPv4-mapped IPv6 address (C{::ffff:10.1.2.3}, what a
dual-stack listener reports) is matched against the IPv4 networks; an
address that cannot be read is outside.  Plays are not concerned.

The list is parsed and checked when the settings are set (an invalid
network refuses the settings, naming it: L{tokengate.apps.parse_cidrs}).
"""

from __future__ import annotations

from typing import Optional

from tokengate.access.service import AccessRequest, Release
from tokengate.apps import AppSettings, address_allowed
from tokengate.auth import Refused
from tokengate.tokens import PUBLISH, Outcome


class PublisherAddressPolicy:
    """
    The L{tokengate.access.service.IAccessPolicy} of C{allowedPublisherCIDR}.
    """

    mechanism = "publisherAddress"

    def applies(self, settings: AppSettings, action: str) -> bool:
        """
        Publishes, when the application lists networks.
        """
        return action == PUBLISH and settings.publisherNetworks() is not None

    async def admit(self, request: AccessRequest, settings: AppSettings) -> Optional[Release]:
        if request.action != PUBLISH:
            return None
        networks = settings.publisherNetworks()
        if networks is not None and not address_allowed(request.peer, networks):
            raise Refused(Outcome.ADDRESS)
        return None


__all__ = ["PublisherAddressPolicy"]
