"""Errors of the mail store, each a :class:`~continuity.errors.ContinuityError`.

Protocol servers turn them into replies: SMTP delivery into a 4xx/5xx with the
enhanced code (RFC 3463), IMAP into ``NO`` (``[TRYCREATE]`` for
:class:`MailboxNotFound` on APPEND/COPY, RFC 3501 7.1), POP3 into ``-ERR``.
"""

from __future__ import annotations

import errno

from continuity.errors import ContinuityError


class MailstoreError(ContinuityError):
    """The mail store could not do its work (disk trouble); temporary by default."""

    code = 451
    enhanced = "4.3.0"


class InvalidMailboxName(MailstoreError):
    """A folder name that is unsafe or malformed (RFC 3501 5.1, 5.1.3)."""

    code = 550
    enhanced = "5.2.0"


class MailboxNotFound(MailstoreError):
    """The folder (or the user's whole mailbox) does not exist."""

    code = 550
    enhanced = "5.2.0"


class MailboxExists(MailstoreError):
    """A folder of that name exists already (CREATE, RENAME target)."""

    code = 550
    enhanced = "5.2.0"


class MailboxRefused(MailstoreError):
    """The operation is never allowed on this folder (e.g. deleting INBOX)."""

    code = 550
    enhanced = "5.2.0"


class MessageExpunged(MailstoreError):
    """The message file is gone: expunged by another session or tool."""

    code = 550
    enhanced = "5.2.0"


class InvalidFlags(MailstoreError):
    """Flags that are not Maildir info letters (``DFPRST`` and keywords ``a``-``z``)."""

    code = 501
    enhanced = "5.5.4"


class InvalidKeyword(InvalidFlags):
    """A keyword name that is no IMAP atom (RFC 3501 9 ``flag-keyword``), or too long to create."""


class KeywordLimit(MailstoreError):
    """A new keyword does not fit: a folder holds at most 26 (the Maildir letters ``a``-``z``).

    Permanent for this folder; IMAP answers ``NO [LIMIT]`` (RFC 5530 3).
    """

    code = 552
    enhanced = "5.3.4"


def storage_error(exc: OSError, action: str) -> MailstoreError:
    """A :class:`MailstoreError` for an ``OSError`` met while doing ``action``.

    A full disk is ``452 4.3.1`` and an exceeded quota ``452 4.2.2`` (RFC 3463
    3.3, 3.4); anything else ``451 4.3.0``. All are temporary: the sender retries.
    """
    if exc.errno == errno.ENOSPC:
        return MailstoreError(f"{action}: no space left on the mail store", 452, "4.3.1")
    if exc.errno == getattr(errno, "EDQUOT", -1):
        return MailstoreError(f"{action}: mailbox quota exceeded", 452, "4.2.2")
    return MailstoreError(f"{action}: {exc.strerror or exc}")
