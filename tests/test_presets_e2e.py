"""
End-to-end tests of the provider presets (C{etc/presets/*.toml}): for each
preset the real daemon (C{python -m twisted relayd}) runs on the preset,
laid under a small file (C{include}) that overrides only the listeners'
ports (free 127.0.0.1 ports, one per documented port, same TLS mode), the
certificate paths and the URLs of the auth endpoint and send API, which
L{tests.fakeprovider.FakeProvider} serves.  Real clients (smtplib over
STARTTLS and implicit TLS) check each row of the provider's SMTP
documentation (C{/work/shared/providers/}): the reply code and text the
client sees and the JSON the provider's API got.
"""

from __future__ import annotations

import base64
import smtplib
import tomllib
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.daemon import ROOT, RelaydProcess, free_port
from tests.fakeprovider import FakeProvider

PRESETS = ROOT / "etc" / "presets"

Reply = tuple[int, str]


def basic(user: str, password: str) -> str:
    """
    The C{{token}} of C{Authorization: Basic} (RFC 7617 section 2).
    """
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def message(*headers: str, body: str = "hello", sender: str = "sender@example.com") -> bytes:
    """
    A small message: From, To, Subject, C{headers}, then C{body}.  A header
    given as C{"From: ..."} or C{"To: ..."} replaces the default one; C{"-To"}
    leaves it out.  Each message has a Message-ID of its own, so that two
    tests' messages are never one message to relayd's idempotency records.
    """
    fields = {
        "From": f"From: {sender}",
        "To": "To: rcpt@example.net",
        "Subject": "Subject: hi",
        "Message-ID": f"Message-ID: <{uuid.uuid4().hex}@presets.test>",
    }
    extra = []
    for header in headers:
        name = header.split(":", 1)[0]
        if name.startswith("-"):
            fields.pop(name[1:], None)
        elif name in fields:
            fields[name] = header
        else:
            extra.append(header)
    lines = [*fields.values(), *extra]
    return ("\r\n".join(lines) + "\r\n\r\n" + body + "\r\n").encode()


class PresetDaemon(RelaydProcess):
    """
    The real relayd on a preset.

    @ivar ports: Documented port (C{25}, C{465}, ...) to C{(the free port
        it is mapped to, the listener's TLS mode)}.
    """

    def __init__(self, preset: str, provider_port: int) -> None:
        super().__init__(f"relayd-{preset}-")
        path = PRESETS / f"{preset}.toml"
        table = tomllib.loads(path.read_text())
        self.ports: dict[int, tuple[int, str]] = {}
        lines = [f"include = {str(path)!r}"]
        for listener in table["listeners"]:
            documented = int(listener["endpoint"].split("port=")[1].split(":")[0])
            port = free_port()
            self.ports[documented] = (port, listener["tls"])
            lines += [
                "[[listeners]]",
                f'endpoint = "tcp:port={port}:interface=127.0.0.1"',
                f'tls = "{listener["tls"]}"',
            ]
        base = f"http://127.0.0.1:{provider_port}"
        lines += [
            "[tls]",
            'certificate = "cert.pem"',
            'key = "key.pem"',
            "[auth]",
            f'url = "{base}/auth"',
            "[upstream]",
            f'url = "{base}/send"',
        ]
        self.start("\n".join(lines) + "\n", [port for port, _ in self.ports.values()])

    def connect(self, documented: int) -> smtplib.SMTP:
        """
        Connect to the listener of a documented port as its TLS mode says:
        implicit TLS, or EHLO + STARTTLS; then EHLO.
        """
        port, tls = self.ports[documented]
        context = self.tls_context()
        client: smtplib.SMTP
        if tls == "implicit":
            client = smtplib.SMTP_SSL(
                "127.0.0.1", port, local_hostname="client.test", context=context, timeout=15
            )
        else:
            client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=15)
            client.starttls(context=context)
        client.ehlo()
        return client

    def plaintext(self, documented: int) -> smtplib.SMTP:
        """
        Connect to a STARTTLS listener without starting TLS; EHLO.
        """
        port, _ = self.ports[documented]
        client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=15)
        client.ehlo()
        return client


