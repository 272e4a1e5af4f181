# -*- test-case-name: tests.test_access_webhook -*-
"""
The one check of the URLs an operator gives tokengate to call (the
authorization webhooks, the JWKS key source): pure, on the ground floor, so
that the settings (L{tokengate.apps}) refuse a bad URL when it is set and
the outgoing machinery (L{tokengate.access.outbound}) checks it again before
it is used.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

#: the longest URL accepted
MAX_URL = 2048

_URL_CHARS = re.compile(r"[\x21-\x7e]+")


def checkURL(url: object, name: str = "URL") -> str:
    """
    @return: C{url} when it is an absolute C{http} or C{https} URL with a
        host, printable ASCII, at most L{MAX_URL} characters.
    @raise ValueError: naming C{name} otherwise (not quoting the URL, which
        may carry a key).
    """
    if not isinstance(url, str) or not url or len(url) > MAX_URL or not _URL_CHARS.fullmatch(url):
        raise ValueError("{} must be an http or https URL".format(name))
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError for a bad port
    except ValueError:
        raise ValueError("{} must be an http or https URL".format(name))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("{} must be an http or https URL".format(name))
    return url
