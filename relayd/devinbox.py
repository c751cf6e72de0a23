# -*- test-case-name: tests.test_devinbox -*-
# twisted.web.resource.Resource, Request.setHeader/write/finish are unannotated.
# mypy: disallow-untyped-calls=False
"""
The development inbox: web pages over the development API's outbox
(L{relayd.devupstream}), to see what relayd sent.  Development only.

  - C{GET /}: the received messages, newest first: time, from, to,
    subject, size (bytes of the stored document).
  - C{GET /inbox/<id>}: one message: its envelope and addresses, the HTML
    body in a sandboxed frame (C{<iframe sandbox="" srcdoc=...>}: no
    script, no same-origin access, no form, no navigation of this page;
    and this page's C{Content-Security-Policy}, which a C{srcdoc} frame
    inherits, loads nothing from the network: no tracking pixel), the text
    body, the headers relayd kept (and those it stripped, when the request
    lists them), the attachments to download, and the exact JSON relayd
    sent.
  - C{GET /inbox/<id>/attachments/<n>}: attachment C{n} (from 0), always
    as a download (C{Content-Disposition: attachment},
    C{application/octet-stream}, C{nosniff}): never rendered in this
    origin.
  - C{GET /inbox/<id>/json}: the request body relayd sent, as stored.
  - C{POST /inbox/delete}: delete every message; CSRF-safe: the form
    carries this site's random token (a page of another origin cannot
    read it), and a request whose C{Origin} is not this host is refused
    (C{403}).  Answers C{303} to C{/}.

Pages are rendered on the server with L{twisted.web.template}, which
escapes every text and attribute; there is no script and no build step.
The outbox is read in the reactor's thread pool.

Mount it with L{mount} on the development API's root resource.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import re
import secrets
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.template import Tag, flattenString, tags

__all__ = ["Inbox", "InboxResource", "mount"]

log = Logger()

_ID = re.compile(r"\A[0-9a-f]{8,64}\Z")

#: The JSON is shown on the page up to this many bytes; larger, it is
#: only linked.
SHOWN_JSON = 256 * 1024

#: The pages' policy (CSP Level 3): nothing from the network, no script,
#: inline styles only; a C{srcdoc} frame inherits it.
PAGE_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-src 'self';"
    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

_STYLE = """
body { font: 15px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3em .6em; border-bottom: 1px solid #ddd;
  vertical-align: top; }
