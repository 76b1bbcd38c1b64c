"""The benchmark table: medians and ranges of rounds, ratios against the bars, Markdown and JSON.

Every row of issue 6 has a place in the table; a row no module implements yet
shows as *pending*. A run with ``--only`` keeps the other rows of the
previous results file (each row says when it was measured).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path

import attrs

from lab import Benchmark, Sample

# (name, figure, bar) of every benchmark issue 6 asks for, in its order.
ISSUE_ROWS = (
    ("relay", "inbound relay, normal mode", ">= 1.0x Postfix"),
    ("emergency", "inbound, emergency mode (Maildir delivery)", ">= 1.2x Postfix virtual"),
    ("submission", "submission with AUTH over STARTTLS", ">= 1.0x Postfix"),
    ("imap-fetch", "IMAP FETCH 1:* (RFC822), 10,000 x 4 KB", ">= 0.5x Dovecot"),
    ("imap-flags", "IMAP UID FETCH 1:* (FLAGS), 10,000", ">= 0.3x Dovecot"),
    ("imap-login", "IMAP connect + LOGIN + SELECT of 10,000", "<= Dovecot's time"),
    ("pop3-retr", "POP3 RETR of all 10,000", ">= 1.0x Dovecot"),
    ("idle-smtp", "memory per idle SMTP connection (PSS)", "<= 0.1x Postfix"),
    ("idle-imap", "memory per idle IMAP connection (PSS)", "<= 0.1x Dovecot"),
    ("failover", "failover latency: upstream 4xx -> visible in IMAP", "median <= 1 s"),
    ("recovery", "recovery: INBOX mail redelivered to the upstream", ">= 1.0x our relay"),
)


@attrs.define
class Row:
    """One benchmark's result: its samples, or the error that stopped it."""

    name: str
    figure: str
    unit: str = ""
    peer_label: str = ""
    bar: str = ""
    ours: list[float] = attrs.Factory(list)
    peer: list[float] = attrs.Factory(list)
    ratio: float | None = None
    passed: bool | None = None
    cpu_per_message: float | None = None
    error: str = ""
    measured: str = ""  # date of the run
    load: str = ""  # full | quick

    @classmethod
    def of(cls, benchmark: Benchmark, ours: Sequence[Sample], peer: Sequence[Sample], error: str, measured: str,
           load: str) -> "Row":
        row = cls(benchmark.name, benchmark.figure, benchmark.unit, benchmark.peer_label,
                  f"{benchmark.bar_text()} {benchmark.peer_label}", [s.value for s in ours], [s.value for s in peer],
                  error=error, measured=measured, load=load)
        if row.ours and row.peer and statistics.median(row.peer):
            row.ratio = statistics.median(row.ours) / statistics.median(row.peer)
            row.passed = benchmark.passes(row.ratio)
        spent = [s for s in ours if s.cpu_seconds is not None and s.messages]
        if spent:
            row.cpu_per_message = sum(s.cpu_seconds for s in spent) / sum(s.messages for s in spent)
        return row


def _spread(values: Sequence[float], label: str = "") -> str:
    if not values:
        return "-"
    prefix = f"{label} " if label else ""
    return f"{prefix}{_number(statistics.median(values))} ({_number(min(values))}–{_number(max(values))})"


def _number(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def markdown(rows: Sequence[Row], header: str, measured: str = "") -> str:
    """The table; a row measured in an earlier run than ``measured`` (kept by ``--only``) says when."""
    lines = [header, "",
             "| figure | ours: median (min–max) | peer: median (min–max) | ratio | bar | result | our CPU s/msg |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        figure = f"{row.figure} ({row.unit})" if row.unit else row.figure
        if row.error:
            result = f"error: {row.error}"
        elif row.passed is None:
            result = "pending" if not row.ours else "-"
        else:
            result = "pass" if row.passed else "FAIL"
        if row.load == "quick" and row.ours:
            result += " (quick load)"
        if row.ours and measured and row.measured and row.measured != measured:
            result += f" (run of {row.measured})"
        # Four digits: with three, a median ratio of 1.1993 read "1.2x" beside a bar of 1.2x that it misses.
        ratio = f"{row.ratio:.4g}x" if row.ratio is not None else "-"
        cpu = f"{row.cpu_per_message:.5f}" if row.cpu_per_message is not None else "-"
        lines.append(f"| {figure} | {_spread(row.ours)} | {_spread(row.peer, row.peer_label)} | {ratio} | "
                     f"{row.bar} | {result} | {cpu} |")
    return "\n".join(lines) + "\n"


def load_previous(path: Path) -> dict[str, Row]:
    """The rows of an earlier results file, by name ({} when there is none)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    rows = {}
    for item in data.get("rows", []):
        try:
            rows[item["name"]] = Row(**item)
        except TypeError:
            continue
    return rows


def table_rows(measured: dict[str, Row], previous: dict[str, Row]) -> list[Row]:
    """Issue 6's rows in order (measured now, else measured before, else pending), then any others."""
    rows = []
    for name, figure, bar in ISSUE_ROWS:
        rows.append(measured.get(name) or previous.get(name) or Row(name, figure, bar=bar))
    known = {name for name, _, _ in ISSUE_ROWS}
    rows.extend(row for name, row in {**previous, **measured}.items() if name not in known)
    return rows


def write(directory: Path, stem: str, rows: Sequence[Row], header: str, facts: dict, measured: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stem}.json").write_text(json.dumps({**facts, "rows": [attrs.asdict(r) for r in rows]},
                                                       indent=2) + "\n")
    path = directory / f"{stem}.md"
    path.write_text(markdown(rows, header, measured))
    return path
