"""
End to end: two real relayd daemons (A and B) sharing one real
C{redis-server} on a free 127.0.0.1 port, as two nodes of a fleet
(C{docs/scaling.md}, "Shared state").  Clients connect from several
127.0.0.x source addresses, so each test has a client address of its own.

One AUTH lockout holds on both, one message rate counts on both, a retry on
B of a message that A's upstream took is answered from the shared
idempotency record; with Redis stopped both keep relaying on in-process
state, and no message gets a 250 that the upstream did not take.
"""

from __future__ import annotations

import base64
import smtplib
import time
import unittest
from typing import ClassVar

from tests.test_e2e import TOKEN, Daemon, Upstream
from tests.test_redisstore import REDIS_SERVER, RedisServer


def config(redis: RedisServer) -> str:
    return f"""
[limits]
auth_failures_per_ip = 2
messages_per_minute_per_ip = 3

[redis]
url = "{redis.url}"
timeout = 0.5
retry_interval = 1
"""


def message(n: str) -> bytes:
    return (
        f"From: a@example.com\r\nTo: b@example.net\r\nSubject: fleet {n}\r\n"
        f"Message-ID: <fleet-{n}@example.com>\r\n\r\nbody {n}\r\n"
    ).encode()


def connect(daemon: Daemon, source: str) -> smtplib.SMTP_SSL:
    context = daemon.tls_context()
    context.check_hostname = False  # connecting by IP; the CA pins it
    return smtplib.SMTP_SSL(
        "127.0.0.1",
        daemon.implicit_port,
        local_hostname="client.test",
        context=context,
        timeout=15,
        source_address=(source, 0),
    )


def auth(client: smtplib.SMTP, token: str = TOKEN) -> tuple[int, bytes]:
    client.ehlo()
    plain = base64.b64encode(b"\0apikey\0" + token.encode()).decode()
    return client.docmd("AUTH", "PLAIN " + plain)


def send(daemon: Daemon, source: str, data: bytes) -> tuple[int, bytes]:
    """
    One transaction; the reply to MAIL when it is refused, else to DATA.
    """
    with connect(daemon, source) as client:
        assert auth(client)[0] == 235
        code, text = client.mail("a@example.com")
        if code != 250:
            return code, text
        assert client.rcpt("b@example.net")[0] == 250
        return client.data(data)


class FleetBase(unittest.TestCase):
    redis: ClassVar[RedisServer]
    upstream: ClassVar[Upstream]
    a: ClassVar[Daemon]
    b: ClassVar[Daemon]

    @classmethod
    def setUpClass(cls) -> None:
        if REDIS_SERVER is None:
            raise unittest.SkipTest("redis-server is not installed (apt-get install redis-server)")
        cls.redis = RedisServer()
        cls.upstream = Upstream()
        url = f"http://127.0.0.1:{cls.upstream.port}/v1/send"
        cls.a = Daemon(url, config(cls.redis))
        cls.b = Daemon(url, config(cls.redis))

    @classmethod
    def tearDownClass(cls) -> None:
        cls.a.stop()
        cls.b.stop()
        cls.upstream.stop()
        cls.redis.stop()


class FleetTests(FleetBase):
    def test_auth_lockout_holds_on_both(self) -> None:
        """
        Two failed AUTH from 127.0.0.5 on A lock that client out on B
        (454 4.7.0, even with the right token); 127.0.0.6 still logs in on B.
        """
        for n in range(2):
            with connect(self.a, "127.0.0.5") as client:
                self.assertEqual(auth(client, f"wrong-{n}")[0], 535)
        with connect(self.b, "127.0.0.5") as client:
            code, text = auth(client)
        self.assertEqual(code, 454)
        self.assertTrue(text.startswith(b"4.7.0 Too many failed authentication attempts"), text)
        with connect(self.b, "127.0.0.6") as client:
            self.assertEqual(auth(client)[0], 235)

    def test_message_rate_counts_on_both(self) -> None:
        """
        C{messages_per_minute_per_ip = 3}: three messages from 127.0.0.8 on
        A, the fourth on B is refused at MAIL with 451 4.7.1 saying when to
        retry, and nothing is sent for it; 127.0.0.9 still sends on B.
        """
        for n in range(3):
            self.assertEqual(send(self.a, "127.0.0.8", message(f"rate-{n}"))[0], 250)
        before = len(self.upstream.requests)
        code, text = send(self.b, "127.0.0.8", message("rate-3"))
        self.assertEqual(code, 451)
        self.assertRegex(
            text.decode(),
            r"^4\.7\.1 Too many messages from this IP address, try again in \d+ seconds$",
        )
        seconds = int(text.split()[-2])
        self.assertTrue(50 <= seconds <= 60, seconds)
        self.assertEqual(len(self.upstream.requests), before)
        self.assertEqual(send(self.b, "127.0.0.9", message("rate-other"))[0], 250)

    def test_retry_on_b_of_what_a_relayed(self) -> None:
        """
        A relays a message; the client's retry of it on B gets the same 250
        with the upstream's id, and the upstream gets no second request.
        """
        first = send(self.a, "127.0.0.10", message("retry"))
        self.assertEqual(first[0], 250)
        self.assertIn(b"queued as up-", first[1])
        before = len(self.upstream.requests)
        self.assertEqual(send(self.b, "127.0.0.10", message("retry")), first)
        self.assertEqual(len(self.upstream.requests), before)


class RedisStoppedTests(FleetBase):
    def test_both_keep_relaying_without_redis(self) -> None:
        """
        Redis stops mid-test: A and B keep relaying (each logs the fallback
        once), and every 250 names a request the upstream took; a message
        the upstream refuses gets no 250.
        """
        self.assertEqual(send(self.a, "127.0.0.11", message("before"))[0], 250)
        self.redis.stop()
        replies = [
            send(self.a, "127.0.0.11", message("down-a")),
            send(self.b, "127.0.0.11", message("down-b")),
            send(self.b, "127.0.0.12", message("down-b2")),
        ]
        self.assertEqual([code for code, _ in replies], [250, 250, 250])
        self.upstream.answers.append((422, {"message": "invalid recipient"}))
        code, _ = send(self.a, "127.0.0.12", message("refused"))
        self.assertNotEqual(code, 250)
        taken = {f"up-{n}" for n in range(1, len(self.upstream.requests) + 1)}
        for _, text in replies:
            self.assertIn(text.split()[-1].decode(), taken)
        self.assertEqual(len(self.upstream.requests), 5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            logs = self.a.logtext(), self.b.logtext()
            if all("Redis unreachable" in log for log in logs):
                break
            time.sleep(0.1)
        for log in (self.a.logtext(), self.b.logtext()):
            self.assertEqual(log.count("Redis unreachable"), 1, log[-2000:])
