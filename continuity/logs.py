"""Where log lines go, in the service process and in its SMTP workers.

The service logs where twistd's options say (``--logfile``, stdout with
``-n``, ``--syslog``), in twistd's format; the observer is ours (an
application's ``ILogObserver``, which twistd uses in place of its own) except
for syslog, and stamps the time once per second, not once per line. An SMTP worker (:mod:`continuity.workers`) writes its own lines
to the same place, marked ``smtp worker N:``, instead of sending them to the
service to be logged a second time: that cost the busiest process a log event
per line, about 5% of its time in the relay benchmark.

- **A file** (``--logfile``, or twistd's ``twistd.log`` when daemonized): the
  service's log file is opened for appending (:class:`AppendingLogFile`,
  twistd's :class:`~twisted.python.logfile.LogFile` otherwise, with its
  rotation at 1 MB of the service's own lines and on SIGUSR1), and each
  worker appends whole lines to the same path (:class:`WorkerLog`). A worker
  notices a rotation within a second and reopens the path; lines written in
  that second are in the rotated file.
- **stdout**: the worker inherits the service's standard output.
- **syslog**, or anything else: the worker's lines go to the service over a
  pipe and are logged there (:mod:`continuity.workers`).

This module imports nothing of ours.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, formatEventAsClassicLogText, formatTime
from twisted.python.logfile import LogFile

#: What the SMTP workers are told about the log: a path, STDOUT, or None (through the service).
STDOUT = "-"


def destination(twistd_options) -> str | None:
    """Where twistd logs, from its command line: the log file's absolute path, :data:`STDOUT`, or None
    (syslog, a ``--logger`` of the operator's, a daemon told to log to stdout - twistd refuses that itself -
    or not started by twistd), as twistd's own ``UnixAppLogger`` decides it."""
    if twistd_options is None or twistd_options.get("syslog") or twistd_options.get("logger"):
        return None
    name = twistd_options.get("logfile")
    nodaemon = twistd_options.get("nodaemon")
    if name == "-":
        return STDOUT if nodaemon else None
    if nodaemon and not name:
        return STDOUT
    return os.path.abspath(name or "twistd.log")


class AppendingLogFile(LogFile):
    """twistd's log file, opened for appending: writes of other processes to the same file are never
    overwritten (twistd's own opens it for writing at its end, and writes where it last wrote)."""

    def _openFile(self) -> None:
        super()._openFile()
        self._file.close()
        self._file = open(self.path, "ab", 0)  # noqa: SIM115 (kept open, as LogFile keeps it)
        self.size = self._file.tell()


class SecondStamps:
    """twistd's time stamp (``formatTime``: to the second), made once per second instead of once per line."""

    def __init__(self):
        self._last: tuple[int, str] = (-1, "")

    def __call__(self, when: float | None) -> str:
        if when is None:
            return formatTime(when)
        second, text = self._last
        if int(when) != second:
            text = formatTime(when)
            self._last = (int(when), text)  # one assignment: safe from the threads that log too
        return text


def classic_text(event: LogEvent, stamps: Callable[[float | None], str]) -> str | None:
    """``formatEventAsClassicLogText(event, formatTime=stamps)``, the same line made in a tenth of the time.

    twisted.logger formats with a :class:`string.Formatter` written in Python
    (for its ``{name()}`` fields, which call the value): about 9 us a line,
    and the SMTP dialogue logs three or four lines per message. A format of
    plain fields is the same through ``str.format_map``; any other (a call, a
    positional field, a failure's traceback, a flattened event) goes to
    Twisted's own.
    """
    log_format = event.get("log_format")
    if type(log_format) is not str or "log_failure" in event or "log_flattened" in event:
        return formatEventAsClassicLogText(event, formatTime=stamps)
    try:
        text = log_format.format_map(event)
    except Exception:  # noqa: BLE001 (a call field, a missing key...: Twisted's formatter says which)
        return formatEventAsClassicLogText(event, formatTime=stamps)
    if not text:
        return None
    system = event.get("log_system")
    if system is None:
        level = event.get("log_level")
        system = f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
    else:
        try:
            system = str(system)
        except Exception:  # noqa: BLE001 (as Twisted's)
            system = "UNFORMATTABLE"
    return f"{stamps(event.get('log_time'))} [{system}] {text}".replace("\n", "\n\t") + "\n"


def classic_lines(out) -> ILogObserver:
    """twistd's observer for a text log (its ``textFileLogObserver``), with the time stamps of
    :class:`SecondStamps` and the fast path of :func:`classic_text`."""
    stamps = SecondStamps()
    return FileLogObserver(out, lambda event: classic_text(event, stamps))


def observer(logs: str | None, reactor) -> ILogObserver | None:
    """The service's observer for ``logs`` (:func:`destination`); None leaves the log to twistd (syslog).

    A file is opened for appending; SIGUSR1 rotates it (on ``reactor``), as twistd does.
    """
    if logs is None:
        return None
    if logs == STDOUT:
        import sys

        return classic_lines(sys.stdout)
    log_file = AppendingLogFile.fromFullPath(logs)
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(signum, frame) -> None:
            reactor.callFromThread(log_file.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return classic_lines(log_file)


class WorkerLog:
    """An SMTP worker's log observer: classic twistd lines, marked with the worker's number, appended to
    the service's log file (reopened when it was rotated) or written to stdout."""

    #: Seconds between checks that the path still names the file being written.
    check_interval = 1.0

    def __init__(self, number: int, path: str | None, clock: Callable[[], float] = time.monotonic):
        self._mark = f"smtp worker {number}: "
        self._stamps = SecondStamps()
        self._path = path
        self._clock = clock
        self._fd = 1
        self._checked = clock()
        # Lines come from the I/O threads too: a reopen must not close the descriptor another is writing to.
        # Reentrant: twistd's SIGTERM handler logs, and it runs in whatever this thread was doing, which may
        # be this very write (a plain lock hung the worker at its stop).
        self._lock = threading.RLock()
        if path is not None:
            self._fd = self._open()

    def _open(self) -> int:
        return os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def __call__(self, event: dict) -> None:
        text = classic_text(event, self._stamps)
        if text is None:
            return
        stamp, separator, rest = text.partition("] ")
        data = f"{stamp}{separator}{self._mark}{rest}".encode("utf-8", "replace")
        with self._lock:
            if self._path is not None and self._clock() - self._checked >= self.check_interval:
                self._reopen_if_rotated()
            try:
                while data:
                    data = data[os.write(self._fd, data):]
            except OSError:
                pass  # nowhere left to log to; the worker's work goes on

    def _reopen_if_rotated(self) -> None:
        self._checked = self._clock()
        try:
            if os.stat(self._path).st_ino == os.fstat(self._fd).st_ino:
                return
        except FileNotFoundError:
            pass  # moved away and not made again yet: made here
        except OSError:
            return
        try:
            fd = self._open()
        except OSError:
            return
        old, self._fd = self._fd, fd  # a line logged in between (a signal's) goes to the new file
        os.close(old)
