"""
Send a message through a provider dialect to L{FakeUpstream} over
L{StubTreq}, through the real L{UpstreamClient} (L{UpstreamClient.prepare}
calls the dialect's C{request} hook, L{UpstreamClient.post_prepared} its
C{answer} hook).
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relayd.config import UpstreamConfig
from relayd.dialects.request import ProviderDialect
from relayd.message import OutboundMessage
from relayd.result import UpstreamResult
from relayd.testing import Answer, FakeUpstream, RecordedRequest
from relayd.upstream import UpstreamClient

TOKEN = "key-123"
NOW = 1_700_000_000.0
KEY = "87a73aa4-df80-8f4b-a629-9be219685a1e"


def exchange(
    case: SynchronousTestCase,
    dialect: ProviderDialect,
    message: OutboundMessage,
    answer: Answer | None = None,
    *,
    token: str = TOKEN,
    url: str = "https://api.example.com/send",
    key: str | None = KEY,
) -> tuple[RecordedRequest, UpstreamResult]:
    """
    POST C{message} with the upstream client as C{dialect} builds it, at
    L{NOW} with the idempotency key C{key}, and read the answer.

    @return: What the fake received, and the client's reading of C{answer}
        (default C{200 {"id": "fake-1"}}).
    """
    upstream = FakeUpstream([answer] if answer else [])
    clock = Clock()
    clock.advance(NOW)
    client = UpstreamClient(
        clock, UpstreamConfig(url=url, dialect=dialect.name), dialect, http=StubTreq(upstream)
    )
    prepared = client.prepare(message, token, key)
    result = case.successResultOf(Deferred.fromCoroutine(client.post_prepared(prepared)))
    return upstream.last, result


def result_of(dialect: ProviderDialect, status: int, document: Any = None, **headers: str) -> Any:
    """
    The dialect's reading of one answer.
    """
    if isinstance(document, bytes):
        body = document
    else:
        body = b"" if document is None else json.dumps(document).encode("utf-8")
    return dialect.answer(
        status, {k.lower().replace("_", "-"): v for k, v in headers.items()}, body
    )
