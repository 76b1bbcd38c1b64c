"""``--profile``: sample our server with py-spy while it serves a benchmark round.

Samples are taken of the thread holding the GIL (``--gil``): one Python
process runs Python on one core at a time, so that is where its throughput
goes; time in system calls with the GIL released (fsync, socket I/O) is not in
them, and ``/proc`` CPU (utime + stime) in the table covers it.
``py-spy record --pid PID --format raw`` writes collapsed stacks (one line per
distinct stack with its sample count, the input of flamegraph tools);
:func:`summary` turns them into the top functions by own time and by
inclusive time, which is what the speed work needs to read.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def recording(pid: int, output: Path | None, rate: int = 200) -> Iterator[None]:
    """Record ``pid`` into ``output`` (collapsed stacks) for the duration of the block; no-op without output."""
    binary = py_spy() if output is not None else None
    if binary is None:
        if output is not None:
            print("bench: py-spy not found (pip install py-spy): not profiling", file=sys.stderr)
        yield
        return
    process = subprocess.Popen([binary, "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate),
                                "--nonblocking", "--threads", "--gil", "--subprocesses", "--output", str(output)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _thread(frame: str) -> str:
    # "thread (18415): PoolThread-continuity-io-6" -> "PoolThread-continuity-io"
    name = frame.partition("): ")[2] or frame
    return name.rstrip("0123456789").rstrip("-") or name


def _function(frame: str) -> str:
    # "send (continuity/smtp/client.py:300)" -> "send (smtp/client.py)"
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0]
    return f"{name} ({'/'.join(file.split('/')[-2:])})"


def summary(raw: Path, top: int = 20) -> str:
    """The hottest functions of a collapsed-stack file, per thread: own samples and inclusive samples."""
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    threads: collections.Counter[str] = collections.Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or ";" not in stack:
            continue
        samples = int(count)
        frames = stack.split(";")
        # With --subprocesses each stack starts with its process and its parents' ("process PID:cmd").
        processes = 0
        while len(frames) > 1 and frames[0].startswith("process "):
            frames.pop(0)
            processes += 1
        thread = _thread(frames.pop(0))
        if not frames:
            continue
        if processes > 1:
            thread = f"smtp worker {thread}"
        functions = [_function(frame) for frame in frames]
        threads[thread] += samples
        own[thread][functions[-1]] += samples
        for function in set(functions):
            inclusive[thread][function] += samples
    total = sum(threads.values())
    if not total:
        return "no samples\n"
    lines = [f"{total} samples (percent of all samples)", "", "by thread:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in threads.most_common()]
    for thread, _ in threads.most_common(3):
        lines += ["", f"{thread}, own time:"]
        lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own[thread].most_common(top)]
        lines += ["", f"{thread}, inclusive:"]
        lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive[thread].most_common(top)]
    return "\n".join(lines) + "\n"
