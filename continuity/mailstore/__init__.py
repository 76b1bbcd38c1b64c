"""Continuity mailboxes: Maildir++ trees under ``data_dir/mail/DOMAIN/LOCALPART/``.

Shared by continuity delivery (SMTP), recovery, IMAP and POP3. Everything is
synchronous and blocking; run it on a thread pool. Modules:

- :mod:`~continuity.mailstore.store`: :class:`MaildirStore`, the API callers use
- :mod:`~continuity.mailstore.mailbox`: one user's tree (folders, subscriptions)
- :mod:`~continuity.mailstore.folder`: one folder (listing, delivery, cache)
- :mod:`~continuity.mailstore.transaction`: changes under a folder's lock
- :mod:`~continuity.mailstore.uidlist`: the persistent UID file
- :mod:`~continuity.mailstore.filenames`: Maildir file names and flags
- :mod:`~continuity.mailstore.keywords`: IMAP keywords and the ``dovecot-keywords`` file
- :mod:`~continuity.mailstore.names`: folder names and modified UTF-7
- :mod:`~continuity.mailstore.records`: the frozen values handed out
"""

from continuity.mailstore.errors import (
    InvalidFlags,
    InvalidKeyword,
    InvalidMailboxName,
    KeywordLimit,
    MailboxExists,
    MailboxNotFound,
    MailboxRefused,
    MailstoreError,
    MessageExpunged,
)
from continuity.mailstore.filenames import IMAP_FLAGS, normalise_flags
from continuity.mailstore.keywords import KEYWORDS_NAME, MAX_KEYWORDS, is_valid_keyword
from continuity.mailstore.mailbox import DEFAULT_SPECIAL_USE
from continuity.mailstore.names import INBOX_NAME, FolderName, decode_mutf7, encode_mutf7, is_valid_mutf7
from continuity.mailstore.records import CopyResult, FolderInfo, FolderSnapshot, FolderStatus, MessageRef
from continuity.mailstore.store import MaildirStore, count_messages, user_root

__all__ = [
    "DEFAULT_SPECIAL_USE",
    "IMAP_FLAGS",
    "INBOX_NAME",
    "CopyResult",
    "FolderInfo",
    "FolderName",
    "FolderSnapshot",
    "FolderStatus",
    "InvalidFlags",
    "InvalidKeyword",
    "InvalidMailboxName",
    "KEYWORDS_NAME",
    "KeywordLimit",
    "MAX_KEYWORDS",
    "MailboxExists",
    "MailboxNotFound",
    "MailboxRefused",
    "MaildirStore",
    "MailstoreError",
    "MessageExpunged",
    "MessageRef",
    "count_messages",
    "decode_mutf7",
    "encode_mutf7",
    "is_valid_keyword",
    "is_valid_mutf7",
    "normalise_flags",
    "user_root",
]
