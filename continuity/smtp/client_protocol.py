"""The wire half of our SMTP client: replies, commands, STARTTLS and the DATA stream.

:class:`SMTPClientProtocol` knows nothing of transactions; it writes commands,
matches replies to them in order and streams message data.
:mod:`continuity.smtp.client` sequences it. Implemented here:

- reply syntax and multi-line replies (RFC 5321 4.2, 4.2.1), enhanced status
  codes in reply texts (RFC 3463, RFC 2034);
- replies matched to commands in the order sent, so commands may be pipelined
  (RFC 2920 3.1), and replies nobody asked for close the session (an idle
  server only ever speaks to say ``421`` before it closes, RFC 5321 3.8);
- a timeout per awaited reply on an injected clock (RFC 5321 4.5.3.2);
- STARTTLS (RFC 3207): whatever the server sent after its ``220`` and before
  the handshake is discarded (RFC 3207 6, CVE-2011-0411 class);
- DATA transparency (RFC 5321 4.5.2): :class:`DataEncoder` turns message bytes
  into the DATA stream chunk by chunk, and the protocol writes it as a
  streaming producer so a large message never sits twice in memory.
"""

from __future__ import annotations

import re
from collections import deque
import os
from collections.abc import AsyncGenerator

import attrs
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from continuity.errors import DeliveryError
from continuity.transport import write_now

_REPLY_LINE = re.compile(rb"^([2-5][0-9][0-9])([ -]|$)(.*)$", re.DOTALL)
_ENHANCED = re.compile(r"^([245])\.([0-9]{1,3})\.([0-9]{1,3})(?:\s+|$)")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")
# RFC 5321 4.2 / 4.5.2: every line ending a message may contain (CRLF, a bare
# LF, a run of CRs with or without an LF) becomes exactly one CRLF.
_LINE_END = re.compile(rb"\r+\n?|\n")

MAX_REPLY_LINE = 4096  # RFC 5321 4.5.3.1.5 says 512 octets; be generous, not unbounded
MAX_REPLY_LINES = 256  # a multi-line EHLO reply has a dozen; anything huge is hostile
CHUNK = 64 * 1024


def _text(raw: bytes) -> str:
    """Reply text as printable ``str``: UTF-8 where valid, control characters escaped."""
    text = raw.decode("utf-8", errors="replace")
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


@attrs.frozen
class UpstreamReply:
    """One reply of an upstream server: its code and the text of each line."""

    code: int
    lines: tuple[str, ...]

    @property
    def enhanced(self) -> str:
        """The RFC 3463 status code the first line starts with, or ``""``."""
        match = _ENHANCED.match(self.lines[0]) if self.lines else None
        if match is None or match.group(1) != str(self.code)[0]:
            return ""
        return match.group(0).strip()

    @property
    def text(self) -> str:
        """The human text: every line without its enhanced code, joined by spaces."""
        parts = []
        for line in self.lines:
            match = _ENHANCED.match(line)
            if match is not None and match.group(1) == str(self.code)[0]:
                line = line[match.end():]
            if line:
                parts.append(line)
        return " ".join(parts)

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 300

    @property
    def intermediate(self) -> bool:
        return 300 <= self.code < 400

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    def __str__(self) -> str:
        return " ".join(str(part) for part in (self.code, self.enhanced, self.text) if part)


class UpstreamFailure(DeliveryError):
    """The session with an upstream failed without a reply to blame: always temporary.

    ``code`` is ``421`` (RFC 5321 3.8: the channel is gone) and the enhanced code
    says whether the upstream could not be reached (``4.4.1``) or the
    connection broke afterwards (``4.4.2``), as RFC 3463 3.5 defines them.
    """

    code = 421
    enhanced = "4.4.2"


class ReplyTimeout(UpstreamFailure):
    """No complete reply within the timeout (RFC 5321 4.5.3.2)."""


class UpstreamConnectionLost(UpstreamFailure):
    """The connection closed or broke while a reply was awaited or data was sent."""


class MalformedReply(UpstreamFailure):
    """The upstream sent something that is not an SMTP reply (RFC 5321 4.2)."""


