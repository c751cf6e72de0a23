# -*- test-case-name: tests.smtp.test_framing -*-
"""
SMTP input framing: bytes to command lines, DATA content and the end of data.

The session feeds every received buffer to a L{Framer} and then pulls what
it can use next: a command line (L{Framer.read_line}) or, during DATA, the
message content up to the end of data (L{Framer.read_data} with a
L{DataReader}).  Pulling, not pushing, lets the session stop reading while
a command waits (RFC 2920 section 3.1: replies in command order).

This is where "SMTP smuggling" is decided, so it has no Twisted code and
can be tested and fuzzed alone:

  - a command line is at most a limit of octets with its line end (RFC 5321
    section 4.5.3.1.4); a longer one is dropped as it arrives, never
    buffered, and one past L{COMMAND_DISCARD_LIMIT} octets ends the session;
  - only C{<CR><LF>.<CR><LF>} ends DATA (RFC 5321 section 4.1.1.4); a bare
    C{<CR>} or C{<LF>} is normalized to C{<CR><LF>} or fails the message;
  - dot-stuffing is undone (RFC 5321 section 4.5.2) on whole buffers;
  - a message line is at most a limit of octets (RFC 5321 section
    4.5.3.1.6); a longer one fails the message and is dropped as it
    arrives, its line end still counts for finding the end of data.
"""

from __future__ import annotations

import enum
import io
from collections.abc import Callable

__all__ = [
    "AUTH_LINE_LIMIT",
    "COMMAND_DISCARD_LIMIT",
    "DataError",
    "DataReader",
    "Framer",
    "LineError",
]

#: RFC 4954 section 4: an AUTH line may be up to 12288 octets long.
AUTH_LINE_LIMIT = 12288

#: How many octets of one over-long command line are read (and dropped)
#: before the session is closed instead.
COMMAND_DISCARD_LIMIT = 65536


class LineError(enum.Enum):
    """
    Why L{Framer.read_line} gave no command line.
    """

    #: The line was over the limit and has been dropped (C{500 5.5.2}).
    TOO_LONG = "too long"
    #: The line ended with a bare C{<LF>} in reject mode (C{550 5.6.0}).
    BARE_LF = "bare LF"


class DataError(enum.Enum):
    """
    Why a message failed while its content arrived; the first one counts.
    """

    #: A line over the message line limit (C{552 5.3.4}).
    LINE_TOO_LONG = "line too long"
    #: More content than the message size limit (C{552 5.3.4}).
    TOO_BIG = "too big"
    #: A bare C{<CR>} or C{<LF>} in reject mode (C{550 5.6.0}).
    BARE_NEWLINE = "bare newline"
    #: The memory bound of the process was reached (C{452 4.3.1}).
    NO_MEMORY = "no memory"


