# -*- test-case-name: tests.test_replytexts -*-
"""
The C{[replies]} table: a deployment's own texts for relayd's named
replies, applied in one place (L{relayd.smtp.session.RelaySMTP.send}).

A key is a reply's name (L{named}: C{auth_invalid},
C{sender_not_allowed}, C{too_many_recipients}, ...; or one of
L{relayd.reply.TEMPLATES}: C{queued}, C{unknown_stream}, ...); the value
is the new text.  Texts of templated replies may use the template's
fields: C{queued = "Thanks! Queued as: {id}"}.  The reply code and the
enhanced status code never change: they are the protocol, the text is the
provider's voice.

A reply is recognised by its value (code, enhanced status code, text), so
the override applies to whoever sends it, and a reply whose text came from
elsewhere (the upstream's own error text, the auth endpoint's 535 text)
passes unchanged.

No reactor code here.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping

from relayd import reply as R
from relayd.config import ConfigError
from relayd.reply import Reply

__all__ = ["ReplyTexts", "reply_names"]


def named() -> dict[str, R.Reply]:
    """
    Every reply constant of L{relayd.reply} by its C{[replies]} name: the
    constant's name in lower case (C{AUTH_INVALID} is C{auth_invalid}).

    @rtype: L{dict} of L{str} to L{Reply}
    """
    return {
        name.lower(): value
        for name, value in vars(R).items()
        if name.isupper() and isinstance(value, R.Reply)
    }


def reply_names() -> tuple[str, ...]:
    """
    Every name C{[replies]} accepts, sorted.
    """
    return tuple(sorted(set(named()) | set(R.TEMPLATES)))


def _pattern(template: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """
    A regular expression matching texts made from C{template}, and the
    fields it captures.
    """
    regex = []
    fields = []
    for literal, name, _, _ in string.Formatter().parse(template):
        regex.append(re.escape(literal))
        if name is not None:
            regex.append(f"(?P<{name}>.*)")
            fields.append(name)
    return re.compile("".join(regex), re.DOTALL), tuple(fields)


class ReplyTexts:
    """
    The override map built at start-up from C{[replies]}.
    """

    def __init__(
        self,
        static: Mapping[Reply, str] | None = None,
        templated: Mapping[tuple[int, str], list[tuple[re.Pattern[str], str]]] | None = None,
    ) -> None:
        """
        @param static: Reply (by value) to its new text.
        @param templated: (code, status) to (pattern of the default text,
            new text with C{{field}} placeholders).
        """
        self._static = dict(static or {})
        self._templated = dict(templated or {})

    @classmethod
    def from_config(cls, table: Mapping[str, str]) -> ReplyTexts:
        """
        Build the map from the C{[replies]} table.

        @param table: Reply name to text.
        @rtype: L{ReplyTexts}
        @raise ConfigError: (without the file name) for an unknown name, a
            text with a line break or a placeholder the reply has not.
        """
        constants = named()
        static: dict[Reply, str] = {}
        templated: dict[tuple[int, str], list[tuple[re.Pattern[str], str]]] = {}
        for name, text in table.items():
            key = f"replies.{name}"
            if "\r" in text or "\n" in text:
                raise ConfigError(f"{key}: expected one line of text")
            if name in R.TEMPLATES:
                code, status, default = R.TEMPLATES[name]
                pattern, fields = _pattern(default)
                try:
                    text.format_map({f: "" for f in fields})
                except (KeyError, ValueError, IndexError):
                    raise ConfigError(
                        f"{key}: placeholders must be among "
                        + (", ".join("{" + f + "}" for f in fields) or "none")
                    ) from None
                templated.setdefault((code, status), []).append((pattern, text))
            elif name in constants:
                static[constants[name]] = text
            else:
                raise ConfigError(f"{key}: unknown reply name")
        return cls(static, templated)

    def apply(self, r: Reply) -> Reply:
        """
        The reply to send instead of C{r}.

        @param r: The reply relayd made.
        @return: C{r} with the deployment's text, or C{r} itself.
        """
        text = self._static.get(r)
        if text is not None:
            return r.with_text(text)
        for pattern, new in self._templated.get((r.code, r.status), ()):
            m = pattern.fullmatch(r.text)
            if m is not None:
                return r.with_text(new.format_map(m.groupdict()))
        return r
