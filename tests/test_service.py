"""
Tests for L{relayd.service} and L{relayd.tap}: the listeners the daemon
binds, checked on a L{MemoryReactor}.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase

from relayd.config import ConfigError, parse_config
from relayd.service import make_service
from relayd.smtp.session import RelaySMTPFactory
from relayd.tap import Options
from relayd.tokens import digest
from relayd.workers import WorkerPool, worker_count


def write_config(folder: Path, extra: str = "", workers: int = 1) -> str:
    (folder / "tokens.toml").write_text(f'[tokens.t]\nsha256 = "{digest("tok").hex()}"\n')
    path = folder / "relayd.toml"
    path.write_text(
        f"""
[server]
hostname = "mx.test"
workers = {workers}
[[listeners]]
endpoint = "tcp:port=2525:interface=127.0.0.1"
tls = "starttls"
[[listeners]]
endpoint = "tcp:port=4650:interface=127.0.0.1"
tls = "implicit"
[tls]
certificate = "cert.pem"
key = "key.pem"
generate_self_signed = true
[auth]
tokens_file = "tokens.toml"
{extra}
"""
    )
    return str(path)


class ServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp())

    def test_listeners(self) -> None:
        """
        Each listener is bound as configured; the implicit-TLS one is
        wrapped in TLS on the factory, the STARTTLS one is not.
        """
        path = write_config(
            self.folder,
            '[dev_upstream]\nenabled = true\nendpoint = "tcp:port=8025:interface=127.0.0.1"',
        )
        config = parse_config(Path(path).read_text(), path)
        reactor = MemoryReactorClock()
        service = make_service(config, reactor)
        service.privilegedStartService()
        service.startService()
        ports = [(port, factory, interface) for port, factory, _, interface in reactor.tcpServers]
        self.assertEqual(
            [(p, i) for p, _, i in ports],
            [(2525, "127.0.0.1"), (4650, "127.0.0.1"), (8025, "127.0.0.1")],
        )
        starttls, implicit = ports[0][1], ports[1][1]
        self.assertIsInstance(starttls, RelaySMTPFactory)
        assert isinstance(starttls, RelaySMTPFactory)  # for mypy
        self.assertFalse(starttls.implicit_tls)
        self.assertIsInstance(implicit, TLSMemoryBIOFactory)
        assert isinstance(implicit, TLSMemoryBIOFactory)
        wrapped = implicit.wrappedFactory
        assert isinstance(wrapped, RelaySMTPFactory)
        self.assertTrue(wrapped.implicit_tls)
        self.assertEqual(starttls.hostname, "mx.test")
        self.assertTrue((self.folder / "cert.pem").exists())
        self.assertIs(starttls.limiter, wrapped.limiter)
        service.stopService()

    def test_missing_tokens_file(self) -> None:
        path = write_config(self.folder)
        (self.folder / "tokens.toml").unlink()
        config = parse_config(Path(path).read_text(), path)
        e = self.assertRaises(ConfigError, make_service, config, MemoryReactorClock())
        self.assertIn("tokens.toml", str(e))

    def test_workers_pool(self) -> None:
        path = write_config(self.folder, workers=3)
        config = parse_config(Path(path).read_text(), path)
        service = make_service(config, MemoryReactorClock())
        (pool,) = [s for s in service if isinstance(s, WorkerPool)]
        self.assertEqual(pool.count, 2)
        self.assertEqual(pool.argv[-2:], ["--config", path])

    def test_worker_count(self) -> None:
        self.assertEqual(worker_count(3), 3)
        self.assertGreaterEqual(worker_count(0), 1)

    def test_inherit_fds_option(self) -> None:
        options = Options()
        options.parseOptions(["--config", "x.toml", "--inherit-fds", "3,4"])
        self.assertEqual(options["inherit-fds"], (3, 4))
        options = Options()
        options.parseOptions(["--config", "x.toml"])
        self.assertEqual(options["inherit-fds"], ())


class ConfigCheckTests(SynchronousTestCase):
    def test_bad_endpoint_is_a_config_error(self) -> None:
        folder = Path(tempfile.mkdtemp())
        path = write_config(folder)
        config = parse_config(
            Path(path).read_text().replace("tcp:port=2525:", "nosuch:port=2525:"), path
        )
        e = self.assertRaises(ConfigError, make_service, config, MemoryReactorClock())
        self.assertIn("listeners[0].endpoint", str(e))


class AcceptTests(SynchronousTestCase):
    def test_accept_one_at_a_time(self) -> None:
        """
        A shared listening port takes one connection per wake-up, whatever
        Twisted's adaptive accept loop raised the count to.
        """
        from relayd.workers import accept_one_at_a_time

        class Port:
            numberAccepts = 100
            seen: list[int] = []

            def doRead(self) -> None:
                self.seen.append(self.numberAccepts)
                self.numberAccepts += 20

        port = Port()
        accept_one_at_a_time(port)
        port.doRead()
        port.doRead()
        self.assertEqual(Port.seen, [1, 1])
