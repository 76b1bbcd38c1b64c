"""Every reply text of the POP3 server, decided in one place.

``+OK`` and ``-ERR`` (RFC 1939 3) with the response codes of RFC 2449 8
(``[IN-USE]``, ``[LOGIN-DELAY]``) and RFC 3206 (``[SYS/TEMP]``,
``[SYS/PERM]``, ``[AUTH]``), announced as ``RESP-CODES`` and
``AUTH-RESP-CODE`` in CAPA. The texts follow Dovecot's, since mail
administrators know them. A reply line stays far below RFC 2449 4's 512
octets: text taken from the client is escaped and cut by :func:`printable`.
"""

from __future__ import annotations

MAX_TEXT = 200


def printable(text: object, limit: int = MAX_TEXT) -> str:
    """``text`` as printable ASCII (``ascii()`` escapes CR, LF, NUL...), bounded, so it can never start a new line."""
    text = ascii(str(text))[1:-1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


GREETING = "{hostname} POP3 ready."  # RFC 1939 4; no APOP timestamp: APOP is not offered
TOO_MANY_CONNECTIONS = "[SYS/TEMP] Too many connections from {ip}."
TIMEOUT = "Disconnected for inactivity."
TOO_MANY_ERRORS = "Too many bad commands."
LINE_TOO_LONG = "Command line too long (RFC 2449: 255 octets)."
RUNAWAY_LINE = "Unterminated command line, closing."
PIPELINE_OVERFLOW = "Too much pipelined input, closing."
INTERNAL_ERROR = "[SYS/TEMP] Internal error occurred. Refer to server log for more information."

UNKNOWN_COMMAND = "Unknown command."
BAD_SYNTAX = "Invalid command syntax."
BAD_UTF8 = "Invalid UTF-8 in command."
NOT_LOGGED_IN = "Not logged in: {command} is not allowed before login."
LOGGED_IN = "Already logged in: {command} is not allowed now."
NO_ARGUMENTS = "{command} takes no arguments."

# Authentication (RFC 1939 7 USER/PASS, RFC 5034 AUTH, RFC 3206 [AUTH]).
PLAINTEXT_DISALLOWED = "[AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."
USER_OK = "Send your password."
NO_USERNAME = "No username given."
NEED_USER = "No username given: send USER first."
AUTH_FAILED = "[AUTH] Authentication failed."
AUTH_THROTTLED = "[SYS/TEMP] Too many failed logins; try again later."
AUTH_ABORTED = "Authentication aborted by client."
AUTH_BAD_BASE64 = "Invalid base64 data in continued response."
AUTH_UNSUPPORTED = "Unsupported authentication mechanism."
AUTH_MECHANISMS = "Supported authentication mechanisms:"
LOGGED_IN_OK = "Logged in."
IN_USE = "[IN-USE] Mailbox is locked by another POP3 session."
MAILDROP_UNAVAILABLE = "[SYS/TEMP] Mailbox is temporarily unavailable."

# STLS (RFC 2595 4).
STLS_OK = "Begin TLS negotiation now."
TLS_ACTIVE = "TLS is already active."
TLS_UNAVAILABLE = "TLS support is not available."

# Transaction state (RFC 1939 5).
STAT_OK = "{count} {size}"
LIST_OK = "{count} messages ({size} octets)"
UIDL_OK = "Unique-id listing follows."
RETR_OK = "{size} octets"
TOP_OK = "Top of message follows."
DELE_OK = "Marked to be deleted."
NOOP_OK = ""
RSET_OK = "{count} messages ({size} octets)"
NO_SUCH_MESSAGE = "There's no message {number}."
MESSAGE_DELETED = "Message {number} is marked deleted."
BAD_NUMBER = "Invalid message number: {argument}"
BAD_LINES = "Invalid number of lines: {argument}"
MESSAGE_GONE = "[SYS/PERM] Message {number} was removed by another mail client."
BACKEND_ERROR = "[SYS/TEMP] Mailbox is temporarily unavailable; try again later."
CAPA_OK = "Capability list follows"

# QUIT (RFC 1939 6).
LOGOUT = "Logging out."
LOGOUT_UPDATED = "Logging out, {removed} messages deleted."
UPDATE_FAILED = "[SYS/TEMP] Some deleted messages were not removed."
