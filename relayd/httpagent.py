# -*- test-case-name: tests.test_upstream -*-
"""
The pieces of the upstream's HTTP client that make a request cheap: an
L{Agent} that parses each URL and builds its endpoint once
(L{UpstreamAgent}), and a cookie jar that does no work (L{NoCookies}).

L{relayd.upstream.make_http_client} puts them under treq.
"""

from __future__ import annotations

from http.cookiejar import Cookie, DefaultCookiePolicy
from typing import Any

from treq.cookies import IndexableCookieJar
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web._newclient import _ensureValidURI
from twisted.web.client import URI, Agent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer

__all__ = ["NO_COOKIES", "NoCookies", "UpstreamAgent"]


class NoCookies(IndexableCookieJar):
    """
    A cookie jar that stores and sends nothing, and costs nothing per
    request: one client serves many tokens, and a cookie set for one must
    never travel with another.

    treq wraps every request in a L{twisted.web.client.CookieAgent}, which
    asks its jar for a C{Cookie} header (through a fake C{urllib} request)
    and hands it every answer to read C{Set-Cookie} from; a jar that only
    refused every cookie by policy still did that work on every request.
    """

    def __init__(self) -> None:
        super().__init__(DefaultCookiePolicy(allowed_domains=[]))

    def add_cookie_header(self, request: Any) -> None:
        """
        Send no cookie.
        """

    def extract_cookies(self, response: Any, request: Any) -> None:
        """
        Keep no cookie of an answer.
        """

    def set_cookie(self, cookie: Cookie) -> None:
        """
        Keep no cookie given by the caller either.
        """


#: The request cookies of every upstream request: none.
NO_COOKIES = NoCookies()


class UpstreamAgent(Agent):
    """
    An L{Agent} that parses each request URI, builds its endpoint and
    encodes its C{Host} header once, not on every request: relayd sends
    every request of a client to the same URL.

    What is kept is bounded (L{_MAX_CACHED}); an endpoint only describes how
    to connect (the pool connects with it when it has no idle connection),
    so sharing one between requests changes nothing.
    """

    _MAX_CACHED = 64

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._targets: dict[bytes, tuple[URI, IStreamClientEndpoint]] = {}
        self._hosts: dict[tuple[bytes, bytes, int], bytes] = {}

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[Any]:
        """
        See L{Agent.request}.
        """
        target = self._targets.get(uri)
        if target is None:
            parsed = URI.fromBytes(_ensureValidURI(uri.strip()))  # type: ignore[no-untyped-call]
            try:
                target = (parsed, self._getEndpoint(parsed))  # type: ignore[no-untyped-call]
            except Exception:
                return super().request(method, uri, headers, bodyProducer)
            if len(self._targets) < self._MAX_CACHED:
                self._targets[uri] = target
        parsed, endpoint = target
        key = (parsed.scheme, parsed.host, parsed.port)
        d: Deferred[Any] = self._requestWithEndpoint(
            key, endpoint, method, parsed, headers, bodyProducer, parsed.originForm
        )
        return d

    def _computeHostValue(self, scheme: bytes, host: bytes, port: int) -> bytes:
        key = (scheme, host, port)
        value = self._hosts.get(key)
        if value is None:
            value = super()._computeHostValue(scheme, host, port)  # type: ignore[no-untyped-call]
            if len(self._hosts) < self._MAX_CACHED:
                self._hosts[key] = value
        return value
