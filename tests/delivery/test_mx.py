"""Outbound routing by DNS: MX hosts by preference, the domain itself without MX, null MX, NXDOMAIN.

A real ``twisted.names`` DNS server answers on 127.0.0.1 from static zones; the
agents query it with a real resolver over UDP.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.names import authority, client, common, dns, server

from continuity.delivery.agents import Agents, NoSuchDomain


class StaticAuthority(authority.FileAuthority):
    """A zone from Python data instead of a zone file."""

    def __init__(self, origin: bytes, records: dict[bytes, list]):
        common.ResolverBase.__init__(self)
        self.soa = (origin, dns.Record_SOA(mname=b"ns." + origin, rname=b"hostmaster." + origin, serial=1,
                                           refresh=3600, retry=600, expire=86400, minimum=60, ttl=60))
        self.records = {name.lower(): [self.soa[1], *values] if name == origin else values
                        for name, values in records.items()}
        self.records.setdefault(origin, [self.soa[1]])


ZONES = [
    StaticAuthority(b"multi.test", {
        b"multi.test": [dns.Record_MX(20, b"backup.multi.test"), dns.Record_MX(5, b"primary.multi.test"),
                        dns.Record_MX(10, b"second.multi.test")],
    }),
    StaticAuthority(b"plain.test", {b"plain.test": [dns.Record_A("127.0.0.1")]}),
    StaticAuthority(b"nullmx.test", {b"nullmx.test": [dns.Record_MX(0, b"")]}),
]


@pytest.fixture
def agents():
    factory = server.DNSServerFactory(authorities=ZONES)
    port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
    resolver = client.Resolver(servers=[("127.0.0.1", port.getHost().port)])
    yield Agents(config=None, pool=None, mailstore=None, io=None, mx_resolver=resolver)
    port.stopListening()


@pytest_twisted.ensureDeferred
async def test_mx_hosts_are_tried_by_preference(agents):
    """MX records are ordered by preference, lowest first (RFC 5321 5.1)."""
    assert await agents.mx_hosts("multi.test") == ["primary.multi.test", "second.multi.test", "backup.multi.test"]


@pytest_twisted.ensureDeferred
async def test_domain_without_mx_is_its_own_mail_exchanger(agents):
    """Without MX records the domain's own address records are used (RFC 5321 5.1 implicit MX)."""
    assert await agents.mx_hosts("plain.test") == ["plain.test"]


@pytest_twisted.ensureDeferred
async def test_null_mx_means_no_mail(agents):
    """A null MX (RFC 7505) leaves no host to try: the mail bounces."""
    assert await agents.mx_hosts("nullmx.test") == []


@pytest_twisted.ensureDeferred
async def test_unknown_domain_is_no_such_domain(agents):
    """A domain that does not exist (NXDOMAIN) is NoSuchDomain, which bounces at once."""
    with pytest.raises(NoSuchDomain, match="does not exist"):
        await agents.mx_hosts("nowhere.multi.test")
