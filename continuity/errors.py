"""Error types shared across the service, each with its SMTP reply.

Protocol servers turn these into replies (SMTP code + RFC 3463 enhanced code,
IMAP ``NO``, POP3 ``-ERR``); the CLI turns them into one line on stderr. 4xx is
temporary, 5xx permanent (RFC 5321 4.2.1).
"""

from __future__ import annotations


class ContinuityError(Exception):
    """Base of every error the service reports to a peer or an operator."""

    code = 451
    enhanced = "4.3.0"

    def __init__(self, message: str, code: int | None = None, enhanced: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if enhanced is not None:
            self.enhanced = enhanced

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    def __str__(self) -> str:
        return self.message


class InvalidAddress(ContinuityError):
    """An address that is malformed or unsafe to store or route (RFC 5321 4.1.2)."""

    code = 553
    enhanced = "5.1.3"


class InvalidValue(ContinuityError):
    """A setting outside its allowed values (scope, activation, mode...)."""

    code = 501
    enhanced = "5.5.4"


class NotFound(ContinuityError):
    """A domain, user or alias that does not exist."""

    code = 550
    enhanced = "5.1.1"


class Conflict(ContinuityError):
    """The object exists already, or the change would break an invariant."""

    code = 550
    enhanced = "5.7.1"


class WeakPassword(ContinuityError):
    """A password that the domain's password policy refuses."""

    code = 535
    enhanced = "5.7.8"


class PolicyError(ContinuityError):
    """A malformed password policy SPEC."""

    code = 501
    enhanced = "5.5.4"


class DeliveryError(ContinuityError):
    """A delivery attempt failed; ``temporary`` tells whether to retry."""


class ConfigError(Exception):
    """A configuration problem, reported as one line naming the key."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class StockPathReached(RuntimeError):
    """A code path of Twisted's stock protocol (``twisted.mail.smtp``, ``pop3``) that our server replaces was
    called: a bug of ours, never a peer's doing."""
