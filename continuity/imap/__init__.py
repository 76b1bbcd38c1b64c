"""IMAP4rev1 access to continuity mailboxes (RFC 3501 and the extensions clients rely on).

- :mod:`~continuity.imap.server`: the connection (reading, TLS, login, limits)
- :mod:`~continuity.imap.commands`: the mailbox and selected-state commands
- :mod:`~continuity.imap.mailbox`: the avatar and the selected folder's session view
- :mod:`~continuity.imap.fetch`, :mod:`~continuity.imap.search`, :mod:`~continuity.imap.mime`:
  FETCH rendering, SEARCH, the MIME structure of stored messages
- :mod:`~continuity.imap.parser`: command syntax
- :mod:`~continuity.imap.idle`: change polling for IDLE
"""