def text(reply: tuple[int, bytes]) -> Reply:
    """
    An smtplib reply as C{(code, text)}.
    """
    return reply[0], reply[1].decode("utf-8", "replace")


def login(client: smtplib.SMTP, user: str, password: str, mechanism: str = "PLAIN") -> Reply:
    """
    AUTH PLAIN (RFC 4616) or AUTH LOGIN, step by step.

    @return: The last reply.
    """
    b64 = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    if mechanism == "PLAIN":
        return text(client.docmd("AUTH", "PLAIN " + b64(f"\0{user}\0{password}")))
    first = text(client.docmd("AUTH", "LOGIN"))
    if first[0] != 334:
        return first
    text(client.docmd(b64(user)))
    return text(client.docmd(b64(password)))


def transaction(
    client: smtplib.SMTP,
    data: bytes,
    mail_from: str = "sender@example.com",
    rcpt_to: tuple[str, ...] = ("rcpt@example.net",),
    mail_options: str = "",
) -> Reply:
    """
    MAIL, RCPT for each recipient, DATA.

    @return: The first reply that is not a success, or the final dot's.
    """
    reply = text(client.docmd("MAIL", f"FROM:<{mail_from}>{mail_options}"))
    if reply[0] != 250:
        return reply
    for address in rcpt_to:
        reply = text(client.docmd("RCPT", f"TO:<{address}>"))
        if reply[0] != 250:
            client.rset()
            return reply
    try:
        return text(client.data(data))
    except smtplib.SMTPDataError as e:
        error = e.smtp_error
        return e.smtp_code, error.decode() if isinstance(error, bytes) else error


def in_thread(test: Callable[[Any], None]) -> Callable[[Any], Deferred[None]]:
    """
    Run a blocking (smtplib) test body in a thread, the reactor (and the
    fake provider on it) running meanwhile.
    """

    def run(self: Any) -> Deferred[None]:
        return deferToThread(test, self)

    run.__name__ = test.__name__
    run.__doc__ = test.__doc__
    return run


class PresetTestCase(TestCase):
    """
    One daemon per preset (the class); a fresh L{FakeProvider} on the same
    port for each test.

    @cvar preset: The preset's name.
    @cvar accounts: Token to its policy (the auth endpoint's answer).
    @cvar refused: Token to the auth endpoint's 401 text.
    """

    timeout = 60
    preset: ClassVar[str] = ""
    token_header: ClassVar[str] = "Authorization"
    token_format: ClassVar[str] = "Bearer {token}"
    unknown_error: ClassVar[str] = "Authentication credentials invalid"
    accounts: ClassVar[dict[str, dict[str, Any]]] = {}
    refused: ClassVar[dict[str, str]] = {}
    secrets: ClassVar[tuple[str, ...]] = ()
    daemon: ClassVar[PresetDaemon]
    provider_port: ClassVar[int]

    @classmethod
    def setUpClass(cls) -> None:
        cls.provider_port = free_port()
        cls.daemon = PresetDaemon(cls.preset, cls.provider_port)

    @classmethod
    def tearDownClass(cls) -> None:
        log = cls.daemon.logtext()
        cls.daemon.stop()
        assert "Traceback" not in log, log
        for secret in cls.secrets:
            assert secret not in log, "a credential in the log"

    def setUp(self) -> None:
        self.provider = FakeProvider(
            reactor,
            token_header=self.token_header,
            token_format=self.token_format,
            unknown_error=self.unknown_error,
            port=self.provider_port,
        )
        for token, policy in self.accounts.items():
            self.provider.account(token, **policy)
        for token, error in self.refused.items():
            self.provider.refuse(token, error)
        self.provider.start()
        self.addCleanup(self.provider.stop)

    def send(self, documented: int, user: str, password: str, data: bytes, **kwargs: Any) -> Reply:
        """
        Log in on the listener of a documented port and relay C{data}.

        @return: The reply to AUTH if it failed, else L{transaction}'s.
        """
        client = self.daemon.connect(documented)
        try:
            reply = login(client, user, password)
            if reply[0] != 235:
                return reply
            return transaction(client, data, **kwargs)
        finally:
            client.close()


