"""Streaming RETR from the worker pool: one chunk at a time, paused by the transport, stopped on disconnect."""

from __future__ import annotations

import io
import socket

import pytest
from twisted.internet import defer, tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport

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
    pool.step()  # open and read the first chunk
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


def test_a_message_shorter_than_a_chunk_takes_one_trip_to_the_pool(monkeypatch):
    """Opened, read and closed in one worker call: a short read is the end of the file."""
    monkeypatch.setattr(transfer_module, "CHUNK", 64)
    handle = io.BytesIO(b"Subject: hi\r\n\r\n.dot\r\n")
    pool, transport = ManualPool(), StringTransport()
    transfer = MessageTransfer(transport, pool)
    opened = defer.Deferred.fromCoroutine(transfer.open(lambda: handle))
    pool.step()
    assert opened.called and handle.closed
    sent = defer.Deferred.fromCoroutine(transfer.send())
    assert sent.called and pool.pending == []
    assert transport.value() == b"Subject: hi\r\n\r\n..dot\r\n.\r\n"


def test_a_message_in_one_chunk_goes_out_in_one_write_with_its_head(monkeypatch):
    """The +OK line, a message read in one chunk and the terminator are one write."""
    monkeypatch.setattr(transfer_module, "CHUNK", 64)
    writes = []
    transport = StringTransport()
    transport.write = writes.append
    pool = ManualPool()
    transfer = MessageTransfer(transport, pool)
    defer.Deferred.fromCoroutine(transfer.open(lambda: io.BytesIO(b"Subject: hi\r\n\r\nbody\r\n")))
    pool.step()
    sent = defer.Deferred.fromCoroutine(transfer.send(b"+OK 19 octets\r\n"))
    assert sent.called and writes == [b"+OK 19 octets\r\nSubject: hi\r\n\r\nbody\r\n.\r\n"]


def test_the_last_chunk_closes_the_file_without_another_read(monkeypatch):
    """A message of exactly two chunks: two reads, then a short empty one closes it (no extra close trip)."""
    handle = io.BytesIO(b"01234567")
    pool, transport, transfer, sent = start(handle, monkeypatch)
    pool.step()  # "4567"
    pool.step()  # b"": the end, closed in the same call
    assert sent.called and handle.closed and pool.pending == []
    assert transport.value() == b"01234567\r\n.\r\n"


def test_a_file_that_cannot_be_read_is_closed_and_reported_before_the_ok(monkeypatch):
    """A read error on the first chunk is a MailstoreError from open (no +OK yet), and the file is closed."""
    from continuity.mailstore import MailstoreError

    class Broken(io.BytesIO):
        def read(self, size=-1):
            raise OSError(5, "I/O error")

    handle = Broken(b"")
    pool = ManualPool()
    transfer = MessageTransfer(StringTransport(), pool)
    failures = []
    defer.Deferred.fromCoroutine(transfer.open(lambda: handle)).addErrback(failures.append)
    pool.step()
    assert failures and failures[0].check(MailstoreError) and handle.closed
