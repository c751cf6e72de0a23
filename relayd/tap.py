# -*- test-case-name: tests.test_tap -*-
"""
The C{twistd}/C{twist} plugin's options and service maker:
C{twist relayd --config PATH}.

This is the only module that touches the global reactor.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

from twisted.python import usage

from relayd.config import Config, ConfigError, load_config
from relayd.heap import fix_mmap_threshold

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


#: Seconds a thread may hold the GIL while another waits for it (Python's
#: default is 0.005).  A large message is built in a pool thread
#: (L{relayd.pipeline}); the reactor thread gives up the GIL in every
#: system call and in every call into OpenSSL (cffi releases it), a dozen
#: times per TLS reply, and each time waits up to this long to get it back
#: from the builder.  Another session's slowest NOOP during ten 24 MB
#: messages (issue 9, 2 cores): 55 to 165 ms at 5 ms, 70 to 120 ms at 1 ms,
#: 46 to 54 ms at 0.2 ms, 37 to 46 ms at 0.1 ms.  A shorter interval costs
#: only while two threads want the GIL (a large message being built); the
#: 5 MB and 25 MiB benchmarks showed no difference beyond their noise.
GIL_SWITCH_INTERVAL = 0.0001


def _log_options(options: Options) -> tuple[str, ...]:
    """
    Take over C{twist}'s log output: relayd's own observer (text or JSON
    lines, naming the worker, L{relayd.events.log_observer_factory}), and
    the same C{--log-format} and C{--log-level} for the workers.

    @param options: The plugin's options; their C{parent} is C{twist}'s
        (under C{twistd}, whose options differ, nothing changes).
    @return: The log options to give each worker's command line.
    """
    parent = getattr(options, "parent", None)
    if parent is None or "fileLogObserverFactory" not in parent or "logLevel" not in parent:
        return ()
    from twisted.logger import jsonFileLogObserver

    from relayd import events
    from relayd.events import log_observer_factory

    fmt = "json" if parent["fileLogObserverFactory"] is jsonFileLogObserver else "text"
    parent["fileLogObserverFactory"] = log_observer_factory(fmt)
    events.debug_enabled = parent["logLevel"].name == "debug"
    return (f"--log-format={fmt}", f"--log-level={parent['logLevel'].name}")


def _metrics_directory(config: Config, worker: bool) -> None:
    """
    With an admin listener and several processes, make the folder where
    every process writes its metrics (prometheus_client's multiprocess
    mode) before L{relayd.metrics} is imported; the workers inherit it in
    their environment.  It is removed when the supervisor's reactor stops.
    """
    from relayd.workers import worker_count

    if worker or not config.admin.listen or worker_count(config.server.workers) < 2:
        return
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    path = tempfile.mkdtemp(prefix="relayd-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    from twisted.internet import reactor

    reactor.addSystemEventTrigger(  # type: ignore[attr-defined]
        "after", "shutdown", shutil.rmtree, path, True
    )


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

    from relayd.dispatch import direct_dispatch

    fix_mmap_threshold()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    try:
        config = load_config(options["config"])
        # Before anything imports relayd.metrics (relayd.events does).
        _metrics_directory(config, bool(options["inherit-fds"]))
        log_args = _log_options(options)
        from relayd.service import make_service

        service = make_service(config, reactor, options["inherit-fds"], log_args)
        # Each socket's handler called directly (relayd.dispatch).
        direct_dispatch(reactor)
        return service
    except ConfigError as e:
        message = str(e)
        if not message.startswith(options["config"]):
            message = f"{options['config']}: {message}"
        sys.stderr.write(f"relayd: {message}\n")
        sys.stderr.flush()
        raise SystemExit(78) from None
