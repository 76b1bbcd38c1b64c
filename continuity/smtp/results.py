"""What a delivery attempt or a probe came to: values the queue runner acts on.

One :class:`RecipientResult` per recipient (RFC 5321 4.2.1: ``2xx``
delivered, ``4xx`` temporary, ``5xx`` permanent; RFC 3463 enhanced codes),
gathered in a :class:`DeliveryResult`; :class:`ProbeResult` for the recovery
probe (CONTRACT 4). :class:`UpstreamError` is how a failed stage of a session
travels inside :mod:`continuity.smtp.client` before it becomes results.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from continuity.errors import DeliveryError
from continuity.smtp.client_protocol import UpstreamFailure, UpstreamReply


@attrs.frozen
class RecipientResult:
    """What happened to one recipient: an SMTP code, an RFC 3463 code and a text.

    ``stage`` is where the transaction ended for it: the command the upstream
    answered (``"RCPT"``, ``"end of data"``...), ``"connect"`` when the
    upstream could not be reached, ``"envelope"`` when the address could not
    be sent at all. ``remote`` tells whether code and text are the upstream's
    reply or ours (a refused connection, a timeout, a local refusal).
    """

    recipient: str
    code: int
    enhanced: str
    text: str
    stage: str = ""
    remote: bool = True

    @property
    def delivered(self) -> bool:
        """The upstream took responsibility for the message (2xx)."""
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        """Try again later (4xx, or the upstream could not be reached)."""
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        """Give up and bounce (5xx)."""
        return 500 <= self.code < 600

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}".rstrip()

    def describe(self) -> str:
        """For DSNs and tracking: ``550 5.1.1 No such user (in reply to RCPT)``."""
        return f"{self} (in reply to {self.stage})" if self.remote and self.stage else str(self)


@attrs.frozen
class DeliveryResult:
    """The outcome of one transaction with ``upstream``, recipient by recipient.

    ``stage`` is the last stage the session reached: ``"end of data"`` when
    the message was sent, otherwise the stage that failed or ``"envelope"``
    when every address was refused before anything was sent.
    """

    upstream: str
    recipients: tuple[RecipientResult, ...]
    stage: str

    @property
    def delivered(self) -> tuple[RecipientResult, ...]:
        return tuple(result for result in self.recipients if result.delivered)

    @property
    def temporary(self) -> tuple[RecipientResult, ...]:
        """Recipients to retry; non-empty is CONTRACT 4's trigger for automatic failover."""
        return tuple(result for result in self.recipients if result.temporary)

    @property
    def permanent(self) -> tuple[RecipientResult, ...]:
        return tuple(result for result in self.recipients if result.permanent)

    def result_for(self, recipient: str) -> RecipientResult:
        """The result of ``recipient`` (as it was given to :func:`deliver`)."""
        for result in self.recipients:
            if result.recipient == recipient:
                return result
        raise KeyError(recipient)

    @property
    def summary(self) -> str:
        """One line for logs and tracking: counts and replies, never the transcript."""
        groups: dict[tuple[str, str], int] = {}
        for result in self.recipients:
            verb = "delivered" if result.delivered else "deferred" if result.temporary else "bounced"
            key = (verb, result.describe())
            groups[key] = groups.get(key, 0) + 1
        return "; ".join(f"{count} {verb}: {detail}" for (verb, detail), count in groups.items())


@attrs.frozen
class ProbeResult:
    """The verdict of a recovery probe (CONTRACT 4) and the reply or failure behind it."""

    ok: bool
    detail: str


class UpstreamError(DeliveryError):
    """A stage of the session failed: the upstream's negative reply, or none at all."""

    def __init__(self, stage: str, message: str, code: int, enhanced: str, reply: UpstreamReply | None = None):
        super().__init__(message, code, enhanced)
        self.stage = stage
        self.reply = reply

    @classmethod
    def from_reply(cls, stage: str, reply: UpstreamReply) -> UpstreamError:
        enhanced = reply.enhanced or f"{str(reply.code)[0]}.0.0"
        return cls(stage, reply.text, reply.code, enhanced, reply)

    @classmethod
    def from_failure(cls, stage: str, failure: UpstreamFailure) -> UpstreamError:
        return cls(stage, failure.message, failure.code, failure.enhanced)

    def result_for(self, recipient: str) -> RecipientResult:
        return RecipientResult(recipient, self.code, self.enhanced, self.message, self.stage, self.reply is not None)

    def delivery_result(self, upstream: str, recipients: Sequence[str]) -> DeliveryResult:
        """This failure as every recipient's outcome (the session failed before the transaction)."""
        return DeliveryResult(upstream, tuple(self.result_for(r) for r in recipients), self.stage)

    def __str__(self) -> str:
        if self.reply is not None:
            return f"{self.stage} answered {self.reply}"
        return self.message