# -- MailPace ---------------------------------------------------------------

MAILPACE_TOKEN = "mp-token-not-a-secret"


class MailPaceTests(PresetTestCase):
    """
    C{mailpace-smtp.txt}: 25, 587, 2525 STARTTLS and 465 implicit TLS;
    the API token as user name and password; X-MailPace-Tags and
    X-List-Unsubscribe; no other header kept.
    """

    preset = "mailpace"
    token_header = "MailPace-Server-Token"
    token_format = "{token}"
    accounts = {MAILPACE_TOKEN: {"name": "example.com"}}
    secrets = (MAILPACE_TOKEN,)

    @in_thread
    def test_every_documented_port_relays_with_its_tls(self) -> None:
        """
        Each of 25, 587, 2525 (STARTTLS) and 465 (implicit TLS) takes a
        message; the API gets the token in MailPace-Server-Token.
        """
        self.assertEqual(
            {port: tls for port, (_, tls) in self.daemon.ports.items()},
            {25: "starttls", 587: "starttls", 2525: "starttls", 465: "implicit"},
        )
        for n, port in enumerate((25, 587, 2525, 465), 1):
            reply = self.send(port, MAILPACE_TOKEN, MAILPACE_TOKEN, message(f"Subject: p{port}"))
            self.assertEqual(reply, (250, f"2.0.0 Ok: queued as fake-{n}"))
        sends = self.provider.sends()
        self.assertEqual([c.document["subject"] for c in sends], ["p25", "p587", "p2525", "p465"])
        self.assertEqual({c.headers["mailpace-server-token"] for c in sends}, {MAILPACE_TOKEN})

    @in_thread
    def test_user_name_must_be_the_token(self) -> None:
        """
        "Username: Your API token": any other user name gets 535.
        """
        reply = self.send(587, "apikey", MAILPACE_TOKEN, message())
        self.assertEqual(
            reply, (535, "5.7.8 Authentication credentials invalid: user name not accepted")
        )
        self.assertEqual(self.provider.calls, [])

    @in_thread
    def test_tags_and_list_unsubscribe_mapped_other_headers_not_kept(self) -> None:
        """
        X-MailPace-Tags (a comma list) becomes tags, X-List-Unsubscribe
        list_unsubscribe; unsupported headers and Message-ID are not kept.
        """
        data = message(
            "X-MailPace-Tags: tag one, tag two, tag three",
            "X-List-Unsubscribe: <http://www.host.com/list.cgi?cmd=unsub&lst=list>,"
            " <mailto:list-request@host.com?subject=unsubscribe>",
            "X-Custom: dropped",
            "Message-ID: <1234@example.com>",
            "Auto-Submitted: auto-generated",
        )
        self.assertEqual(
            self.send(465, MAILPACE_TOKEN, MAILPACE_TOKEN, data),
            (250, "2.0.0 Ok: queued as fake-1"),
        )
        self.assertEqual(
            self.provider.last_send(),
            {
                "from": "sender@example.com",
                "to": "rcpt@example.net",
                "subject": "hi",
                "textbody": "hello\n",
                "tags": ["tag one", "tag two", "tag three"],
                "list_unsubscribe": "<http://www.host.com/list.cgi?cmd=unsub&lst=list>,"
                " <mailto:list-request@host.com?subject=unsubscribe>",
            },
        )

    @in_thread
    def test_single_tag(self) -> None:
        """
        "X-MailPace-Tags: a single tag" is one tag.
        """
        data = message("X-MailPace-Tags: a single tag")
        self.assertEqual(self.send(25, MAILPACE_TOKEN, MAILPACE_TOKEN, data)[0], 250)
        self.assertEqual(self.provider.last_send()["tags"], ["a single tag"])

    @in_thread
    def test_from_and_to_must_be_present(self) -> None:
        """
        "You must also set From and To headers": without either the message
        is refused and nothing is sent.
        """
        self.assertEqual(
            self.send(587, MAILPACE_TOKEN, MAILPACE_TOKEN, message("-From")),
            (550, "5.6.0 Message has no From header"),
        )
        code, reply = self.send(587, MAILPACE_TOKEN, MAILPACE_TOKEN, message("-To"))
        self.assertEqual((code, reply[:6]), (550, "5.6.0 "))
        self.assertIn("To", reply)
        self.assertEqual(self.provider.sends(), [])