class DataReader:
    """
    The content of one DATA command, as it arrives.

    @ivar content: The content so far: complete lines with C{<CR><LF>} line
        ends, dot-stuffing undone, in one growing L{io.BytesIO} (one large
        block that goes back to the system when freed, handed over by
        L{body} without a copy: C{getvalue} gives its own buffer), or
        C{None} when there is none.  Dropped when the message fails, so a
        failed message holds no memory.
    @ivar grow: Asked before the content grows to a size in bytes, or
        C{None}; its C{False} fails the message (L{DataError.NO_MEMORY}).
    @ivar size: Octets of content taken, in bytes.
    @ivar error: The first reason the message failed, or C{None}.
    @ivar crlf: The last line taken ended with C{<CR><LF>}: a C{.<CR><LF>}
        at the start of the buffer ends the data.
    @ivar skip_line: An over-long line is being dropped up to its end.
    @ivar skip_cr: The dropped line's last octet so far was C{<CR>}.
    """

    def __init__(self, max_line_length: int, max_size: int, reject_bare_newline: bool) -> None:
        """
        @param max_line_length: The longest message line, in octets
            without its line end.
        @param max_size: The largest message, in bytes (after undoing
            dot-stuffing and normalizing line ends).
        @param reject_bare_newline: Fail a message with a bare C{<CR>} or
            C{<LF>} instead of normalizing it.
        """
        self.max_line_length = max_line_length
        self.max_size = max_size
        self.reject_bare_newline = reject_bare_newline
        self.content: io.BytesIO | None = None
        self.grow: Callable[[int], bool] | None = None
        self.size = 0
        self.crlf = True
        self.error: DataError | None = None
        self.skip_line = False
        self.skip_cr = False

    def fail(self, error: DataError) -> None:
        """
        Fail the message (the first reason is kept) and drop its content.
        """
        if self.error is None:
            self.error = error
        self.content = None

    @property
    def parts(self) -> list[bytes]:
        """
        The content so far, for a look at what is held: one L{bytes} (a
        copy once more content follows), or none.
        """
        return [self.content.getvalue()] if self.content is not None else []

    def body(self) -> bytes | bytearray:
        """
        Take the content, without copying it.

        @return: The message so far (C{b""} after a failure), the reader's
            own C{bytearray}, not copied: a 25 MB copy would stall the
            reactor (the delivery path makes C{bytes} of it in its thread
            pool); the reader holds none of it afterwards.
        """
        content, self.content = self.content, None
        return content.getvalue() if content is not None else b""

    def take(self, block: bytes) -> None:
        """
        Take complete lines of message content, as received (each ends
        with C{<LF>}; none is the end of data).
        """
        if not block:
            return
        self.crlf = block.endswith(b"\r\n")
        if self.error is not None:
            return
        # Undo dot-stuffing (RFC 5321 section 4.5.2).
        if block.startswith(b"."):
            block = block[1:]
        if b"\n." in block:
            block = block.replace(b"\n.", b"\n")
        # Line length (RFC 5321 section 4.5.3.1.6): at most the limit, plus
        # the CR (the split is on LF), measured as received (a bare CR is
        # not a line end), once the dot-stuffing is undone.
        limit = self.max_line_length + 1
        if len(block) > limit and max(map(len, block.split(b"\n"))) > limit:
            self.fail(DataError.LINE_TOO_LONG)
            return
        # Line ends: every LF must be part of CRLF, and no bare CR.
        lf = block.count(b"\n")
        if block.count(b"\r") != lf or block.count(b"\r\n") != lf:
            if self.reject_bare_newline:
                self.fail(DataError.BARE_NEWLINE)
                return
            block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        self.size += len(block)
        if self.size > self.max_size:
            self.fail(DataError.TOO_BIG)
            return
        if self.grow is not None and not self.grow(self.size):
            self.fail(DataError.NO_MEMORY)
            return
        if self.content is None:
            self.content = io.BytesIO()
        self.content.write(block)


