"""Delivery agents: carry a spooled message to the upstream, a continuity mailbox, or the Internet.

Each returns per-recipient :class:`Outcome` values (``delivered``, ``temporary``,
``permanent``); the queue runner decides what follows. Network delivery goes
through the shared :class:`~continuity.smtp.pool.ConnectionPool` (connection
reuse, opportunistic STARTTLS); mailbox delivery through the
:class:`~continuity.mailstore.MaildirStore` on the I/O threads.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import attrs
from twisted.logger import Logger

from continuity.config import Config
from continuity.delivery.dsn import build_dsn
from continuity.directory.store import Domain
from continuity.envelope import parse_address
from continuity.mailstore import MaildirStore
from continuity.smtp.client import DeliveryResult
from continuity.smtp.pool import ConnectionPool
from continuity.spool.index import QueueEntry


class NoSuchDomain(Exception):
    """DNS says the recipient's domain does not exist: a permanent failure."""


@attrs.frozen
class Outcome:
    entry: QueueEntry
    kind: str  # delivered | temporary | permanent
    detail: str
    unreachable: bool = False  # the peer could not be reached at all (try the next MX)


def outcomes_of(result: DeliveryResult, entries: Sequence[QueueEntry]) -> list[Outcome]:
    outcomes = []
    for entry in entries:
        r = result.result_for(entry.recipient)
        kind = "delivered" if r.delivered else "temporary" if r.temporary else "permanent"
        outcomes.append(Outcome(entry, kind, f"{result.upstream}: {r.describe()}", r.stage == "connect"))
    return outcomes


def delivery_headers(sender: str, recipient: str) -> bytes:
    """``Return-Path`` and ``Delivered-To`` for a final delivery (RFC 5321 4.4)."""
    return f"Return-Path: <{sender}>\r\nDelivered-To: {recipient}\r\n".encode("utf-8")


def deliver_copy(mailstore: MaildirStore, address: str, sender: str, recipient: str,
                 chunks: Sequence[bytes]) -> str:
    """Write a copy into the INBOX of continuity mailbox ``address`` (blocking); return its Maildir base name."""
    return mailstore.deliver(parse_address(address), [delivery_headers(sender, recipient), *chunks]).base


class Agents:
    """The three delivery paths and the DSN they share."""

    log = Logger()

    def __init__(self, config: Config, pool: ConnectionPool, mailstore: MaildirStore, io: Callable,
                 mx_resolver=None, clock=None):
        self._config = config
        self._pool = pool
        self._mailstore = mailstore
        self._io = io
        self._mx = mx_resolver
        self._clock = clock
        self.intake = None  # set by the composition root (DSNs are spooled like any mail)

    def withdraw_waiting(self) -> int:
        """Cancel the deliveries waiting for a session to their upstream (see :class:`ConnectionPool`)."""
        return self._pool.withdraw_waiting()

    async def upstream(self, domain: Domain, sender: str, entries: Sequence[QueueEntry],
                       message: bytes) -> list[Outcome]:
        result = await self._pool.deliver(str(domain.upstream), sender, [e.recipient for e in entries], message)
        return outcomes_of(result, entries)

    async def mailbox(self, address: str, sender: str, recipient: str, message: bytes) -> str:
        """Deliver to the INBOX of ``address``; return the Maildir base name."""
        return await self._io(deliver_copy, self._mailstore, address, sender, recipient, [message])

    async def outbound(self, sender: str, entries: Sequence[QueueEntry], message: bytes) -> list[Outcome]:
        smarthost = self._config.outbound.smarthost
        if smarthost is not None:
            host, port = smarthost
            target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            result = await self._pool.deliver(target, sender, [e.recipient for e in entries], message)
            return outcomes_of(result, entries)
        by_domain: dict[str, list[QueueEntry]] = defaultdict(list)
        for entry in entries:
            by_domain[entry.domain].append(entry)
        outcomes: list[Outcome] = []
        for domain, group in by_domain.items():
            outcomes.extend(await self._to_mx(domain, sender, group, message))
        return outcomes

    async def _to_mx(self, domain: str, sender: str, entries: list[QueueEntry], message: bytes) -> list[Outcome]:
        try:
            hosts = await self.mx_hosts(domain)
        except NoSuchDomain as exc:  # as Postfix: NXDOMAIN bounces at once
            return [Outcome(e, "permanent", str(exc)) for e in entries]
        except Exception as exc:  # other DNS trouble is temporary (RFC 5321 5.1)
            return [Outcome(e, "temporary", f"MX lookup for {domain} failed: {exc}") for e in entries]
        if not hosts:
            return [Outcome(e, "permanent", f"no mail exchanger for {domain} (null MX)") for e in entries]
        outcomes: list[Outcome] = []
        for host in hosts:
            outcomes = outcomes_of(await self._pool.deliver(f"{host}:25", sender, [e.recipient for e in entries],
                                                            message), entries)
            if not any(o.unreachable for o in outcomes):
                return outcomes
        return outcomes

    async def mx_hosts(self, domain: str) -> list[str]:
        """MX hosts by preference (RFC 5321 5.1); the domain itself when it has none."""
        from twisted.names import client, dns, error

        resolver = self._mx or client.getResolver()
        try:
            answers, _, _ = await resolver.lookupMailExchange(domain)
        except (error.DomainError, error.AuthoritativeDomainError):
            raise NoSuchDomain(f"domain {domain} does not exist (DNS NXDOMAIN)") from None
        records = sorted((a.payload.preference, str(a.payload.name)) for a in answers if a.type == dns.MX)
        if not records:
            return [domain]
        if len(records) == 1 and records[0][1] in ("", "."):
            return []  # RFC 7505 null MX
        return [name for _, name in records]

    async def notify_sender(self, queue_id: str, sender: str, message: bytes,
                            failures: list[tuple[QueueEntry, str]]) -> None:
        """Spool a DSN to ``sender`` for ``failures`` (never called for the null sender)."""
        now = self._clock.seconds() if self._clock is not None else 0.0
        arrival = failures[0][0].received if failures else now
        dsn = build_dsn(hostname=self._config.server.hostname, queue_id=queue_id, sender=sender,
                        failures=[(e.recipient, d) for e, d in failures], original=message, arrival=arrival,
                        now=now)
        dsn_id = await self.intake.accept(sender="", recipients=[sender], chunks=[dsn], direction="outbound",
                                          origin="dsn")
        self.log.info("{queue_id}: DSN {dsn_id} to {sender}", queue_id=queue_id, dsn_id=dsn_id, sender=sender)