# -- Krafter ----------------------------------------------------------------

KRAFTER_KEY = "kr_live_abc123def456"
KRAFTER_TRANSACTIONAL_ONLY = "kr_live_transactional0nly"


class KrafterTests(PresetTestCase):
    """
    C{krafter-smtp.txt}: 465 implicit TLS only; user C{apikey}; the
    X-Krafter-Stream and X-Krafter-Tracking-Enabled headers; 550 and 451
    texts; 26,214,400 bytes.
    """

    preset = "krafter"
    accounts = {
        KRAFTER_KEY: {"streams": ["transactional", "broadcast"]},
        KRAFTER_TRANSACTIONAL_ONLY: {"streams": ["transactional"]},
    }
    secrets = (KRAFTER_KEY, KRAFTER_TRANSACTIONAL_ONLY)

    def relay(self, *headers: str, key: str = KRAFTER_KEY) -> Reply:
        return self.send(465, "apikey", key, message(*headers))

    @in_thread
    def test_only_465_implicit_and_user_apikey(self) -> None:
        """
        One listener, implicit TLS; the user name is the literal apikey.
        """
        self.assertEqual(list(self.daemon.ports), [465])
        self.assertEqual(self.daemon.ports[465][1], "implicit")
        self.assertEqual(
            self.send(465, "me@example.com", KRAFTER_KEY, message()),
            (535, "5.7.8 Authentication credentials invalid: user name not accepted"),
        )
        self.assertEqual(self.relay(), (250, "2.0.0 Ok: queued as fake-1"))
        self.assertEqual(self.provider.sends()[0].headers["authorization"], f"Bearer {KRAFTER_KEY}")

    @in_thread
    def test_stream_absent_is_transactional_without_tracking(self) -> None:
        self.assertEqual(self.relay()[0], 250)
        sent = self.provider.last_send()
        self.assertEqual(
            (sent["stream"], sent["track"], sent["list_unsubscribe"]),
            ("transactional", False, None),
        )

    @in_thread
    def test_broadcast_tracks_and_adds_list_unsubscribe(self) -> None:
        self.assertEqual(self.relay("X-Krafter-Stream: broadcast")[0], 250)
        sent = self.provider.last_send()
        self.assertEqual(
            (sent["stream"], sent["track"], sent["list_unsubscribe"]),
            ("broadcast", True, "<https://unsubscribe.krafter.dev/>"),
        )
        self.assertNotIn("X-Krafter-Stream", [n for n, _ in sent["headers"]])

    @in_thread
    def test_other_stream_gets_550_invalid_stream(self) -> None:
        self.assertEqual(
            self.relay("X-Krafter-Stream: promotions"), (550, "5.7.1 unknown stream: promotions")
        )
        self.assertEqual(self.provider.sends(), [])

    @in_thread
    def test_stream_outside_the_keys_allowed_streams_gets_550(self) -> None:
        self.assertEqual(
            self.relay("X-Krafter-Stream: broadcast", key=KRAFTER_TRANSACTIONAL_ONLY),
            (550, "5.7.1 API key is not allowed to send on stream 'broadcast'"),
        )
        self.assertEqual(self.provider.sends(), [])

    @in_thread
    def test_tracking_header_overrides_case_insensitively(self) -> None:
        """
        true/false in any case override the stream's default; any other
        value is ignored.
        """
        cases = [
            (("X-Krafter-Tracking-Enabled: TRUE",), True),
            (("X-Krafter-Stream: broadcast", "X-Krafter-Tracking-Enabled: False"), False),
            (("X-Krafter-Tracking-Enabled: yes",), False),
            (("X-Krafter-Stream: broadcast", "X-Krafter-Tracking-Enabled: 0"), True),
        ]
        for headers, track in cases:
            self.assertEqual(self.relay(*headers)[0], 250)
            self.assertIs(self.provider.last_send()["track"], track, headers)

    @in_thread
    def test_api_refusal_is_550_with_its_own_text(self) -> None:
        self.provider.answer(422, {"error": "Recipient is outside the sandbox allow-list"})
        self.assertEqual(self.relay(), (550, "5.6.0 Recipient is outside the sandbox allow-list"))

    @in_thread
    def test_api_failure_is_451_temporary_failure(self) -> None:
        self.provider.answer(500, {"error": "could not create the email record"})
        self.assertEqual(self.relay(), (451, "4.3.0 Temporary failure, try again later"))

    @in_thread
    def test_size_limit_is_26214400_bytes(self) -> None:
        client = self.daemon.connect(465)
        try:
            self.assertEqual(login(client, "apikey", KRAFTER_KEY)[0], 235)
            client.ehlo()
            self.assertEqual(client.esmtp_features["size"], "26214400")
            self.assertEqual(
                text(client.docmd("MAIL", "FROM:<sender@example.com> SIZE=26214401"))[0], 552
            )
            self.assertEqual(
                text(client.docmd("MAIL", "FROM:<sender@example.com> SIZE=26214400")),
                (250, "2.1.0 Ok"),
            )
        finally:
            client.close()


