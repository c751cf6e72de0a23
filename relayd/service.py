# -*- test-case-name: tests.test_service -*-
"""
Service wiring: one L{MultiService} with a listening service per configured
listener, sharing one portal, one upstream client and one set of limits,
plus the bundled development upstream when the configuration asks for it.

Listeners are made by L{relayd.listeners}, so a port that cannot be bound
stops the daemon (one line, exit status 1) instead of being logged and
skipped.
Implicit TLS (RFC 8314) is put on the factory, not in the endpoint string,
so the same code works behind C{systemd:} sockets and C{haproxy:} (PROXY
protocol) endpoints.
"""

from __future__ import annotations

import os
from typing import Any

from attrs import frozen
from twisted.application.service import Service
from twisted.cred.portal import Portal
from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger

from relayd.admin import ReadinessChecks
from relayd.admin import make_site as make_admin_site
from relayd.auth import make_auth_portal
from relayd.config import Config, ConfigError, ListenerConfig
from relayd.delivery import Pipeline, make_avatar_factory
from relayd.heap import HeapTrimmer, glibc_heap
from relayd.idempotency import OutcomeStore
from relayd.interfaces import ICounters, IOutcomeStore
from relayd.lifecycle import (
    Daemon,
    DrainService,
    GracefulTermination,
    SessionCloser,
    TokensReloader,
    _RedisCloser,
    _UpstreamCloser,
)
from relayd.listeners import ListenerService, listener_service, parse_endpoint
from relayd.policy import MessageRates
from relayd.redisstore import (
    RedisAuthCache,
    RedisConnection,
    RedisCounters,
    RedisOutcomeStore,
    connect,
)
from relayd.replytexts import ReplyTexts
from relayd.routing import make_router
from relayd.sdnotify import SystemdReadiness
from relayd.smtp.guards import (
    ConnectionLimiter,
    DeliveryTracker,
    LocalCounters,
    MemoryBudget,
    read_secret,
)
from relayd.smtp.session import RelaySMTPFactory
from relayd.tls import ServerTLS, ensure_self_signed, implicit_tls_factory
from relayd.tokens import TokenStore
from relayd.upstream import make_client
from relayd.workers import (
    SupervisorWatch,
    WorkerPool,
    worker_argv,
    worker_count,
)

__all__ = [
    "Daemon",
    "DrainService",
    "GracefulTermination",
    "SessionCloser",
    "TokensReloader",
    "make_service",
]

log = Logger()


def _http_checker(config: Config, reactor: Any, redis: RedisConnection | None = None) -> Any:
    """
    The C{http} auth backend's checker, or C{None} for the other backends;
    with C{redis}, its cache is shared (L{RedisAuthCache}).
    """
    if config.auth.backend != "http":
        return None
    from relayd.auth import CredentialRules
    from relayd.auth_http import HTTPAuthChecker
    from relayd.dialects import get_dialect
    from relayd.upstream import make_http_client, make_pool

    dialect = get_dialect(config.upstream.dialect)
    http = make_http_client(reactor, make_pool(reactor, config.upstream), config.auth.timeout)
    return HTTPAuthChecker(
        http,
        config.auth.url,
        reactor,
        rules=CredentialRules.from_config(config.auth),
        defaults=config.auth.defaults,
        header=config.upstream.token_header or dialect.token_header,
        header_format=config.upstream.token_format or dialect.token_format,
        timeout=config.auth.timeout,
        ttl=config.auth.cache_ttl,
        negative_ttl=config.auth.negative_cache_ttl,
        size=config.auth.cache_size,
        shared=RedisAuthCache(redis) if redis is not None else None,
    )


@frozen
class _Sessions:
    """
    What every SMTP listener of this process shares.

    @ivar reply_texts: The C{[replies]} texts.
    @ivar limiter: The connection caps (C{[limits] max_connections}, per
        IP).
    @ivar tracker: Every session and message in flight, for the drain.
    @ivar counters: The AUTH throttling and rate counters (Redis-backed
        when C{[redis] url} is set).
    @ivar memory: The C{[limits] max_memory_bytes} budget.
    @ivar auth_secret: The key of per-credential AUTH counters from
        C{limits.auth_hmac_key_file}, or C{None} for the supervisor's.
    """

    reply_texts: ReplyTexts
    limiter: ConnectionLimiter
    tracker: DeliveryTracker
    counters: ICounters
    memory: MemoryBudget
    auth_secret: bytes | None = None


