"""Input of the POP3 server: octets to command lines, with the line limits of RFC 2449 4.

RFC 2449 4: a command line, CRLF included, is at most 255 octets. SASL
responses (RFC 5034 4) are base64 and may be longer; AUTH lines get
:data:`SASL_LINE_LIMIT`. Lines end at LF, with or without a CR before it
(as Dovecot accepts, for ``nc`` users). An overlong line is thrown away up to
its end and reported once as :data:`TOO_LONG`, so the session stays in step
with the client; an unterminated one beyond :data:`UNTERMINATED_LIMIT` is
reported as :data:`RUNAWAY` and the connection should close.
"""

from __future__ import annotations

#: RFC 2449 4: 255 octets including the CRLF.
COMMAND_LINE_LIMIT = 255
#: AUTH commands and SASL responses (base64 of a PLAIN message with long passwords).
SASL_LINE_LIMIT = 8192
UNTERMINATED_LIMIT = 64 * 1024


class _Marker:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


TOO_LONG = _Marker("line too long")
RUNAWAY = _Marker("unterminated line")


class LineBuffer:
    """Collects received octets and hands out complete lines (sans-I/O)."""

    def __init__(self) -> None:
        self._octets = bytearray()
        self._skipping: int | None = None  # octets of an overlong line thrown away so far

    def __len__(self) -> int:
        return len(self._octets)

    def feed(self, data: bytes) -> None:
        self._octets += data

    def clear(self) -> int:
        """Forget everything not yet read (STLS read-ahead); return how many octets that was."""
        count = len(self._octets)
        self._octets.clear()
        return count

    def whole_line(self, data: bytes) -> bytes | None:
        """``data`` as a line (without its line end) when it is exactly one command line and nothing is pending.

        The usual case of a client that waits for each reply: the octets of one
        read are one command. Then nothing is buffered; otherwise (None) feed
        them and take lines with :meth:`next_line`.
        """
        if self._octets or self._skipping is not None or not data or data.find(b"\n") != len(data) - 1:
            return None
        if data.endswith(b"\r\n"):
            return data[:-2] if len(data) <= COMMAND_LINE_LIMIT else None
        return data[:-1] if len(data) < COMMAND_LINE_LIMIT else None  # counted with the CR it lacks

    def next_line(self, sasl: bool = False) -> bytes | _Marker | None:
        """The next line without its line end, :data:`TOO_LONG`, :data:`RUNAWAY`, or None (need more).

        :param sasl: the line may be a SASL response (the longer limit applies).
        """
        octets = self._octets
        end = octets.find(b"\n")
        if end < 0 and self._skipping is None and len(octets) < COMMAND_LINE_LIMIT:
            return None  # the usual wait for the rest of a line (within every limit)
        limit = SASL_LINE_LIMIT if sasl or octets[:5].upper() == b"AUTH " else COMMAND_LINE_LIMIT
        if self._skipping is None and end < 0 and len(octets) >= limit:
            self._skipping = 0  # no line end within the limit: it can only be too long
        if self._skipping is not None:
            if end < 0:
                self._skipping += len(octets)
                octets.clear()
                return RUNAWAY if self._skipping > UNTERMINATED_LIMIT else None
            del octets[: end + 1]
            self._skipping = None
            return TOO_LONG
        if end < 0:
            return None
        line = bytes(octets[:end])
        del octets[: end + 1]
        if len(line) + (1 if line.endswith(b"\r") else 2) > limit:
            return TOO_LONG
        return line[:-1] if line.endswith(b"\r") else line
