"""Fixtures for the POP3 unit tests: a real Maildir store, a scripted authenticator, in-memory connections."""

from __future__ import annotations

import attrs
import pytest
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.internet.testing import StringTransport
from zope.interface import directlyProvides, implementer

from continuity.config import LimitsConfig, parse_config
from continuity.directory.cred import Login, LoginFailed, LoginThrottled
from continuity.envelope import parse_address
from continuity.mailstore import MaildirStore
from continuity.pop3.maildrop import Maildrop
from continuity.pop3.server import POP3ServerFactory
from continuity.testing.inline import InlineThread

ADDRESS = "bob@example.com"
PASSWORD = "Secret123"


class ScriptedAuthenticator:
    """Stands in for ``Authenticator.login``: records each attempt, knows one user.

    ``throttled`` turns every attempt into the temporary refusal; the avatar is
    a fresh, unopened :class:`Maildrop` as the realm would make it.
    """

    def __init__(self, store: MaildirStore):
        self.store = store
        self.throttled = False
        self.attempts: list[tuple[str, str, str]] = []

    def _outcome(self, username: str, password: str) -> Login:
        if self.throttled:
            raise LoginThrottled()
        if (username.lower(), password) != (ADDRESS, PASSWORD):
            raise LoginFailed()
        maildrop = Maildrop(self.store, username)
        return Login(address=ADDRESS, avatar=maildrop, logout=maildrop.logout)

    def login(self, username, password, peer_ip, interface, service) -> defer.Deferred:
        self.attempts.append((username, peer_ip, service))
        return defer.maybeDeferred(self._outcome, username, password)


@implementer(ITLSTransport)
class TLSCapableTransport(StringTransport):
    """A StringTransport that records startTLS and then says it is encrypted."""

    tls_started = None

    def startTLS(self, contextFactory, normal=True):
        self.tls_started = contextFactory
        directlyProvides(self, ISSLTransport, ITLSTransport)


def limits(**overrides) -> LimitsConfig:
    """The default [limits] with ``overrides``."""
    defaults = parse_config({"server": {"hostname": "pop.example.test", "data_dir": "var"}}, "/nonexistent/c.toml")
    return attrs.evolve(defaults.limits, **{"connections_per_ip": 5, **overrides})


class Client:
    """One in-memory connection: send lines, read what the server wrote."""

    def __init__(self, factory: POP3ServerFactory, ip: str = "192.0.2.7", transport=None):
        self.transport = transport if transport is not None else TLSCapableTransport(
            peerAddress=IPv4Address("TCP", ip, 40000))
        self.server = factory.buildProtocol(None)
        self.server.makeConnection(self.transport)

    def take(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def lines(self) -> list[bytes]:
        return self.take().split(b"\r\n")[:-1]

    def send(self, data: bytes) -> list[bytes]:
        self.server.dataReceived(data)
        return self.lines()

    def command(self, line: str | bytes) -> list[bytes]:
        return self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")

    def login(self) -> None:
        self.take()
        if not self.server.tls:
            assert self.command("STLS")[0].startswith(b"+OK")
        assert self.command(f"USER {ADDRESS}")[0].startswith(b"+OK")
        reply = self.command(f"PASS {PASSWORD}")
        assert reply == [b"+OK Logged in."], reply

    def disconnect(self) -> None:
        self.server.connectionLost(None)

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting


@pytest.fixture
def store(tmp_path) -> MaildirStore:
    return MaildirStore(str(tmp_path / "mail"), hostname="test.example")


@pytest.fixture
def deliver(store):
    """Deliver messages to bob's INBOX; returns their refs."""

    def deliver(*messages: bytes):
        return [store.deliver(parse_address(ADDRESS), message, assign_uid=True) for message in messages]

    return deliver


@pytest.fixture
def clock() -> task.Clock:
    return task.Clock()


@pytest.fixture
def authenticator(store) -> ScriptedAuthenticator:
    return ScriptedAuthenticator(store)


@pytest.fixture
def make_factory(authenticator, clock):
    def make(**options) -> POP3ServerFactory:
        limit_overrides = options.pop("limits", {})
        settings = dict(tls_context=object(), require_tls_for_auth=True, clock=clock)
        settings.update(options)
        return POP3ServerFactory(authenticator, InlineThread(), "pop.example.test", limits(**limit_overrides),
                                 **settings)

    return make


@pytest.fixture
def factory(make_factory) -> POP3ServerFactory:
    return make_factory()


@pytest.fixture
def client(factory) -> Client:
    return Client(factory)


@pytest.fixture
def logged_in(client) -> Client:
    client.login()
    return client
