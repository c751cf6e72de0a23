# -*- test-case-name: tests.test_faultupstream -*-
"""
An MTA-like SMTP client for the test suite: sends N messages over M
concurrent sessions (smtplib, one thread per session, STARTTLS and AUTH),
and retries a message that got a C{4xx} reply or no reply at all, as an
MTA's queue does (RFC 5321 section 4.5.4.1), with exponential backoff,
bounded in attempts and in time.

Blocking: call L{send_all} from a thread (C{deferToThread}) in a test that
runs the reactor.
"""

from __future__ import annotations

import heapq
import smtplib
import ssl
import threading
import time
import uuid
from collections.abc import Sequence
from email.message import EmailMessage

import attrs

__all__ = ["Attempt", "Result", "make_messages", "send_all"]


@attrs.frozen
class Attempt:
    """
    One try of one message.

    @ivar code: The reply code to the final dot (or to whichever command
        failed), or C{None} when the connection broke with no reply.
    @ivar text: The reply text (enhanced status code included), or the
        error when there was no reply.
    """

    code: int | None
    text: str


@attrs.frozen
class Result:
    """
    What became of one message.

    @ivar index: Its position in the list given to L{send_all}.
    @ivar attempts: Every try, in order; the last is the final reply.
    """

    index: int
    attempts: tuple[Attempt, ...]

    @property
    def final(self) -> Attempt:
        """
        The last reply: C{250} delivered, C{5xx} bounced, C{4xx} or
        C{None} given up after the retry bounds.
        """
        return self.attempts[-1]


def make_messages(count: int, tag: str, sender: str = "sender@example.com") -> list[bytes]:
    """
    C{count} distinct messages, each with its own C{Message-ID} and the
    subject C{"<tag> #<i>"} (which the upstream sees).

    @return: RFC 5322 messages, CRLF line ends.
    """
    messages = []
    for i in range(count):
        m = EmailMessage()
        m["From"] = sender
        m["To"] = "rcpt@example.net"
        m["Subject"] = f"{tag} #{i}"
        m["Message-ID"] = f"<{tag}.{i}.{uuid.uuid4().hex}@client.test>"
        m.set_content(f"message {i} of {count}\n")
        messages.append(m.as_bytes(policy=m.policy.clone(linesep="\r\n")))
    return messages


def _bytes(text: bytes | str) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8")


class _Queue:
    """
    The messages due for a try, by the time they are due; thread-safe.
    """

    def __init__(self, count: int, deadline: float) -> None:
        self._due: list[tuple[float, int]] = [(0.0, i) for i in range(count)]
        self._open = count
        self._deadline = deadline
        self._lock = threading.Condition()

    def next(self) -> int | None:
        """
        Wait for the next due message.

        @return: Its index, or C{None} when every message is done.
        """
        with self._lock:
            while True:
                if self._open == 0:
                    return None
                now = time.monotonic()
                if self._due and self._due[0][0] <= now:
                    return heapq.heappop(self._due)[1]
                wait = self._due[0][0] - now if self._due else 0.5
                self._lock.wait(min(wait, 0.5))

    def later(self, index: int, delay: float) -> bool:
        """
        Try C{index} again in C{delay} seconds, unless that is past the
        deadline.

        @return: C{False} when it will not be tried again (it is done).
        """
        with self._lock:
            if time.monotonic() + delay > self._deadline:
                self._done()
                return False
            heapq.heappush(self._due, (time.monotonic() + delay, index))
            self._lock.notify_all()
            return True

    def done(self) -> None:
        with self._lock:
            self._done()

    def _done(self) -> None:
        self._open -= 1
        self._lock.notify_all()


def send_all(
    host: str,
    port: int,
    messages: Sequence[bytes],
    *,
    username: str,
    password: str,
    tls_context: ssl.SSLContext,
    sessions: int = 20,
    sender: str = "sender@example.com",
    recipients: Sequence[str] = ("rcpt@example.net",),
    max_attempts: int = 8,
    backoff: float = 0.1,
    max_backoff: float = 1.0,
    deadline: float = 30.0,
    timeout: float = 10.0,
) -> list[Result]:
    """
    Send every message, as an MTA would: C{sessions} concurrent SMTP
    sessions (STARTTLS, then AUTH), each sending one message per
    transaction until no message is due; a message that gets a C{4xx} or no
    reply is tried again (possibly over another session) after
    C{backoff * 2**(tries - 1)} seconds (at most C{max_backoff}), until
    C{max_attempts} tries or C{deadline} seconds have passed.  A session
    that broke or got a C{421} is replaced by a new one.

    @param host: The relay's address.
    @param port: Its STARTTLS submission port.
    @param messages: RFC 5322 messages, CRLF line ends.
    @param tls_context: Verifies the relay's certificate.
    @param timeout: Seconds for each socket operation.
    @return: One L{Result} per message, in the order of C{messages}.
    """
    started = time.monotonic()
    queue = _Queue(len(messages), started + deadline)
    attempts: list[list[Attempt]] = [[] for _ in messages]

    def connect() -> smtplib.SMTP:
        client = smtplib.SMTP(host, port, local_hostname="mta.test", timeout=timeout)
        try:
            client.starttls(context=tls_context)
            client.login(username, password)
        except BaseException:
            client.close()
            raise
        return client

    def one(client: smtplib.SMTP, data: bytes) -> Attempt:
        code, text = client.mail(sender)
        if code == 250:
            for recipient in recipients:
                code, text = client.rcpt(recipient)
                if code not in (250, 251):
                    break
            else:
                try:
                    code, text = client.data(data)
                except smtplib.SMTPDataError as e:  # no 354
                    code, text = e.smtp_code, _bytes(e.smtp_error)
                return Attempt(code, text.decode("utf-8", "replace"))
        client.rset()
        return Attempt(code, text.decode("utf-8", "replace"))

    def session() -> None:
        client: smtplib.SMTP | None = None
        try:
            while (index := queue.next()) is not None:
                try:
                    if client is None:
                        client = connect()
                    attempt = one(client, messages[index])
                except (OSError, smtplib.SMTPException) as e:
                    attempt = Attempt(None, f"{type(e).__name__}: {e}")
                if attempt.code is None or attempt.code == 421:
                    if client is not None:
                        client.close()
                    client = None
                attempts[index].append(attempt)
                tries = len(attempts[index])
                temporary = attempt.code is None or 400 <= attempt.code < 500
                if temporary and tries < max_attempts:
                    queue.later(index, min(max_backoff, backoff * 2 ** (tries - 1)))
                else:
                    queue.done()
        finally:
            if client is not None:
                try:
                    client.quit()
                except (OSError, smtplib.SMTPException):
                    client.close()

    threads = [threading.Thread(target=session, daemon=True) for _ in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(deadline + 2 * timeout)
    return [Result(i, tuple(a)) for i, a in enumerate(attempts)]
