"""
A client that leaves right after the final dot, end to end: the real
daemon (L{tests.test_delivery_promise.Relayd}) over real 127.0.0.1
sockets, a slow upstream (L{tests.faultupstream.FaultUpstream}), and 20
clients that send the final dot and close at once.  When the upstream's
answer arrives, the daemon's log says, for each, that the client left
before the reply, with the session id and the upstream's id.
"""

from __future__ import annotations

import re
import smtplib
import time
from concurrent.futures import ThreadPoolExecutor

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.faultupstream import FaultUpstream
from tests.mtaclient import make_messages
from tests.test_delivery_promise import TOKEN, Relayd

CLIENTS = 20
DELAY = 1.0

WARNING = re.compile(
    r"client 127\.0\.0\.1 left before the reply to a relayed message"
    r" \(session (?P<session>[0-9a-f]+): 250 2\.0\.0 Ok: queued as (?P<id>fault-\d+)\)"
)


def leave_after_dot(relayd: Relayd, message: bytes) -> None:
    """
    STARTTLS, AUTH, one transaction up to the final dot; then close the
    connection without reading the reply (blocking: run it in a thread).
    """
    client = smtplib.SMTP("127.0.0.1", relayd.port, local_hostname="mta.test", timeout=10)
    try:
        client.starttls(context=relayd.tls_context())
        client.login("apikey", TOKEN)
        client.mail("sender@example.com")
        client.rcpt("rcpt@example.net")
        client.putcmd("data")
        code, _ = client.getreply()
        assert code == 354, code
        assert client.sock is not None
        client.sock.sendall(message + b".\r\n")
    finally:
        client.close()


def leave_all(relayd: Relayd, messages: list[bytes]) -> None:
    """
    L{leave_after_dot} with every message at once, one client each.
    """
    with ThreadPoolExecutor(len(messages)) as pool:
        list(pool.map(lambda m: leave_after_dot(relayd, m), messages))


class ClientLeftTests(TestCase):
    timeout = 60

    def test_client_left_before_the_reply_is_logged(self) -> Deferred[None]:
        """
        20 clients send the final dot and close at once; the upstream
        answers a second later: 20 warnings, each with its session id and
        the upstream id of its message.
        """
        return Deferred.fromCoroutine(self._client_left())

    async def _client_left(self) -> None:
        upstream = FaultUpstream(reactor, "slow", delay=DELAY)
        upstream.start()
        self.addCleanup(upstream.stop)
        relayd = Relayd(upstream.url, upstream_timeout=DELAY * 10)
        self.addCleanup(relayd.stop)
        messages = make_messages(CLIENTS, "left")
        await deferToThread(leave_all, relayd, messages)
        deadline = time.monotonic() + 30
        found: list[re.Match[str]] = []
        while time.monotonic() < deadline:
            found = list(WARNING.finditer(relayd.logtext()))
            if len(found) >= CLIENTS:
                break
            await deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(len(upstream.accepted), CLIENTS)
        self.assertEqual(len(found), CLIENTS, relayd.logtext()[-3000:])
        self.assertEqual(
            sorted(m["id"] for m in found), sorted(r.upstream_id for r in upstream.accepted)
        )
        self.assertEqual(len({m["session"] for m in found}), CLIENTS)
        self.assertNotIn("Traceback", relayd.logtext())
