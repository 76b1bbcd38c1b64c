"""Log lines of the service and its SMTP workers in one place: twistd's destination, appending, rotation."""

from __future__ import annotations

import os

import pytest
from twisted.logger import LogLevel
from twisted.scripts.twistd import ServerOptions

from continuity.logs import STDOUT, AppendingLogFile, WorkerLog, destination


def twistd(*argv: str):
    options = ServerOptions()
    options.parseOptions([*argv, "continuity", "--config", "/etc/continuity.toml"])
    return options.subOptions.parent


@pytest.mark.parametrize("argv, expected", [
    (["--nodaemon", "--logfile=/var/log/continuity.log"], "/var/log/continuity.log"),
    (["--nodaemon"], STDOUT),
    (["--nodaemon", "--logfile=-"], STDOUT),
    (["--syslog"], None),
    (["--logfile=-"], None),  # a daemon cannot log to stdout: twistd says so itself
    (["--nodaemon", "--logger=twisted.logger.jsonFileLogObserver"], None),  # the operator's own
])
def test_the_workers_log_where_twistd_does(argv, expected):
    assert destination(twistd(*argv)) == expected


def test_a_daemon_without_logfile_logs_to_twistd_log_in_its_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert destination(twistd()) == str(tmp_path / "twistd.log")
    assert destination(None) is None  # built outside twistd (tests): through the service


def test_the_service_s_log_file_never_overwrites_what_another_process_appended(tmp_path):
    path = tmp_path / "twistd.log"
    service = AppendingLogFile.fromFullPath(str(path))
    service.write("service 1\n")
    with open(path, "ab") as worker:
        worker.write(b"worker 1\n")
    service.write("service 2\n")
    service.close()
    assert path.read_text() == "service 1\nworker 1\nservice 2\n"


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def event(text: str) -> dict:
    return {"log_format": text, "log_time": 1_800_000_000.0, "log_namespace": "continuity.smtp.server",
            "log_level": LogLevel.info}


def test_a_worker_marks_its_lines_and_follows_a_rotation_within_a_second(tmp_path):
    path = tmp_path / "twistd.log"
    clock = Clock()
    log = WorkerLog(1, str(path), clock)
    log(event("first"))
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and lines[0].endswith(" [continuity.smtp.server#info] smtp worker 1: first")
    os.rename(path, tmp_path / "twistd.log.1")  # the service rotated its log
    log(event("second"))  # within the second: still the file it has open
    clock.now = WorkerLog.check_interval
    log(event("third"))
    assert [line.rsplit(": ", 1)[1] for line in (tmp_path / "twistd.log.1").read_text().splitlines()] == [
        "first", "second"]
    assert path.read_text().splitlines()[0].endswith("smtp worker 1: third")


def test_a_worker_s_traceback_stays_one_entry(tmp_path):
    path = tmp_path / "twistd.log"
    WorkerLog(2, str(path), Clock())(event("one\ntwo"))
    assert path.read_text().endswith("smtp worker 2: one\n\ttwo\n")


def test_time_stamps_are_twistd_s_made_once_a_second():
    from twisted.logger import formatTime

    from continuity.logs import SecondStamps

    stamps = SecondStamps()
    for when in (1_800_000_000.0, 1_800_000_000.9, 1_800_000_001.2, 1_799_999_999.5):
        assert stamps(when) == formatTime(when)
    assert stamps(None) == formatTime(None)


def test_a_line_logged_while_a_worker_writes_one_does_not_hang_it(tmp_path):
    """twistd's SIGTERM handler logs from whatever the main thread was doing, which may be writing a line."""
    path = tmp_path / "twistd.log"

    class Interrupting(Clock):
        def __call__(self) -> float:
            if interrupt:  # called inside the write's lock: the signal arrives there
                interrupt.pop()
                log(event("Received SIGTERM, shutting down."))
            return self.now

    interrupt = []
    log = WorkerLog(1, str(path), Interrupting())
    interrupt.append(True)
    log(event("disconnect from 127.0.0.1"))
    assert [line.rsplit(": ", 1)[1] for line in path.read_text().splitlines()] == [
        "Received SIGTERM, shutting down.", "disconnect from 127.0.0.1"]


class _Shown:
    attr = 5

    def __repr__(self) -> str:
        return "<shown>"


@pytest.mark.parametrize("event", [
    dict(log_format="{session} from=<{sender}> nrcpt={count}: {reply}", session="ee", sender="s@x.test", count=1,
         reply="250 2.0.0 Ok", log_time=1_800_000_000.0, log_namespace="continuity.smtp", log_level=LogLevel.info),
    dict(log_format="{x!r} {x.attr} {d[k]} {f:.2f} {{braces}}\nsecond line", x=_Shown(), d={"k": 3}, f=1.234,
         log_time=1_800_000_000.0, log_system="smtp worker 1"),
    dict(log_format="called: {x()}", x=lambda: 7, log_time=None, log_level=LogLevel.warn),
    dict(log_format="missing {nope}", log_time=1_800_000_000.0),
    dict(log_format="positional {0}", log_time=1_800_000_000.0),
    dict(log_format="wrong spec {x:d}", x="text", log_time=1_800_000_000.0),
    dict(log_format=b"bytes {x}", x=1, log_time=1_800_000_000.0),
    dict(log_format="", log_time=1_800_000_000.0),
    dict(log_time=1_800_000_000.0),
    dict(log_format="failed: {x}", x=1, log_failure=None, log_time=1_800_000_000.0),
], ids=["plain", "attributes and lines", "call", "missing key", "positional", "bad spec", "bytes", "empty",
        "no format", "failure"])
def test_the_fast_line_is_twisteds_line(event):
    """classic_text takes str.format_map for plain fields and Twisted's formatter for the rest: the same text."""
    from twisted.logger import formatEventAsClassicLogText
    from twisted.python.failure import Failure

    from continuity.logs import SecondStamps, classic_text

    if "log_failure" in event:
        try:
            raise ValueError("boom")
        except ValueError:
            event["log_failure"] = Failure()
    stamps = SecondStamps()
    assert classic_text(event, stamps) == formatEventAsClassicLogText(event, formatTime=stamps)
