"""
Tests for L{relayd.devupstream}, the bundled development API, over a real
loopback socket (its file I/O runs in the reactor's thread pool).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from relayd.config import UpstreamConfig
from relayd.devupstream import make_site
from relayd.reply import Reply
from relayd.result import Accepted
from relayd.testing import async_test, sample_message
from relayd.upstream import make_client

TOKEN = "dev-token-SECRET"


def native(**changes: object) -> dict[str, Any]:
    """
    A valid native request document.
    """
    from relayd.dialects import get_dialect

    document: dict[str, Any] = json.loads(get_dialect("native").body(sample_message(**changes)))
    return document


class DevUpstreamTests(TestCase):
    """
    The development API on 127.0.0.1.
    """

    timeout = 20

    def setUp(self) -> None:
        self.outbox = os.path.join(tempfile.mkdtemp(prefix="relayd-dev-"), "outbox")
        self.addCleanup(shutil.rmtree, os.path.dirname(self.outbox), True)
        self.site = make_site(self.outbox, reactor)
        server = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        port = self.successResultOf(server.listen(self.site))
        self.addCleanup(port.stopListening)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        self.base = f"http://127.0.0.1:{address.port}"
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=pool))

    async def post(
        self, body: bytes, token: str | None = TOKEN, **headers: str
    ) -> tuple[int, object]:
        all_headers: dict[str | bytes, str | bytes] = {
            k.replace("_", "-"): v for k, v in headers.items()
        }
        all_headers["Content-Type"] = "application/json"
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        response = await self.http.post(self.base + "/send", data=body, headers=all_headers)
        return response.code, json.loads(await response.content())

    async def get(self, path: str) -> tuple[int, object]:
        response = await self.http.get(self.base + path)
        return response.code, json.loads(await response.content())

    def stored(self) -> list[str]:
        if not os.path.isdir(self.outbox):
            return []
        return sorted(os.listdir(self.outbox))

    @async_test
    async def test_post_stores_and_answers_id(self) -> None:
        """
        A valid request is stored as C{<outbox>/<id>.json} and answered with
        its id; the token is not stored.
        """
        status, answer = await self.post(json.dumps(native()).encode())
        self.assertEqual(status, 200)
        assert isinstance(answer, dict)
        message_id = answer["id"]
        self.assertEqual(self.stored(), [f"{message_id}.json"])
        with open(os.path.join(self.outbox, f"{message_id}.json"), encoding="utf-8") as f:
            text = f.read()
        stored = json.loads(text)
        self.assertEqual(stored["id"], message_id)
        self.assertEqual(stored["message"], native())
        self.assertTrue(stored["received_at"].endswith("+00:00"))
        self.assertNotIn(TOKEN, text)

    @async_test
    async def test_list_and_get(self) -> None:
        """
        C{GET /messages} lists the messages oldest first; C{GET
        /messages/<id>} returns one.
        """
        _, first = await self.post(json.dumps(native(subject="one")).encode())
        _, second = await self.post(json.dumps(native(subject="two")).encode())
        assert isinstance(first, dict) and isinstance(second, dict)
        status, listing = await self.get("/messages")
        self.assertEqual(status, 200)
        assert isinstance(listing, list)
        self.assertEqual([m["id"] for m in listing], [first["id"], second["id"]])
        self.assertEqual(
            {k: v for k, v in listing[0].items() if k != "received_at"},
            {
                "id": first["id"],
                "from": "Zoë Sender <zoe@example.com>",
                "to": ["Ann <ann@example.net>"],
                "subject": "one",
            },
        )
        status, one = await self.get(f"/messages/{second['id']}")
        self.assertEqual(status, 200)
        assert isinstance(one, dict)
        self.assertEqual(one["message"]["subject"], "two")

    @async_test
    async def test_empty_listing(self) -> None:
        """
        Before any message, the listing is empty.
        """
        self.assertEqual(await self.get("/messages"), (200, []))

    @async_test
    async def test_unknown_message(self) -> None:
        """
        An unknown or malformed id is 404.
        """
        self.assertEqual(
            await self.get("/messages/0123456789abcdef"), (404, {"error": "No such message"})
        )
        self.assertEqual((await self.get("/messages/..%2f..%2fetc"))[0], 404)

    @async_test
    async def test_bad_input(self) -> None:
        """
        Not JSON or not an object is 400; a wrong shape is 422; nothing is
        stored.
        """
        self.assertEqual((await self.post(b"{not json"))[0], 400)
        self.assertEqual((await self.post(b"[1, 2]"))[0], 400)
        without_from = native()
        del without_from["from"]
        self.assertEqual((await self.post(json.dumps(without_from).encode()))[0], 422)
        no_recipients = native()
        no_recipients["envelope"]["rcpt_to"] = []
        status, answer = await self.post(json.dumps(no_recipients).encode())
        self.assertEqual(status, 422)
        self.assertIn("rcpt_to", answer["error"])  # type: ignore[index]
        self.assertEqual(self.stored(), [])

    @async_test
    async def test_token_required(self) -> None:
        """
        Without a Bearer token the answer is 401.
        """
        status, answer = await self.post(json.dumps(native()).encode(), token=None)
        self.assertEqual((status, answer), (401, {"error": "Missing API token"}))
        self.assertEqual(self.stored(), [])

    @async_test
    async def test_forced_status(self) -> None:
        """
        C{X-Relayd-Dev-Status} forces the answer's status; nothing is
        stored.
        """
        status, answer = await self.post(json.dumps(native()).encode(), X_Relayd_Dev_Status="503")
        self.assertEqual(status, 503)
        self.assertEqual(self.stored(), [])

    @async_test
    async def test_repeated_idempotency_key_returns_first_id(self) -> None:
        """
        A second request with the same C{Idempotency-Key} gets the first
        request's status and body and stores nothing; the key is kept in
        the stored document.  A quoted key (an sf-string) is the same key.
        """
        key = "87a73aa4-df80-8f4b-a629-9be219685a1e"
        first = await self.post(json.dumps(native()).encode(), Idempotency_Key=key)
        self.assertEqual(first[0], 200)
        again = await self.post(json.dumps(native()).encode(), Idempotency_Key=key)
        quoted = await self.post(
            json.dumps(native(subject="changed")).encode(), Idempotency_Key=f'"{key}"'
        )
        self.assertEqual(again, first)
        self.assertEqual(quoted, first)
        message_id = first[1]["id"]  # type: ignore[index]
        self.assertEqual(self.stored(), [f"{message_id}.json"])
        status, one = await self.get(f"/messages/{message_id}")
        assert isinstance(one, dict)
        self.assertEqual((status, one["idempotency_key"]), (200, key))
        self.assertEqual(one["message"]["subject"], native()["subject"])

    @async_test
    async def test_distinct_keys_and_no_key_store_each_request(self) -> None:
        """
        Requests with distinct keys, and requests without a key (as
        before), are each stored.
        """
        body = json.dumps(native()).encode()
        answers = [
            await self.post(body, Idempotency_Key="key-1"),
            await self.post(body, Idempotency_Key="key-2"),
            await self.post(body),
            await self.post(body),
        ]
        self.assertEqual([status for status, _ in answers], [200] * 4)
        ids = {answer["id"] for _, answer in answers}  # type: ignore[index]
        self.assertEqual(len(ids), 4)
        self.assertEqual(len(self.stored()), 4)

    @async_test
    async def test_refused_request_does_not_use_up_its_key(self) -> None:
        """
        A request refused with 422 leaves its key free: the corrected
        request with the same key is stored.
        """
        no_recipients = native()
        no_recipients["envelope"]["rcpt_to"] = []
        refused = await self.post(json.dumps(no_recipients).encode(), Idempotency_Key="k")
        self.assertEqual(refused[0], 422)
        status, answer = await self.post(json.dumps(native()).encode(), Idempotency_Key="k")
        self.assertEqual(status, 200)
        self.assertEqual(self.stored(), [f"{answer['id']}.json"])  # type: ignore[index]

    @async_test
    async def test_bad_idempotency_key(self) -> None:
        """
        An empty, overlong or non-ASCII key is 400 and nothing is stored.
        """
        body = json.dumps(native()).encode()
        for bad in ("", '""', "x" * 256, "with space", "caf\u00e9"):
            self.assertEqual(
                await self.post(body, Idempotency_Key=bad),
                (400, {"error": "Bad Idempotency-Key"}),
                bad,
            )
        self.assertEqual((await self.post(body, Idempotency_Key="x" * 255))[0], 200)
        self.assertEqual(len(self.stored()), 1)

    @async_test
    async def test_key_in_flight_is_409(self) -> None:
        """
        While a request with the key is still being stored, a repeat is
        409 (the client tries again later) and stores nothing.
        """
        keys = self.site.resource.children[b"send"]._keys  # type: ignore[attr-defined]
        await keys.claim("busy")
        status, answer = await self.post(json.dumps(native()).encode(), Idempotency_Key="busy")
        self.assertEqual(
            (status, answer), (409, {"error": "A request with this Idempotency-Key is in progress"})
        )
        self.assertEqual(self.stored(), [])

    @async_test
    async def test_relayd_client_end_to_end(self) -> None:
        """
        relayd's own client and the native dialect talk to the development
        API: accepted with the stored id; a token in the wrong header is
        refused.
        """
        client = make_client(reactor, UpstreamConfig(url=self.base + "/send", timeout=10.0))
        self.addCleanup(client.close)
        result = await client.send(sample_message(), TOKEN)
        assert isinstance(result, Accepted)
        self.assertEqual(self.stored(), [f"{result.message_id}.json"])
        with open(os.path.join(self.outbox, f"{result.message_id}.json"), encoding="utf-8") as f:
            self.assertEqual(json.load(f)["message"], native())

        wrong_header = make_client(
            reactor,
            UpstreamConfig(url=self.base + "/send", timeout=10.0, token_header="X-Api-Key"),
        )
        self.addCleanup(wrong_header.close)
        self.assertEqual(
            await wrong_header.send(sample_message(), TOKEN),
            Reply(554, "5.7.1", "Missing API token"),
        )
