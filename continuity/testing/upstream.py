"""A scripted stand-in for :class:`~continuity.smtp.pool.ConnectionPool` in ``task.Clock`` tests.

Postfix's ``smtp-sink`` is the upstream of every test that runs on the real
reactor. Tests that drive time with ``task.Clock`` (backoff, expiry, probes,
recovery step by step) have no reactor to talk to a socket with, and some
need what no sink can do: answer the first message ``250`` and the second
``451``, or hold a reply back while the test looks at the queue. There
:class:`ScriptedPool` answers ``deliver`` from a script per upstream, and
records every message it was given.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from twisted.internet.defer import Deferred

from continuity.smtp.results import DeliveryResult, RecipientResult


@attrs.frozen
class Reply:
    """One scripted answer for every recipient of a transaction."""

    code: int = 250
    enhanced: str = "2.0.0"
    text: str = "Ok"
    stage: str = "end of data"
    remote: bool = True

    def for_recipient(self, recipient: str) -> RecipientResult:
        return RecipientResult(recipient, self.code, self.enhanced, self.text, self.stage, self.remote)


OK = Reply()
#: What the client reports when nothing listens (CONTRACT 4: unreachable is temporary).
REFUSED = Reply(421, "4.4.1", "connection refused", "connect", remote=False)
#: A soft refusal of RCPT (temporary: retried, or an automatic failover).
SOFT = Reply(451, "4.3.0", "Try again later", "RCPT")


@attrs.frozen
class Delivery:
    """A message the pool was asked to deliver, and what it answered."""

    upstream: str
    sender: str
    recipients: tuple[str, ...]
    message: bytes
    reply: Reply


class ScriptedPool:
    """Answers each ``deliver`` with the next scripted :class:`Reply` of its upstream.

    ``script(upstream, r1, r2, ...)`` queues answers; a :class:`~twisted.internet.defer.Deferred`
    in the script holds the delivery until the test fires it with a Reply.
    Without a script left, an upstream answers ``default`` (250 unless set).
    """

    def __init__(self, default: Reply = OK) -> None:
        self.default = default
        self.deliveries: list[Delivery] = []
        self._scripts: dict[str, list[Reply | Deferred]] = {}

    def script(self, upstream: str, *replies: Reply | Deferred) -> None:
        self._scripts.setdefault(upstream, []).extend(replies)

    def to(self, upstream: str) -> list[Delivery]:
        """The deliveries made to ``upstream`` so far."""
        return [d for d in self.deliveries if d.upstream == upstream]

    async def deliver(self, upstream: str, sender: str, recipients: Sequence[str], message) -> DeliveryResult:
        script = self._scripts.get(upstream)
        reply = script.pop(0) if script else self.default
        if isinstance(reply, Deferred):
            reply = await reply
        if isinstance(message, bytes):
            data = message
        else:
            with open(message, "rb") as handle:
                data = handle.read()
        self.deliveries.append(Delivery(upstream, sender, tuple(recipients), data, reply))
        return DeliveryResult(upstream, tuple(reply.for_recipient(r) for r in recipients), reply.stage)

    def withdraw_waiting(self) -> int:
        """No delivery waits for a session here (each answers from its script)."""
        return 0

    async def close(self) -> None:
        return None