def _stop_timeout(config: Config) -> float:
    """
    @return: Seconds a stop waits for the sessions: the upstream's answer,
        then a few seconds to write the replies.
    """
    return config.upstream.timeout + 5


def _server_tls(config: Config) -> ServerTLS:
    """
    The certificate and TLS policy of every listener, generating a
    self-signed development certificate first when C{[tls]} asks.

    @raise ConfigError: The certificate or key is unusable.
    """
    if config.tls.generate_self_signed:
        if ensure_self_signed(config.tls.certificate, config.tls.key, config.server.hostname):
            log.warn(
                "generated a self-signed development certificate at {path}",
                path=config.tls.certificate,
            )
    return ServerTLS(config.tls)


def _auth(
    config: Config, reactor: Any, context: ServerTLS, top: Daemon
) -> tuple[TokenStore, TokensReloader]:
    """
    The tokens store (empty unless C{[auth] backend = "tokens_file"}) and
    its C{SIGHUP} reloader, which also reloads C{context}; the reloader is
    added to C{top}.

    @raise ConfigError: The tokens file is unusable.
    """
    if config.auth.backend == "tokens_file":
        store = TokenStore.load(config.auth.tokens_file)
    else:
        store = TokenStore(())
    reloader = TokensReloader(store, reactor, tls=context)
    reloader.setServiceParent(top)
    return store, reloader


def _redis(config: Config, reactor: Any, top: Daemon) -> RedisConnection | None:
    """
    The shared state's connection (L{relayd.redisstore}), closed on stop,
    or C{None} without C{[redis] url}.  The stores built on it fall back to
    in-process ones while Redis is unreachable.
    """
    if not config.redis.url:
        return None
    redis = RedisConnection(connect(config.redis), config.redis, reactor)
    _RedisCloser(redis).setServiceParent(top)
    return redis


def _outcomes(config: Config, reactor: Any, redis: RedisConnection | None) -> IOutcomeStore:
    """
    The idempotency outcome store (C{[idempotency]}): in-process, or in
    Redis with the in-process one as its fallback.
    """
    # A claim outlives the POST's deadline (the window) by the client's
    # wait, so that it never expires under its own open request.
    in_flight_window = config.idempotency.window + config.upstream.timeout
    outcomes: IOutcomeStore = OutcomeStore(
        reactor, max_entries=config.idempotency.max_records, in_flight_window=in_flight_window
    )
    if redis is not None:
        outcomes = RedisOutcomeStore(redis, fallback=outcomes, in_flight_window=in_flight_window)
    return outcomes


def _counters(reactor: Any, redis: RedisConnection | None) -> ICounters:
    """
    The counters of AUTH throttling (L{relayd.smtp.guards}) and of message
    rates (L{relayd.policy}): in-process, or with C{[redis]} shared by the
    fleet, the in-process ones as the fallback.
    """
    counters: ICounters = LocalCounters(reactor)
    if redis is not None:
        counters = RedisCounters(redis, fallback=counters)
    return counters


def _delivery(
    config: Config, reactor: Any, store: TokenStore, top: Daemon
) -> tuple[Portal, RedisConnection | None, ICounters]:
    """
    The upstream client and router (closed on stop), the shared state, the
    outcome store and the delivery pipeline, behind the portal the SMTP
    sessions authenticate against.

    @return: The portal, the Redis connection (or C{None}), and the
        counters the sessions share with the message rates.
    @raise ConfigError: A route's credential, or the dialect, is unusable.
    """
    client = make_client(reactor, config.upstream)
    # Each route's upstreams (their credentials read now); the default
    # route is [upstream] unless a route says default = true.
    router = make_router(reactor, config, client)
    _UpstreamCloser(router).setServiceParent(top)
    redis = _redis(config, reactor, top)
    counters = _counters(reactor, redis)
    rates = MessageRates(
        counters,
        per_token=config.limits.messages_per_minute_per_token,
        per_ip=config.limits.messages_per_minute_per_ip,
    )
    pipeline = Pipeline(
        client,
        config.headers,
        reactor,
        threads=reactor,
        rates=rates,
        revoke_on_upstream_refusal=config.auth.backend == "passthrough",
        store=_outcomes(config, reactor, redis),
        timeout=config.upstream.timeout,
        window=config.idempotency.window,
        router=router,
    )
    portal = make_auth_portal(
        config.auth,
        make_avatar_factory(pipeline),
        store=store,
        checker=_http_checker(config, reactor, redis),
    )
    return portal, redis, counters


