"""A bare IMAP client for sessions imaplib cannot hold: IDLE, and many at once (issue 6 benchmarks).

:class:`RawIMAP` sends tagged commands and reads response lines (no literals:
it is used for LOGIN, SELECT of small folders, IDLE and LOGOUT).
:func:`open_idle_sessions` opens many sessions that log in, select INBOX and
enter IDLE (RFC 2177), a batch at a time and each step on the whole batch
before the next, so the servers verify passwords side by side.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence


class IMAPFailed(RuntimeError):
    """A command was not answered OK."""


class RawIMAP:
    """One connection to 127.0.0.1:``port``; :attr:`greeting` is the server's first line."""

    def __init__(self, port: int, timeout: float = 120.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.greeting = self.file.readline()
        if not self.greeting.startswith(b"* OK"):
            raise IMAPFailed(f"greeting on {port}: {self.greeting[:200]!r}")
        self._tags = 0

    def send(self, command: str) -> bytes:
        """Send ``TAG command``; return the tag."""
        self._tags += 1
        tag = b"b%d" % self._tags
        self.sock.sendall(tag + b" " + command.encode() + b"\r\n")
        return tag

    def read_until(self, done: Callable[[bytes], bool]) -> list[bytes]:
        """Response lines up to and including the first for which ``done`` is true."""
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise IMAPFailed(f"connection closed after {lines[-3:]!r}")
            lines.append(line)
            if done(line):
                return lines

    def wait(self, tag: bytes) -> list[bytes]:
        """Lines up to the tagged completion of ``tag``, which must be OK."""
        lines = self.read_until(lambda line: line.startswith(tag + b" "))
        if not lines[-1].startswith(tag + b" OK"):
            raise IMAPFailed(lines[-1].decode(errors="replace").strip())
        return lines

    def command(self, command: str) -> list[bytes]:
        return self.wait(self.send(command))

    def start_idle(self) -> bytes:
        tag = self.send("IDLE")
        self.read_until(lambda line: line.startswith(b"+"))
        return tag

    def stop_idle(self, tag: bytes) -> None:
        self.sock.sendall(b"DONE\r\n")
        self.wait(tag)

    def close(self) -> None:
        try:
            self.file.close()
        finally:
            self.sock.close()


def login_command(address: str, password: str) -> str:
    return f'LOGIN "{address}" "{password}"'


def open_idle_sessions(port: int, logins: Sequence[tuple[str, str]], batch: int = 50) -> list[RawIMAP]:
    """One session per (address, password): logged in, INBOX selected, idling. Closed again on a failure."""
    sessions: list[RawIMAP] = []
    try:
        for start in range(0, len(logins), batch):
            chunk = logins[start: start + batch]
            opened = []
            for _ in chunk:
                opened.append(RawIMAP(port))
                sessions.append(opened[-1])
            tags = [session.send(login_command(*login)) for session, login in zip(opened, chunk)]
            for session, tag in zip(opened, tags):
                session.wait(tag)
            tags = [session.send("SELECT INBOX") for session in opened]
            for session, tag in zip(opened, tags):
                session.wait(tag)
            for session in opened:
                session.start_idle()
    except BaseException:
        close_all(sessions)
        raise
    return sessions


def close_all(sessions: Sequence[RawIMAP]) -> None:
    for session in sessions:
        try:
            session.close()
        except OSError:
            pass