class DataEncoder:
    """Turns message bytes into the DATA stream, chunk by chunk (RFC 5321 4.5.2).

    Line endings are normalised to CRLF without ever doubling a CR: ``\\r\\n``
    stays as it is, a bare ``\\n`` becomes ``\\r\\n``, and a run of CRs (with or
    without an LF after it) is one line ending, since RFC 5321 2.3.8 forbids a
    bare CR and strict servers (ours included) refuse it. A line starting with
    ``.`` gets a second one. :meth:`finish` adds the missing final CRLF and the
    ``.<CRLF>`` that ends the data. State is carried between chunks, so the
    message may be cut anywhere, even between a CR and its LF.
    """

    def __init__(self) -> None:
        self._line_start = True
        self._pending_cr = False

    def encode(self, chunk: bytes) -> bytes:
        """Return the wire form of the next ``chunk`` of the message."""
        data = bytes(chunk)
        head = b""
        if self._pending_cr:
            stripped = data.lstrip(b"\r")
            if not stripped:
                return b""  # the run of CRs goes on
            data = stripped[1:] if stripped[:1] == b"\n" else stripped
            head = b"\r\n"
            self._pending_cr = False
            self._line_start = True
        if not data:
            return head
        body = data.rstrip(b"\r")
        if len(body) < len(data):
            # The line ending may go on in the next chunk: hold it back.
            self._pending_cr = True
        crlf = body.count(b"\r\n")
        if not crlf == body.count(b"\r") == body.count(b"\n"):  # else every line ending is CRLF already
            body = _LINE_END.sub(b"\r\n", body)
        if not body:
            return head
        if self._line_start and body[:1] == b".":
            body = b"." + body
        body = body.replace(b"\r\n.", b"\r\n..")
        self._line_start = body.endswith(b"\r\n")
        return head + body

    def finish(self) -> bytes:
        """Return what ends the data: a CRLF if the last line lacks one, then ``.<CRLF>``."""
        tail = b""
        if self._pending_cr:
            tail = b"\r\n"
        elif not self._line_start:
            tail = b"\r\n"
        self._pending_cr = False
        self._line_start = True
        return tail + b".\r\n"


def encode_data(message: bytes) -> bytes:
    """The whole DATA stream for ``message`` at once (tests, small messages)."""
    encoder = DataEncoder()
    return encoder.encode(message) + encoder.finish()


@attrs.frozen
class MessageInfo:
    """What MAIL needs to know about a message before sending it."""

    size: int  # RFC 1870 estimate: octets with CRLF line endings, before dot-stuffing
    eight_bit: bool


def measure(data: bytes) -> MessageInfo:
    """The :class:`MessageInfo` of message bytes (bare LFs counted as CRLF)."""
    return MessageInfo(len(data) + data.count(b"\n") - data.count(b"\r\n"), not data.isascii())


def measure_file(path: str | os.PathLike) -> MessageInfo:
    """The :class:`MessageInfo` of a message file (blocking: run it in a thread)."""
    size, eight_bit = 0, False
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            info = measure(chunk)
            size, eight_bit = size + info.size, eight_bit or info.eight_bit
    return MessageInfo(size, eight_bit)


