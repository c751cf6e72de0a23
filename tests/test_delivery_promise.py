"""
The delivery promise, end to end: whatever the upstream does, a message
relayd answered C{250} was recorded by the upstream (never lost), and no
message is recorded twice when the upstream honours C{Idempotency-Key}
(never twice).

For each fault of L{tests.faultupstream} (one generated test per mode,
from L{CASES}), the real daemon (C{twist relayd}, as in L{tests.test_e2e})
relays 100 messages sent over 20 concurrent STARTTLS sessions by
L{tests.mtaclient}, which retries C{4xx} replies as an MTA does.  The
upstream honours the key; the daemon's upstream timeout is 1 second.

relayd names every transaction with an idempotency key, sends it as
C{Idempotency-Key}, and records each key's outcome: so the faults that lose
an answer after the upstream took the message (C{slow}: the answer comes
after relayd's upstream timeout; C{reset_after_read}) lose and duplicate
nothing.  C{slow} also runs against an upstream that ignores the key
(C{slow_key_ignored}): relayd's own record of the late answer must answer
the retry with the first id, sending nothing.  C{close_after_each}: the
request written on a pooled connection the upstream has closed is never
read by it, so relayd's 451 and the client's retry lose and duplicate
nothing.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from relayd.tokens import digest
from tests.daemon import RelaydProcess, config
from tests.daemon import free_port as free_port  # used from here by test_faultupstream
from tests.faultupstream import FaultUpstream
from tests.mtaclient import Result, make_messages, send_all

TOKEN = "promise-token-not-a-secret"
MESSAGES = 100
SESSIONS = 20
UPSTREAM_TIMEOUT = 1.0


class Relayd(RelaydProcess):
    """
    The real relayd (C{python -m twisted relayd}) on a temporary
    configuration: one STARTTLS listener on a free 127.0.0.1 port, one
    token (C{promise}), the given upstream URL and a short upstream
    timeout.
    """

    def __init__(self, upstream_url: str, upstream_timeout: float = UPSTREAM_TIMEOUT) -> None:
        super().__init__("relayd-promise-")
        self.write("tokens.toml", f'[tokens.promise]\nsha256 = "{digest(TOKEN).hex()}"\n')
        self.port = free_port()
        self.start(config(upstream_url, [(self.port, "starttls")], upstream_timeout), [self.port])

    def send(self, messages: list[bytes], **kwargs: Any) -> list[Result]:
        """
        Send C{messages} with L{send_all} (blocking: call it in a thread).
        """
        return send_all(
            "127.0.0.1",
            self.port,
            messages,
            username="apikey",
            password=TOKEN,
            tls_context=self.tls_context(),
            **kwargs,
        )


@attrs.frozen
class Case:
    """
    One fault to relay through.

    @ivar mode: The L{FaultUpstream} mode.
    @ivar upstream: Further L{FaultUpstream} arguments.
    @ivar down_for: For C{down}: seconds before the upstream comes up.
    @ivar known_failure: Why today's relayd breaks the promise, or C{None}.
    @ivar honour_key: The upstream answers a repeated C{Idempotency-Key}
        with the first id.
    @ivar name: The test's name, C{test_<name>}; the mode by default.
    """

    mode: str
    upstream: dict[str, Any] = attrs.field(factory=dict)
    down_for: float = 0.0
    known_failure: str | None = None
    honour_key: bool = True
    name: str = ""


CASES = [
    Case("ok"),
    Case("down", down_for=1.5),
    # Answers after relayd's upstream timeout: the client's 451 and retry
    # meet relayd's record (in flight, then accepted) and the key.
    Case("slow", {"delay": UPSTREAM_TIMEOUT + 0.5, "fault_first": 1}),
    # The same, and the upstream ignores the key: relayd's record alone
    # must keep the retry from being sent.
    Case(
        "slow",
        {"delay": UPSTREAM_TIMEOUT + 0.5, "fault_first": 1},
        honour_key=False,
        name="slow_key_ignored",
    ),
    # The upstream recorded the message, then reset the connection: the
    # retry is sent again with the same key, which the upstream honours.
    Case("reset_after_read", {"fault_first": 1}),
    Case("reset_before", {"fault_every": 3}),
    Case("5xx", {"fault_first": 1}),
    Case("429", {"fault_first": 1}),
    Case("garbage_200"),
    # The upstream reads nothing after its answer, so a request sent over the
    # dead pooled connection never reaches it: a 451 and a retry, no harm.
    Case("close_after_each"),
]


class DeliveryPromiseTests(TestCase):
    """
    One daemon for every case; each case gets a fresh L{FaultUpstream} on
    the same port.
    """

    timeout = 45
    relayd: Relayd
    upstream_port: int

    @classmethod
    def setUpClass(cls) -> None:
        cls.upstream_port = free_port()
        cls.relayd = Relayd(f"http://127.0.0.1:{cls.upstream_port}/send")

    @classmethod
    def tearDownClass(cls) -> None:
        log = cls.relayd.logtext()
        cls.relayd.stop()
        assert TOKEN not in log, "token in the log"

    async def promise(self, case: Case) -> None:
        upstream = FaultUpstream(
            reactor,
            case.mode,
            port=self.upstream_port,
            honour_key=case.honour_key,
            **case.upstream,
        )
        upstream.start()
        self.addCleanup(upstream.stop)
        if case.down_for:
            up = reactor.callLater(case.down_for, upstream.set_mode, "ok")
            self.addCleanup(lambda: up.cancel() if up.active() else None)
        log_start = len(self.relayd.logtext())
        tag = f"{case.mode}-{uuid.uuid4().hex[:8]}"
        messages = make_messages(MESSAGES, tag)
        results: list[Result] = await deferToThread(
            self.relayd.send, messages, sessions=SESSIONS, deadline=25.0
        )
        subject = [f"{tag} #{i}" for i in range(MESSAGES)]
        recorded = Counter(upstream.subjects())

        lost = [
            (subject[r.index], r.final)
            for r in results
            if r.final.code == 250 and not recorded[subject[r.index]]
        ]
        self.assertEqual(lost, [], "answered 250 but not recorded upstream")
        twice = sorted(str(s) for s, n in recorded.items() if n > 1)
        self.assertEqual(twice, [], f"recorded more than once ({len(twice)} messages)")
        undelivered = [(subject[r.index], r.attempts) for r in results if r.final.code != 250]
        self.assertEqual(undelivered, [], "not delivered within the retry bounds")
        self.assertEqual(sorted(str(s) for s in recorded), sorted(subject))
        # Every 250 names the id the upstream gave the one recorded copy.
        ids = {r.subject: r.upstream_id for r in upstream.accepted}
        wrong_id = [
            (subject[r.index], r.final.text)
            for r in results
            if "queued as" in r.final.text
            and not r.final.text.endswith(f"queued as {ids[subject[r.index]]}")
        ]
        self.assertEqual(wrong_id, [], "250 without the recorded upstream id")
        if not case.honour_key:
            # relayd's own records answered the retries: one request each.
            requests = Counter(r.subject for r in upstream.requests)
            self.assertEqual(sorted(str(s) for s, n in requests.items() if n > 1), [], "sent again")
        log = self.relayd.logtext()[log_start:]
        self.assertNotIn("Traceback", log)


def _case_test(case: Case) -> Callable[[DeliveryPromiseTests], Deferred[None]]:
    def test(self: DeliveryPromiseTests) -> Deferred[None]:
        return Deferred.fromCoroutine(self.promise(case))

    test.__name__ = f"test_{case.name or case.mode}"
    test.__doc__ = (
        f"Upstream mode {case.mode}"
        + ("" if case.honour_key else ", Idempotency-Key ignored")
        + f": {MESSAGES} messages over {SESSIONS} sessions; every 250 "
        "is recorded upstream, none is recorded twice, all are delivered."
    )
    if case.known_failure is not None:
        test = pytest.mark.xfail(strict=False, reason=case.known_failure)(test)
    return test


for _case in CASES:
    setattr(DeliveryPromiseTests, f"test_{_case.name or _case.mode}", _case_test(_case))
