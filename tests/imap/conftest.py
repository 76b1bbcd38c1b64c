"""Fixtures for the IMAP unit tests: a real Maildir store on tmp_path, a one-user authenticator,
connections over StringTransport with the worker pool run inline and a task.Clock for time."""

from __future__ import annotations

import attrs
import pytest
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.internet.testing import StringTransport
from zope.interface import directlyProvides, implementer

from continuity.config import parse_config
from continuity.directory.cred import Login, LoginFailed, LoginThrottled
from continuity.envelope import parse_address
from continuity.imap.mailbox import Account
from continuity.imap.server import IMAPServerFactory
from continuity.mailstore import MaildirStore

USER = "bob@example.com"
PASSWORD = "Secret123"


def inline(fn, *args, **kwargs):
    """The worker pool, inline: unit tests drive time with a Clock, not threads."""
    return defer.maybeDeferred(fn, *args, **kwargs)


class OneUser:
    """``Authenticator.login`` for bob only; ``throttled`` refuses every login as temporary."""

    def __init__(self, store: MaildirStore):
        self.store = store
        self.throttled = False

    def login(self, username, password, peer_ip, interface, service):
        if self.throttled:
            return defer.fail(LoginThrottled())
        if username.lower() != USER or password != PASSWORD:
            return defer.fail(LoginFailed())
        address = parse_address(USER)
        self.store.ensure_mailbox(address)
        account = Account(address)
        return defer.succeed(Login(address=USER, avatar=account, logout=account.logout))


@implementer(ITLSTransport)
class TLSTransport(StringTransport):
    """A StringTransport that can start TLS and then says it is encrypted."""

    tls_started = None

    def startTLS(self, contextFactory, normal=True):
        self.tls_started = contextFactory
        directlyProvides(self, ISSLTransport, ITLSTransport)


class Client:
    """One in-memory connection: send lines, read what the server wrote."""

    def __init__(self, factory: IMAPServerFactory, ip: str = "192.0.2.7"):
        self.transport = TLSTransport(peerAddress=IPv4Address("TCP", ip, 40000))
        self.server = factory.buildProtocol(None)
        self.server.makeConnection(self.transport)

    def take(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def send(self, data: bytes) -> list[bytes]:
        self.server.dataReceived(data)
        return self.take().split(b"\r\n")[:-1]

    def command(self, line: str | bytes) -> list[bytes]:
        return self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")

    def login(self) -> None:
        self.take()
        if not self.server.tls:
            assert self.command("t0 STARTTLS") == [b"t0 OK Begin TLS negotiation now"]
        reply = self.command(f'l1 LOGIN {USER} "{PASSWORD}"')
        assert reply[-1].startswith(b"l1 OK"), reply

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting


@pytest.fixture
def store(tmp_path) -> MaildirStore:
    return MaildirStore(str(tmp_path / "mail"), hostname="test.example")


@pytest.fixture
def address():
    return parse_address(USER)


@pytest.fixture
def clock() -> task.Clock:
    return task.Clock()


@pytest.fixture
def make_factory(store, clock):
    def make(require_tls_for_auth: bool = True, **limit_overrides) -> IMAPServerFactory:
        defaults = parse_config({"server": {"hostname": "imap.example.test", "data_dir": "var"}}, "/x/c.toml")
        limits = attrs.evolve(defaults.limits, **{"connections_per_ip": 5, **limit_overrides})
        return IMAPServerFactory(store=store, run=inline, authenticator=OneUser(store), hostname="imap.example.test",
                                 limits=limits, require_tls_for_auth=require_tls_for_auth, tls_context=object(),
                                 clock=clock)

    return make


@pytest.fixture
def factory(make_factory):
    return make_factory()


@pytest.fixture
def client(factory) -> Client:
    return Client(factory)


@pytest.fixture
def logged_in(client) -> Client:
    client.login()
    return client
