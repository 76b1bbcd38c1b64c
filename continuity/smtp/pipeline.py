"""Input of the SMTP server: octets to commands, one at a time, in order.

:class:`CommandPipeline` replaces Twisted's ``LineOnlyReceiver`` in the
server. It keeps the octets in one inbox and takes from it either a command
line or, in DATA mode, octets for the :class:`~continuity.smtp.data.DataReader`
(so the switch between the two happens exactly at the end of a line, never
by a splitter that already cut the rest). A command whose work is a Deferred
(a policy check) holds the inbox until it has fired: replies go out in the
order of the commands and a pipelined DATA sees the RCPTs before it (RFC 2920
3.1). What arrives meanwhile waits in the inbox; only past :data:`PAUSE_AT`
octets is the transport paused. Pausing at every such command cost two
``epoll_ctl`` calls each (twice per message: at RCPT and at the end of DATA),
and a client that waits for our reply, as nearly all do, sends nothing
meanwhile anyway.

Line limits: command lines may be 2048 octets (Postfix's line_length_limit;
RFC 5321 4.5.3.1.4 says 512 but 4.5.3.1 asks servers to accept more), AUTH
lines 12288 (RFC 4954 4). An overlong line is thrown away up to its end and
answered ``500 5.5.2``, so the session stays in step; one with no end after
64 KiB closes the connection.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.mail import smtp as twisted_smtp
from twisted.python.failure import Failure

from continuity.smtp import codes

COMMAND, DATA, AUTH = twisted_smtp.COMMAND, twisted_smtp.DATA, twisted_smtp.AUTH
COMMAND_LINE_LIMIT = 2048
AUTH_LINE_LIMIT = 12288
UNTERMINATED_LINE_LIMIT = 64 * 1024
# While a command's work is pending, input past this many octets pauses the transport.
PAUSE_AT = 64 * 1024
# A client that still pushes this much meanwhile (it may only pipeline commands, RFC 2920 3.1) is closed.
PIPELINE_LIMIT = 1024 * 1024


class _TooLong:
    """Stands in for a command line that was over the limit (its octets are gone)."""


TOO_LONG = _TooLong()


class CommandPipeline:
    """The input loop of :class:`continuity.smtp.server.SMTPServer` (a mixin).

    The server provides ``mode``, ``session``, ``hostname``, ``timeout``,
    ``log``, ``_reader`` (the DATA reader while in DATA mode), ``_send``, and
    the handlers ``_command(line)``, ``_auth_response(line)`` and
    ``_end_of_data()``, each returning ``None`` or a Deferred of its work.
    """

    mode: str
    session: Any
    hostname: str
    log: Any
    _reader: Any

    def _start_pipeline(self) -> None:
        self._inbox = bytearray()
        self._busy = False
        self._paused = False
        self._closing = False
        self._lost = False
        self._discarding: int | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._closing or self._lost:
            return
        self.resetTimeout()
        self._inbox += data
        self._process()
        if self._busy and not self._paused and len(self._inbox) > PAUSE_AT and not (self._lost or self._closing):
            self._paused = True
            self.transport.pauseProducing()
        if self._busy and self.mode != DATA and len(self._inbox) > PIPELINE_LIMIT:
            self._send(codes.PIPELINE_OVERFLOW.format(hostname=self.hostname))

    def lineReceived(self, line: bytes) -> None:
        """Twisted's entry point for one line; the real work is in :meth:`dataReceived`."""
        self.dataReceived(line + b"\r\n")

    def _process(self) -> None:
        """Take commands (or DATA octets) from the inbox while nothing is pending."""
        while self._inbox and not (self._busy or self._closing or self._lost):
            if self.mode == DATA:
                used = self._reader.feed(self._inbox)
                del self._inbox[:used]
                if self._reader.done:
                    self._run(self._end_of_data())
                continue
            line = self._next_line()
            if line is None:
                break
            self._run(self._auth_response(line) if self.mode == AUTH else self._command(line))

    def _run(self, result: object) -> None:
        """Hold further input until ``result`` (a Deferred of a command's work) has fired."""
        if not isinstance(result, defer.Deferred):
            return
        self._busy = True
        state = {"synchronous": True}

        def finished(outcome: object) -> None:
            self._busy = False
            if isinstance(outcome, Failure):  # a bug of ours: the handlers answer their errors
                self.log.failure("{session_id} unexpected error", outcome, session_id=self.session.session_id)
                self._send(codes.INTERNAL_ERROR)
            if not state["synchronous"] and not (self._lost or self._closing):
                if self._paused:
                    self._paused = False
                    self.transport.resumeProducing()
                self.setTimeout(self.timeout)
                self._process()

        result.addBoth(finished)
        state["synchronous"] = False
        if self._busy and not (self._lost or self._closing):
            # The client waits for us: no idle timeout while the policy works.
            self.setTimeout(None)

    def _line_limit(self) -> int:
        if self.mode == AUTH or bytes(self._inbox[:5]).upper() == b"AUTH ":
            return AUTH_LINE_LIMIT
        return COMMAND_LINE_LIMIT

    def _next_line(self) -> bytes | _TooLong | None:
        """The next command line without its line end, TOO_LONG, or None (need more).

        Commands end at LF, with or without CR before it, as Postfix accepts
        (``nc`` sends bare LF). Only DATA is strict about CRLF, because only
        there another server's different reading turns into smuggling.
        """
        inbox = self._inbox
        newline = inbox.find(b"\n")
        limit = self._line_limit()
        if newline < 0 and self._discarding is None and len(inbox) > limit + 1:
            self._discarding = 0  # even a CRLF next would leave it over the limit
        if self._discarding is not None:
            if newline < 0:
                self._discarding += len(inbox)
                inbox.clear()
                if self._discarding > UNTERMINATED_LINE_LIMIT:
                    self.log.info("{session_id} unterminated line", session_id=self.session.session_id)
                    self._send(codes.LINE_TOO_LONG_CLOSING.format(hostname=self.hostname))
                return None
            del inbox[: newline + 1]
            self._discarding = None
            return TOO_LONG
        if newline < 0:
            return None
        line = bytes(inbox[:newline])
        del inbox[: newline + 1]
        if line.endswith(b"\r"):
            line = line[:-1]
        return TOO_LONG if len(line) > limit else line

    def _drop_pipelined(self) -> int:
        """Forget octets not yet read (after STARTTLS); return how many there were."""
        count = len(self._inbox)
        self._inbox.clear()
        return count
