"""What the protocol servers share about their connections: session ids, and small replies written at once.

:func:`new_session_id` ties one connection's log lines together (SMTP, IMAP, POP3).

:func:`write_now` writes small replies at once on a plain TCP connection, skipping Twisted's write-on-the-next-turn.

Twisted's ``transport.write`` only buffers: the socket is registered for
writing and the octets are sent on the next turn of the reactor, which then
unregisters it - two ``epoll_ctl`` calls and one more event to dispatch per
reply. An SMTP transaction is a dozen small replies each way, a POP3 RETR
answered from memory one; that overhead was a fifth of their CPU.
:func:`write_now` hands the octets to the connection's own ``writeSomeData``
when nothing is waiting before them; what the socket does not take, or any
error, goes through ``write`` as usual, so ordering, back-pressure and
connection loss work as ever. TLS connections and other transports always
take ``write``.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import tcp


def new_session_id() -> str:
    """A short random id that ties a session's log lines together (not a secret: no ``getrandom`` call each)."""
    return f"{random.getrandbits(40):010x}"


def write_now(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, except that on a plain TCP connection with nothing unsent the octets go out now."""
    if (isinstance(transport, tcp.Connection) and not getattr(transport, "TLS", True)
            and transport.connected and not transport.disconnecting
            and getattr(transport, "_tempDataLen", None) == 0 and transport.offset == len(transport.dataBuffer)):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)
