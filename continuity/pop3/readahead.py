"""Read-ahead of small messages for a POP3 session, so that RETR and TOP of them need no trip to the worker pool.

A client that downloads its maildrop sends ``RETR 1``, ``RETR 2``, ... each
after the reply to the one before (poplib, Thunderbird, fetchmail without
pipelining). Answered one by one from disk, every RETR waits for a trip to
the worker pool (the reactor never reads files itself): a queue put, a
worker wake-up, the read, a ``callFromThread`` back. That trip, not the
reading, was most of the time of a RETR of a 4 KB message.

:class:`ReadAhead` watches the numbers a session retrieves. Once the client
reads on in order, it reads the next messages in one worker call, in the
background while the client is busy with the reply it has, and keeps their
whole RETR replies in memory (status line, message in wire form - CRLF line
ends, dot-stuffed - and terminator, made on the worker pool; a message found
plain when it was measured needs no encoding). A RETR of one of them is
answered at once on the reactor with one write, no copying. The window starts
at :data:`FIRST_WINDOW` octets and doubles with each window the client reads,
up to :data:`READ_AHEAD_BYTES` per session: a client that picks messages here
and there causes no read-ahead, and one that downloads everything soon gets a
large window.

Rules that keep it bounded and consistent:

- what is held (the replies) never exceeds the session's budget; a message
  larger than :data:`MESSAGE_LIMIT` is never read ahead (it is streamed with
  back-pressure as before), and a message is forgotten once RETR sent it;
- a message marked deleted (``DELE``) is dropped and never read ahead;
- a message another tool removed before it was read ahead is left to the
  normal path, which answers ``-ERR``; one removed after it was read ahead is
  sent as it was read (a Maildir message never changes under its name, so it
  is the same message, as a Dovecot session with the file open would send it);
- everything is dropped when the session ends (``QUIT``, disconnect);
- all file I/O runs on the worker pool; the reactor only plans and looks up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from continuity.mailstore import MailstoreError
from continuity.pop3 import replies
from continuity.pop3.maildrop import Maildrop, MaildropMessage
from continuity.pop3.wire import TERMINATOR, TopCut, encode_message

#: Octets of read-ahead (replies) one session may hold at most.
READ_AHEAD_BYTES = 1024 * 1024
#: The first window, once the client reads in order; it doubles with every window read, up to the budget.
FIRST_WINDOW = 128 * 1024
#: Larger messages are never read ahead: they are streamed chunk by chunk. At most half the first
#: window, so that the room left when a window is planned (at least half of it) takes any candidate.
MESSAGE_LIMIT = 64 * 1024
#: Octets of a RETR reply besides the message: the status line (at most) and the terminator.
_REPLY_OVERHEAD = len(f"+OK {replies.RETR_OK.format(size=10 ** 15)}\r\n") + len(TERMINATOR)
#: Message numbers one planning step looks at, at most (a maildrop of huge messages is not scanned whole).
SCAN_LIMIT = 1024


_TOP_HEAD = f"+OK {replies.TOP_OK}\r\n".encode("ascii")
_RETR_HEAD = ("+OK " + replies.RETR_OK.replace("{size}", "%d") + "\r\n").encode("ascii")  # one %d: the size


def retr_reply(message: MaildropMessage, data: bytes) -> bytes:
    """The whole reply to RETR of ``message`` whose file holds ``data``: status line, wire form, terminator.

    A message :func:`~continuity.pop3.wire.survey` found plain is its own
    wire form; the length check guards against a file that is not the one measured.
    """
    head = _RETR_HEAD % message.size
    if message.plain and len(data) == message.size:
        return head + data + TERMINATOR
    return head + encode_message(data)


def top_reply(reply: bytes, lines: int) -> bytes:
    """The reply to ``TOP msg lines`` cut from the message's RETR reply."""
    return _TOP_HEAD + top_of(reply[reply.index(b"\n") + 1 :], lines)


def read_replies(maildrop: Maildrop, messages: Sequence[MaildropMessage]) -> dict[int, bytes]:
    """The RETR reply (:func:`retr_reply`) of each of ``messages`` that could be read whole (blocking).

    One batch read of the store (:meth:`~continuity.mailstore.MaildirStore.read_messages`, which finds a
    file another session renamed). A message removed meanwhile, or one whose file outgrew its listed size,
    is left out (RETR then takes the normal path and answers for it); at a store error nothing is read
    ahead.
    """
    try:
        found = maildrop.store.read_messages([message.ref for message in messages])
    except (MailstoreError, OSError):
        return {}
    return {message.number: retr_reply(message, data) for message, data in zip(messages, found)
            if data is not None and len(data) <= message.size}


def top_of(wire: bytes, lines: int) -> bytes:
    """The reply body of ``TOP msg lines`` cut from a message's wire form (terminator included).

    The wire form differs from the file only by a CR before a bare LF and a
    dot before a line's leading dot, neither of which changes where a line
    ends or whether it is empty, so the cut is the one :class:`TopCut` makes
    on the file.
    """
    return TopCut(lines).cut(wire[: -len(TERMINATOR)]) + TERMINATOR