# -- Cakemail ---------------------------------------------------------------

CAKEMAIL = ("jane", "cakemail-password-not-a-secret")
CAKEMAIL_ATTACHMENTS = ("joe", "joe-password-not-a-secret")
CAKEMAIL_HEADERS = ("x-email-api-enabled: true", "x-list-id: 9234980")
ATTACHMENT = (
    "MIME-Version: 1.0",
    'Content-Type: multipart/mixed; boundary="b"',
)
ATTACHMENT_BODY = (
    "--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
    "--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=a.txt\r\n"
    "\r\nfile\r\n--b--"
)


class CakemailTests(PresetTestCase):
    """
    C{cakemail-smtp.txt}: 465 implicit TLS; account user name and
    password; the required headers; validated senders; one recipient;
    attachments off unless enabled.
    """

    preset = "cakemail"
    token_format = "Basic {token}"
    accounts = {
        basic(*CAKEMAIL): {"senders": ["sender@example.com"]},
        basic(*CAKEMAIL_ATTACHMENTS): {"senders": ["sender@example.com"], "attachments": True},
    }
    secrets = (CAKEMAIL[1], CAKEMAIL_ATTACHMENTS[1], basic(*CAKEMAIL))

    def relay(
        self,
        *headers: str,
        account: tuple[str, str] = CAKEMAIL,
        body: str = "hello",
        sender: str = "sender@example.com",
        **kwargs: Any,
    ) -> Reply:
        return self.send(465, *account, message(*headers, body=body, sender=sender), **kwargs)

    @in_thread
    def test_account_login_forwarded_as_basic(self) -> None:
        self.assertEqual(self.daemon.ports, {465: (self.daemon.ports[465][0], "implicit")})
        self.assertEqual(self.relay(*CAKEMAIL_HEADERS), (250, "2.0.0 Ok: queued as fake-1"))
        auth, send = self.provider.calls
        self.assertEqual(auth.document, {"username": "jane"})
        self.assertEqual(send.headers["authorization"], "Basic " + basic(*CAKEMAIL))
        self.assertEqual(
            self.send(465, "jane", "wrong", message(*CAKEMAIL_HEADERS)),
            (535, "5.7.8 Authentication credentials invalid"),
        )

    @in_thread
    def test_required_headers(self) -> None:
        """
        x-email-api-enabled must be true; x-list-id must be there (any
        value); else 550 and nothing sent.
        """
        self.assertEqual(
            self.relay("x-list-id: 9234980"),
            (550, "5.7.1 Missing required header x-email-api-enabled"),
        )
        self.assertEqual(
            self.relay("x-email-api-enabled: false", "x-list-id: 1"),
            (550, "5.7.1 Missing required header x-email-api-enabled"),
        )
        self.assertEqual(
            self.relay("x-email-api-enabled: true"),
            (550, "5.7.1 Missing required header x-list-id"),
        )
        self.assertEqual(self.provider.sends(), [])

    @in_thread
    def test_type_tags_and_list_id(self) -> None:
        """
        x-email-api-type: marketing by default, or transactional; x-tags a
        comma list; the list id travels with the message.
        """
        self.assertEqual(self.relay(*CAKEMAIL_HEADERS, "x-tags: tag1,tag2")[0], 250)
        sent = self.provider.last_send()
        self.assertEqual(
            (sent["stream"], sent["tags"], sent["headers"]),
            ("marketing", ["tag1", "tag2"], [["x-list-id", "9234980"]]),
        )
        self.assertEqual(self.relay(*CAKEMAIL_HEADERS, "x-email-api-type: transactional")[0], 250)
        self.assertEqual(self.provider.last_send()["stream"], "transactional")
        self.assertEqual(
            self.relay(*CAKEMAIL_HEADERS, "x-email-api-type: promo"),
            (550, "5.7.1 unknown stream 'promo'"),
        )

    @in_thread
    def test_from_must_be_a_validated_sender(self) -> None:
        self.assertEqual(
            self.relay(*CAKEMAIL_HEADERS, sender="other@example.com"),
            (550, "5.7.1 Sender not allowed"),
        )
        self.assertEqual(
            self.relay(*CAKEMAIL_HEADERS, mail_from="other@example.com"),
            (550, "5.7.1 Sender not allowed"),
        )
        self.assertEqual(self.provider.sends(), [])

    @in_thread
    def test_single_recipient_per_transaction(self) -> None:
        reply = self.relay(*CAKEMAIL_HEADERS, rcpt_to=("a@example.net", "b@example.net"))
        self.assertEqual(reply, (452, "4.5.3 Error: too many recipients"))
        self.assertEqual(self.provider.sends(), [])

    @in_thread
    def test_attachments_refused_unless_enabled(self) -> None:
        data = (*CAKEMAIL_HEADERS, *ATTACHMENT)
        self.assertEqual(
            self.relay(*data, body=ATTACHMENT_BODY),
            (550, "5.7.1 Attachments are not allowed for this account"),
        )
        self.assertEqual(self.provider.sends(), [])
        self.assertEqual(
            self.relay(*data, body=ATTACHMENT_BODY, account=CAKEMAIL_ATTACHMENTS)[0], 250
        )
        (attachment,) = self.provider.last_send()["attachments"]
        self.assertEqual(attachment["filename"], "a.txt")