def _sessions(config: Config, reactor: Any, counters: ICounters, top: Daemon) -> _Sessions:
    """
    What the listeners share, and the services that drain and close the
    sessions on stop (added to C{top}).

    @raise ConfigError: A C{[replies]} name is unknown.
    """
    reply_texts = ReplyTexts.from_config(config.replies)
    limits = config.limits
    limiter = ConnectionLimiter(limits.max_connections, limits.max_connections_per_ip)
    tracker = DeliveryTracker()
    DrainService(tracker, reactor, _stop_timeout(config)).setServiceParent(top)
    SessionCloser(tracker, reactor, _stop_timeout(config)).setServiceParent(top)
    memory = MemoryBudget(limits.max_memory_bytes)
    secret = None
    if limits.auth_hmac_key_file:
        try:
            secret = read_secret(limits.auth_hmac_key_file)
        except (OSError, ValueError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise ConfigError(
                f"limits.auth_hmac_key_file: {limits.auth_hmac_key_file}: {reason}"
            ) from None
    return _Sessions(reply_texts, limiter, tracker, counters, memory, secret)


def _smtp_factory(
    config: Config,
    reactor: Any,
    listener: ListenerConfig,
    portal: Portal,
    context: ServerTLS,
    shared: _Sessions,
) -> Any:
    """
    The SMTP factory of one listener: implicit TLS (RFC 8314) wrapped
    around it for C{tls = "implicit"}.
    """
    implicit = listener.tls == "implicit"
    factory: Any = RelaySMTPFactory(
        portal,
        config.server.hostname,
        config.limits,
        reactor,
        context_factory=context,
        implicit_tls=implicit,
        limiter=shared.limiter,
        counters=shared.counters,
        tracker=shared.tracker,
        memory=shared.memory,
        auth_exempt=listener.name in config.limits.auth_exempt_listeners,
        auth_secret=shared.auth_secret,
    )
    factory.reply_texts = shared.reply_texts
    factory.listener = listener.name  # for metrics and events
    if implicit:
        factory = implicit_tls_factory(factory, context)
    return factory


def _listeners(
    config: Config,
    reactor: Any,
    portal: Portal,
    context: ServerTLS,
    shared: _Sessions,
    inherit_fds: tuple[int, ...],
    top: Daemon,
) -> list[Service]:
    """
    One listening service per C{[[listeners]]} entry (L{_smtp_factory}),
    added to C{top} and named in C{top.endpoints}.

    @param inherit_fds: The inherited sockets (in a worker), or C{()}.
    @return: The services that bind their own socket (none in a worker).
    """
    listening = []
    for index, listener in enumerate(config.listeners):
        factory = _smtp_factory(config, reactor, listener, portal, context, shared)
        service = listener_service(
            index,
            listener,
            factory,
            reactor,
            config.server.proxy_timeout,
            inherit_fds[index] if inherit_fds else None,
        )
        if not inherit_fds:
            listening.append(service)
        service.setName(listener.name)
        service.setServiceParent(top)
        named = f" {listener.name!r}" if listener.name != listener.endpoint else ""
        top.endpoints[listener.name] = f"listeners[{index}]{named} ({listener.endpoint})"
    return listening


def _http_listener(
    reactor: Any, name: str, description: str, key: str, site: Any, top: Daemon
) -> Service:
    """
    An HTTP listening service on C{description} (the dotted C{key} names
    it in errors), added to C{top} as C{name}.
    """
    service = ListenerService(parse_endpoint(reactor, description, key), site)
    service.setName(name)
    service.setServiceParent(top)
    top.endpoints[name] = f"{name} ({description})"
    return service


def _dev_upstream(config: Config, reactor: Any, top: Daemon) -> Service | None:
    """
    The bundled development upstream (L{relayd.devupstream}) when
    C{[dev_upstream] enabled}, else C{None}.
    """
    if not config.dev_upstream.enabled:
        return None
    from relayd.devupstream import make_site

    site = make_site(config.dev_upstream.outbox, reactor)
    return _http_listener(
        reactor, "dev_upstream", config.dev_upstream.endpoint, "dev_upstream.endpoint", site, top
    )


def _admin(
    config: Config,
    reactor: Any,
    listening: list[Service],
    tracker: DeliveryTracker,
    redis: RedisConnection | None,
    top: Daemon,
) -> None:
    """
    The admin listener (C{/metrics}, C{/healthz}, C{/readyz},
    L{relayd.admin}) when C{[admin] listen} is set.
    """
    if not config.admin.listen:
        return
    readiness = ReadinessChecks(reactor, listening, tracker, redis, config.admin.upstream_fresh)
    site = make_admin_site(readiness, reactor)
    _http_listener(reactor, "admin", config.admin.listen, "admin.listen", site, top)


def _workers_and_readiness(
    config: Config,
    reactor: Any,
    listening: list[Service],
    dev: Service | None,
    reloader: TokensReloader,
    log_args: tuple[str, ...],
    top: Daemon,
) -> None:
    """
    Last: the worker pool (C{[server] workers} > 1), which starts once
    every listener of this process listens, and C{READY=1} to systemd
    once every listener (and every worker) listens.
    """
    workers = worker_count(config.server.workers)
    pool = None
    if workers > 1:
        pool = WorkerPool(
            reactor,
            listening,
            workers - 1,
            worker_argv(os.path.abspath(config.path), log_args),
            stop_timeout=_stop_timeout(config) + 5,
        )
        reloader.pool = pool
    # Before the pool, which starts the workers with its NOTIFY_SOCKET.
    listening_too = listening if dev is None else [*listening, dev]
    SystemdReadiness(reactor, listening_too, pool).setServiceParent(top)
    if pool is not None:
        pool.setServiceParent(top)


def _heap_trimmer(config: Config, reactor: Any, top: Daemon) -> None:
    """
    The L{HeapTrimmer} of this process (each worker has its own), unless
    C{[server] heap_trim} is off, the C library is not glibc, or the
    reactor has no thread pool (a test's).
    """
    threads = IReactorThreads.providedBy(reactor)
    heap = glibc_heap() if config.server.heap_trim and threads else None
    if heap is not None:
        HeapTrimmer(
            reactor, heap, config.server.heap_trim_interval, config.server.heap_trim_threshold
        ).setServiceParent(top)


def make_service(
    config: Config,
    reactor: Any,
    inherit_fds: tuple[int, ...] = (),
    log_args: tuple[str, ...] = (),
) -> Daemon:
    """
    Build the daemon from its configuration.

    Blocking reads (certificates, tokens file) happen here, before the
    reactor runs.

    @param config: The loaded configuration.
    @param reactor: The reactor to listen, connect and keep time with.
    @param inherit_fds: In a worker process (L{relayd.workers}): the
        inherited listening sockets, one per listener in configuration
        order.  Empty in the supervisor, which binds the listeners and
        starts C{[server] workers - 1} workers.
    @param log_args: The C{twist} log options the workers get (the
        supervisor's own C{--log-format} and C{--log-level}).
    @return: The service to start; starting it binds every listener (or
        exits with status 1 and one line when one cannot listen, see
        L{Daemon}).  Stopping it closes every session after its reply
        (L{SessionCloser}).
    @raise ConfigError: A certificate, key or the tokens file is unusable.
    """
    top = Daemon()
    terminator = GracefulTermination(reactor)
    terminator.setServiceParent(top)
    _heap_trimmer(config, reactor, top)
    context = _server_tls(config)
    store, reloader = _auth(config, reactor, context, top)
    if inherit_fds and len(inherit_fds) != len(config.listeners):
        raise ConfigError("server.workers: inherited sockets do not match the listeners")
    portal, redis, counters = _delivery(config, reactor, store, top)
    shared = _sessions(config, reactor, counters, top)
    listening = _listeners(config, reactor, portal, context, shared, inherit_fds, top)
    if inherit_fds:
        # Standard input is a pipe from the supervisor (relayd.workers).
        SupervisorWatch(reactor, 0, terminator.stop).setServiceParent(top)
        # Tells the supervisor once the adopted sockets accept connections.
        SystemdReadiness(reactor, []).setServiceParent(top)
        return top
    dev = _dev_upstream(config, reactor, top)
    _admin(config, reactor, listening, shared.tracker, redis, top)
    _workers_and_readiness(config, reactor, listening, dev, reloader, log_args, top)
    return top
