"""Logins for IMAP, POP3 and submission: one ``twisted.cred`` portal and login throttling.

Every listener that takes a password goes through :class:`Authenticator`:

- :class:`DirectoryChecker` checks the address and password against the
  directory on a worker thread (Argon2 and SQL never run on the reactor). An
  unknown address and a wrong password cost the same work and get the same
  answer; an inactive user cannot log in.
- :class:`MailRealm` turns the authenticated address into the avatar the
  protocol asks for. The protocols register their avatar factories with it
  (``{IAccount: imap_account, IMailbox: pop3_maildrop, IMailUser: ...}``), so
  this module knows no protocol and the protocols know no SQL.
- :class:`LoginThrottle` counts failed logins per client IP and per account in
  a sliding 10-minute window, like Dovecot's ``auth_penalty``: each failure is
  answered after a growing delay (0.5 s, 1 s, 2 s ... at most 8 s), and beyond
  ``[limits] auth_failures`` failures per IP (twice that per account) further
  attempts are refused at once as a temporary failure. A successful login
  clears the failures of that IP and account.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
from twisted.cred import credentials as cred_credentials
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from continuity.counters import SlidingWindow, Window
from continuity.directory.store import Directory, User
from continuity.errors import InvalidAddress, NotFound

#: The window in which failed logins are counted (CONTRACT: per 10 minutes).
WINDOW = 600.0
#: The delay before answering the first failure; it doubles with each further one.
FIRST_DELAY = 0.5
MAX_DELAY = 8.0

RunBlocking = Callable[..., Awaitable[Any]]


class IMailUser(Interface):
    """The avatar that is the directory's :class:`~continuity.directory.store.User` itself
    (submission asks for it: it needs the address and aliases, not a mailbox)."""


class LoginFailed(Exception):
    """Wrong address or password, or an inactive user (the reason is never told to the client)."""

    temporary = False


class LoginThrottled(LoginFailed):
    """Too many failed logins from this IP or for this account: try again later."""

    temporary = True


class UnsupportedAvatar(TypeError):
    """The realm has no avatar factory for any of the interfaces asked for."""


def _text(value: bytes | str) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def verifications_at_once() -> int:
    """Password verifications one process runs side by side: a core fewer than the machine has, at least one.

    Each is ~0.1 s of one core and 64 MiB (Argon2id). A login storm (every phone reconnecting after a
    failover) then leaves a core to the mail flow, and sessions start as each login is done, as with
    Dovecot's auth process, instead of all together once the cores have done every one of them.
    """
    return max(1, (os.cpu_count() or 2) - 1)


def _as_text(credentials) -> tuple[str, str] | None:
    """Username and password of ``IUsernamePassword`` credentials as text; None when either is not UTF-8."""
    try:
        return _text(credentials.username), _text(credentials.password)
    except UnicodeDecodeError:
        return None


@implementer(ICredentialsChecker)
class DirectoryChecker:
    """Checks ``IUsernamePassword`` against :meth:`Directory.authenticate` on a worker thread.

    The avatar id is the user's canonical address (a ``str``).
    """

    credentialInterfaces = (cred_credentials.IUsernamePassword,)

    def __init__(self, directory: Directory, run_blocking: RunBlocking, look_up: RunBlocking | None = None):
        """:param run_blocking: runs the verifications; :param look_up: the cheap checks of
        :meth:`recently_verified` (default ``run_blocking``), on a pool that no Argon2id holds up."""
        self._directory = directory
        self._run = run_blocking
        self._look_up = look_up or run_blocking

    def requestAvatarId(self, credentials) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._check(credentials))

    async def _check(self, credentials) -> str:
        text = _as_text(credentials)
        user = await self._run(self._directory.authenticate, *text) if text is not None else None
        if user is None:
            raise UnauthorizedLogin()
        return user.address

    async def recently_verified(self, credentials) -> str | None:
        """The address if these credentials succeeded within the hour
        (:meth:`Directory.recently_verified`), else None: then :meth:`requestAvatarId` decides."""
        text = _as_text(credentials)
        user = await self._look_up(self._directory.recently_verified, *text) if text is not None else None
        return user.address if user is not None else None


@implementer(IRealm)
class MailRealm:
    """Makes the avatar for an authenticated address with the factory registered for the interface.

    A factory takes the :class:`User` and returns the avatar or a Deferred of it;
    the avatar's ``logout()``, if it has one, is called when the session ends.
    """

    def __init__(self, directory: Directory, run_blocking: RunBlocking,
                 avatars: Mapping[type[Interface], Callable[[User], Any]] | None = None):
        self._directory = directory
        self._run = run_blocking
        self._avatars: dict = {IMailUser: lambda user: user}
        self._avatars.update(avatars or {})

    def register(self, interface: type[Interface], factory: Callable[[User], Any]) -> None:
        """Serve ``interface`` avatars made by ``factory(user)`` (done once per protocol, at build time)."""
        self._avatars[interface] = factory

    def requestAvatar(self, avatarId, mind, *interfaces) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._avatar(_text(avatarId), interfaces))

    async def _avatar(self, address: str, interfaces) -> tuple:
        for interface in interfaces:
            factory = self._avatars.get(interface)
            if factory is None:
                continue
            try:
                user = await self._run(self._directory.get_user, address)
            except (NotFound, InvalidAddress):
                # Removed between the check and now.
                raise UnauthorizedLogin() from None
            avatar = await defer.maybeDeferred(factory, user)
            return interface, avatar, getattr(avatar, "logout", _nothing)
        raise UnsupportedAvatar(f"no avatar for {[i.__name__ for i in interfaces]}")


def _nothing() -> None:
    return None


class LoginThrottle:
    """Failed logins per client IP and per account (see the module docstring).

    :param window: makes a window by name and seconds; by default this process's own (a service with SMTP
        workers passes windows they share, :func:`continuity.counters.sliding_window`).
    """

    def __init__(self, clock: Callable[[], float], max_failures: int,
                 window: Callable[[str, float], Window] | None = None):
        self.max_failures = max_failures
        window = window or (lambda name, seconds: SlidingWindow(clock, seconds))
        self._ips = window("login-failures-by-ip", WINDOW)
        self._accounts = window("login-failures-by-account", WINDOW)

    def refused(self, ip: str, account: str) -> bool:
        """Whether a login from ``ip`` for ``account`` is refused without checking it."""
        return (self._ips.count(ip) >= self.max_failures
                or self._accounts.count(account) >= 2 * self.max_failures)

    def failed(self, ip: str, account: str) -> float:
        """Count a failure; return the delay in seconds before it is answered."""
        failures = max(self._ips.add(ip), self._accounts.add(account))
        return min(FIRST_DELAY * 2 ** (failures - 1), MAX_DELAY)

    def succeeded(self, ip: str, account: str) -> None:
        self._ips.clear(ip)
        self._accounts.clear(account)


def _account_key(username: str) -> str:
    """Failures count against the address as the user would write it, case-insensitively."""
    return username.strip().lower()


@attrs.frozen
class Login:
    """A successful login: the avatar and what to call when the session ends."""

    address: str
    avatar: Any
    logout: Callable[[], None]


class Authenticator:
    """The one place passwords are checked: throttle, portal, delay, log."""

    log = Logger()

    def __init__(self, checker: DirectoryChecker, realm: MailRealm, throttle: LoginThrottle, clock: IReactorTime,
                 at_once: int | None = None):
        """:param at_once: password verifications at a time (default :func:`verifications_at_once`); the other
        logins wait their turn, and the throttle is asked at the turn, so those queued behind the failures
        that trip it are refused too."""
        self.realm = realm
        self.throttle = throttle
        #: For Twisted code paths that want a portal; :meth:`login` is the throttled way in.
        self.portal = Portal(realm, [checker])
        self._checker = checker
        self._clock = clock
        self._turns = defer.DeferredSemaphore(at_once or verifications_at_once())

    def login(self, username: str, password: str, peer_ip: str, interface: type[Interface],
              service: str) -> defer.Deferred:
        """A Deferred of :class:`Login`, failing with :class:`LoginFailed` or :class:`LoginThrottled`.

        :param service: ``imap``, ``pop3``, ``submission``... for the log.
        """
        return defer.Deferred.fromCoroutine(self._login(username, password, peer_ip, interface, service))

    async def _login(self, username: str, password: str, peer_ip: str, interface, service: str) -> Login:
        account = _account_key(username)
        creds = cred_credentials.UsernamePassword(username.encode("utf-8"), password.encode("utf-8"))
        # A repeat of a recent success needs no turn: it does not wait behind the Argon2id of a login storm.
        address = None if self.throttle.refused(peer_ip, account) else await self._checker.recently_verified(creds)
        if address is not None:
            self.throttle.succeeded(peer_ip, account)
            return await self._avatar(address, peer_ip, interface, service)
        await self._turns.acquire()
        try:
            if self.throttle.refused(peer_ip, account):
                self.log.warn("{service} login for {account!r} from {ip} refused: too many failed logins",
                              service=service, account=account, ip=peer_ip)
                raise LoginThrottled()
            try:
                address = await self._checker.requestAvatarId(creds)
            except UnauthorizedLogin:
                # Counted before the next turn starts, which asks the throttle.
                delay = self.throttle.failed(peer_ip, account)
            else:
                delay = None
                self.throttle.succeeded(peer_ip, account)
        finally:
            self._turns.release()
        if delay is not None:
            self.log.info("{service} login failed for {account!r} from {ip}", service=service, account=account,
                          ip=peer_ip)
            await task.deferLater(self._clock, delay)
            raise LoginFailed()
        return await self._avatar(address, peer_ip, interface, service)

    async def _avatar(self, address: str, peer_ip: str, interface, service: str) -> Login:
        try:
            _, avatar, logout = await self.realm.requestAvatar(address, None, interface)
        except UnauthorizedLogin:
            raise LoginFailed() from None
        self.log.info("{service} login {address} from {ip}", service=service, address=address, ip=peer_ip)
        return Login(address=address, avatar=avatar, logout=logout)


def build_authenticator(directory: Directory, run_blocking: RunBlocking, clock: IReactorTime,
                        max_failures: int, window: Callable[[str, float], Window] | None = None,
                        verify: RunBlocking | None = None) -> tuple[Authenticator, MailRealm]:
    """The service's authenticator and its realm (protocols register their avatars on the realm); ``window``
    as :class:`LoginThrottle` takes it. Passwords are checked on ``verify`` (default ``run_blocking``):
    the process's pool for hashing, apart from the one for files."""
    realm = MailRealm(directory, run_blocking)
    throttle = LoginThrottle(getattr(clock, "seconds", time.time), max_failures, window)
    checker = DirectoryChecker(directory, verify or run_blocking, look_up=run_blocking)
    return Authenticator(checker, realm, throttle, clock), realm
