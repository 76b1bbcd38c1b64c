"""A stored message in POP3's multi-line form (RFC 1939 3), chunk by chunk, and its exact size.

RFC 1939 3: a multi-line response ends with ``.<CRLF>``; every line of the
message that starts with ``.`` gets a second one (byte-stuffing), and line
ends are CRLF. Maildir files may come from any tool, with CRLF or bare LF
line ends, so :class:`MultilineEncoder` turns a bare LF into CRLF, keeps
CRLF, and keeps a CR that ends no line as it is. State is carried between
chunks, so a file may be read in pieces cut anywhere (between a CR and its
LF, or right before a line's dot).

RFC 1939 5 (LIST) and 11 ask for the exact size of the message as it will be
sent, before byte-stuffing and without the final ``.<CRLF>``;
:func:`survey` counts it with the same encoder, so what LIST says is what
RETR sends. :class:`TopCut` picks the part of a message that ``TOP msg n``
sends (RFC 1939 7): the header, the empty line after it and ``n`` lines of
the body.
"""

from __future__ import annotations

from typing import BinaryIO

#: Octets read from a message file at a time (RETR, TOP and measuring).
CHUNK = 256 * 1024
TERMINATOR = b".\r\n"


class MultilineEncoder:
    """Message octets in, the octets of the multi-line response body out (see the module docstring).

    ``stuffed`` counts the dots added so far, so ``sent - stuffed`` is the
    message size of RFC 1939.
    """

    def __init__(self) -> None:
        self._line_start = True
        self._pending_cr = False
        self.stuffed = 0

    def encode(self, chunk: bytes) -> bytes:
        """The wire form of the next ``chunk`` of the message."""
        data = bytes(chunk)
        if self._pending_cr:
            data = b"\r" + data
            self._pending_cr = False
        if data.endswith(b"\r"):
            # It may be the first half of a CRLF cut by the chunking: decide with the next chunk.
            data = data[:-1]
            self._pending_cr = True
        if not data:
            return b""
        if data.count(b"\n") != data.count(b"\r\n"):  # bare LFs (CRLF-only mail, the usual, is kept as it is)
            data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if self._line_start and data[:1] == b".":
            data = b"." + data
            self.stuffed += 1
        stuffed = data.count(b"\r\n.")
        if stuffed:
            data = data.replace(b"\r\n.", b"\r\n..")
            self.stuffed += stuffed
        self._line_start = data.endswith(b"\n")
        return data

    def finish(self) -> bytes:
        """The end of the response: a CRLF if the last line has none (a final CR counts as one), then ``.<CRLF>``."""
        tail = b"\r\n" if self._pending_cr or not self._line_start else b""
        self._pending_cr = False
        self._line_start = True
        return tail + TERMINATOR


class TopCut:
    """The leading part of a message that ``TOP msg lines`` sends, fed chunk by chunk.

    The header ends at the first empty line (``LF`` or ``CRLF`` alone, RFC 5322
    2.1); a message without one is all header and is sent whole.
    """

    def __init__(self, lines: int):
        self._lines_left = lines
        self._in_header = True
        self._head = b""  # up to two octets of the current header line, to tell an empty one
        self.done = False

    def cut(self, chunk: bytes) -> bytes:
        """What of ``chunk`` belongs to the response (all, a prefix, or nothing once ``done``)."""
        if self.done:
            return b""
        if not self._in_header and self._lines_left == 0:
            self.done = True
            return b""
        position = 0
        while True:
            newline = chunk.find(b"\n", position)
            if self._in_header:
                if newline < 0:
                    self._head = (self._head + chunk[position : position + 2])[:2]
                    return chunk
                line_head = (self._head + chunk[position:newline])[:2]
                self._head = b""
                position = newline + 1
                if line_head in (b"", b"\r"):
                    self._in_header = False
                    if self._lines_left == 0:
                        self.done = True
                        return chunk[:position]
                continue
            if newline < 0:
                return chunk
            position = newline + 1
            self._lines_left -= 1
            if self._lines_left == 0:
                self.done = True
                return chunk[:position]


def survey(handle: BinaryIO) -> tuple[int, bool]:
    """The RFC 1939 size of the message in ``handle``, and whether it is *plain* (read to its end; blocking).

    A plain message is its own wire form: CRLF line ends, a last line that
    ends, no line that starts with a dot. Nearly all mail is; sending it
    then only needs the terminator.
    """
    encoder = MultilineEncoder()
    octets = sent = 0
    while chunk := handle.read(CHUNK):
        octets += len(chunk)
        sent += len(encoder.encode(chunk))
    sent += len(encoder.finish()) - len(TERMINATOR)
    return sent - encoder.stuffed, sent == octets and not encoder.stuffed


def encode_message(message: bytes, top_lines: int | None = None) -> bytes:
    """The whole multi-line body for ``message`` at once, terminator included (tests, small messages)."""
    if top_lines is not None:
        message = TopCut(top_lines).cut(message)
    encoder = MultilineEncoder()
    return encoder.encode(message) + encoder.finish()
