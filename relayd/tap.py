# -*- test-case-name: tests.test_tap -*-
"""
The C{twistd}/C{twist} plugin's options and service maker:
C{twist relayd --config PATH}.

This is the only module that touches the global reactor.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.python import usage

from relayd.config import ConfigError, load_config

__all__ = ["Options", "makeService"]


class Options(usage.Options):
    """
    Command-line options of C{twistd relayd}.
    """

    synopsis = "--config PATH"
    longdesc = (
        "Run relayd: SMTP submission listeners that relay each message to an"
        " email provider's HTTP API.  See docs/configuration.md."
    )
    optParameters = [
        ["config", "c", "/etc/relayd/relayd.toml", "Path of the TOML configuration file."],
        [
            "inherit-fds",
            None,
            "",
            "Internal: run as a worker process on these inherited listening sockets.",
        ],
    ]

    def postOptions(self) -> None:
        fds = self["inherit-fds"]
        try:
            self["inherit-fds"] = tuple(int(x) for x in fds.split(",")) if fds else ()
        except ValueError:
            raise usage.UsageError("--inherit-fds: expected numbers separated by commas") from None


def _return_freed_memory_to_the_system() -> None:
    """
    Make glibc's malloc give large freed blocks back to the system.

    glibc raises its mmap threshold after a large block is freed, so after
    one 25 MiB message later large allocations come from the heap and the
    process keeps that memory.  A fixed threshold (128 KiB, glibc's initial
    one) keeps large message buffers in their own mappings, returned when
    freed (mallopt(3), M_MMAP_THRESHOLD).  Nothing happens on other C
    libraries.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def makeService(options: Options) -> Any:
    """
    Build relayd's service from the command-line options.

    A configuration that cannot be used stops start-up with one line on
    standard error naming the file and the key, and exit status 78
    (C{EX_CONFIG}), not a traceback.

    @param options: The parsed options.
    @return: The L{twisted.application.service.IService} to run.
    """
    from twisted.internet import reactor

    from relayd.service import make_service

    _return_freed_memory_to_the_system()
    try:
        config = load_config(options["config"])
        return make_service(config, reactor, options["inherit-fds"])
    except ConfigError as e:
        message = str(e)
        if not message.startswith(options["config"]):
            message = f"{options['config']}: {message}"
        sys.stderr.write(f"relayd: {message}\n")
        sys.stderr.flush()
        raise SystemExit(78) from None
