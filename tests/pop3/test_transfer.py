"""Streaming RETR from the worker pool: one chunk at a time, paused by the transport, stopped on disconnect."""

from __future__ import annotations

import io

from twisted.internet import defer
from twisted.internet.testing import StringTransport

from continuity.pop3 import transfer as transfer_module
from continuity.pop3.transfer import MessageTransfer, TransferFailed


class ManualPool:
    """A worker pool whose calls run only when the test says so."""

    def __init__(self):
        self.pending: list[tuple[defer.Deferred, object, tuple]] = []

    def __call__(self, fn, *args):
        d = defer.Deferred()
        self.pending.append((d, fn, args))
        return d

    def step(self) -> None:
        d, fn, args = self.pending.pop(0)
        try:
            result = fn(*args)
        except Exception as error:  # handed to the caller, as deferToThreadPool does
            d.errback(error)
        else:
            d.callback(result)


def start(handle, monkeypatch):
    """A transfer of ``handle`` in 4-octet chunks, opened and sending: (pool, transport, transfer, sent)."""
    monkeypatch.setattr(transfer_module, "CHUNK", 4)
    pool, transport = ManualPool(), StringTransport()
    transfer = MessageTransfer(transport, pool)
    opened = defer.Deferred.fromCoroutine(transfer.open(lambda: handle))
    pool.step()  # open
    pool.step()  # first chunk
    assert opened.called
    sent = defer.Deferred.fromCoroutine(transfer.send())
    return pool, transport, transfer, sent


def test_message_is_read_one_chunk_at_a_time(monkeypatch):
    """Only one chunk is read ahead of what was written: the message is never held whole."""
    pool, transport, transfer, sent = start(io.BytesIO(b"0123456789abcdef\r\n"), monkeypatch)
    assert transport.value() == b"0123" and len(pool.pending) == 1
    while pool.pending:
        pool.step()
    assert sent.called and transport.value() == b"0123456789abcdef\r\n.\r\n"


def test_paused_transport_stops_reading_until_resumed(monkeypatch):
    """While the transport has paused the producer no further chunk is read."""
    pool, transport, transfer, sent = start(io.BytesIO(b"0123456789abcdef\r\n"), monkeypatch)
    assert transport.producer is transfer and transport.streaming
    transfer.pauseProducing()
    pool.step()  # the read already asked for completes...
    assert pool.pending == []  # ...but no next one until resumed
    transfer.resumeProducing()
    assert len(pool.pending) == 1
    while pool.pending:
        pool.step()
    assert sent.called and transport.producer is None


def test_disconnect_stops_the_transfer_and_closes_the_file(monkeypatch):
    """stopProducing (connection lost) ends the transfer; the file is closed, nothing more is written."""
    handle = io.BytesIO(b"0123456789abcdef\r\n")
    pool, transport, transfer, sent = start(handle, monkeypatch)
    transfer.pauseProducing()
    transfer.stopProducing()
    while pool.pending:
        pool.step()
    assert sent.called and handle.closed and not transport.value().endswith(b".\r\n")


def test_read_error_mid_way_is_a_transfer_failure(monkeypatch):
    """A read that fails after +OK fails the transfer (the server then closes the connection)."""

    class Failing(io.BytesIO):
        def read(self, size=-1):
            if self.tell() >= 4:
                raise OSError(5, "I/O error")
            return super().read(size)

    handle = Failing(b"0123456789")
    pool, transport, transfer, sent = start(handle, monkeypatch)
    failures = []
    sent.addErrback(failures.append)
    while pool.pending:
        pool.step()
    assert failures and failures[0].check(TransferFailed) and handle.closed
