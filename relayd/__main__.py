# -*- test-case-name: tests.test_command -*-
"""
The C{relayd} command (also C{python -m relayd}).

  - C{relayd run --config PATH}: the daemon, as C{twist relayd --config
    PATH} (Twisted's C{twist} options such as C{--log-format} may come
    first; the log is text unless told otherwise);
  - C{relayd check --config PATH}: validate the configuration as start-up
    would, print the effective configuration, exit 0, or 78 with one line;
  - C{relayd tokens ...}: manage the tokens file (L{relayd.tokens});
  - C{relayd explain --config PATH message.eml --to ADDR}: the upstream
    request a message would produce, each header's fate and the reply;
    nothing is sent (L{relayd.explain});
  - C{relayd --version}: relayd's version.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any, TextIO

import attrs

from relayd import __version__

__all__ = ["check", "main", "render_config"]

USAGE = """\
Usage: relayd COMMAND [OPTIONS]

Commands:
  run --config PATH      run the daemon (Twisted's twist options may come first)
  check --config PATH    validate the configuration and print it as relayd reads it
  tokens ...             manage the tokens file (relayd tokens --help)
  explain --config PATH MESSAGE --to ADDR
                         show the request a message would produce; send nothing
  --version              print relayd's version
"""

EX_USAGE = 64
EX_CONFIG = 78

# The options of relayd.tap.Options: everything from the first of them on
# belongs to the relayd service, what comes before to twist.
_SERVICE_OPTIONS = ("-c", "--config", "--inherit-fds")


def _toml(value: Any) -> str:
    """
    One TOML value: strings, numbers, booleans, lists and tables of
    strings (what relayd's configuration holds).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return '"' + "".join(c if c >= " " else f"\\u{ord(c):04x}" for c in escaped) + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))  # pragma: no cover


_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _key(name: str) -> str:
    return name if name and set(name) <= _BARE_KEY else _toml(name)


def _table(values: dict[str, Any], prefix: str, lines: list[str]) -> None:
    """
    Append C{values} as TOML: its plain keys, then its sub-tables
    (C{[prefix.key]}) and arrays of tables (C{[[prefix.key]]}).
    """
    nested = []
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, dict) or (
            isinstance(value, (list, tuple)) and value and isinstance(value[0], dict)
        ):
            nested.append((name, value))
        else:
            lines.append(f"{_key(name)} = {_toml(value)}")
    for name, value in nested:
        path = f"{prefix}.{_key(name)}" if prefix else _key(name)
        if isinstance(value, dict):
            lines += ["", f"[{path}]"]
            _table(value, path, lines)
        else:
            for item in value:
                lines += ["", f"[[{path}]]"]
                _table(item, path, lines)


def render_config(config: Any) -> str:
    """
    @param config: A loaded L{relayd.config.Config}.
    @return: The effective configuration as TOML: every key with its value
        (defaults and resolved paths included), which L{relayd.config}
        reads back to the same configuration.
    """
    values = attrs.asdict(config)
    values.pop("path", None)
    lines: list[str] = []
    _table(values, "", lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def check(path: str, stdout: TextIO, stderr: TextIO) -> int:
    """
    Validate everything start-up would, without binding a port: the file,
    the certificate and key (and that they match), the TLS policy, the
    tokens file, the dialect, the upstream URL and every endpoint string.

    C{systemd:} endpoints are checked for their syntax only: the sockets
    exist only when systemd starts relayd.

    @param path: The configuration file.
    @param stdout: Where the effective configuration goes.
    @param stderr: Where the one-line error goes.
    @return: C{0}, or C{78} (C{EX_CONFIG}).
    """
    from twisted.internet import reactor

    from relayd.config import ConfigError, load_config
    from relayd.listeners import parse_endpoint
    from relayd.proxy import strip_prefix
    from relayd.service import make_service

    try:
        config = load_config(path)
        build = config
        listeners = []
        for i, listener in enumerate(config.listeners):
            _, description = strip_prefix(listener.endpoint)
            if description.startswith("systemd:"):
                key = f"listeners[{i}].endpoint"
                _check_systemd(description, key)
                # Built on a stand-in: the socket exists only under systemd.
                listener = attrs.evolve(listener, endpoint="tcp:0:interface=127.0.0.1")
            else:
                parse_endpoint(reactor, description, f"listeners[{i}].endpoint")
            listeners.append(listener)
        build = attrs.evolve(build, listeners=tuple(listeners))
        with tempfile.TemporaryDirectory(prefix="relayd-check-") as scratch:
            tls = config.tls
            if tls.generate_self_signed and not (
                os.path.exists(tls.certificate) and os.path.exists(tls.key)
            ):
                # Start-up would create them: check with a pair made here.
                scratch_tls = attrs.evolve(
                    tls,
                    certificate=os.path.join(scratch, "cert.pem"),
                    key=os.path.join(scratch, "key.pem"),
                )
                build = attrs.evolve(build, tls=scratch_tls)
            if build.dev_upstream.enabled:
                outbox = os.path.join(scratch, "outbox")
                build = attrs.evolve(
                    build, dev_upstream=attrs.evolve(build.dev_upstream, outbox=outbox)
                )
            make_service(build, reactor)
    except ConfigError as e:
        message = str(e)
        if not message.startswith(path):
            message = f"{path}: {message}"
        stderr.write(f"relayd: {message}\n")
        return EX_CONFIG
    stdout.write(f"# {path}: valid; the effective configuration:\n")
    stdout.write(render_config(config))
    return 0


def _check_systemd(description: str, key: str) -> None:
    """
    @raise ConfigError: The C{systemd:} description lacks C{domain}, or
        has neither or both of C{index} and C{name}.
    """
    from twisted.internet.endpoints import _parse

    from relayd.config import ConfigError

    args, kwargs = _parse(description)
    if kwargs.get("domain") not in ("INET", "INET6", "UNIX"):
        raise ConfigError(f"{key}: {description!r}: domain must be INET, INET6 or UNIX")
    if ("index" in kwargs) == ("name" in kwargs):
        raise ConfigError(f"{key}: {description!r}: give exactly one of index= or name=")


def run(argv: Sequence[str]) -> int:
    """
    Run the daemon: Twisted's C{twist} with the relayd service, whether or
    not Twisted can find the C{twisted/plugins} dropin.

    @param argv: C{twist} options, then relayd's (C{--config PATH}).
    @return: The exit status (when the reactor has stopped).
    """
    from twisted.application.service import ServiceMaker
    from twisted.application.twist._options import TwistOptions
    from twisted.application.twist._twist import Twist
    from twisted.python.usage import UsageError

    maker = ServiceMaker(
        "relayd",
        "relayd.tap",
        "SMTP relay that hands each message to an email provider's HTTP API",
        "relayd",
    )

    class Options(TwistOptions):
        @property
        def plugins(self) -> dict[str, Any]:
            return {"relayd": maker}

    args = list(argv)
    at = next(
        (i for i, a in enumerate(args) if a.split("=", 1)[0] in _SERVICE_OPTIONS),
        len(args),
    )
    twist, service = args[:at], args[at:]
    if not any(a.startswith("--log-format") for a in twist):
        twist.insert(0, "--log-format=text")
    options = Options()
    try:
        options.parseOptions([*twist, "relayd", *service])
    except UsageError as e:
        sys.stderr.write(f"relayd run: {e}\n")
        return EX_USAGE
    reactor = options["reactor"]
    application = Twist.service(maker, options.subOptions)
    Twist.startService(reactor, application)
    Twist.run(options)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """
    The C{relayd} console script.

    @param argv: The arguments after the program name; C{sys.argv[1:]}
        when C{None}.
    @return: The exit status.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        (sys.stdout if args else sys.stderr).write(USAGE)
        return 0 if args else EX_USAGE
    command, rest = args[0], args[1:]
    if command == "--version":
        sys.stdout.write(f"relayd {__version__}\n")
        return 0
    if command == "run":
        return run(rest)
    if command == "check":
        path = _config_argument(rest)
        if path is None:
            sys.stderr.write("Usage: relayd check --config PATH\n")
            return EX_USAGE
        return check(path, sys.stdout, sys.stderr)
    if command == "tokens":
        from relayd.tokens import main as tokens

        return tokens(rest)
    if command == "explain":
        from relayd.explain import main as explain

        return explain(rest)
    sys.stderr.write(f"relayd: unknown command {command!r}\n\n{USAGE}")
    return EX_USAGE


def _config_argument(args: Sequence[str]) -> str | None:
    """
    @return: The value of C{--config PATH}, C{--config=PATH} or C{-c PATH}
        (default C{/etc/relayd/relayd.toml} when absent), or C{None} for
        anything else.
    """
    if not args:
        return "/etc/relayd/relayd.toml"
    if len(args) == 2 and args[0] in ("-c", "--config"):
        return args[1]
    if len(args) == 1 and args[0].startswith("--config="):
        return args[0].split("=", 1)[1]
    return None


if __name__ == "__main__":
    sys.exit(main())
