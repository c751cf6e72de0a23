"""
The same job as relayd, written with aiosmtpd + aiohttp + stdlib C{email}.

A benchmark peer for C{bench/run.py --compare}: an SMTP submission server
(aiosmtpd: STARTTLS, RFC 3207, on one port and implicit TLS, RFC 8314
section 3, on another) that takes C{AUTH PLAIN} / C{AUTH LOGIN} (RFC 4954,
RFC 4616) with an API token as the password, parses each message with
C{email.parser.BytesParser(policy=email.policy.default)}, maps it to
relayd's C{native} JSON schema (C{docs/upstream-api.md}, "The C{native}
schema"), POSTs it with the token as C{Authorization: Bearer <token>} over
one kept-alive C{aiohttp.ClientSession}, and answers C{250 2.0.0 Ok: queued
as <id>} with the id from the upstream's answer.  An upstream failure is a
C{451} (5xx, no answer) or C{550} (4xx): never a C{250} for a message the
upstream did not take.

It is written as a competent engineer would write this gateway, not as a
straw man: one client session for every request, no per-command logging
(aiosmtpd's own logger at ERROR), one C{info} line per message as
relayd logs.  Tokens are checked against their SHA-256 digests, in
constant time, as relayd's tokens file does.

    python bench/peers/gateway.py --starttls-port P --implicit-port Q
        --cert cert.pem --key key.pem --token-sha256 HEX
        --upstream http://127.0.0.1:R/send

It needs C{aiosmtpd} and C{aiohttp} (the C{bench} extra of C{setup.cfg});
C{bench/run.py --compare} installs them in C{.venv-bench}.  It imports
nothing from relayd.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import logging
import signal
import ssl
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import aiohttp
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

log = logging.getLogger("gateway")

#: Headers mapped to their own keys (or dropped), never in C{headers}.
MAPPED = frozenset(
    h.lower()
    for h in (
        "From",
        "To",
        "Cc",
        "Bcc",
        "Reply-To",
        "Subject",
        "X-Tags",
        "X-Stream",
        "X-Track",
        "X-List-Unsubscribe",
    )
)
PASSED = ("in-reply-to", "references")
METADATA = "x-metadata-"
_PARSER = BytesParser(policy=policy.default)


def _addresses(message: EmailMessage, name: str) -> list[str]:
    header = message.get(name)
    return [str(a) for a in header.addresses] if header is not None else []


def _body(message: EmailMessage, subtype: str) -> str | None:
    part = message.get_body((subtype,))
    return part.get_content() if part is not None else None  # type: ignore[no-any-return]


def _attachment(part: EmailMessage) -> dict[str, Any]:
    content_id = part.get("Content-ID")
    return {
        "filename": part.get_filename() or "attachment",
        "content_type": part.get_content_type(),
        "content": base64.b64encode(part.get_payload(decode=True) or b"").decode("ascii"),
        "content_id": str(content_id).strip("<> ") if content_id else None,
        "inline": part.get_content_disposition() == "inline",
    }


def native_document(data: bytes, mail_from: str, rcpt_to: list[str]) -> dict[str, Any]:
    """
    Map one RFC 5322 message to relayd's C{native} JSON schema.

    @param data: The message as received after C{DATA}, CRLF line ends.
    @param mail_from: The envelope's reverse-path (C{""}: null).
    @param rcpt_to: The envelope's forward-paths.
    @return: The JSON document (every key of the schema present).
    """
    message: EmailMessage = _PARSER.parsebytes(data)  # type: ignore[assignment]
    senders = _addresses(message, "From")
    headers, metadata = [], {}
    for name, value in message.items():
        lower = name.lower()
        if lower.startswith(METADATA):
            metadata.setdefault(name[len(METADATA) :], str(value))
        elif lower not in MAPPED and (lower in PASSED or lower.startswith(("x-", "list-"))):
            headers.append([name, str(value)])
    tags = message.get("X-Tags")
    track = message.get("X-Track")
    return {
        "from": senders[0] if senders else "",
        "to": _addresses(message, "To"),
        "cc": _addresses(message, "Cc"),
        "bcc": _addresses(message, "Bcc"),
        "reply_to": _addresses(message, "Reply-To"),
        "subject": str(message.get("Subject", "")),
        "text": _body(message, "plain"),
        "html": _body(message, "html"),
        "attachments": [_attachment(p) for p in message.iter_attachments()],  # type: ignore[arg-type]
        "tags": [t.strip()[:100] for t in str(tags).split(",") if t.strip()][:10] if tags else [],
        "headers": headers,
        "stream": str(message["X-Stream"]) if message.get("X-Stream") else None,
        "track": None if track is None else str(track).strip().lower() in ("1", "yes", "true"),
        "list_unsubscribe": message.get("X-List-Unsubscribe"),
        "metadata": metadata,
        "envelope": {"mail_from": mail_from, "rcpt_to": rcpt_to},
        "raw": None,
    }


class Gateway:
    """
    The aiosmtpd handler and authenticator: one upstream POST per
    transaction.
    """

    def __init__(self, upstream: str, digests: set[bytes]) -> None:
        self.upstream = upstream
        self.digests = digests
        self.http: aiohttp.ClientSession | None = None

    def authenticate(
        self, server: SMTP, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        """
        aiosmtpd's authenticator: the password is the API token, checked
        against the SHA-256 digests; the token becomes the session's
        C{auth_data}.
        """
        if mechanism not in ("PLAIN", "LOGIN") or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        digest = hashlib.sha256(auth_data.password).digest()
        if not any(hmac.compare_digest(digest, d) for d in self.digests):
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=auth_data.password.decode("utf-8"))

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        """
        Parse, map, POST; the reply to the final dot.
        """
        try:
            document = native_document(
                envelope.original_content, envelope.mail_from or "", list(envelope.rcpt_tos)
            )
        except Exception:
            log.exception("message could not be parsed")
            return "550 5.6.0 Message could not be parsed"
        assert self.http is not None
        try:
            async with self.http.post(
                self.upstream,
                data=json.dumps(document).encode("utf-8"),
                headers={
                    "Content-Type": "application/json",
                    "Authorization": f"Bearer {session.auth_data}",
                },
            ) as response:
                answer = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as e:
            log.warning("upstream failed: %s", type(e).__name__)
            return "451 4.3.0 Temporary failure, try again later"
        if 200 <= status < 300:
            try:
                queued = str(json.loads(answer).get("id", ""))
            except (ValueError, AttributeError):
                queued = ""
            log.info("queued %s", queued)
            return f"250 2.0.0 Ok: queued as {queued}" if queued else "250 2.0.0 Ok: queued"
        log.warning("upstream answered %d", status)
        if 400 <= status < 500 and status not in (401, 403, 408, 429):
            return "550 5.6.0 Message rejected by upstream"
        return "451 4.3.0 Temporary failure, try again later"


async def serve(args: argparse.Namespace) -> None:
    """
    Listen on both ports until SIGTERM or SIGINT.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    gateway = Gateway(args.upstream, {bytes.fromhex(d) for d in args.token_sha256})
    gateway.http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=60),
        timeout=aiohttp.ClientTimeout(total=60),
    )
    loop = asyncio.get_running_loop()
    common = dict(
        hostname=args.hostname,
        authenticator=gateway.authenticate,
        auth_required=True,
        data_size_limit=args.max_size,
        loop=loop,
    )
    starttls = await loop.create_server(
        lambda: SMTP(gateway, tls_context=context, require_starttls=True, **common),  # type: ignore[arg-type]
        args.host,
        args.starttls_port,
        backlog=4096,
    )
    # Implicit TLS: the whole connection is TLS (the server's ssl=), which
    # aiosmtpd cannot see, so its "AUTH only after STARTTLS" check is off
    # on this listener only.
    implicit = await loop.create_server(
        lambda: SMTP(gateway, auth_require_tls=False, **common),  # type: ignore[arg-type]
        args.host,
        args.implicit_port,
        ssl=context,
        backlog=4096,
    )
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    log.info(
        "listening on %d (STARTTLS) and %d (implicit TLS)", args.starttls_port, args.implicit_port
    )
    await stop
    starttls.close()
    implicit.close()
    await gateway.http.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description="aiosmtpd + aiohttp SMTP-to-HTTP gateway (benchmark peer)"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--hostname", default="localhost", help="name in the greeting and EHLO reply")
    p.add_argument("--starttls-port", type=int, required=True)
    p.add_argument("--implicit-port", type=int, required=True)
    p.add_argument("--cert", required=True, help="PEM certificate chain")
    p.add_argument("--key", required=True, help="PEM private key")
    p.add_argument("--token-sha256", action="append", required=True, help="hex digest of a token")
    p.add_argument("--upstream", required=True, help="the native-schema URL to POST to")
    p.add_argument("--max-size", type=int, default=50 * 1024 * 1024, help="SIZE limit, bytes")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # aiosmtpd logs every command at INFO and a deprecation warning on
    # every AUTH (Session.login_data, aiosmtpd 1.4): errors only.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
