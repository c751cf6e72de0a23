# -*- test-case-name: tests.test_explain -*-
"""
Explain without sending: the upstream request a message would produce
under a configuration, and the reply relayd would give.

    python -m relayd.explain --config /etc/relayd/relayd.toml message.eml \\
        --to bob@example.net [--from ann@example.com] [--token-name website]

It prints four sections: C{request} (method, URL, headers with the
credential masked), C{body} (JSON pretty-printed, long strings such as
base64 attachments shortened; or the outline of a multipart body),
C{headers} (each top-level field of the message: represented, mapped,
kept or stripped, and why, L{relayd.message.headers.classify}) and
C{reply} (the C{250} template, or the refusal, with the deployment's
C{[replies]} texts).  A refused message prints only C{headers} (when the
message could be read) and C{reply}.

The checks are those of the end of DATA (L{relayd.delivery.Pipeline.relay})
and of MAIL and RCPT with the token's policy: the tokens file's entry named
by C{--token-name}, else C{[auth.defaults]} (an auth endpoint is never
asked).  Nothing is sent: no network at all, no reactor.

Exit status: 0 when the message would be relayed, 1 when relayd would
refuse it, 2 for a bad invocation, configuration or file.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from twisted.internet.task import Clock
from twisted.python import runtime

from relayd import reply as R
from relayd.auth import policy_from
from relayd.config import Config, ConfigError, load_config
from relayd.dialects import get_dialect
from relayd.message import Envelope, OutboundMessage
from relayd.message.headers import classify
from relayd.policy import check_message, parse_with_policy
from relayd.reply import Refused, Reply
from relayd.replytexts import ReplyTexts
from relayd.tokens import TokenPolicy, TokenStore
from relayd.upstream import UpstreamClient

__all__ = ["explain", "main"]

#: Stands in for the client's credential; never printed.
PLACEHOLDER = "relayd-explain-placeholder-credential"
#: What is printed where the credential would be.
MASK = "********"
#: Longer strings of the body are shortened to this many characters.
SHOWN = 72


class _NoNetwork:
    """
    The upstream client's HTTP client: any use is a bug (explain sends
    nothing).
    """

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"relayd.explain must not use the network ({name})")


def _token_policy(config: Config, name: str | None) -> TokenPolicy:
    """
    The policy the message is checked with.

    @param config: The configuration.
    @param name: A tokens file entry's name, or C{None}.
    @raise ConfigError: For an unknown name or an unreadable tokens file.
    """
    if name is not None and config.auth.backend == "tokens_file":
        store = TokenStore.load(config.auth.tokens_file)
        for policy in store.policies():
            if policy.name == name:
                return policy
        raise ConfigError(f"{config.auth.tokens_file}: no token named {name!r}")
    return policy_from(name or "explain", {}, config.auth.defaults)


def _short(value: Any) -> Any:
    """
    A JSON document with long strings shortened, for reading.
    """
    if isinstance(value, str) and len(value) > SHOWN:
        return f"{value[:SHOWN]}... ({len(value)} characters)"
    if isinstance(value, list):
        return [_short(v) for v in value]
    if isinstance(value, dict):
        return {k: _short(v) for k, v in value.items()}
    return value


def _body_lines(body: bytes, content_type: str) -> list[str]:
    """
    The request body, pretty-printed JSON or the outline of a multipart
    body (each part's name, file name, type and size in bytes).
    """
    if content_type.lower().startswith("multipart/"):
        parsed = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        lines = [f"multipart body, {len(body)} bytes:"]
        for part in parsed.iter_parts():
            size = len(part.get_payload(decode=True) or b"")
            params = dict(part.get_params(header="content-disposition") or [])
            described = f"  part name={params.get('name', '?')!r}"
            if "filename" in params:
                described += f" filename={params['filename']!r}"
            lines.append(f"{described} type={part.get_content_type()} {size} bytes")
        return lines
    try:
        document = json.loads(body)
    except ValueError:
        return [f"{len(body)} bytes, not JSON"]
    return json.dumps(_short(document), indent=2, ensure_ascii=False).splitlines()


def _strings(value: Any) -> list[str]:
    """
    Every string in a JSON document.
    """
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_strings(v)]]
    return []


def _header_lines(
    data: bytes, config: Config, message: OutboundMessage | None, body: bytes | None
) -> list[str]:
    """
    Each top-level field of the message, what became of it and why.
    """
    head = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(data)
    try:
        sent = _strings(json.loads(body)) if body is not None else []
    except ValueError:
        sent = []
    lines = []
    seen: set[str] = set()
    for name, raw in head.raw_items():
        key = name.strip().lower()
        if not key or key in seen:
            continue
        seen.add(key)
        outcome, reason = classify(name, config.headers)
        if outcome == "kept" and message is not None and body is not None and sent:
            value = " ".join(str(raw).split())
            if not message.raw_only and not any(value in s for s in sent):
                reason += f"; the {config.upstream.dialect} dialect has no field for it: not sent"
        lines.append(f"{outcome:<11} {name.strip()}: {reason}")
    return lines


def _envelope_checks(
    config: Config, policy: TokenPolicy, envelope: Envelope, size: int
) -> Reply | None:
    """
    The checks of MAIL and RCPT (and the size at DATA), or C{None}.
    """
    limit = min(config.limits.max_message_size, policy.max_message_size or sys.maxsize)
    if size > limit:
        return R.MESSAGE_TOO_BIG
    if not policy.allows_sender(envelope.mail_from):
        return R.SENDER_NOT_ALLOWED
    recipients = min(config.limits.max_recipients, policy.max_recipients or sys.maxsize)
    if len(envelope.rcpt_to) > recipients:
        return R.TOO_MANY_RECIPIENTS
    return None


def _check(message: OutboundMessage, policy: TokenPolicy) -> None:
    """
    The end of DATA checks of L{relayd.delivery.Pipeline.relay}.

    @raise Refused: As it refuses.
    """
    if not policy.allows_sender(message.author_address):
        raise Refused(R.SENDER_NOT_ALLOWED)
    if not policy.allows_stream(message.stream):
        raise Refused(R.stream_not_allowed(message.stream) if message.stream else R.STREAM_REQUIRED)
    check_message(message, policy)


def explain(
    config: Config,
    data: bytes,
    rcpt_to: Sequence[str],
    mail_from: str | None,
    token_name: str | None,
    out: TextIO,
    now: float = 0.0,
) -> bool:
    """
    Print what relayd would do with one message.

    @param config: The configuration.
    @param data: The message (RFC 5322), any line ends.
    @param rcpt_to: The forward-paths.
    @param mail_from: The reverse-path, or C{None} for the From address.
    @param token_name: The tokens file entry whose policy applies, or
        C{None} for C{[auth.defaults]}.
    @param out: Where to print.
    @param now: The time the request is built at, in POSIX seconds (a
        signed request, SES, covers it); given by L{main}.
    @return: Whether the message would be relayed.
    @raise ConfigError: For an unknown token name or dialect.
    """
    data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    texts = ReplyTexts.from_config(config.replies)
    policy = _token_policy(config, token_name)
    dialect = get_dialect(config.upstream.dialect)
    clock = Clock()
    clock.advance(now)
    client = UpstreamClient(clock, config.upstream, dialect, http=_NoNetwork())
    message: OutboundMessage | None = None
    body: bytes | None = None
    lines: list[str] = []
    try:
        probe = parse_with_policy(data, Envelope(mail_from or "", tuple(rcpt_to)), config.headers)
        envelope = Envelope(
            probe.author_address if mail_from is None else mail_from, tuple(rcpt_to)
        )
        refusal = _envelope_checks(config, policy, envelope, len(data))
        if refusal is not None:
            raise Refused(refusal)
        message = parse_with_policy(data, envelope, config.headers)
        _check(message, policy)
        prepared = client.prepare(message, PLACEHOLDER, "<the transaction's idempotency key>")
        body = prepared.body
        header = (config.upstream.token_header or dialect.token_header).lower()
        lines += ["== request", f"POST {config.upstream.url}"]
        content_type = ""
        for name, value in prepared.headers.items():
            if name.lower() == header or PLACEHOLDER in value:
                value = MASK
            if name.lower() == "content-type":
                content_type = value
            lines.append(f"{name}: {value}")
        lines += ["", "== body", *_body_lines(body, content_type)]
        reply = texts.apply(R.queued("{id}"))
        verdict = True
    except Refused as e:
        reply = texts.apply(e.reply)
        verdict = False
    lines += ["", "== headers", *_header_lines(data, config, message, body)]
    lines += ["", "== reply", f"{reply.code} {reply.status} {reply.text}"]
    if verdict:
        lines.append("({id} is the upstream's message id)")
    text = "\n".join(lines).replace(PLACEHOLDER, MASK)
    out.write(text + "\n")
    return verdict


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relayd explain",
        description="Show the upstream request a message would produce; send nothing.",
    )
    parser.add_argument("--config", required=True, help="relayd's configuration file")
    parser.add_argument("message", help="the message file (RFC 5322, .eml)")
    parser.add_argument("--to", action="append", required=True, help="a recipient (repeatable)")
    parser.add_argument("--from", dest="mail_from", help="the reverse-path (default: From)")
    parser.add_argument("--token-name", help="the tokens file entry whose policy applies")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """
    The C{relayd explain} command.

    @param argv: The arguments (without the program name).
    @param out: Where to print (standard output by default).
    @return: 0 would be relayed, 1 would be refused, 2 bad invocation,
        configuration or file.
    """
    out = sys.stdout if out is None else out
    try:
        options = _parser().parse_args(argv)
    except SystemExit as e:
        return 0 if e.code == 0 else 2
    try:
        config = load_config(options.config)
        with open(options.message, "rb") as f:
            data = f.read()
        relayed = explain(
            config, data, options.to, options.mail_from, options.token_name, out, runtime.seconds()
        )
    except ConfigError as e:
        print(f"relayd explain: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"relayd explain: {options.message}: {e.strerror}", file=sys.stderr)
        return 2
    return 0 if relayed else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
