"""The MX policy of the ``smtp`` listener (CONTRACT section 4: hosted domains only).

- A recipient at a domain we do not host is refused ``550 5.7.1`` unless the
  client is in ``relay_networks`` or authenticated (then it is outbound mail).
- In ``normal`` mode any local part of a hosted domain is accepted: recipient
  checks are the upstream's, and its refusal becomes a DSN.
- In ``emergency`` (and ``recovering``) mode only users and aliases are
  accepted; anyone else is refused ``550 5.1.1``.
- Accepted mail is spooled durably (with our ``Received:`` field) before the
  server may answer ``250``.
"""

from __future__ import annotations

import email.utils
import functools
import ipaddress
from collections.abc import Callable

from twisted.logger import Logger
from zope.interface import implementer

from continuity.config import Config
from continuity.counters import ConnectionCounter
from continuity.db import SQLThread
from continuity.delivery.direct import DirectDelivery
from continuity.delivery.router import Route, route
from continuity.directory.cache import DirectoryCache
from continuity.envelope import Address, Envelope, message_id_of
from continuity.smtp.codes import SMTPReply
from continuity.smtp.server import ISMTPPolicy, Session
from continuity.spool.index import QueueIndex
from continuity.spool.intake import MessageIntake
from continuity.spool.store import new_queue_id


class ConnectionLimit:
    """Simultaneous connections per client IP on one listener (``connections_per_ip``)."""

    def __init__(self, limit: int, hostname: str, counter: ConnectionCounter | None = None):
        self._hostname = hostname
        self._open = counter if counter is not None else ConnectionCounter(limit)

    def acquire(self, session: Session) -> None:
        if not self._open.acquire(session.peer_ip):
            raise SMTPReply(421, "4.7.0", f"{self._hostname} Error: too many connections from {session.peer_ip}")

    def release(self, session: Session) -> None:
        self._open.release(session.peer_ip)


@functools.lru_cache(maxsize=4)
def _date(second: int) -> str:
    """RFC 5322's date-time of a second (``formatdate`` takes 10 us; a message's Received field needs it)."""
    return email.utils.formatdate(second, localtime=False)


def received_header(*, hostname: str, helo: str | None, client_ip: str | None, protocol: str, queue_id: str,
                    recipient: str | None, now: float) -> bytes:
    """Our trace header (RFC 5321 4.4): ``from`` the client, ``by`` us, ``with`` the protocol."""
    source = f"{helo or 'unknown'} ([{client_ip}])" if client_ip else (helo or "localhost")
    for_clause = f"\r\n\tfor <{recipient}>" if recipient else ""
    date = _date(int(now))
    text = f"Received: from {source}\r\n\tby {hostname} (continuity) with {protocol} id {queue_id}{for_clause};" \
           f"\r\n\t{date}\r\n"
    return text.encode("utf-8", "replace")


def trace_header(session: Session, queue_id: str, recipients: list[str], now: float) -> bytes:
    """Our ``Received:`` field for a message accepted in ``session`` (``for`` only with one recipient)."""
    return received_header(hostname=session.hostname, helo=session.helo, client_ip=session.peer_ip,
                           protocol=session.with_protocol, queue_id=queue_id,
                           recipient=recipients[0] if len(recipients) == 1 else None, now=now)


def directions_of(recipients: tuple[Address, ...], hosted: set[str]) -> tuple[str, list[str]]:
    """Per recipient ``inbound`` (a hosted domain) or ``outbound``; the message is outbound if any is."""
    directions = ["inbound" if r.domain in hosted else "outbound" for r in recipients]
    return ("outbound" if "outbound" in directions else "inbound"), directions


