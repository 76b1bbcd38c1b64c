"""SMTP peers for tests: Postfix's real ``smtp-sink``, a black hole, a dead port.

:class:`SmtpSink` runs ``/usr/sbin/smtp-sink`` (Debian package ``postfix``; the
system Postfix need not run) on a free port of 127.0.0.1, dumps every
message it receives into a private directory and reads those dumps back as
:class:`SinkMessage` s: envelope and content. Its options make it a bad
upstream on purpose (verified with Postfix 3.7)::

    -r CMD,...   answer CMD with 450 4.3.0 (soft reject; CONNECT = the greeting)
    -f CMD,...   answer CMD with 500 5.3.0 (hard reject)
    -Q CMD,...   answer CMD with 421 and disconnect
    -q CMD,...   disconnect without a reply after CMD
    -w SECONDS   wait before answering DATA;  -W CMD:SECONDS  before CMD
    -8 / -e / -p / -E   do not announce 8BITMIME / ESMTP / PIPELINING / ENHANCEDSTATUSCODES

CMD is one of CONNECT, HELO, EHLO, MAIL, RCPT, DATA, ``.`` (end of data),
RSET, NOOP, QUIT; ``-r`` and ``-f`` also turn PIPELINING off. A rejection
applies to every instance of the command (every RCPT, not one address).

The dump holds the message as smtp-sink read it: dot-unstuffed, each line
ending in LF (it drops CRs); :func:`as_dumped` turns the bytes a test sent
into that form, so ``sink.messages()[0].content == as_dumped(sent)`` says the
message arrived intact.

Pytest fixtures (import them into a ``conftest.py`` or a test module):
``smtp_sink`` (a function starting sinks, all stopped at teardown),
``black_hole`` and ``dead_port``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
import pytest

SMTP_SINK = "/usr/sbin/smtp-sink"
_COUNTERS = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)")
_LINE_END = re.compile(rb"\r+\n?|\n")


def as_dumped(message: bytes) -> bytes:
    """``message`` as smtp-sink's dump shows it: every line ending an LF, a final LF."""
    text = _LINE_END.sub(b"\n", message)
    return text if not text or text.endswith(b"\n") else text + b"\n"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@attrs.frozen
class SinkMessage:
    """One mail transaction as smtp-sink dumped it."""

    helo: str
    mail_args: str  # the MAIL arguments: "<a@example.test> BODY=8BITMIME"
    rcpt_args: tuple[str, ...]  # the arguments of each RCPT, in order
    content: bytes  # the message: dot-unstuffed, LF line endings
    path: Path

    @property
    def sender(self) -> str:
        return self.mail_args.partition(">")[0].lstrip("<")

    @property
    def mail_params(self) -> tuple[str, ...]:
        """The ESMTP parameters of MAIL (``SIZE=...``, ``BODY=8BITMIME``...)."""
        return tuple(self.mail_args.partition(">")[2].split())

    @property
    def recipients(self) -> tuple[str, ...]:
        return tuple(arg.partition(">")[0].lstrip("<") for arg in self.rcpt_args)

    @classmethod
    def parse(cls, path: Path) -> SinkMessage:
        """Read a dump file (format: ``man smtp-sink``, DUMP FILE FORMAT)."""
        lines = path.read_bytes().split(b"\n")
        fields: dict[str, list[str]] = {}
        for index, line in enumerate(lines):
            name, _, value = line.decode("utf-8", "replace").partition(": ")
            if name == "Received":
                # A three-line Received: header ends smtp-sink's part; then the
                # message, then one empty line of its own.
                content = b"\n".join(lines[index + 3:])
                content = content[:-1] if content.endswith(b"\n") else content
                break
            fields.setdefault(name, []).append(value)
        else:
            raise ValueError(f"not an smtp-sink dump: {path}")
        return cls(
            helo=fields.get("X-Helo-Args", [""])[0],
            mail_args=fields.get("X-Mail-Args", [""])[0],
            rcpt_args=tuple(fields.get("X-Rcpt-Args", [])),
            content=content,
            path=path,
        )