# -- enKod ------------------------------------------------------------------

ENKOD_KEY = "enkod-key-not-a-secret"


class EnkodTests(PresetTestCase):
    """
    C{enkod-smtp.txt}: 587 STARTTLS; AUTH PLAIN, blank login, the key as
    password; its error texts; EMPTY-FROM.
    """

    preset = "enkod"
    unknown_error = "wrong api key"
    accounts = {ENKOD_KEY: {}}
    refused = {"no-access-key": "api key doesn't have accesses", "deleted-key": "client is deleted"}
    secrets = (ENKOD_KEY,)

    @in_thread
    def test_blank_login_key_as_password(self) -> None:
        self.assertEqual(self.daemon.ports, {587: (self.daemon.ports[587][0], "starttls")})
        self.assertEqual(
            self.send(587, "", ENKOD_KEY, message()), (250, "2.0.0 Ok: queued as fake-1")
        )
        self.assertEqual(self.provider.sends()[0].headers["authorization"], f"Bearer {ENKOD_KEY}")

    @in_thread
    def test_auth_texts(self) -> None:
        """
        enKod's own texts: wrong api key, api key doesn't have accesses,
        client is deleted (the auth endpoint's), a login that is not blank.
        """
        self.assertEqual(self.send(587, "", "bad-key", message()), (535, "5.7.8 wrong api key"))
        self.assertEqual(
            self.send(587, "", "no-access-key", message()),
            (535, "5.7.8 api key doesn't have accesses"),
        )
        self.assertEqual(
            self.send(587, "", "deleted-key", message()), (535, "5.7.8 client is deleted")
        )
        self.assertEqual(
            self.send(587, "someone", ENKOD_KEY, message()), (535, "5.7.8 wrong api key")
        )

    @in_thread
    def test_no_auth_is_no_username_or_password(self) -> None:
        client = self.daemon.connect(587)
        try:
            self.assertEqual(transaction(client, message()), (530, "5.7.0 no username or password"))
        finally:
            client.close()

    @in_thread
    def test_invalid_envelope_sender_is_invalid_from_email(self) -> None:
        reply = self.send(587, "", ENKOD_KEY, message(), mail_from="not an address")
        self.assertEqual(reply, (501, "5.1.7 invalid from email"))

    @in_thread
    def test_invalid_from_header_is_empty_from(self) -> None:
        self.assertEqual(self.send(587, "", ENKOD_KEY, message("From: not an address"))[0], 250)
        self.assertEqual(self.provider.last_send()["from"], "EMPTY-FROM")

    @in_thread
    def test_api_failure_is_internal_service_error(self) -> None:
        self.provider.answer(503, {"error": "down"})
        self.assertEqual(
            self.send(587, "", ENKOD_KEY, message()), (451, "4.3.0 internal service error")
        )


