# -*- test-case-name: tests.test_proxy -*-
"""
One listening service per C{[[listeners]]} entry: its endpoint parsed (a
bad one is a one-line L{ConfigError}), its factory wrapped for the PROXY
protocol (C{haproxy:} endpoints).

A listener in the supervisor listens on its endpoint; in a worker process
(L{relayd.workers}) it adopts the inherited socket, with the same factory
wrapping, so a C{haproxy:} listener reads the PROXY header in every process.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet import defer, endpoints

from relayd.config import ConfigError, ListenerConfig
from relayd.proxy import ProxyHeaderFactory, strip_prefix

__all__ = ["ListenerService", "listener_service", "parse_endpoint"]


def parse_endpoint(reactor: Any, description: str, key: str) -> Any:
    """
    Parse a server endpoint description (C{tcp:587}, C{systemd:...}).

    @param reactor: The reactor the endpoint listens with.
    @param description: Twisted's endpoint syntax, without C{haproxy:}.
    @param key: The configuration key, for the message.
    @return: An L{IStreamServerEndpoint}; nothing is bound yet.
    @raise ConfigError: The description cannot be used, in one line.
    """
    try:
        return endpoints.serverFromString(reactor, description)
    except (IndexError, KeyError) as e:
        if description.startswith("systemd:"):
            raise ConfigError(
                f"{key}: {description!r}: no such socket passed by systemd"
                " (start relayd through relayd.socket, see docs/deployment.md)"
            ) from None
        raise ConfigError(f"{key}: {description!r}: {e}") from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{key}: {description!r}: {e}") from None


class ListenerService(StreamServerEndpointService):
    """
    Listens on one endpoint.  A port that cannot be bound (in use, no
    permission) raises out of C{startService} at once, so that
    L{relayd.service.Daemon} stops start-up with one line naming the
    listener.
    """

    _raiseSynchronously = True

    def when_listening(self) -> defer.Deferred[Any]:
        """
        @return: A new Deferred that fires with the listening port (or
            C{None} when listening failed) once the service has started.
        """
        d: defer.Deferred[Any] = defer.Deferred()
        waiting = self._waitingForPort
        if waiting is None:
            d.callback(None)
            return d

        def fire(result: Any) -> Any:
            d.callback(result)
            return result

        waiting.addBoth(fire)
        return d


def listener_service(
    index: int,
    listener: ListenerConfig,
    factory: Any,
    reactor: Any,
    proxy_timeout: float,
    inherit_fd: int | None = None,
) -> Service:
    """
    Build the listening service of one listener.

    @param index: The listener's position in the configuration.
    @param listener: The listener (with its effective C{proxy_networks}).
    @param factory: Its protocol factory (SMTP, or implicit TLS around it).
    @param reactor: The reactor to listen and keep time with.
    @param proxy_timeout: Seconds a C{haproxy:} connection has to send its
        PROXY header (C{server.proxy_timeout}).
    @param inherit_fd: In a worker: the inherited listening socket.
    @return: A L{ListenerService}, or a
        L{relayd.workers.AdoptedPortService} in a worker.
    @raise ConfigError: The endpoint description cannot be used.
    """
    from relayd.workers import AdoptedPortService

    proxied, description = strip_prefix(listener.endpoint)
    if proxied:
        factory = ProxyHeaderFactory(factory, listener.proxy_networks, reactor, proxy_timeout)
    if inherit_fd is not None:
        return AdoptedPortService(reactor, inherit_fd, factory)
    endpoint = parse_endpoint(reactor, description, f"listeners[{index}].endpoint")
    return ListenerService(endpoint, factory)
