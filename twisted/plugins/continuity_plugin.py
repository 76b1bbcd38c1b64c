"""twistd plugin: ``twistd continuity --config PATH``."""

from twisted.application.service import ServiceMaker

continuity = ServiceMaker(
    "continuity",
    "continuity.tap",
    "Email continuity server (MX, failover mailboxes, IMAP, POP3, submission)",
    "continuity",
)