# -- CloudMailin ------------------------------------------------------------

CLOUDMAILIN = ("acct", "cloudmailin-password-not-a-secret")
CLOUDMAILIN_ID = "f78b876d-dd97-4e10-9a61-067f98044cc7"


class CloudMailinTests(PresetTestCase):
    """
    C{cloudmailin-smtp.txt}: 587, 2525, 25 STARTTLS; TLS before AUTH;
    LOGIN or PLAIN; account user name and password; tags and priority
    headers; C{250 Thanks! Queued as: <id>}.
    """

    preset = "cloudmailin"
    token_format = "Basic {token}"
    accounts = {basic(*CLOUDMAILIN): {}}
    secrets = (CLOUDMAILIN[1], basic(*CLOUDMAILIN))

    @in_thread
    def test_ports_and_queued_reply(self) -> None:
        self.assertEqual(
            {port: tls for port, (_, tls) in self.daemon.ports.items()},
            {587: "starttls", 2525: "starttls", 25: "starttls"},
        )
        for port in (587, 2525, 25):
            self.provider.answer(200, {"id": CLOUDMAILIN_ID})
            self.assertEqual(
                self.send(port, *CLOUDMAILIN, message()),
                (250, f"2.0.0 Thanks! Queued as: {CLOUDMAILIN_ID}"),
            )
        self.assertEqual(
            self.provider.sends()[0].headers["authorization"], "Basic " + basic(*CLOUDMAILIN)
        )

    @in_thread
    def test_tls_required_before_auth(self) -> None:
        client = self.daemon.plaintext(587)
        try:
            self.assertNotIn("auth", client.esmtp_features)
            self.assertEqual(
                login(client, *CLOUDMAILIN),
                (538, "5.7.11 Encryption required for requested authentication mechanism"),
            )
        finally:
            client.close()
        self.assertEqual(self.provider.calls, [])

    @in_thread
    def test_login_and_plain(self) -> None:
        for mechanism in ("LOGIN", "PLAIN"):
            client = self.daemon.connect(2525)
            try:
                self.assertEqual(
                    login(client, *CLOUDMAILIN, mechanism=mechanism),
                    (235, "2.7.0 Authentication successful"),
                )
            finally:
                client.close()

    @in_thread
    def test_tag_and_priority_headers(self) -> None:
        """
        X-CloudMTA-Tags become the tags; the queue headers (priority,
        class) travel to the API as headers.
        """
        data = message(
            "X-CloudMTA-Tags: welcome, signup",
            "X-CloudMTA-Priority: high",
            "X-CloudMTA-Class: standard",
        )
        self.assertEqual(self.send(587, *CLOUDMAILIN, data)[0], 250)
        sent = self.provider.last_send()
        self.assertEqual(sent["tags"], ["welcome", "signup"])
        self.assertEqual(
            sent["headers"], [["X-CloudMTA-Priority", "high"], ["X-CloudMTA-Class", "standard"]]
        )
