"""
Send a message through a provider dialect to L{FakeUpstream} over
L{StubTreq}, the way the upstream client sends it once it calls the
dialect's C{request} and C{answer} hooks.
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from relayd.dialects.request import ProviderDialect
from relayd.message import OutboundMessage
from relayd.result import UpstreamResult
from relayd.testing import Answer, FakeUpstream, RecordedRequest
from relayd.upstream import USER_AGENT

TOKEN = "key-123"
NOW = 1_700_000_000.0


def exchange(
    case: SynchronousTestCase,
    dialect: ProviderDialect,
    message: OutboundMessage,
    answer: Answer | None = None,
    *,
    token: str = TOKEN,
    url: str = "https://api.example.com/send",
) -> tuple[RecordedRequest, UpstreamResult]:
    """
    POST C{message} as C{dialect} builds it and read the answer.

    @return: What the fake received, and the dialect's reading of C{answer}
        (default C{200 {"id": "fake-1"}}).
    """
    upstream = FakeUpstream([answer] if answer else [])
    request = dialect.request(message, token, url, NOW)
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
        dialect.token_header: dialect.token_format.replace("{token}", token),
    }
    for name, value in request.headers.items():
        for default in [h for h in headers if h.lower() == name.lower()]:
            del headers[default]
        headers[name] = value
    http = StubTreq(upstream)
    response = case.successResultOf(
        http.post(url, data=request.body, headers=headers)  # type: ignore[attr-defined]
    )
    body = case.successResultOf(response.content())
    answer_headers = {
        name.decode("latin-1").lower(): values[-1].decode("latin-1")
        for name, values in response.headers.getAllRawHeaders()
    }
    return upstream.last, dialect.answer(response.code, answer_headers, body)


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
