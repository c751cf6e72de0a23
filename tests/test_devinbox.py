"""
Tests for L{relayd.devinbox}, the development inbox pages: twisted.web over
a real loopback socket, and what a person sees in headless Chromium (the
subject in the list, the HTML body in its sandboxed frame, an
attachment's name).
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shlex
import shutil
import subprocess
import tempfile
import time
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from relayd.config import UpstreamConfig
from relayd.devinbox import PAGE_POLICY
from relayd.devupstream import make_site
from relayd.message import Attachment
from relayd.result import Accepted
from relayd.testing import async_test, sample_message
from relayd.upstream import make_client

HTML = (
    "<p style='color:#c00'>Rich <b>HTML</b> body</p>"
    "<script>document.body.textContent = 'SCRIPT RAN'</script>"
)

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # Keep the sandboxed frame in the page's process, so that the DOM
    # read over DevTools includes its document.
    "--disable-features=IsolateSandboxedIframes",
    "--disable-site-isolation-trials",
    "--remote-debugging-pipe",
)


class Chromium:
    """
    Headless Chromium driven over the DevTools protocol on a pipe
    (C{--remote-debugging-pipe}: JSON messages ended by NUL, read on fd 3,
    written on fd 4).  Blocking: use it from a thread.
    """

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="relayd-chromium-")
        to_child, self._write = os.pipe()
        self._read, from_child = os.pipe()
        argv = ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"]
        self.process = subprocess.Popen(
            ["/bin/bash", "-c", f"exec {shlex.join(argv)} 3<&{to_child} 4>&{from_child}"],
            pass_fds=(to_child, from_child),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child)
        os.close(from_child)
        self._buffer = b""
        self._id = 0
        self._events: list[dict[str, Any]] = []

    def _next(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self._read], [], [], left)
            if ready:
                chunk = os.read(self._read, 65536)
                if not chunk:
                    raise EOFError("chromium closed its DevTools pipe")
                self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        answer: dict[str, Any] = json.loads(message)
        return answer

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """
        Send one DevTools command and wait (20 s at most) for its result.
        """
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 20
        while True:
            answer = self._next(deadline)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer["result"]
                return result
            self._events.append(answer)

    def _event(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + 20
        while True:
            for i, event in enumerate(self._events):
                if event.get("method") == method:
                    return self._events.pop(i)
            self._events.append(self._next(deadline))

    def visit(self, url: str) -> tuple[str, list[str]]:
        """
        Load C{url} in a new tab.

        @return: The page's visible text (C{innerText}) and the visible
            text of each frame's document (its text nodes, without scripts
            and styles).
        """
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session)
        self.call("Page.navigate", session, url=url)
        self._event("Page.loadEventFired")
        text = self.call(
            "Runtime.evaluate", session, expression="document.body.innerText", returnByValue=True
        )["result"]["value"]
        root = self.call("DOM.getDocument", session, depth=-1, pierce=True)["root"]
        frames = ["".join(_texts(doc)) for doc in _frame_documents(root)]
        self.call("Target.closeTarget", targetId=target)
        return str(text), frames

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except Exception:
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._read)
        os.close(self._write)
        shutil.rmtree(self.profile, ignore_errors=True)


def _frame_documents(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [node["contentDocument"]] if "contentDocument" in node else []
    for child in node.get("children", []):
        found += _frame_documents(child)
    return found


def _texts(node: dict[str, Any]) -> list[str]:
    if node.get("nodeName") in ("SCRIPT", "STYLE"):
        return []
    found = [node["nodeValue"]] if node.get("nodeType") == 3 else []
    for child in node.get("children", []):
        found += _texts(child)
    return found


class InboxTestMixin:
    """
    The development API (with the inbox) on 127.0.0.1, and relayd's
    upstream client to fill its outbox.
    """

    def start(self: Any) -> None:
        self.outbox = os.path.join(tempfile.mkdtemp(prefix="relayd-inbox-"), "outbox")
        self.addCleanup(shutil.rmtree, os.path.dirname(self.outbox), True)
        server = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        port = self.successResultOf(server.listen(make_site(self.outbox, reactor)))
        self.addCleanup(port.stopListening)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        self.base = f"http://127.0.0.1:{address.port}"
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=pool))
        self.client = make_client(reactor, UpstreamConfig(url=self.base + "/send", timeout=10))
        self.addCleanup(self.client.close)

    async def relay(self: Any, **changes: Any) -> str:
        """
        Send one message as relayd does; return its id.
        """
        result = await self.client.send(sample_message(**changes), "dev-token")
        assert isinstance(result, Accepted), result
        return str(result.message_id)

    async def fetch(self: Any, path: str, method: str = "GET", **kwargs: Any) -> tuple[Any, bytes]:
        response = await self.http.request(
            method, self.base + path, allow_redirects=False, **kwargs
        )
        return response, await response.content()


class InboxPageTests(InboxTestMixin, TestCase):
    """
    The pages, read as HTTP.
    """

    timeout = 20

    def setUp(self) -> None:
        self.start()

    @async_test
    async def test_empty_inbox(self) -> None:
        response, body = await self.fetch("/")
        self.assertEqual(response.code, 200)
        self.assertIn(b"No messages yet.", body)
        self.assertEqual(response.headers.getRawHeaders("Content-Security-Policy"), [PAGE_POLICY])

    @async_test
    async def test_list_is_newest_first_and_escaped(self) -> None:
        await self.relay(subject="alpha")
        await self.relay(subject="<script>alert(1)</script> beta")
        response, body = await self.fetch("/")
        self.assertEqual(
            response.headers.getRawHeaders("Content-Type"), ["text/html; charset=utf-8"]
        )
        page = body.decode()
        self.assertLess(page.index("beta"), page.index("alpha"))
        self.assertIn("&lt;script&gt;alert(1)&lt;/script&gt; beta", page)
        self.assertNotIn("<script>", page)
        self.assertIn("Zoë Sender &lt;zoe@example.com&gt;", page)
        self.assertIn("Ann &lt;ann@example.net&gt;", page)
        self.assertRegex(page, r"<td>\d+</td>")  # the size in bytes

    @async_test
    async def test_message_page(self) -> None:
        """
        One message: the HTML only in a sandboxed frame (escaped into
        C{srcdoc}), the text, the kept headers, the attachments, the JSON.
        """
        message_id = await self.relay(html=HTML)
        response, body = await self.fetch(f"/inbox/{message_id}")
        self.assertEqual(response.code, 200)
        page = body.decode()
        self.assertIn('<iframe sandbox="" srcdoc="&lt;p style=\'color:#c00\'&gt;Rich', page)
        self.assertNotIn("<script>", page)
        self.assertIn("<pre>Hello Ann,\nyour order shipped.\n</pre>", page)
        self.assertIn("<td>In-Reply-To</td><td>&lt;order-42@example.com&gt;</td>", page)
        self.assertIn(f'href="/inbox/{message_id}/attachments/0" download="invoice.pdf"', page)
        self.assertIn("hidden@example.org", page)  # Bcc and the envelope
        stored = json.load(open(os.path.join(self.outbox, f"{message_id}.json"), encoding="utf-8"))
        self.assertIn(
            json.dumps(stored["message"]["subject"], ensure_ascii=False), page
        )  # the JSON, on the page
        _, sent = await self.fetch(f"/inbox/{message_id}/json")
        self.assertEqual(json.loads(sent), stored["message"])

    @async_test
    async def test_attachment_is_a_download(self) -> None:
        message_id = await self.relay(
            attachments=(Attachment("../../etc/évil.html", "text/html", b"<b>x</b>"),)
        )
        response, body = await self.fetch(f"/inbox/{message_id}/attachments/0")
        self.assertEqual(body, b"<b>x</b>")
        headers = response.headers
        self.assertEqual(headers.getRawHeaders("Content-Type"), ["application/octet-stream"])
        self.assertEqual(headers.getRawHeaders("X-Content-Type-Options"), ["nosniff"])
        self.assertEqual(
            headers.getRawHeaders("Content-Disposition"),
            ["attachment; filename=\"_vil.html\"; filename*=UTF-8''%C3%A9vil.html"],
        )
        response, _ = await self.fetch(f"/inbox/{message_id}/attachments/7")
        self.assertEqual(response.code, 404)

    @async_test
    async def test_unknown_and_malformed_ids(self) -> None:
        for path in ("/inbox/0123456789abcdef", "/inbox/..%2f..%2fetc", "/inbox/x/json"):
            response, _ = await self.fetch(path)
            self.assertEqual(response.code, 404, path)

    @async_test
    async def test_delete_all_needs_the_form_token(self) -> None:
        """
        The delete button's POST needs the page's token and a same-origin
        C{Origin}; then every message goes and the browser is sent to C{/}.
        """
        await self.relay()
        _, page = await self.fetch("/")
        match = re.search(rb'name="csrf" value="([^"]+)"', page)
        assert match is not None
        token = match.group(1)
        form = {"Content-Type": ["application/x-www-form-urlencoded"]}
        response, body = await self.fetch("/inbox/delete", "POST", data=b"csrf=wrong", headers=form)
        self.assertEqual((response.code, body), (403, b"Missing or wrong form token"))
        response, body = await self.fetch(
            "/inbox/delete",
            "POST",
            data=b"csrf=" + token,
            headers={**form, "Origin": ["http://evil.example"]},
        )
        self.assertEqual((response.code, body), (403, b"Cross-origin request refused"))
        self.assertEqual(len(os.listdir(self.outbox)), 1)
        response, body = await self.fetch(
            "/inbox/delete",
            "POST",
            data=b"csrf=" + token,
            headers={**form, "Origin": [self.base]},
        )
        self.assertEqual(response.code, 303)
        self.assertEqual(response.headers.getRawHeaders("Location"), ["/"])
        self.assertEqual(os.listdir(self.outbox), [])
        response, _ = await self.fetch("/inbox/delete")
        self.assertEqual(response.code, 404)

    @async_test
    async def test_api_still_answers(self) -> None:
        """
        The inbox sits beside C{/send} and C{/messages}.
        """
        message_id = await self.relay()
        response, body = await self.fetch("/messages")
        self.assertEqual([m["id"] for m in json.loads(body)], [message_id])


class BrowserTests(InboxTestMixin, TestCase):
    """
    What a person sees, in headless Chromium.
    """

    timeout = 90

    def setUp(self) -> None:
        if shutil.which("chromium") is None:
            raise SkipTest("chromium is not installed (apt-get install chromium)")
        self.start()

    @async_test
    async def test_person_sees_subject_html_body_and_attachment(self) -> None:
        message_id = await self.relay(subject="Your order <42> shipped", html=HTML)

        def look() -> list[tuple[str, list[str]]]:
            browser = Chromium()
            try:
                return [
                    browser.visit(self.base + "/"),
                    browser.visit(f"{self.base}/inbox/{message_id}"),
                ]
            finally:
                browser.close()

        (listing, list_frames), (page, frames) = await deferToThread(look)
        self.assertIn("Your order <42> shipped", listing)
        self.assertIn("Zoë Sender <zoe@example.com>", listing)
        self.assertEqual(list_frames, [])
        self.assertIn("Your order <42> shipped", page)
        self.assertIn("invoice.pdf", page)
        self.assertIn("Hello Ann,\nyour order shipped.", page)
        # The HTML body is shown in its frame, and its script did not run.
        self.assertEqual(frames, ["Rich HTML body"])


def test_base64_roundtrip_of_stored_attachment() -> None:
    """
    The stored C{content} is the base64 the native dialect sent.
    """
    assert base64.b64decode(base64.b64encode(b"%PDF")) == b"%PDF"