class SmtpSink:
    """Postfix's ``smtp-sink`` as a subprocess on 127.0.0.1, with its dumps and counters."""

    def __init__(self, options: Sequence[str] = (), *, host: str = "127.0.0.1", binary: str = SMTP_SINK):
        """
        :param options: smtp-sink options, e.g. ``("-r", "RCPT")``; ``-c``, ``-d`` are added.
        """
        self.options = tuple(options)
        self.host = host
        self.binary = binary
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._baseline = (0, 0, 0)

    @property
    def address(self) -> str:
        """``host:port`` as the client's ``upstream`` label."""
        return _address(self.host, self.port)

    @property
    def dump_dir(self) -> Path:
        assert self._workdir is not None, "the sink is not started"
        return self._workdir / "dumps"

    def start(self, attempts: int = 5) -> SmtpSink:
        """Start on a free port; return once it accepts connections."""
        if not os.access(self.binary, os.X_OK):
            pytest.fail(f"{self.binary} not found: install Debian's postfix package (it brings smtp-sink)")
        self._workdir = Path(tempfile.mkdtemp(prefix="smtp-sink-"))
        self.dump_dir.mkdir()
        user: list[str] = []
        if os.geteuid() == 0:
            # smtp-sink refuses to run as root without -u; the dumps are then
            # written by that user, so it needs a directory it can reach.
            os.chmod(self._workdir, 0o755)
            os.chmod(self.dump_dir, 0o777)
            user = ["-u", "nobody"]
        problem = ""
        for _ in range(attempts):
            self.port = _free_port(self.host)
            out = open(self._workdir / "stdout", "wb")
            self.process = subprocess.Popen(
                [self.binary, *user, "-c", "-d", f"{self.dump_dir}/msg.", *self.options, self.address, "64"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            out.close()
            problem = self._wait_ready()
            if not problem:
                return self
            self.process.wait()
        self.stop()
        raise RuntimeError(f"smtp-sink did not start: {problem}")

    def _wait_ready(self, timeout: float = 10.0) -> str:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return self._output().decode("utf-8", "replace").strip() or f"exit {self.process.returncode}"
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
            except OSError:
                time.sleep(0.02)
                continue
            # That connection was a session: count from after it.
            while time.monotonic() < deadline:
                counts = self._raw_counters()
                if counts[0] >= 1:
                    self._baseline = counts
                    return ""
                time.sleep(0.02)
        self.process.kill()
        return f"not listening on {self.address} after {timeout}s"

    def stop(self) -> None:
        """Stop the process and remove its dumps."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _output(self) -> bytes:
        try:
            return (self._workdir / "stdout").read_bytes()  # type: ignore[operator]
        except OSError:
            return b""

    def _raw_counters(self) -> tuple[int, int, int]:
        found = _COUNTERS.findall(self._output())
        if not found:
            return (0, 0, 0)
        return tuple(int(value) for value in found[-1])  # type: ignore[return-value]

    def counters(self) -> dict[str, int]:
        """Sessions ended, QUITs and messages since the sink was ready (its ``-c`` counters)."""
        counts = self._raw_counters()
        return {
            name: value - base for name, value, base in zip(("sessions", "quits", "messages"), counts, self._baseline)
        }

    def wait_counters(self, timeout: float = 5.0, **at_least: int) -> dict[str, int]:
        """Wait until each named counter reached its value; return the counters."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.counters()
            if all(counts[name] >= value for name, value in at_least.items()) or time.monotonic() > deadline:
                return counts
            time.sleep(0.02)

    def messages(self, count: int = 0, timeout: float = 5.0) -> list[SinkMessage]:
        """The messages received so far (transactions that reached DATA); waits until there are ``count``.

        They are in order of their dump files' times, which the file system
        keeps to a few milliseconds only: tell messages apart by envelope.
        """
        deadline = time.monotonic() + timeout
        while True:
            dated = []
            for path in self.dump_dir.iterdir():
                try:
                    dated.append((path.stat().st_mtime_ns, path.name, path))
                except FileNotFoundError:
                    continue  # smtp-sink removes the dump of a transaction the client aborted
            messages = [m for m in (self._complete(path) for _, _, path in sorted(dated)) if m is not None]
            if len(messages) >= count or time.monotonic() > deadline:
                return messages
            time.sleep(0.02)

    @staticmethod
    def _complete(path: Path) -> SinkMessage | None:
        """The message of a dump file, or None while (or when) its transaction has not reached DATA.

        smtp-sink writes the envelope fields as the commands arrive and the
        message after DATA: a transaction cut short before DATA (the client
        died, or is still waiting for a delayed ``354``) leaves a dump without one.
        """
        try:
            return SinkMessage.parse(path)
        except (ValueError, FileNotFoundError):
            return None


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class BlackHole:
    """A port that completes the TCP handshake and never says a word.

    The socket listens but never accepts: the kernel answers the handshake,
    so a client connects and then waits for a greeting that never comes.
    """

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._socket.bind((host, 0))
        self._socket.listen(64)
        self.port: int = self._socket.getsockname()[1]

    @property
    def address(self) -> str:
        return _address(self.host, self.port)

    def close(self) -> None:
        self._socket.close()


class DeadPort:
    """A port where connections are refused, for as long as this object lives.

    The port is bound but not listening, so nothing else can take it meanwhile
    and a connect gets a reset (ECONNREFUSED).
    """

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._socket.bind((host, 0))
        self.port: int = self._socket.getsockname()[1]

    @property
    def address(self) -> str:
        return _address(self.host, self.port)

    def close(self) -> None:
        self._socket.close()


@pytest.fixture
def smtp_sink() -> Iterator:
    """A function ``start(*options) -> SmtpSink``; every sink is stopped at teardown."""
    sinks: list[SmtpSink] = []

    def start(*options: str) -> SmtpSink:
        sink = SmtpSink(options)
        sinks.append(sink)
        return sink.start()

    yield start
    for sink in sinks:
        sink.stop()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    """A :class:`BlackHole` on 127.0.0.1."""
    hole = BlackHole()
    yield hole
    hole.close()


@pytest.fixture
def dead_port() -> Iterator[DeadPort]:
    """A :class:`DeadPort` on 127.0.0.1."""
    port = DeadPort()
    yield port
    port.close()