@implementer(IHandshakeListener, IPushProducer)
class SMTPClientProtocol(Protocol):
    """Commands out, replies in, in order; a timeout per awaited reply.

    One reader at a time awaits :meth:`read_reply`; replies that arrive before
    they are awaited (pipelining) wait in a queue. A reply timeout or a
    malformed reply aborts the connection: the session is out of step then.
    ``connection_lost`` fires with the reason when the connection ends.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._buffer = b""
        self._partial: list[str] = []
        self._partial_code = 0
        self._ready: deque[UpstreamReply] = deque()
        self._reader: Deferred[UpstreamReply] | None = None
        self._reader_timer: IDelayedCall | None = None
        self._reader_what = ""
        self._expected = 1  # the greeting (RFC 5321 3.1)
        self._starttls_sent = False
        self._tls_gate = False
        self._failure: UpstreamFailure | None = None
        self._paused: Deferred[None] | None = None
        self.lost_reason: Failure | None = None
        self.tls_started = False
        self.tls_established = False
        self.connection_lost: Deferred[Failure] = Deferred()

    # -- transport events -------------------------------------------------

    def connectionMade(self) -> None:
        # Without it, Nagle delays the small command writes that follow a
        # large DATA write: a known 40 ms stall per message.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)

    def handshakeCompleted(self) -> None:
        self.tls_established = True

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost_reason = reason
        self._stop_timer()
        self.resumeProducing()
        if self._reader is not None:
            reader, self._reader = self._reader, None
            reader.errback(self._failure_for(self._reader_what))
        if not self.connection_lost.called:
            self.connection_lost.callback(reason)

    def dataReceived(self, data: bytes) -> None:
        if self._tls_gate:
            self.log.warn("discarded {count} bytes sent in plaintext after STARTTLS", count=len(data))
            return
        self._buffer += data
        while self.failure is None:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_REPLY_LINE:
                    self._malformed("reply line too long")
                break
            line, self._buffer = self._buffer[:end].rstrip(b"\r"), self._buffer[end + 1:]
            if len(line) > MAX_REPLY_LINE:
                self._malformed("reply line too long")
                break
            reply = self._line(line)
            if reply is None:
                continue
            self._expected -= 1
            if self._expected < 0:
                self.log.warn("unsolicited reply from upstream: {reply}", reply=str(reply))
                self._fail(UpstreamConnectionLost(f"upstream sent a reply without a command: {reply}"))
                break
            self._ready.append(reply)
            if self._starttls_sent:
                self._starttls_sent = False
                if reply.positive:
                    # RFC 3207 6: nothing the server sent before the handshake may
                    # be read as a reply after it (CVE-2011-0411 class).
                    if self._buffer:
                        self.log.warn(
                            "discarded {count} bytes of read-ahead after STARTTLS", count=len(self._buffer)
                        )
                    self._buffer = b""
                    self._tls_gate = True
                    break
        self._dispatch()

    def _line(self, line: bytes) -> UpstreamReply | None:
        match = _REPLY_LINE.match(line)
        if match is None:
            self._malformed(f"malformed reply line from upstream: {_text(line[:80])!r}")
            return None
        code, more, text = int(match.group(1)), match.group(2) == b"-", _text(match.group(3))
        if self._partial and self._partial_code != code:
            self._malformed("multi-line reply changed its code")
            return None
        self._partial_code = code
        self._partial.append(text)
        if len(self._partial) > MAX_REPLY_LINES:
            self._malformed("multi-line reply too long")
            return None
        if more:
            return None
        lines, self._partial = tuple(self._partial), []
        return UpstreamReply(code, lines)

    def _malformed(self, what: str) -> None:
        self._fail(MalformedReply(what))

    # -- commands and replies ---------------------------------------------

    @property
    def failure(self) -> UpstreamFailure | None:
        """Why the session can't go on (lost, timed out, out of step), or ``None``."""
        if self._failure is None and self.lost_reason is not None:
            return UpstreamConnectionLost("connection lost")
        return self._failure

    def send_command(self, *commands: bytes) -> None:
        """Write ``commands`` (without CRLF) in one write, each expecting one reply."""
        if self.failure is not None:
            return
        self._expected += len(commands)
        write_now(self.transport, b"".join(command + b"\r\n" for command in commands))

    def send_starttls(self) -> None:
        """Write ``STARTTLS``; after a positive reply, input is discarded until :meth:`start_tls`."""
        self.send_command(b"STARTTLS")
        self._starttls_sent = True

    def start_tls(self, options: object) -> None:
        """Start the TLS handshake as client with ``options`` (RFC 3207 4.2)."""
        self._tls_gate = False
        self._buffer = b""
        self._ready.clear()
        self.tls_started = True
        self.transport.startTLS(options)

    def read_reply(self, what: str, timeout: float) -> Deferred[UpstreamReply]:
        """The next reply; fails with :class:`ReplyTimeout` after ``timeout`` seconds.

        :param what: what is awaited, for messages ("the greeting", "the reply to MAIL").
        """
        if self._ready:
            return succeed(self._ready.popleft())
        if self.failure is not None:
            return fail(self._failure_for(what))
        if self._reader is not None:
            raise RuntimeError("a reply is awaited already")
        self._reader = Deferred(self._cancel_read)
        self._reader_what = what
        self._reader_timer = self.clock.callLater(timeout, self._timed_out, what, timeout)
        return self._reader

    def _cancel_read(self, reader: Deferred[UpstreamReply]) -> None:
        # The caller gave up (Deferred.cancel): the reply, if it comes, is queued.
        if self._reader is reader:
            self._reader = None
            self._stop_timer()

    def _failure_for(self, what: str) -> UpstreamFailure:
        """The session's failure, told for someone waiting for ``what``."""
        if self._failure is not None:
            return self._failure
        return UpstreamConnectionLost(f"connection lost while waiting for {what}")

    def _timed_out(self, what: str, timeout: float) -> None:
        self._reader_timer = None
        self._fail(ReplyTimeout(f"timeout after {timeout:g}s waiting for {what}"))

    def _dispatch(self) -> None:
        if self._reader is None or not self._ready:
            return
        reader, self._reader = self._reader, None
        self._stop_timer()
        reader.callback(self._ready.popleft())

    def _stop_timer(self) -> None:
        if self._reader_timer is not None:
            if self._reader_timer.active():
                self._reader_timer.cancel()
            self._reader_timer = None

    def _fail(self, failure: UpstreamFailure) -> None:
        """End the session: the reader (if any) fails with ``failure``, the connection is aborted."""
        if self._failure is None:
            self._failure = failure
        self._stop_timer()
        if self._reader is not None:
            reader, self._reader = self._reader, None
            reader.errback(failure)
        if self.transport is not None and self.lost_reason is None:
            self.transport.abortConnection()

    def close(self) -> None:
        """Close the connection cleanly (after QUIT, or when the session is useless)."""
        if self._failure is None:
            self._failure = UpstreamConnectionLost("connection closed by us")
        if self.transport is not None and self.lost_reason is None:
            self.transport.loseConnection()

    def abort(self) -> None:
        """Drop the connection at once."""
        self._fail(UpstreamConnectionLost("connection aborted"))

    # -- DATA -------------------------------------------------------------

    async def write_data(self, chunks: AsyncGenerator[bytes, None], timeout: float) -> None:
        """Stream a message as the DATA section, ending with ``.<CRLF>``.

        Writes wait while the transport is full (this protocol is its
        streaming producer), so a large message is read as it is sent.

        :param chunks: the raw message bytes, in pieces of any size.
        :param timeout: seconds the transport may stay full before the attempt is given up.
        :raises UpstreamFailure: if the connection is lost or stays blocked.
        """
        encoder = DataEncoder()
        # The reply to the end of data; a server that answers early (a 5xx
        # before the end) is heard as that reply, not as an unsolicited one.
        self._expected += 1
        self.transport.registerProducer(self, True)
        try:
            async for chunk in chunks:
                await self._write(encoder.encode(chunk), timeout)
            await self._write(encoder.finish(), timeout)
        finally:
            await chunks.aclose()
            if self.lost_reason is None and self.transport is not None:
                self.transport.unregisterProducer()
            self._paused = None

    async def _write(self, data: bytes, timeout: float) -> None:
        if self.failure is not None:
            raise self._failure_for("the end of the message data")
        if self._paused is not None:
            paused = self._paused
            timer = self.clock.callLater(timeout, paused.cancel)
            try:
                await paused
            except CancelledError:
                if timer.active():
                    raise  # cancelled by our caller, not by the timer
                self._fail(ReplyTimeout(f"timeout after {timeout:g}s sending the message data"))
            finally:
                if timer.active():
                    timer.cancel()
            if self.failure is not None:
                raise self._failure_for("the end of the message data")
        if data:
            write_now(self.transport, data)

    def pauseProducing(self) -> None:
        if self._paused is None:
            self._paused = Deferred()

    def resumeProducing(self) -> None:
        if self._paused is not None:
            paused, self._paused = self._paused, None
            if not paused.called:
                paused.callback(None)

    def stopProducing(self) -> None:
        self.resumeProducing()
