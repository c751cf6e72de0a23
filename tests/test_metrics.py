"""
Tests for L{relayd.metrics} and the admin listener (L{relayd.admin}):
units on the resource tree, and a scrape of the real daemon (two worker
processes) during real SMTP traffic, checked against what was sent.
"""

from __future__ import annotations

import smtplib
import time
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from relayd import metrics
from relayd.admin import ReadinessChecks, make_site
from relayd.reply import Reply
from tests.test_e2e import OTHER_TOKEN, TOKEN, Daemon, Upstream, children, distinct, free_port


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    A scrape as C{{(sample name, sorted labels): value}}.
    """
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(scrape: dict[Any, float], name: str, **labels: str) -> float:
    """
    The sum of C{name}'s samples whose labels include C{labels}.
    """
    return sum(
        v
        for (n, ls), v in scrape.items()
        if n == name and all((k, val) in ls for k, val in labels.items())
    )


class FakeService:
    def __init__(self, name: str, running: bool = True) -> None:
        self.name = name
        self.running = running
        from twisted.internet.defer import succeed

        self._waitingForPort = succeed(object()) if running else None


class FakeTracker:
    stopping = False


def render(site: Any, path: bytes) -> tuple[int, bytes]:
    request = DummyRequest([path])
    resource = site.resource.getChildWithDefault(path, request)
    result = resource.render(request)
    if isinstance(result, bytes):
        request.write(result)
        request.finish()
    return (request.responseCode or 200), b"".join(request.written)


class AdminResourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.tracker = FakeTracker()
        self.listening = [FakeService("submission")]
        self.site = make_site(ReadinessChecks(self.clock, self.listening, self.tracker), self.clock)

    def test_healthz_is_ok(self) -> None:
        self.assertEqual(render(self.site, b"healthz"), (200, b"ok\n"))

    def test_readyz_ready_then_draining(self) -> None:
        """
        Ready while the listeners are bound; C{503 draining} once the
        daemon stops (a load balancer takes it out of rotation).
        """
        self.assertEqual(render(self.site, b"readyz"), (200, b"ready\n"))
        self.tracker.stopping = True
        self.assertEqual(render(self.site, b"readyz"), (503, b"draining\n"))

    def test_readyz_unbound_listener(self) -> None:
        self.listening.append(FakeService("implicit", running=False))
        self.assertEqual(render(self.site, b"readyz"), (503, b"listener implicit not bound\n"))

    def test_metrics_counts_transactions(self) -> None:
        """
        C{metrics.transaction} counts by reply class, code and enhanced code
        and observes the size; C{/metrics} shows it.
        """
        before = samples(render(self.site, b"metrics")[1].decode())
        metrics.transaction(Reply(451, "4.3.0", "try later"), 2048)
        after = samples(render(self.site, b"metrics")[1].decode())
        key = (
            "relayd_transactions_total",
            (("code", "451"), ("enhanced", "4.3.0"), ("reply_class", "4xx")),
        )
        self.assertEqual(after[key] - before.get(key, 0), 1)
        count = ("relayd_message_size_bytes_count", ())
        self.assertEqual(after[count] - before[count], 1)


def scrape(port: int) -> dict[Any, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return samples(answer.read().decode())


class ScrapeEndToEndTests(SynchronousTestCase):
    def test_scrape_during_real_traffic_with_two_workers(self) -> None:
        """
        With C{workers = 2} and the admin listener on, one scrape of the
        supervisor adds up both processes: every relayed message, refused
        sender, failed AUTH and connection is counted once; C{/healthz} and
        C{/readyz} answer 200.
        """
        upstream = Upstream()
        admin = free_port()
        daemon = Daemon(
            f"http://127.0.0.1:{upstream.port}/send",
            extra=f'\n[admin]\nlisten = "tcp:{admin}:interface=127.0.0.1"\n',
            workers=2,
        )
        try:
            deadline = time.monotonic() + 20
            while not children(daemon.process.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1)  # let the worker adopt the sockets
            sent = 6
            for i in range(sent):
                with daemon.implicit() if i % 2 else daemon.starttls() as client:
                    client.login("apikey", TOKEN)
                    self.assertEqual(
                        client.sendmail(
                            "a@example.com", ["b@example.net", "c@example.net"], distinct()
                        ),
                        {},
                    )
            with daemon.implicit() as client:
                client.login("apikey", OTHER_TOKEN)
                with self.assertRaises(smtplib.SMTPSenderRefused):
                    client.sendmail("a@example.com", ["b@example.net"], distinct())
            with daemon.implicit() as client, self.assertRaises(smtplib.SMTPAuthenticationError):
                client.login("apikey", "wrong-token")
            self.assertEqual(len(upstream.requests), sent)
            time.sleep(0.5)  # the last sessions' close reaches the gauges

            figures = scrape(admin)
            self.assertEqual(
                total(figures, "relayd_transactions_total", code="250", enhanced="2.0.0"), sent
            )
            self.assertEqual(total(figures, "relayd_message_size_bytes_count"), sent)
            self.assertEqual(
                total(figures, "relayd_message_size_bytes_sum"), sent * len(distinct())
            )
            self.assertEqual(
                total(figures, "relayd_upstream_request_seconds_count", status_class="2xx"), sent
            )
            self.assertEqual(total(figures, "relayd_auth_total", outcome="success"), sent + 1)
            # smtplib tries PLAIN, then LOGIN: two failed AUTH commands.
            self.assertEqual(total(figures, "relayd_auth_total", outcome="failure"), 2)
            # One more on each listener: Daemon's probe that it listens.
            self.assertEqual(total(figures, "relayd_connections_total", tls="implicit"), 5 + 1)
            self.assertEqual(total(figures, "relayd_connections_total", tls="starttls"), 3 + 1)
            self.assertEqual(total(figures, "relayd_sessions_open"), 0)
            self.assertEqual(total(figures, "relayd_messages_in_flight"), 0)
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=5) as r:
                self.assertEqual((r.status, r.read()), (200, b"ok\n"))
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=5) as r:
                self.assertEqual((r.status, r.read()), (200, b"ready\n"))
        finally:
            daemon.stop()
            upstream.stop()

    def test_readyz_fails_when_the_upstream_is_gone(self) -> None:
        """
        Ready before any message; once the upstream was asked and has not
        answered (nothing listens at its URL) C{/readyz} says 503 and why,
        and the refused connection is counted; C{/healthz} stays 200.
        """
        admin = free_port()
        url = f"http://127.0.0.1:{free_port()}/send"  # nothing listens there
        daemon = Daemon(
            url,
            extra=f'\n[admin]\nlisten = "tcp:{admin}:interface=127.0.0.1"\nupstream_fresh = 0.5\n',
        )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=5) as r:
                self.assertEqual((r.status, r.read()), (200, b"ready\n"))
            with daemon.implicit() as client:
                client.login("apikey", TOKEN)
                for _ in range(metrics.UPSTREAM_FAILURES):
                    with self.assertRaises(smtplib.SMTPDataError):
                        client.sendmail("a@example.com", ["b@example.net"], distinct())
            with self.assertRaises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=5)
            self.assertEqual(e.exception.code, 503)
            self.assertIn(b"upstream did not answer", e.exception.read())
            figures = scrape(admin)
            failures = metrics.UPSTREAM_FAILURES
            self.assertEqual(
                total(figures, "relayd_upstream_errors_total", kind="refused"), failures
            )
            self.assertEqual(total(figures, "relayd_transactions_total", code="451"), failures)
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=5) as r:
                self.assertEqual(r.status, 200)
        finally:
            daemon.stop()