pre { background: #f6f6f6; padding: .8em; overflow: auto; white-space: pre-wrap; }
iframe { width: 100%; height: 28em; border: 1px solid #bbb; background: #fff; }
.empty { color: #777; }
dt { font-weight: bold; } dd { margin: 0 0 .4em 1.5em; }
"""


class Inbox:
    """
    The outbox folder, read for the pages.  Every method blocks: call them
    in a thread.
    """

    def __init__(self, path: str) -> None:
        """
        @param path: The development API's outbox folder.
        """
        self.path = path

    def summaries(self) -> list[dict[str, Any]]:
        """
        @return: C{{id, from, to, subject, received_at, size}} of every
            readable message, newest first (C{size} in bytes).
        """
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if not name.endswith(".json"):
                continue
            path = os.path.join(self.path, name)
            try:
                with open(path, encoding="utf-8") as f:
                    stored = json.load(f)
                message = stored["message"]
                found.append(
                    {
                        "id": str(stored["id"]),
                        "from": str(message.get("from") or ""),
                        "to": [str(a) for a in message.get("to") or ()],
                        "subject": str(message.get("subject") or ""),
                        "received_at": str(stored["received_at"]),
                        "size": os.path.getsize(path),
                    }
                )
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
        found.sort(key=lambda s: (s["received_at"], s["id"]), reverse=True)
        return found

    def load(self, message_id: str) -> tuple[dict[str, Any], bytes] | None:
        """
        @return: The stored document of C{message_id} and the exact request
            body relayd sent (re-encoded from the stored JSON), or C{None}.
        """
        if not _ID.match(message_id):
            return None
        try:
            with open(os.path.join(self.path, message_id + ".json"), encoding="utf-8") as f:
                stored = json.load(f)
        except (FileNotFoundError, ValueError):
            return None
        if not isinstance(stored, dict) or not isinstance(stored.get("message"), dict):
            return None
        body = json.dumps(stored["message"], ensure_ascii=False, indent=2).encode("utf-8")
        return stored, body

    def delete_all(self) -> int:
        """
        Delete every stored message.

        @return: How many were deleted.
        """
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return 0
        count = 0
        for name in names:
            if name.endswith((".json", ".json.tmp")):
                try:
                    os.unlink(os.path.join(self.path, name))
                    count += name.endswith(".json")
                except FileNotFoundError:
                    pass
        return count


def _page(title: str, *body: Any) -> Tag:
    return tags.html(lang="en")(
        tags.head(
            tags.meta(charset="utf-8"),
            tags.meta(name="viewport", content="width=device-width, initial-scale=1"),
            tags.title(title, " - relayd inbox"),
            tags.style(_STYLE),
        ),
        tags.body(*body),
    )


def _list_page(summaries: list[dict[str, Any]], csrf: str) -> Tag:
    rows = [
        tags.tr(
            tags.td(s["received_at"]),
            tags.td(s["from"]),
            tags.td(", ".join(s["to"])),
            tags.td(tags.a(href="/inbox/" + s["id"])(s["subject"] or "(no subject)")),
            tags.td(str(s["size"])),
        )
        for s in summaries
    ]
    table = (
        tags.table(
            tags.thead(
                tags.tr(
                    tags.th("Received"),
                    tags.th("From"),
                    tags.th("To"),
                    tags.th("Subject"),
                    tags.th("Size (bytes)"),
                )
            ),
            tags.tbody(*rows),
        )
        if rows
        else tags.p(class_="empty")("No messages yet.")
    )
    delete = tags.form(method="post", action="/inbox/delete")(
        tags.input(type="hidden", name="csrf", value=csrf),
        tags.button(type="submit")("Delete all messages"),
    )
    return _page(
        "Messages",
        tags.h1("relayd development inbox"),
        tags.p(f"{len(rows)} message(s), newest first."),
        delete,
        table,
    )


def _addresses(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)


def _message_page(stored: dict[str, Any], body: bytes) -> Tag:
    message_id = str(stored.get("id", ""))
    message: dict[str, Any] = stored["message"]
    envelope = message.get("envelope") if isinstance(message.get("envelope"), dict) else {}
    assert isinstance(envelope, dict)
    facts = [
        ("Received", stored.get("received_at")),
        ("From", message.get("from")),
        ("To", message.get("to")),
        ("Cc", message.get("cc")),
        ("Bcc", message.get("bcc")),
        ("Reply-To", message.get("reply_to")),
        ("Envelope MAIL FROM", envelope.get("mail_from")),
        ("Envelope RCPT TO", envelope.get("rcpt_to")),
        ("Stream", message.get("stream")),
        ("Tags", message.get("tags")),
        ("Idempotency-Key", stored.get("idempotency_key")),
    ]
    details = tags.dl(
        *[
            part
            for name, value in facts
            if value not in (None, "", [])
            for part in (tags.dt(name), tags.dd(_addresses(value)))
        ]
    )
    html = message.get("html")
    html_part = (
        tags.iframe(sandbox="", srcdoc=str(html), title="HTML body", referrerpolicy="no-referrer")
        if isinstance(html, str) and html
        else tags.p(class_="empty")("No HTML body.")
    )
    text = message.get("text")
    text_part = (
        tags.pre(str(text))
        if isinstance(text, str) and text
        else tags.p(class_="empty")("No text body.")
    )
    kept = [
        tags.tr(tags.td(str(pair[0])), tags.td(str(pair[1])))
        for pair in message.get("headers") or ()
        if isinstance(pair, list) and len(pair) == 2
    ]
    stripped = message.get("stripped")
    stripped_part = (
        tags.p(", ".join(str(s) for s in stripped))
        if isinstance(stripped, list) and stripped
        else tags.p(class_="empty")(
            "The request does not list them (relayd logs the names it stripped)."
        )
    )
    attachments = [
        tags.li(
            tags.a(href=f"/inbox/{message_id}/attachments/{n}", download=_filename(a, n))(
                _filename(a, n)
            ),
            f" ({a.get('content_type', 'application/octet-stream')}"
            f"{', inline' if a.get('inline') else ''})",
        )
        for n, a in enumerate(message.get("attachments") or ())
        if isinstance(a, dict)
    ]
    json_part = (
        tags.pre(body.decode("utf-8"))
        if len(body) <= SHOWN_JSON
        else tags.p(f"{len(body)} bytes: too large to show here.")
    )
    return _page(
        str(message.get("subject") or "(no subject)"),
        tags.p(tags.a(href="/")("All messages")),
        tags.h1(str(message.get("subject") or "(no subject)")),
        details,
        tags.h2("HTML"),
        html_part,
        tags.h2("Text"),
        text_part,
        tags.h2("Headers kept"),
        tags.table(tags.tbody(*kept)) if kept else tags.p(class_="empty")("None."),
        tags.h2("Headers stripped"),
        stripped_part,
        tags.h2("Attachments"),
        tags.ul(*attachments) if attachments else tags.p(class_="empty")("None."),
        tags.h2("JSON relayd sent"),
        tags.p(tags.a(href=f"/inbox/{message_id}/json")("Download the JSON")),
        json_part,
    )


def _filename(attachment: dict[str, Any], n: int) -> str:
    """
    A safe download name: the attachment's file name without path or
    control characters, else C{attachment-<n>}.
    """
    name = str(attachment.get("filename") or "")
    name = os.path.basename(name.replace("\\", "/"))
    name = "".join(c for c in name if c >= " " and c != "\x7f").strip(". ")
    return name[:200] or f"attachment-{n}"


def _security_headers(request: Request) -> None:
    request.setHeader(b"Content-Security-Policy", PAGE_POLICY.encode("ascii"))
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    request.setHeader(b"Cache-Control", b"no-store")


def _plain(request: Request, status: int, text: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    _security_headers(request)
    return text.encode("utf-8")


class InboxResource(Resource):
    """
    The inbox pages: C{/} (mounted as the root's C{""} child) and
    C{/inbox/...}.
    """

    def __init__(self, inbox: Inbox, reactor: Any, csrf: str, path: tuple[str, ...] = ()) -> None:
        """
        @param inbox: The outbox folder.
        @param reactor: Provides L{IReactorThreads} (the outbox is read in
            its pool).
        @param csrf: This site's token for the delete form.
        @param path: The path below C{/inbox} (C{()} for the list).
        """
        super().__init__()
        self._inbox = inbox
        self._reactor = reactor
        self._csrf = csrf
        self._path = path

    def getChild(self, path: bytes, request: Request) -> Resource:
        if not path and not self._path:
            return self
        return InboxResource(
            self._inbox,
            self._reactor,
            self._csrf,
            (*self._path, path.decode("utf-8", "replace")),
        )

    def _in_thread(self, f: Any, *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), f, *args)

    def _respond(self, request: Request, d: Deferred[Any]) -> int:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def done(body: bytes) -> None:
            if not gone:
                request.write(body)
                request.finish()

        def failed(failure: Failure) -> None:
            log.failure("dev inbox cannot answer", failure)
            done(_plain(request, 500, "Cannot read the outbox"))

        d.addCallbacks(done, failed)
        return NOT_DONE_YET

    async def _html(self, request: Request, page: Tag) -> bytes:
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        _security_headers(request)
        rendered = await flattenString(None, page)
        assert isinstance(rendered, bytes)
        return b"<!DOCTYPE html>\n" + rendered

    def render_GET(self, request: Request) -> bytes | int:
        path = self._path
        if not path:
            return self._respond(request, Deferred.fromCoroutine(self._list(request)))
        if len(path) in (1, 2, 3) and _ID.match(path[0]):
            return self._respond(request, Deferred.fromCoroutine(self._one(request, path)))
        return _plain(request, 404, "No such page")

    async def _list(self, request: Request) -> bytes:
        summaries = await self._in_thread(self._inbox.summaries)
        return await self._html(request, _list_page(summaries, self._csrf))

    async def _one(self, request: Request, path: tuple[str, ...]) -> bytes:
        found: tuple[dict[str, Any], bytes] | None = await self._in_thread(
            self._inbox.load, path[0]
        )
        if found is None:
            return _plain(request, 404, "No such message")
        stored, body = found
        if len(path) == 1:
            return await self._html(request, _message_page(stored, body))
        if path[1:] == ("json",):
            request.setHeader(b"Content-Type", b"application/json")
            _security_headers(request)
            return body
        if len(path) == 3 and path[1] == "attachments" and path[2].isdigit():
            return self._attachment(request, stored["message"], int(path[2]))
        return _plain(request, 404, "No such page")

    def _attachment(self, request: Request, message: dict[str, Any], n: int) -> bytes:
        attachments = message.get("attachments") or []
        if not isinstance(attachments, list) or n >= len(attachments):
            return _plain(request, 404, "No such attachment")
        attachment = attachments[n]
        try:
            content = base64.b64decode(str(attachment.get("content", "")), validate=False)
        except (binascii.Error, AttributeError):
            return _plain(request, 500, "Attachment content is not base64")
        name = _filename(attachment, n)
        ascii_name = "".join(c if c.isascii() and c not in '"\\' else "_" for c in name)
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(
            b"Content-Disposition",
            f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}".encode(
                "ascii"
            ),
        )
        _security_headers(request)
        return content

    def render_POST(self, request: Request) -> bytes | int:
        if self._path != ("delete",):
            return _plain(request, 405, "Method not allowed")
        origin = request.getHeader(b"Origin")
        host = request.getHeader(b"Host") or b""
        if origin is not None and origin.split(b"://", 1)[-1] != host:
            return _plain(request, 403, "Cross-origin request refused")
        given = (request.args or {}).get(b"csrf", [b""])[0]
        if not hmac.compare_digest(given, self._csrf.encode("ascii")):
            return _plain(request, 403, "Missing or wrong form token")
        d = self._in_thread(self._inbox.delete_all)

        def deleted(count: int) -> bytes:
            log.info("dev inbox: deleted {count} message(s)", count=count)
            request.setResponseCode(303)
            request.setHeader(b"Location", b"/")
            return _plain(request, 303, f"Deleted {count} message(s)")

        d.addCallback(deleted)
        return self._respond(request, d)


def mount(root: Resource, outbox: str, reactor: Any) -> None:
    """
    Put the inbox pages on the development API's root resource: C{/} and
    C{/inbox/...}.

    @param root: The site's root resource.
    @param outbox: The outbox folder.
    @param reactor: Provides L{IReactorThreads}.
    """
    resource = InboxResource(Inbox(outbox), reactor, secrets.token_urlsafe(32))
    root.putChild(b"", resource)
    root.putChild(b"inbox", resource)
