"""Streaming one message to a POP3 client (RETR, TOP) without holding it in memory.

The file is opened and read on the worker pool, :data:`~continuity.pop3.wire.CHUNK`
octets at a time, encoded (:class:`~continuity.pop3.wire.MultilineEncoder`)
and written to the transport. A read that comes back short is the end of the
file, which is then closed in the same worker call: a message smaller than a
chunk (nearly all mail) costs one trip to the pool (open, read, close), not
four, which is what bounded RETR of many small messages. The transfer registers as the transport's
streaming producer (``IPushProducer``): when the client reads slowly and the
transport's buffer fills, ``pauseProducing`` stops the reading until
``resumeProducing``, so a 50 MB message costs one chunk of memory however
slow the client is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from continuity.mailstore.errors import storage_error
from continuity.pop3.wire import CHUNK, MultilineEncoder, TopCut


class TransferFailed(Exception):
    """Reading the message failed after the ``+OK``: the connection must close."""


def _read_chunk(handle: BinaryIO) -> tuple[bytes, bool]:
    """The next chunk (blocking), and whether it was the last: the file is then closed.

    A regular file reads short only at its end, so no further read is needed to know it.
    """
    chunk = handle.read(CHUNK)
    if len(chunk) < CHUNK:
        handle.close()
        return chunk, True
    return chunk, False


def _open_and_read(opener: Callable[..., BinaryIO], args: tuple) -> tuple[BinaryIO | None, bytes]:
    """Open the message and read its first chunk in one worker call; (the handle or None at the end, chunk)."""
    handle = opener(*args)
    try:
        chunk, ended = _read_chunk(handle)
    except OSError as error:
        handle.close()
        raise storage_error(error, "reading a message") from error
    except BaseException:
        handle.close()
        raise
    return (None if ended else handle), chunk


@implementer(IPushProducer)
class MessageTransfer:
    """One RETR (``top_lines`` None) or TOP of an opened message; see the module docstring."""

    def __init__(self, transport: Any, run_blocking: Callable[..., Awaitable[Any]], top_lines: int | None = None):
        self._transport = transport
        self._run = run_blocking
        self._cut = TopCut(top_lines) if top_lines is not None else None
        self._encoder = MultilineEncoder()
        self._handle: BinaryIO | None = None
        self._first = b""
        self._paused: defer.Deferred | None = None
        self._stopped = False

    async def open(self, opener: Callable[..., BinaryIO], *args: Any) -> None:
        """Open the message and read its first chunk, so that a missing file is known before ``+OK``.

        Raises what ``opener`` raises (e.g. ``MessageExpunged``), and ``MailstoreError`` when reading fails.
        """
        self._handle, self._first = await self._run(_open_and_read, opener, args)

    async def send(self, head: bytes = b"") -> None:
        """Write ``head`` (the ``+OK`` line), the message and the terminating ``.<CRLF>``; the file is closed at the end.

        A message read in one chunk goes out in one write, head and terminator included.

        :raises TransferFailed: when reading fails mid-way (the client has a partial message).
        """
        transport = self._transport
        transport.registerProducer(self, True)
        try:
            chunk = self._first
            self._first = b""
            pending = head  # written with the next octets
            while chunk and not self._stopped:
                if self._cut is not None:
                    chunk = self._cut.cut(chunk)
                if chunk:
                    pending += self._encoder.encode(chunk)
                if self._handle is None or (self._cut is not None and self._cut.done):
                    break  # the last octets: written with the terminator
                if pending:
                    transport.write(pending)
                    pending = b""
                if self._paused is not None:
                    await self._paused
                if self._stopped:
                    break
                try:
                    chunk, ended = await self._run(_read_chunk, self._handle)
                except OSError as error:
                    raise TransferFailed(str(error)) from error
                if ended:
                    self._handle = None  # closed by _read_chunk
            if not self._stopped:
                transport.write(pending + self._encoder.finish())
                if self._paused is not None:  # the client reads slowly: hold the next command until it caught up
                    await self._paused
        finally:
            if not self._stopped:
                transport.unregisterProducer()
            await self.close()

    async def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            await self._run(handle.close)

    # -- IPushProducer ------------------------------------------------------------

    def pauseProducing(self) -> None:
        if self._paused is None:
            self._paused = defer.Deferred()

    def resumeProducing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:
        """The connection is gone: stop after the chunk being read."""
        self._stopped = True
        self.resumeProducing()
