# -*- test-case-name: tests.test_e2e -*-
"""
The real relayd for end-to-end tests: C{python -m twisted relayd --config}
run in a temporary directory (with a self-signed certificate for
C{localhost}) on the configuration a test writes, started once its
listeners' free 127.0.0.1 ports take connections.

L{tests.test_e2e.Daemon}, L{tests.test_delivery_promise.Relayd},
L{tests.test_routes_e2e.Relayd} and L{tests.test_presets_e2e.PresetDaemon}
are L{RelaydProcess}es that write their own tokens and configuration.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from relayd.tls import ensure_self_signed

__all__ = ["ROOT", "RelaydProcess", "config", "free_port"]

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """
    @return: A TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(
    upstream_url: str,
    listeners: Sequence[tuple[int, str]],
    timeout: float,
    server: str = "",
    extra: str = "",
) -> str:
    """
    The usual test configuration: hostname C{relay.test}, the given
    listeners on 127.0.0.1, the certificate of L{RelaydProcess}, the tokens
    in C{tokens.toml}, and the upstream.

    @param upstream_url: C{upstream.url}.
    @param listeners: C{(port, tls mode)} of each listener.
    @param timeout: C{upstream.timeout}, in seconds.
    @param server: More lines of C{[server]}.
    @param extra: More TOML after C{[upstream]}.
    @return: The text of C{relayd.toml}.
    """
    tables = "".join(
        f'\n[[listeners]]\nendpoint = "tcp:port={port}:interface=127.0.0.1"\ntls = "{tls}"\n'
        for port, tls in listeners
    )
    return f"""
[server]
hostname = "relay.test"
{server}
{tables}
[tls]
certificate = "cert.pem"
key = "key.pem"

[auth]
tokens_file = "tokens.toml"

[upstream]
url = "{upstream_url}"
timeout = {timeout}
{extra}
"""


class RelaydProcess:
    """
    The real relayd in a temporary directory.

    @ivar dir: The directory: C{relayd.toml}, C{cert.pem}, C{key.pem},
        C{relayd.log} and what the test writes (L{write}).
    @ivar cert: The certificate's path (the CA a client pins).
    @ivar process: The running C{twist} process (after L{start}).
    @ivar log: Its output, in C{relayd.log} (after L{start}).
    @cvar stop_wait: Seconds L{stop} waits after SIGTERM before SIGKILL.
    """

    stop_wait = 10

    def __init__(self, prefix: str) -> None:
        """
        @param prefix: The temporary directory's name prefix.
        """
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.cert = str(self.dir / "cert.pem")
        ensure_self_signed(self.cert, str(self.dir / "key.pem"), "localhost")

    def write(self, name: str, text: str) -> None:
        """
        Write a file (tokens, credentials) into L{dir}.
        """
        (self.dir / name).write_text(text)

    def start(self, configuration: str, ports: Sequence[int], wait: float = 30) -> None:
        """
        Write C{relayd.toml} and run relayd until each of C{ports} takes a
        connection.

        @param configuration: The text of C{relayd.toml}.
        @param ports: The listeners' ports on 127.0.0.1.
        @param wait: Seconds to wait for them.
        @raise RuntimeError: When relayd exits or does not listen in time
            (with its log); it is then stopped.
        """
        self.write("relayd.toml", configuration)
        self.log = open(self.dir / "relayd.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "twisted", "--log-format=text", "relayd", "--config"]
            + [str(self.dir / "relayd.toml")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=str(self.dir),
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        deadline = time.monotonic() + wait
        waiting = list(ports)
        while waiting and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", waiting[0]), 0.2).close()
                waiting.pop(0)
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("relayd exited: " + self.logtext()) from None
                time.sleep(0.05)
        if waiting:
            text = self.logtext()
            self.stop()
            raise RuntimeError("relayd did not start: " + text)

    def logtext(self) -> str:
        """
        @return: relayd's output so far.
        """
        self.log.flush()
        return (self.dir / "relayd.log").read_text("utf-8", "replace")

    def tls_context(self) -> ssl.SSLContext:
        """
        @return: A client context that trusts only L{cert}, for connecting
            by IP (the CA pins the server).
        """
        context = ssl.create_default_context(cafile=self.cert)
        context.check_hostname = False  # connecting by IP; the CA pins it
        return context

    def stop(self) -> None:
        """
        Stop relayd (SIGTERM, then SIGKILL after L{stop_wait}) and remove
        L{dir}.
        """
        self.process.terminate()
        try:
            self.process.wait(self.stop_wait)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
