# -*- test-case-name: tests.test_upstream -*-
"""
The pieces of the upstream's HTTP client that make a request cheap: an
L{Agent} that parses each URL and builds its endpoint once
(L{UpstreamAgent}), a cookie jar that does no work (L{NoCookies}), and
request headers encoded once where they do not change and copied without
being encoded again (L{HeaderEncoder}, L{RequestHeaders}).

L{relayd.upstream.make_http_client} puts them under treq.
"""

from __future__ import annotations

from collections.abc import Mapping
from http.cookiejar import Cookie, DefaultCookiePolicy
from typing import Any

from hyperlink import EncodedURL
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from treq.response import _Response
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web._newclient import _ensureValidURI
from twisted.web.client import URI, Agent, ContentDecoderAgent, GzipDecoder
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer

__all__ = [
    "NO_COOKIES",
    "HeaderEncoder",
    "NoCookies",
    "RequestHeaders",
    "UpstreamAgent",
    "UpstreamHTTPClient",
]


class RequestHeaders(Headers):
    """
    L{Headers} whose L{copy} does not encode and check every name and value
    again: they were when they were set.

    Each request's headers are copied twice on their way down (treq's
    L{twisted.web.client.ContentDecoderAgent} adds C{Accept-Encoding}, the
    L{Agent} adds C{Host}); L{Headers.copy} builds the copy with
    L{Headers.setRawHeaders}, name by name.
    """

    __slots__ = ()

    def copy(self) -> RequestHeaders:
        """
        @return: A new L{RequestHeaders} with the same names and values (its
            own lists of values: changing one changes only that copy).
        """
        copied = RequestHeaders()
        copied._rawHeaders = {name: values[:] for name, values in self._rawHeaders.items()}
        return copied


class HeaderEncoder:
    """
    Turns a request's headers (name to value, as
    L{relayd.upstream.PreparedRequest} holds them) into L{RequestHeaders},
    with the headers that are the same on every request (C{Content-Type},
    C{Accept}, C{User-Agent}) encoded once, when the encoder is made.

    A name or value it has not seen is encoded by L{Headers.setRawHeaders}
    as before: the name checked (RFC 9110 section 5.1, a token) and
    capitalised, the value UTF-8 encoded and any line break in it made a
    space (so that a token cannot add a header).
    """

    def __init__(self, constant: Mapping[str, str]) -> None:
        """
        @param constant: The headers sent unchanged on many requests, name
            to value.
        @raise twisted.web.http_headers.InvalidHeaderName: For a name that
            is not a token.
        """
        self._known: dict[str, tuple[str, bytes, list[bytes]]] = {}
        for name, value in constant.items():
            probe = Headers()
            probe.setRawHeaders(name, [value])
            ((raw_name, raw_values),) = probe.getAllRawHeaders()
            self._known[name] = (value, raw_name, list(raw_values))

    def encode(self, headers: Mapping[str, str]) -> RequestHeaders:
        """
        @param headers: Name to value, in the order they are sent; of names
            that differ only in case, the last one's value is sent (as
            L{Headers} does).
        @return: The headers to send.
        """
        encoded = RequestHeaders()
        raw = encoded._rawHeaders
        known = self._known
        for name, value in headers.items():
            found = known.get(name)
            if found is not None and found[0] == value:
                raw[found[1]] = found[2][:]
            else:
                encoded.setRawHeaders(name, [value])
        return encoded


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


#: The keyword arguments of the requests L{UpstreamHTTPClient} sends
#: through its own agent stack.
_LEAN_ARGUMENTS = frozenset(
    {"data", "headers", "allow_redirects", "unbuffered", "reactor", "cookies", "_stacklevel"}
)