class ReadAhead:
    """The read-ahead of one session over its opened :class:`Maildrop`; see the module docstring.

    :param run_blocking: runs a blocking function on the worker pool, returning a Deferred.
    """

    log = Logger()

    def __init__(self, maildrop: Maildrop, run_blocking: Callable[..., Awaitable[Any]],
                 budget: int = READ_AHEAD_BYTES, first_window: int = FIRST_WINDOW,
                 message_limit: int = MESSAGE_LIMIT):
        self._maildrop = maildrop
        self._run = run_blocking
        self._budget = budget
        self._first_window = min(first_window, budget)
        self._message_limit = min(message_limit, self._first_window // 2)
        self._window = self._first_window
        self._replies: dict[int, bytes] = {}  # RETR replies by message number
        self._held = 0  # octets in _replies
        self._reading: frozenset[int] = frozenset()  # numbers of the batch on the worker pool
        self._reserved = 0  # octets planned for that batch
        self._generation = 0  # a batch of an older generation is thrown away when it lands
        self._waiters: list[defer.Deferred] = []
        self._last = 0  # the number last served
        self._horizon = 0  # every number up to here was planned (read ahead or passed over)

    @property
    def held(self) -> int:
        """Octets in memory or being read for this session (never more than the budget)."""
        return self._held + self._reserved

    def has(self, number: int) -> bool:
        """Whether message ``number`` is held."""
        return number in self._replies

    def retr(self, number: int) -> bytes | None:
        """The whole reply to ``RETR number`` if the message is held; it is forgotten (RETR sent it)."""
        reply = self._replies.pop(number, None)
        if reply is not None:
            self._held -= len(reply)
        return reply

    def top(self, number: int, lines: int) -> bytes | None:
        """The whole reply to ``TOP number lines`` if the message is held; it stays, for a RETR that may follow."""
        reply = self._replies.get(number)
        return None if reply is None else top_reply(reply, lines)

    def wait_for(self, number: int) -> defer.Deferred | None:
        """A Deferred that fires when the batch reading ``number`` landed, or None when none is."""
        if number not in self._reading:
            return None
        waiter: defer.Deferred = defer.Deferred()
        self._waiters.append(waiter)
        return waiter

    def forget(self, number: int) -> None:
        """``DELE``: drop the message (and never read it ahead)."""
        self.retr(number)

    def close(self) -> None:
        """The session ends: drop everything; a batch still being read is thrown away when it lands."""
        self._drop()
        self._horizon = len(self._maildrop.messages)  # nothing more is planned

    def served(self, number: int) -> None:
        """RETR or TOP of ``number`` is being answered: go on reading ahead if the client reads in order."""
        in_order = self._last <= number <= self._horizon + 1
        if in_order and (number > self._last + 1 or self._last in self._replies):
            self._pass_over(number)
        self._last = number
        if not in_order:
            # The client jumped: what was read ahead will likely not be asked for. Start afresh from here.
            self._drop()
            self._window = self._first_window
            self._horizon = number
            return
        if self._reading or self._held > self._window // 2:
            return
        self._start(number)

    # -- internals --------------------------------------------------------------

    def _drop(self) -> None:
        self._replies.clear()
        self._held = 0
        self._reading = frozenset()
        self._reserved = 0
        self._generation += 1
        self._wake()

    def _pass_over(self, number: int) -> None:
        """Drop what the client went past: the messages below ``number`` (one a TOP kept, ones it skipped)."""
        held_replies = self._replies
        if number - self._last <= len(held_replies):
            passed = range(self._last, number)
        else:
            passed = [held for held in held_replies if held < number]
        for held in passed:
            reply = held_replies.pop(held, None)
            if reply is not None:
                self._held -= len(reply)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _start(self, number: int) -> None:
        """Plan the next window after ``number`` and read it on the worker pool."""
        maildrop = self._maildrop
        messages = maildrop.messages
        if self._horizon >= len(messages):
            return  # everything was planned
        room = min(self._window, self._budget) - self._held
        planned: list[MaildropMessage] = []
        reserved = 0
        candidate = max(self._horizon, number) + 1
        last = min(len(messages), candidate + SCAN_LIMIT - 1)
        while candidate <= last:
            message = messages[candidate - 1]
            cost = message.size + _REPLY_OVERHEAD
            if cost <= self._message_limit and not maildrop.is_deleted(candidate) and candidate not in self._replies:
                if reserved + cost > room:
                    break
                planned.append(message)
                reserved += cost
            candidate += 1
        self._horizon = candidate - 1
        if not planned:
            return
        self._window = min(self._window * 2, self._budget)
        self._reading = frozenset(message.number for message in planned)
        self._reserved = reserved
        generation = self._generation
        d = defer.maybeDeferred(self._run, read_replies, maildrop, planned)
        d.addBoth(self._landed, generation)

    def _keep(self, result: dict[int, bytes]) -> None:
        """Hold a batch's replies, but none of a message marked deleted meanwhile, and never past the budget."""
        size = sum(map(len, result.values()))
        if self._held + size <= self._budget and not self._maildrop.deletions:
            self._replies.update(result)  # the usual case, in one step
            self._held += size
            return
        is_deleted = self._maildrop.is_deleted
        for number, reply in result.items():
            if not is_deleted(number) and self._held + len(reply) <= self._budget:
                self._replies[number] = reply
                self._held += len(reply)

    def _landed(self, result: dict[int, bytes] | Failure, generation: int) -> None:
        if generation != self._generation:
            return None  # dropped meanwhile (the client jumped, or the session ended)
        self._reading = frozenset()
        self._reserved = 0
        if isinstance(result, Failure):
            self.log.failure("read-ahead of {address} failed", result, address=str(self._maildrop.address))
        else:
            self._keep(result)
        self._wake()
        return None