class Framer:
    """
    The input of one SMTP session: a buffer cut into command lines and DATA.

    @ivar buffer: Received octets not used yet.
    @ivar discarding: Octets of an over-long command line dropped so far
        (0 when none is being dropped).
    """

    def __init__(
        self, max_command_length: int, max_line_length: int, reject_bare_newline: bool
    ) -> None:
        """
        @param max_command_length: The longest command line, in octets with
            its line end (RFC 5321 section 4.5.3.1.4: 512).
        @param max_line_length: The longest message line, in octets without
            its line end (RFC 5321 section 4.5.3.1.6: 998).
        @param reject_bare_newline: A line ending with a bare C{<LF>} is an
            error (instead of a line).
        """
        self.max_command_length = max_command_length
        self.max_line_length = max_line_length
        self.reject_bare_newline = reject_bare_newline
        self.buffer = bytearray()
        self.discarding = 0

    def feed(self, data: bytes) -> bool:
        """
        Add received octets.

        @param data: What the transport delivered.
        @return: C{False} when an over-long command line went past
            L{COMMAND_DISCARD_LIMIT} octets: the session should close.
        """
        if self.discarding:
            newline = data.find(b"\n")
            if newline < 0:
                self.discarding += len(data)
                return self.discarding <= COMMAND_DISCARD_LIMIT
            self.discarding = 0
            data = data[newline + 1 :]
        self.buffer += data
        return True

    def clear(self) -> None:
        """
        Forget all buffered input (STARTTLS, RFC 3207 section 4.2: what
        followed it in the clear is thrown away; or the session closed).
        """
        self.buffer = bytearray()
        self.discarding = 0

    def read_line(self, auth: bool = False) -> bytes | LineError | None:
        """
        Take the next command line (or AUTH response line).

        @param auth: The line is a response in an AUTH exchange, which may
            be up to L{AUTH_LINE_LIMIT} octets long (RFC 4954 section 4).
        @return: The line without its line end; a L{LineError} when the
            line was dropped; C{None} when no whole line has arrived.
        """
        buf = self.buffer
        newline = buf.find(b"\n")
        limit = AUTH_LINE_LIMIT if auth else self.max_command_length
        head = buf[:5].upper()
        if head == b"MAIL ":
            limit += 500  # RFC 4954 section 5: room for AUTH=<mailbox>
        elif head == b"AUTH ":
            limit = AUTH_LINE_LIMIT  # RFC 4954 section 4: initial response
        # RFC 5321 section 4.5.3.1.4: at most `limit` octets with CRLF.
        if newline < 0 or newline >= limit:
            if newline < 0 and len(buf) < limit:
                return None
            if newline < 0:
                self.discarding = len(buf)
                self.buffer = bytearray()
            else:
                del buf[: newline + 1]
            return LineError.TOO_LONG
        line = bytes(buf[:newline])
        del buf[: newline + 1]
        if line.endswith(b"\r"):
            return line[:-1]
        if self.reject_bare_newline:
            return LineError.BARE_LF
        return line

    def read_data(self, reader: DataReader) -> bool:
        """
        Give buffered DATA content to C{reader}: complete lines at once, in
        whole buffers.

        Only a line C{.<CR><LF>} that follows a C{<CR><LF>} ends the data
        (RFC 5321 section 4.1.1.4).

        @return: Whether the end of data was found (and taken from the
            buffer); C{False} when more input is needed.
        """
        buf = self.buffer
        if reader.skip_line:
            newline = buf.find(b"\n")
            if newline < 0:
                reader.skip_cr = buf.endswith(b"\r")
                self.buffer = bytearray()
                return False
            if newline > 0:
                reader.skip_cr = buf[newline - 1] == 0x0D
            reader.crlf = reader.skip_cr
            del buf[: newline + 1]
            reader.skip_line = False
            if not buf:
                return False
        last = buf.rfind(b"\n")
        if last < 0:
            if len(buf) > self.max_line_length + 2:
                self._skip_long_line(reader, buf)
            return False
        # Find the end of data among the complete lines.
        if reader.crlf and buf.startswith(b".\r\n"):
            end = 0
        else:
            end = buf.find(b"\r\n.\r\n", 0, last + 1)
            if end >= 0:
                end += 2
        if end >= 0:
            reader.take(bytes(buf[:end]))
            self.buffer = buf[end + 3 :]
            return True
        reader.take(bytes(buf[: last + 1]))
        rest = buf[last + 1 :]
        self.buffer = rest
        if len(rest) > self.max_line_length + 2:
            self._skip_long_line(reader, rest)
        return False

    def _skip_long_line(self, reader: DataReader, partial: bytearray) -> None:
        """
        The line being received is over the limit: fail the message and
        drop the line up to its end.

        @param partial: What has arrived of the line (no LF in it).
        """
        reader.fail(DataError.LINE_TOO_LONG)
        reader.skip_line = True
        reader.skip_cr = partial.endswith(b"\r")
        self.buffer = bytearray()
