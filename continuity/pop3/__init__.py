"""POP3 (RFC 1939, 2449, 2595, 5034) over the INBOX of continuity mailboxes.

- :mod:`~continuity.pop3.server`: the protocol, its factory and commands
- :mod:`~continuity.pop3.maildrop`: INBOX as one session sees it, the maildrop lock, UIDL
- :mod:`~continuity.pop3.readahead`: small messages read ahead for RETR and TOP in order, bounded per session
- :mod:`~continuity.pop3.transfer`: streaming RETR and TOP from the worker pool; writing replies from memory
- :mod:`~continuity.pop3.wire`: byte-stuffing, line ends, TOP's cut and exact sizes
- :mod:`~continuity.pop3.lines`: command lines and their limits
- :mod:`~continuity.pop3.arguments`: message numbers, TOP's line count, SASL PLAIN; client errors
- :mod:`~continuity.pop3.replies`: every reply text
"""