class UpstreamHTTPClient(HTTPClient):
    """
    treq's L{HTTPClient}, whose requests as relayd sends them go through an
    agent stack built once instead of on every request.

    For every request, L{HTTPClient.request} wraps its agent in a new
    L{twisted.web.client.CookieAgent} (which builds a fake C{urllib}
    request, parsing the URL again, to ask the jar for a C{Cookie} header,
    and hands the jar every answer), in a new L{ContentDecoderAgent}, and in
    a L{twisted.web.client.RedirectAgent} unless C{allow_redirects=False};
    relayd measured that at about a sixth of the CPU time of its whole
    upstream exchange (C{bench/micro_http.py}).  A request with:

      - a pre-parsed URL (an L{EncodedURL}),
      - L{Headers} (not a L{dict}),
      - a non-empty body in C{data}, no C{params}, C{files}, C{json},
        C{auth} or C{timeout},
      - C{allow_redirects=False}, C{unbuffered=True},
      - C{cookies} L{None} or L{NO_COOKIES}, and a jar that is a
        L{NoCookies} (so a L{CookieAgent} would send and keep nothing),

    goes through one L{ContentDecoderAgent} (C{Accept-Encoding: gzip}, a
    gzip answer decoded, as treq does) over the agent, and its answer comes
    back as treq's response (C{_Response}), as from L{HTTPClient.request}.
    Any other request is L{HTTPClient.request}'s, unchanged.
    """

    def __init__(self, agent: IAgent, cookiejar: NoCookies, data_to_body_producer: Any) -> None:
        """
        @param agent: The agent (an L{UpstreamAgent}).
        @param cookiejar: The jar; requests take the lean path only with a
            L{NoCookies}.
        @param data_to_body_producer: Turns C{data} into an
            L{IBodyProducer} (as for L{HTTPClient}).
        """
        super().__init__(agent, cookiejar=cookiejar, data_to_body_producer=data_to_body_producer)
        self._decoding = ContentDecoderAgent(agent, [(b"gzip", GzipDecoder)])  # type: ignore[no-untyped-call]
        self._lean = isinstance(cookiejar, NoCookies)

    def request(self, method: str, url: Any, **kwargs: Any) -> Deferred[Any]:
        """
        See L{HTTPClient.request} and the class docstring.
        """
        headers = kwargs.get("headers")
        data = kwargs.get("data")
        if (
            not self._lean
            or not isinstance(url, EncodedURL)
            or not isinstance(headers, Headers)
            or not data
            or kwargs.get("allow_redirects", True)
            or not kwargs.get("unbuffered", False)
            or kwargs.get("cookies") not in (None, NO_COOKIES)
            or not _LEAN_ARGUMENTS.issuperset(kwargs)
        ):
            kwargs.setdefault("_stacklevel", 3)
            return super().request(method, url, **kwargs)
        uri = url.to_uri().to_text().encode("ascii")
        producer = self._data_to_body_producer(data)
        d: Deferred[Any] = self._decoding.request(  # type: ignore[no-untyped-call]
            method.encode("ascii").upper(), uri, headers, producer
        )
        return d.addCallback(_Response, self._cookiejar)


class UpstreamAgent(Agent):
    """
    An L{Agent} that parses each request URI, builds its endpoint and its
    request target (the origin form, RFC 9112 section 3.2.1) and encodes
    its C{Host} header once, not on every request: relayd sends
    every request of a client to the same URL.

    What is kept is bounded (L{_MAX_CACHED}); an endpoint only describes how
    to connect (the pool connects with it when it has no idle connection),
    so sharing one between requests changes nothing.
    """

    _MAX_CACHED = 64

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._targets: dict[bytes, tuple[URI, IStreamClientEndpoint, bytes]] = {}
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
                endpoint = self._getEndpoint(parsed)  # type: ignore[no-untyped-call]
            except Exception:
                return super().request(method, uri, headers, bodyProducer)
            # originForm is a property: it joins the path again each time.
            target = (parsed, endpoint, parsed.originForm)
            if len(self._targets) < self._MAX_CACHED:
                self._targets[uri] = target
        parsed, endpoint, origin = target
        key = (parsed.scheme, parsed.host, parsed.port)
        d: Deferred[Any] = self._requestWithEndpoint(
            key, endpoint, method, parsed, headers, bodyProducer, origin
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
