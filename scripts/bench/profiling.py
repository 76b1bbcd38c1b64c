"""``--profile``: sample our server with py-spy while it serves a benchmark round.

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
                                "--nonblocking", "--threads", "--output", str(output)],
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


def _frames(stack: str) -> list[str]:
    # "thread (0x..);func (file.py:12);func2 (file.py:40)" -> function names with their file
    frames = []
    for frame in stack.split(";"):
        name, _, where = frame.partition(" (")
        file = where.rsplit(":", 1)[0]
        frames.append(f"{name} ({'/'.join(file.split('/')[-2:])})")
    return frames


def summary(raw: Path, top: int = 25) -> str:
    """The hottest functions of a collapsed-stack file: own samples and inclusive samples."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = _frames(stack)
        threads[frames[0].split(" (")[0]] += samples
        own[frames[-1]] += samples
        for frame in set(frames[1:]):
            inclusive[frame] += samples
    if not total:
        return "no samples\n"
    lines = [f"{total} samples", "", "by thread:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in threads.most_common(8)]
    lines += ["", "own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"
