# -*- test-case-name: tests.test_dialects -*-
"""
The registry of upstream API dialects: C{upstream.dialect} name to the
L{IDialect} that turns one L{relayd.message.OutboundMessage} into one JSON
request body and the upstream's HTTP answer into a
L{relayd.result.UpstreamResult}.

One module per request format, all built on L{relayd.dialects.base}:

  - L{relayd.dialects.native}: relayd's own schema (C{docs/upstream-api.md}).
  - L{relayd.dialects.raw}: the raw MIME message, base64 encoded.
  - L{relayd.dialects.mailpace}: U{https://docs.mailpace.com/reference/send}.
  - L{relayd.dialects.postmark}:
    U{https://postmarkapp.com/developer/api/email-api}.

No reactor code here: dialects are pure functions of their input.
"""

from __future__ import annotations

from collections.abc import Callable

from relayd.config import ConfigError
from relayd.dialects import (
    brevo,
    mailgun,
    mailjet,
    mailpace,
    native,
    postmark,
    raw,
    resend,
    sendgrid,
    ses,
    sparkpost,
)
from relayd.interfaces import IDialect

__all__ = ["DIALECTS", "get_dialect"]

#: The built-in dialects by C{upstream.dialect} name, in the order the docs
#: list them.
_BUILT_IN: dict[str, Callable[[], IDialect]] = {
    "native": native.NativeDialect,
    "raw": raw.RawDialect,
    "mailpace": mailpace.MailPaceDialect,
    "postmark": postmark.PostmarkDialect,
    "sendgrid": sendgrid.SendGridDialect,
    "mailgun": mailgun.MailgunDialect,
    "ses": ses.SESDialect,
    "resend": resend.ResendDialect,
    "brevo": brevo.BrevoDialect,
    "sparkpost": sparkpost.SparkPostDialect,
    "mailjet": mailjet.MailjetDialect,
}

#: The dialect names L{get_dialect} knows, in the order the docs list them.
DIALECTS = tuple(_BUILT_IN)


def get_dialect(name: str) -> IDialect:
    """
    Look up a dialect by its C{upstream.dialect} name.

    @param name: One of L{DIALECTS}.
    @return: A new dialect object.
    @raise ConfigError: For any other name.
    """
    try:
        return _BUILT_IN[name]()
    except KeyError:
        raise ConfigError(
            f"upstream.dialect: unknown dialect {name!r}; expected one of "
            + ", ".join(repr(n) for n in DIALECTS)
        ) from None
