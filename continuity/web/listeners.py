"""The mail services a client may be set up with, read from ``[listen]`` and ``server.hostname``.

Only enabled listeners count, each with the port of its endpoint description
and its kind of TLS: implicit TLS (``imaps``, ``pop3s``, ``submissions``;
RFC 8314 prefers these, so they come first) or STARTTLS (``imap``, ``pop3``,
``submission``: every plain listener offers it, with the configured or the
generated certificate). The ``smtp`` listener is the MX and is never offered
to clients. An endpoint whose port cannot be read from its description
(``unix:``, ``systemd:``...) is left out.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

#: Config key -> (protocol, socket type), in the order clients should prefer them.
CLIENT_LISTENERS: tuple[tuple[str, str, str], ...] = (
    ("imaps", "imap", "SSL"),
    ("imap", "imap", "STARTTLS"),
    ("pop3s", "pop3", "SSL"),
    ("pop3", "pop3", "STARTTLS"),
    ("submissions", "smtp", "SSL"),
    ("submission", "smtp", "STARTTLS"),
)
_PORTED_TYPES = frozenset({"tcp", "tcp6", "ssl"})


@attrs.frozen
class MailService:
    """One service for a client: ``protocol`` (imap, pop3, smtp), ``port``, ``socket_type`` (SSL, STARTTLS)."""

    protocol: str
    hostname: str
    port: int
    socket_type: str


def _split(description: str) -> list[str]:
    """Split an endpoint description at the colons that are not escaped with a backslash."""
    parts, current, escaped = [], [], False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def endpoint_port(description: str) -> int | None:
    """The port of a ``tcp:``, ``tcp6:`` or ``ssl:`` server endpoint description, or None.

    ``tcp:993``, ``tcp:port=993:interface=0.0.0.0`` and a bare ``993`` (Twisted's
    old default type) all give 993.
    """
    parts = _split(description.strip())
    if len(parts) == 1:
        kind, arguments = "tcp", parts
    else:
        kind, arguments = parts[0].lower(), parts[1:]
    if kind not in _PORTED_TYPES:
        return None
    for argument in arguments:
        key, sep, value = argument.partition("=")
        candidate = value if sep and key == "port" else (argument if not sep else None)
        if candidate is not None:
            return int(candidate) if candidate.isdigit() and 0 < int(candidate) < 65536 else None
    return None


def client_services(hostname: str, listen: Mapping[str, str]) -> tuple[MailService, ...]:
    """The enabled client-facing services, preferred first."""
    services = []
    for key, protocol, socket_type in CLIENT_LISTENERS:
        description = listen.get(key, "")
        port = endpoint_port(description) if description else None
        if port is not None:
            services.append(MailService(protocol, hostname, port, socket_type))
    return tuple(services)
