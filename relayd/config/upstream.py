# -*- test-case-name: tests.test_config -*-
"""
The C{[upstream]} table, the C{[[routes]]} with their upstreams, and where
upstream credentials are read from (never the file itself).

This module imports no reactor code.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
from attrs import field, frozen

from relayd.config.reading import ConfigError

__all__ = [
    "SYSTEMD_CREDENTIAL_PREFIX",
    "CredentialSource",
    "RouteConfig",
    "RouteUpstreamConfig",
    "UpstreamConfig",
    "check_routes",
    "credential_source",
    "read_credential",
]


@frozen
class UpstreamConfig:
    """
    The C{[upstream]} table: where and how accepted messages are sent.

    @ivar url: The HTTP(S) URL the dialect's request is sent to.
    @ivar dialect: The upstream API's request format: one of
        L{relayd.dialects.DIALECTS}.
    @ivar timeout: Seconds to wait for the upstream's whole answer.
    @ivar token_header: The request header that carries the client's token.
        The empty string means the dialect's own default.
    @ivar token_format: How the header value is built from the token;
        C{{token}} is replaced.  The empty string means the dialect's default.
    @ivar max_connections: Persistent connections kept per upstream host.
    @ivar idle_timeout: Seconds an idle persistent connection is kept
        before relayd closes it.  The default, 4, is below the shortest
        keep-alive timeout of common upstream servers (Node.js and Apache
        httpd: 5 s; nginx 75 s; AWS load balancers 60 s): relayd then closes
        an idle connection before the server does, so a request rarely
        meets a connection the server is closing at that very moment.
        Reconnecting after 4 s idle costs one TLS handshake.
    """

    url: str = "http://127.0.0.1:8025/send"
    dialect: str = "native"
    timeout: float = 30.0
    token_header: str = ""
    token_format: str = ""
    max_connections: int = 64
    idle_timeout: float = field(default=4.0)

    @idle_timeout.validator
    def _check_idle_timeout(self, attribute: Any, value: float) -> None:
        if not value > 0:
            raise ConfigError("upstream.idle_timeout: expected more than 0 seconds")


# -- upstream credentials and routes (team2) --------------------------------
#
# A credential is never written in a configuration or tokens file: the file
# names where relayd reads it at start-up and on reload (a file, an
# environment variable, or a systemd credential, systemd.exec(5),
# "Credentials").

#: What C{credential = "systemd:NAME"} starts with.
SYSTEMD_CREDENTIAL_PREFIX = "systemd:"

# systemd credential names: a file name in $CREDENTIALS_DIRECTORY.
_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_.@:-]{1,255}")

# What an environment variable's name may be (POSIX.1-2017, 8.1).
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")


@frozen
class CredentialSource:
    """
    Where one upstream credential is read from: never the credential.

    @ivar kind: C{"file"} (a path), C{"env"} (an environment variable) or
        C{"systemd"} (a name in C{$CREDENTIALS_DIRECTORY}).
    @ivar name: The path, the variable's name or the credential's name.
    @ivar key: The dotted key it was configured at, for messages.
    """

    kind: Literal["file", "env", "systemd"]
    name: str
    key: str

    def describe(self) -> str:
        """
        @return: For example C{"environment variable SENDGRID_KEY"}: safe
            to log (it names the source, not the credential).
        """
        what = {"file": "file", "env": "environment variable", "systemd": "systemd credential"}
        return f"{what[self.kind]} {self.name}"


def credential_source(
    file: str, env: str, systemd: str, key: str, names: tuple[str, str, str]
) -> CredentialSource | None:
    """
    Check the three ways of naming a credential; at most one may be given.

    @param file: The configured path, or C{""}.
    @param env: The configured environment variable's name, or C{""}.
    @param systemd: The configured C{"systemd:NAME"}, or C{""}.
    @param key: The dotted key of the table, for messages.
    @param names: The three keys' names, in the order of the arguments.
    @return: The source, or C{None} when none is given.
    @raise ConfigError: (without the file name) for several sources, an
        empty name, or a C{systemd} value that is not C{"systemd:NAME"}
        (which is also what a credential pasted in clear gets).
    """
    given = [n for n, v in zip(names, (file, env, systemd), strict=True) if v]
    if len(given) > 1:
        raise ConfigError(f"{key}: give only one of {', '.join(names)}")
    if file:
        return CredentialSource("file", file, f"{key}.{names[0]}")
    if env:
        if not _ENV_NAME.fullmatch(env):
            raise ConfigError(f"{key}.{names[1]}: expected an environment variable name")
        return CredentialSource("env", env, f"{key}.{names[1]}")
    if systemd:
        name = systemd.removeprefix(SYSTEMD_CREDENTIAL_PREFIX)
        if not systemd.startswith(SYSTEMD_CREDENTIAL_PREFIX) or not _CREDENTIAL_NAME.fullmatch(
            name
        ):
            raise ConfigError(
                f'{key}.{names[2]}: expected "systemd:NAME"; the credential itself never'
                f" goes in this file (use {names[0]} or {names[1]})"
            )
        return CredentialSource("systemd", name, f"{key}.{names[2]}")
    return None


def read_credential(source: CredentialSource, environ: Mapping[str, str]) -> str:
    """
    Read one credential.  Blocking: call at start-up or on reload only,
    never on the reactor thread while it serves.

    A file's (or systemd credential's) trailing line end and surrounding
    blanks are dropped, so C{echo KEY > file} works.

    @param source: Where to read it.
    @param environ: The process environment (for C{env}, and
        C{CREDENTIALS_DIRECTORY} for C{systemd}, set by systemd's
        C{LoadCredential=}).
    @return: The credential: non-empty, no control characters (it goes
        into an HTTP header field, RFC 9110 section 5.5).
    @raise ConfigError: C{"<key>: <source>: <what is wrong>"}; the message
        never holds the credential.
    """
    where = f"{source.key}: {source.describe()}"
    if source.kind == "env":
        if source.name not in environ:
            raise ConfigError(f"{where}: not set")
        value = environ[source.name]
    else:
        if source.kind == "systemd":
            folder = environ.get("CREDENTIALS_DIRECTORY", "")
            if not folder:
                raise ConfigError(
                    f"{where}: $CREDENTIALS_DIRECTORY is not set"
                    " (LoadCredential= in the systemd unit)"
                )
            path = os.path.join(folder, source.name)
        else:
            path = source.name
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read()
        except FileNotFoundError:
            raise ConfigError(f"{where}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{where}: cannot be read: {type(e).__name__}") from None
    value = value.strip()
    if not value:
        raise ConfigError(f"{where}: is empty")
    if any(c < " " or c == "\x7f" for c in value):
        raise ConfigError(f"{where}: holds a line break or control character")
    return value


@frozen
class RouteUpstreamConfig:
    """
    One upstream of a route (C{[[routes.upstreams]]}): the keys of
    C{[upstream]}, and the credential relayd sends instead of the client's
    token.

    @ivar credential_file: Path of a file holding the credential.
    @ivar credential_env: Name of an environment variable holding it.
    @ivar credential: C{"systemd:NAME"}: C{$CREDENTIALS_DIRECTORY/NAME}.
    """

    url: str
    dialect: str = "native"
    timeout: float = 30.0
    token_header: str = ""
    token_format: str = ""
    max_connections: int = 64
    credential_file: str = ""
    credential_env: str = ""
    credential: str = ""

    def upstream_config(self) -> UpstreamConfig:
        """
        @return: The C{[upstream]}-shaped table the upstream client takes.
        """
        return UpstreamConfig(
            url=self.url,
            dialect=self.dialect,
            timeout=self.timeout,
            token_header=self.token_header,
            token_format=self.token_format,
            max_connections=self.max_connections,
        )

    def credential_source(self, key: str) -> CredentialSource | None:
        """
        @param key: This table's dotted key (C{"routes[0].upstreams[1]"}).
        @return: Where its credential is read from, or C{None} to send the
            client's (or its token's held) credential.
        @raise ConfigError: See L{credential_source}.
        """
        return credential_source(
            self.credential_file,
            self.credential_env,
            self.credential,
            key,
            ("credential_file", "credential_env", "credential"),
        )


@frozen
class RouteConfig:
    """
    One C{[[routes]]} entry: which messages go to which upstreams, tried
    in order (the next only when the one before certainly did not take the
    message).

    A route matches when every criterion it gives matches (a list matches
    when any of its entries does); routes are tried in file order, the
    first match wins, and a message no route matches takes the default
    route: the one with C{default = true}, else C{[upstream]}.

    @ivar name: A label for logs.
    @ivar tokens: Token names (from the tokens file) this route is for.
    @ivar sender_domains: Domains of the reverse-path or of the From
        address (either matches), compared without case.
    @ivar streams: Message streams (the C{[headers] stream} header).
    @ivar default: This route replaces C{[upstream]} as the default; it
        then gives no criteria.
    @ivar upstreams: The upstreams, in failover order; at least one.
    """

    name: str
    tokens: tuple[str, ...] = ()
    sender_domains: tuple[str, ...] = ()
    streams: tuple[str, ...] = ()
    default: bool = False
    upstreams: tuple[RouteUpstreamConfig, ...] = ()


def check_routes(routes: tuple[RouteConfig, ...], base: Path) -> tuple[RouteConfig, ...]:
    """
    The checks of C{[[routes]]}: names, criteria, one default, URLs and
    credential sources; relative C{credential_file} paths are resolved
    against C{base}.  Dialect names and the credentials themselves are
    checked when the router is built (L{relayd.routing.make_router}).

    @param routes: The C{[[routes]]} entries.
    @param base: The configuration file's folder.
    @return: The routes, sender domains folded to lower case.
    @raise ConfigError: (without the file name) naming the key.
    """
    names: set[str] = set()
    defaults = []
    checked = []
    for i, route in enumerate(routes):
        key = f"routes[{i}]"
        if not route.name:
            raise ConfigError(f"{key}.name: expected a non-empty name")
        if route.name in names:
            raise ConfigError(f"{key}.name: {route.name!r} is used twice")
        names.add(route.name)
        criteria = route.tokens or route.sender_domains or route.streams
        if route.default:
            defaults.append(i)
            if criteria:
                raise ConfigError(
                    f"{key}.default: the default route takes no tokens, sender_domains or streams"
                )
        elif not criteria:
            raise ConfigError(f"{key}: give tokens, sender_domains or streams (or default = true)")
        if not route.upstreams:
            raise ConfigError(f"{key}.upstreams: at least one [[routes.upstreams]] is needed")
        upstreams = []
        for j, upstream in enumerate(route.upstreams):
            ukey = f"{key}.upstreams[{j}]"
            if not upstream.url.startswith(("http://", "https://")):
                raise ConfigError(f"{ukey}.url: expected an http:// or https:// URL")
            if upstream.max_connections < 1:
                raise ConfigError(f"{ukey}.max_connections: expected at least 1")
            source = upstream.credential_source(ukey)
            first = route.upstreams[0]
            if j and source is None and upstream.dialect != first.dialect:
                raise ConfigError(
                    f"{ukey}: a failover upstream of another dialect needs its own credential"
                    " (credential_file, credential_env or credential)"
                )
            if upstream.credential_file and not os.path.isabs(upstream.credential_file):
                upstream = attrs.evolve(
                    upstream, credential_file=str(base / upstream.credential_file)
                )
            upstreams.append(upstream)
        checked.append(
            attrs.evolve(
                route,
                sender_domains=tuple(d.rstrip(".").lower() for d in route.sender_domains),
                upstreams=tuple(upstreams),
            )
        )
    if len(defaults) > 1:
        raise ConfigError(
            f"routes[{defaults[1]}].default: only one route can be the default"
            f" (routes[{defaults[0]}] is)"
        )
    return tuple(checked)
