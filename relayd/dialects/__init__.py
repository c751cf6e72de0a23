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

Third-party dialects register in the C{relayd.dialects} entry point group
(C{[options.entry_points] relayd.dialects = acme = relayd_dialect_acme:AcmeDialect});
the entry point names a zero-argument callable returning an L{IDialect}
(C{docs/providers.md}, "Dialect plugins").  A built-in name wins over a
plugin of the same name.

No reactor code here: dialects are pure functions of their input.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

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

__all__ = ["DIALECTS", "ENTRY_POINT_GROUP", "get_dialect", "plugin_dialects"]

#: The entry point group third-party dialects register in.
ENTRY_POINT_GROUP = "relayd.dialects"

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

    @param name: One of L{DIALECTS}, or a plugin's entry point name.
    @return: A new dialect object.
    @raise ConfigError: For any other name, or a plugin that cannot be
        loaded or does not provide L{IDialect}.
    """
    if name in _BUILT_IN:
        return _BUILT_IN[name]()
    plugins = plugin_dialects()
    if name not in plugins:
        raise ConfigError(
            f"upstream.dialect: unknown dialect {name!r}; expected one of "
            + ", ".join(repr(n) for n in DIALECTS + tuple(sorted(plugins)))
        )
    try:
        dialect = plugins[name].load()()
    except Exception as e:
        raise ConfigError(
            f"upstream.dialect: plugin {name!r} cannot be loaded: {type(e).__name__}: {e}"
        ) from None
    if not IDialect.providedBy(dialect):
        raise ConfigError(f"upstream.dialect: plugin {name!r} does not provide IDialect")
    return dialect


def plugin_dialects() -> dict[str, Any]:
    """
    The installed third-party dialects, by name.

    @return: Entry point name to its L{importlib.metadata.EntryPoint}.
    """
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