@implementer(ISMTPPolicy)
class InboundPolicy:
    """Who may send what to whom on the MX listener."""

    log = Logger()

    def __init__(self, config: Config, sql: SQLThread, directory: DirectoryCache, index: QueueIndex,
                 intake: MessageIntake, clock, direct: DirectDelivery | None = None,
                 connections: ConnectionCounter | None = None):
        self._config = config
        self._direct = direct
        self._sql = sql
        self._directory = directory
        self._index = index
        self._intake = intake
        self._clock = clock
        # ``connections``: shared with the SMTP workers, which accept on the same socket.
        self._connections = ConnectionLimit(config.limits.connections_per_ip, config.server.hostname, connections)
        self._networks = config.outbound.relay_networks
        self._senders: dict[str, str] = {}  # session id -> current MAIL FROM, for tracking rejections
        # session id -> {recipient domain: hosted?} as RCPT found it in this transaction
        self._hosted: dict[str, dict[str, bool]] = {}
        #: Set in an SMTP worker: ``hand_over(sender, recipient, detail)`` passes a refused recipient's
        #: tracking row to the service process, which writes it (a worker writes nothing to the store).
        self.hand_over: Callable[[str, str, str], None] | None = None

    def connection_made(self, session: Session) -> None:
        self._connections.acquire(session)

    def connection_lost(self, session: Session) -> None:
        self._connections.release(session)
        self._senders.pop(session.session_id, None)
        self._hosted.pop(session.session_id, None)

    def _may_relay(self, session: Session) -> bool:
        if session.authenticated:
            return True
        try:
            ip = ipaddress.ip_address(session.peer_ip)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def check_sender(self, session: Session, sender: Address | None, parameters: dict) -> None:
        self._senders[session.session_id] = str(sender) if sender is not None else ""
        self._hosted[session.session_id] = {}

    async def check_recipient(self, session: Session, recipient: Address, raw: str, parameters: dict) -> None:
        domain, user = await self._directory.recipient(recipient)
        self._hosted.setdefault(session.session_id, {})[recipient.domain] = domain is not None
        if domain is None:
            if self._may_relay(session):
                return None
            await self._reject(session, recipient, "relay access denied")
            raise SMTPReply(550, "5.7.1", f"<{raw}>: Relay access denied")
        if domain.mode == "normal":
            return None
        if user is None:
            await self._reject(session, recipient, f"user unknown in {domain.mode} mode")
            raise SMTPReply(550, "5.1.1", f"<{raw}>: Recipient address rejected: User unknown")
        return None

    async def _reject(self, session: Session, recipient: Address, detail: str) -> None:
        sender = self._senders.get(session.session_id, "")
        self.log.info("{session}: rejected RCPT {recipient} from {ip}: {detail}", session=session.session_id,
                      recipient=str(recipient), ip=session.peer_ip, detail=detail)
        detail = f"{detail} (client {session.peer_ip})"
        if self.hand_over is not None:
            self.hand_over(sender, str(recipient), detail)
        else:
            await self._sql.run(self._index.record_rejection, sender, str(recipient), detail)

    async def accept_message(self, session: Session, envelope: Envelope, data: bytes) -> str:
        queue_id = new_queue_id(self._clock.seconds())
        recipients = [str(r) for r in envelope.recipients]
        # Whether each recipient is ours was decided at RCPT; ask the store only for what was not.
        seen = self._hosted.get(session.session_id, {})
        unseen = {r.domain for r in envelope.recipients} - seen.keys()
        found = {d: await self._directory.domain(d) is not None for d in unseen}
        hosted = {d for d, ours in {**seen, **found}.items() if ours}
        direction, directions = directions_of(envelope.recipients, hosted)
        header = trace_header(session, queue_id, recipients, self._clock.seconds())
        sender = str(envelope.sender) if envelope.sender else ""
        copies = None
        if self._direct is not None and direction == "inbound":
            copies = await self._mailbox_copies(envelope.recipients)
        if copies is not None:
            # Straight into the continuity mailboxes, if the domains are still in emergency mode at the write.
            left = await self._direct.deliver(queue_id=queue_id, sender=sender, copies=copies,
                                              chunks=[header, data], client=session.peer_ip,
                                              message_id=message_id_of(data))
            if left is not None:
                if not left:
                    return queue_id
                recipients, directions = left, ["inbound"] * len(left)
        await self._intake.accept(
            sender=sender, recipients=recipients, chunks=[header, data],
            direction=direction, origin="smtp", client=session.peer_ip,
            auth_user=str(session.user) if session.user is not None else None, queue_id=queue_id,
            directions=directions,
        )
        # Logged by the server with its reply: "<session> from=<...> nrcpt=N size=N: 250 ... queued as <id>".
        return queue_id

    async def _mailbox_copies(self, recipients: tuple[Address, ...]) -> list[tuple[str, str]] | None:
        """Each recipient with its continuity mailbox, as the directory cache routes it; None if one goes
        anywhere else (the spool takes the message)."""
        copies = []
        for recipient in recipients:
            decision = route(*await self._directory.recipient(recipient))
            if decision.route is not Route.MAILBOX:
                return None
            copies.append((str(recipient), decision.mailbox))
        return copies

    def authenticate(self, session: Session, mechanism: str, username: str, password: str):
        return None
