# -*- test-case-name: tests.test_routing -*-
"""
Routes: which upstreams a message goes to, and failover from one to the
next only when the first certainly did not take the message.

A L{Router} is built once at start-up from C{[[routes]]}
(L{relayd.config.RouteConfig}) and the default upstream client
(C{[upstream]}, unless a route says C{default = true}).  For one message it
picks the first route that matches the authenticated identity (the token's
name in the tokens file), the sender domain (of the reverse-path or of the
From address) and the message stream, and returns that route's upstreams in
order, each with the credential to send (L{Candidate}).

L{send_with_failover} sends the message to the first upstream and moves to
the next only on L{relayd.result.NotSent}: the upstream certainly did not
accept it (the connection was refused, the name did not resolve, TLS failed
before the request was written, or an answer its provider documents as
"not accepted").  Any other answer, including a timeout after the request
was sent and every C{5xx}, is the answer: a second upstream could deliver
the message twice.  Every upstream gets the same message, so the
idempotency key the dialects derive from it
(L{relayd.dialects.request.idempotency_key}) is the same on each.

Credentials of route upstreams are read here at start-up (blocking, before
the reactor serves), never per message.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from attrs import field, frozen
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from relayd.config import Config, ConfigError, RouteConfig, read_credential
from relayd.dialects import get_dialect
from relayd.message import Envelope, OutboundMessage
from relayd.reply import TEMPORARY_FAILURE
from relayd.result import NotSent, UpstreamResult
from relayd.tokens import TokenPolicy
from relayd.upstream import UpstreamClient

__all__ = [
    "Candidate",
    "Route",
    "Router",
    "failover",
    "is_not_sent",
    "make_router",
    "send_with_failover",
    "single_router",
]

log = Logger()


def _domain(address: str) -> str:
    """
    The domain of C{local@domain}, lowered, without a trailing dot; C{""}
    for the null reverse-path or an address without C{@}.
    """
    _, at, domain = address.rpartition("@")
    return domain.rstrip(".").lower() if at else ""


@frozen
class Candidate:
    """
    One upstream a message may go to.

    @ivar client: Sends the message: an L{UpstreamClient} (its C{prepare}
        and C{post_prepared}).
    @ivar credential: The credential this upstream takes, read at start-up;
        C{None} sends the avatar's (the token's held credential, else the
        client's token).
    @ivar label: For logs: C{"<route>[<index>] <dialect>"}; never a
        credential.
    """

    client: Any
    credential: str | None = field(default=None, repr=False)
    label: str = ""

    def credential_for(self, token: str) -> str:
        """
        @param token: The avatar's credential (the token's held one, else
            the client's token).
        @return: What this upstream is sent: its own credential, else
            C{token}.
        """
        return token if self.credential is None else self.credential


@frozen
class Route:
    """
    One route: its criteria and its upstreams in failover order.

    @ivar name: For logs.
    @ivar tokens: Token names it is for (empty: any).
    @ivar sender_domains: Sender domains, lowered (empty: any).
    @ivar streams: Streams (empty: any).
    @ivar candidates: The upstreams, in order; at least one.
    """

    name: str
    tokens: frozenset[str]
    sender_domains: frozenset[str]
    streams: frozenset[str]
    candidates: tuple[Candidate, ...]

    def matches(self, policy: TokenPolicy, envelope: Envelope, message: OutboundMessage) -> bool:
        """
        Does this route take the message?

        @param policy: The authenticated token's policy (its C{name}).
        @param envelope: The transaction's envelope (its reverse-path).
        @param message: The parsed message (its From address and stream).
        @return: C{True} when each criterion the route gives matches: the
            token name; the domain of the reverse-path I{or} of the From
            address; the stream.
        """
        if self.tokens and policy.name not in self.tokens:
            return False
        if self.sender_domains and not (
            {_domain(envelope.mail_from), _domain(message.author_address)} & self.sender_domains
        ):
            return False
        return not self.streams or (message.stream is not None and message.stream in self.streams)


def is_not_sent(result: object) -> bool:
    """
    Did the upstream certainly not take the message?

    @param result: What L{UpstreamClient.send} returned.
    @return: C{True} for a L{relayd.result.NotSent}; C{False} for
        L{Accepted} and every L{Reply}.
    """
    return isinstance(result, NotSent)


async def failover(
    candidates: Sequence[Candidate],
    request: Callable[[int, Candidate], Awaitable[Any]],
    *,
    deadline: float | None = None,
    not_sent: Callable[[object], bool] = is_not_sent,
    route: str = "",
) -> UpstreamResult:
    """
    Post a request to the first candidate; to the next only while the one
    before certainly did not take it.

    @param candidates: The upstreams in order; at least one.
    @param request: C{(index, candidate)} to an awaitable of that
        candidate's prepared request (its client's C{prepare}, with
        L{Candidate.credential_for} and the transaction's one idempotency
        key): asked only for the candidates that are tried, so that the
        caller may build the first before and the others off the reactor
        thread.
    @param deadline: Seconds each request may take (see
        L{UpstreamClient.post_prepared}); C{None}: each upstream's
        C{timeout}.
    @param not_sent: Says whether a result means "certainly not accepted";
        L{is_not_sent} by default.
    @param route: The route's name, for logs.
    @return: See L{send_with_failover}.
    @raise relayd.reply.Refused: When C{request} raises it (a dialect
        cannot carry the message): no further upstream is tried.
    """
    result: UpstreamResult = NotSent(TEMPORARY_FAILURE)
    for index, candidate in enumerate(candidates):
        prepared = await request(index, candidate)
        result = await candidate.client.post_prepared(prepared, deadline)
        if not not_sent(result):
            return result
        if index + 1 < len(candidates):
            log.warn(
                "route {route}: upstream {upstream} did not take the message;"
                " trying {next_upstream}",
                route=route,
                upstream=candidate.label,
                next_upstream=candidates[index + 1].label,
            )
    log.warn("route {route}: no upstream could be reached", route=route)
    return result


async def send_with_failover(
    candidates: Sequence[Candidate],
    message: OutboundMessage,
    token: str,
    idempotency_key: str | None = None,
    *,
    deadline: float | None = None,
    not_sent: Callable[[object], bool] = is_not_sent,
    route: str = "",
) -> UpstreamResult:
    """
    Send C{message} to the first candidate; to the next only while the one
    before certainly did not take it (L{failover}, each request prepared
    on the calling thread when its candidate is tried).

    @param candidates: The upstreams in order (from L{Router.candidates});
        at least one.
    @param message: The message, the same for every upstream.
    @param token: The avatar's credential, for candidates without their
        own.
    @param idempotency_key: The transaction's key
        (L{relayd.idempotency.idempotency_key}), the same for every
        upstream, or C{None}.
    @param deadline: Seconds each request may take (see
        L{UpstreamClient.post_prepared}); C{None}: each upstream's
        C{timeout}.
    @param not_sent: Says whether a result means "certainly not accepted";
        L{is_not_sent} by default.
    @param route: The route's name, for logs.
    @return: The first result that is not "not sent" (L{Accepted} or a
        L{Reply}); when no candidate sent it, the last L{NotSent} (its
        C{reply} is C{451 4.3.0}: the client retries later, and the
        delivery path may release the idempotency claim).
    @raise relayd.reply.Refused: When a dialect cannot carry the message
        (the client gets its reply; no further upstream is tried).
    """

    async def prepare(index: int, candidate: Candidate) -> Any:
        return candidate.client.prepare(message, candidate.credential_for(token), idempotency_key)

    return await failover(candidates, prepare, deadline=deadline, not_sent=not_sent, route=route)


class Router:
    """
    Chooses a message's upstreams: the first matching route, else the
    default.
    """

    def __init__(self, routes: Sequence[Route], default: Route) -> None:
        """
        @param routes: The non-default routes, in configuration order.
        @param default: The route of a message no other route matches.
        """
        self.routes = tuple(routes)
        self.default = default

    def route(self, policy: TokenPolicy, envelope: Envelope, message: OutboundMessage) -> Route:
        """
        @return: The first route that matches (L{Route.matches}), else the
            default route.
        """
        for route in self.routes:
            if route.matches(policy, envelope, message):
                return route
        return self.default

    def candidates(
        self, policy: TokenPolicy, envelope: Envelope, message: OutboundMessage
    ) -> tuple[Candidate, ...]:
        """
        The ordered upstreams for one message.

        @param policy: The authenticated token's policy.
        @param envelope: The transaction's envelope.
        @param message: The parsed message.
        @return: The chosen route's candidates, in failover order.
        """
        return self.route(policy, envelope, message).candidates

    async def send(
        self,
        message: OutboundMessage,
        token: str,
        policy: TokenPolicy,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> UpstreamResult:
        """
        Route C{message} and send it with L{send_with_failover}, each
        request prepared on the calling thread.  (The delivery path,
        L{relayd.delivery.Pipeline}, uses L{route} and L{failover} itself,
        to build the first request off the reactor thread for a large
        message.)

        @param message: The parsed message (its C{envelope} is used).
        @param token: The avatar's credential (held, else the client's).
        @param policy: The token's policy.
        @param idempotency_key: The transaction's key, or C{None}.
        @param deadline: See L{send_with_failover}.
        @return: See L{send_with_failover}.
        @raise relayd.reply.Refused: See L{send_with_failover}.
        """
        route = self.route(policy, message.envelope, message)
        return await send_with_failover(
            route.candidates,
            message,
            token,
            idempotency_key,
            deadline=deadline,
            route=route.name,
        )

    def clients(self) -> tuple[Any, ...]:
        """
        @return: Every distinct upstream client, to close on stop.
        """
        seen: dict[int, Any] = {}
        for route in (*self.routes, self.default):
            for candidate in route.candidates:
                seen.setdefault(id(candidate.client), candidate.client)
        return tuple(seen.values())

    def close(self) -> Deferred[Any]:
        """
        Close every client's idle connections (on service stop).

        @return: A L{Deferred} that fires when all are closed.
        """
        return DeferredList([client.close() for client in self.clients()], consumeErrors=True)


def single_router(client: Any, label: str = "default") -> Router:
    """
    The router of a daemon without C{[[routes]]}: every message to
    C{client}, with the avatar's credential.

    @param client: The upstream client (C{prepare} and C{post_prepared}).
    @param label: The candidate's label, for logs.
    @return: A L{Router} whose default route is C{client} alone.
    """
    return Router(
        (),
        Route("default", frozenset(), frozenset(), frozenset(), (Candidate(client, None, label),)),
    )


def _route(
    reactor: Any,
    config: RouteConfig,
    index: int,
    environ: Mapping[str, str],
    make_client: Callable[..., Any],
) -> Route:
    """
    Build one route: a client per upstream, its credential read now.

    @raise ConfigError: (without the file name) for an unknown dialect or
        an unreadable credential, naming the dotted key.
    """
    candidates = []
    for j, upstream in enumerate(config.upstreams):
        key = f"routes[{index}].upstreams[{j}]"
        try:
            dialect = get_dialect(upstream.dialect)
        except ConfigError as e:
            raise ConfigError(f"{key}.dialect: {str(e).partition(': ')[2]}") from None
        source = upstream.credential_source(key)
        credential = None if source is None else read_credential(source, environ)
        candidates.append(
            Candidate(
                make_client(reactor, upstream.upstream_config(), dialect),
                credential,
                f"{config.name}[{j}] {upstream.dialect}",
            )
        )
    return Route(
        config.name,
        frozenset(config.tokens),
        frozenset(config.sender_domains),
        frozenset(config.streams),
        tuple(candidates),
    )


def make_router(
    reactor: Any,
    config: Config,
    default_client: Any,
    environ: Mapping[str, str] | None = None,
    make_client: Callable[..., Any] = UpstreamClient,
) -> Router:
    """
    Build the router of C{config.routes}.  Blocking (reads credentials):
    call at start-up.

    @param reactor: For the upstream clients.
    @param config: The whole configuration (its C{routes}).
    @param default_client: The C{[upstream]} client: the default route when
        no route has C{default = true}.
    @param environ: For C{credential_env} and C{CREDENTIALS_DIRECTORY};
        L{os.environ} when C{None}.
    @param make_client: C{(reactor, UpstreamConfig, dialect)} to a client;
        L{UpstreamClient} by default.
    @return: The router.
    @raise ConfigError: C{"<file>: routes[i].upstreams[j].<key>: ..."} for
        an unknown dialect or a credential that cannot be read.
    """
    env = os.environ if environ is None else environ
    try:
        built = [
            (route.default, _route(reactor, route, i, env, make_client))
            for i, route in enumerate(config.routes)
        ]
    except ConfigError as e:
        raise ConfigError(f"{config.path or '<config>'}: {e}") from None
    defaults = [route for is_default, route in built if is_default]
    default = (
        defaults[0]
        if defaults
        else single_router(default_client, f"default {config.upstream.dialect}").default
    )
    return Router([route for is_default, route in built if not is_default], default)
