"""The benchmark bench: what one benchmark is, what one round yields, and the run's work directory.

A benchmark family is a module ``bench_*.py`` beside this one with a list
``BENCHMARKS`` of :class:`Benchmark` objects; the harness finds it by name.
A :class:`Benchmark` starts what it needs in :meth:`Benchmark.start` (peers
under ``lab.path(...)``, registered with ``lab.benchmark_cleanup`` so they are
stopped when the benchmark is done, even when a round fails, or with
``lab.cleanup`` when later benchmarks share them), then the harness calls
``ours`` and ``peer`` alternately, round after round, and each returns a
:class:`Sample`.
"""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs


@attrs.frozen
class Sample:
    """One side of one round: the figure, and what our server spent on it."""

    value: float
    messages: int = 0  # work units the CPU time is divided by
    cpu_seconds: float | None = None  # our server's CPU (None for a peer)
    note: str = ""


@attrs.frozen
class Load:
    """The size of a benchmark's work: full (the issue's load) or ``--quick``."""

    full: int
    quick: int

    def size(self, quick: bool) -> int:
        return self.quick if quick else self.full


#: Rounds of the SMTP throughput benchmarks without ``--rounds``: a round is 2-3 s, one differs from the next
#: by up to a fifth on either side, and the median of five moved the emergency ratio from 1.16x to 1.30x
#: between two runs of one build ten minutes apart (9 rounds: a pair of rounds adds ~6 s).
SHORT_ROUNDS = 9


class Benchmark(abc.ABC):
    """One row of the table. Subclasses set the class attributes and implement the three steps."""

    name = ""  # for --only
    figure = ""  # the row's label
    unit = ""  # of ours and peer
    higher_is_better = True
    bar = 1.0  # on ours / peer: >= bar when higher is better, else <= bar
    peer_label = "Postfix"
    rounds = 5  # without --rounds

    def start(self, lab: "Lab") -> None:
        """Start peers and our service (once for all rounds)."""

    @abc.abstractmethod
    def ours(self, lab: "Lab", round_number: int) -> Sample:
        """One round against our service."""

    @abc.abstractmethod
    def peer(self, lab: "Lab", round_number: int) -> Sample:
        """One round against the peer (Postfix or Dovecot)."""

    def stop(self, lab: "Lab") -> None:
        """Stop what ``start`` started that ``lab.cleanup`` does not."""

    def bar_text(self) -> str:
        return f"{'>=' if self.higher_is_better else '<='} {self.bar:g}x"

    def passes(self, ratio: float) -> bool:
        return ratio >= self.bar if self.higher_is_better else ratio <= self.bar


class Process(abc.ABC):
    """Something a benchmark starts and stops: ``with lab.cleanup.enter_context(thing.started())``.

    A subclass that runs one child process keeps it in ``process``; the default
    :meth:`stop` sends it SIGTERM and kills it if it has not ended in ``stop_timeout``.
    """

    process: subprocess.Popen | None = None
    stop_timeout = 30.0

    @abc.abstractmethod
    def start(self):
        """Start it; return self once it serves."""

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @contextlib.contextmanager
    def started(self) -> Iterator:
        self.start()
        try:
            yield self
        finally:
            self.stop()


class Lab:
    """The run's work directory, options and clean-up stack."""

    def __init__(self, workdir: Path | None, quick: bool, keep: bool = False, profile_dir: Path | None = None):
        self.quick = quick
        self.keep = keep or workdir is not None
        self.root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="continuity-bench-"))
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # Postfix, Dovecot and smtp-sink drop to their own users
        spread(self.root)
        self.profile_dir = profile_dir
        self.cleanup = contextlib.ExitStack()  # closed at the end of the run
        #: Closed when the current benchmark is done: its peers do not idle on during the next ones.
        self.benchmark_cleanup = contextlib.ExitStack()
        self._last_done: float | None = None

    def path(self, *parts: str) -> Path:
        """``root/PARTS...``, made (readable by the peers' users) with each new level :func:`spread`."""
        path = self.root
        for part in parts:
            path = path / part
            if not path.is_dir():
                path.mkdir()
                os.chmod(path, 0o755)
                spread(path)
        return path

    def profile_file(self, name: str) -> Path | None:
        """Where ``--profile`` puts the py-spy samples of round ``name`` (None when not profiling)."""
        return self.profile_dir / f"{name}.txt" if self.profile_dir is not None else None

    def benchmark_done(self) -> None:
        self.benchmark_cleanup.close()
        self.benchmark_cleanup = contextlib.ExitStack()
        self._last_done = time.monotonic()

    #: Seconds after which ext4 (without a journal) uses a freed inode again once its inode table block is
    #: written back (60 s after the removal; the block is written within ~35 s), with a margin.
    SETTLE = 75.0

    def settle(self) -> None:
        """Wait until the inodes the previous benchmarks freed no longer slow file creation (:func:`spread`).

        The relay benchmark frees a spool or queue file per message; right after
        it, the first emergency rounds ran at half the speed of the later ones.
        Not with ``--quick``.
        """
        if self.quick or self._last_done is None:
            return
        wait = self.SETTLE - (time.monotonic() - self._last_done)
        if wait > 0:
            self.say(f"waiting {wait:.0f} s for the inodes freed by the previous benchmarks to age")
            time.sleep(wait)

    def close(self) -> None:
        self.benchmark_cleanup.close()
        self.cleanup.close()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    _started = time.monotonic()

    @classmethod
    def say(cls, text: str) -> None:
        print(f"bench: [{time.monotonic() - cls._started:6.1f}s] {text}", file=sys.stderr, flush=True)


def spread(directory: Path) -> None:
    """Have ext4 place each directory made in ``directory`` apart from the others (``chattr +T``).

    ext4 puts a new directory in its parent's block group, so ours and a
    peer's trees would share one; and on an ext4 without a journal (this
    machine's root) every inode freed within the last minute or more is
    skipped, each with a look at its inode table block, by every file created
    in its group. Postfix frees a queue file per message, and in a shared group
    our next round paid for that scan (as Postfix paid for the harness's own
    removals). Marked "top of directory hierarchies", the directory's
    children are spread over the groups (Orlov), as on two machines. Nothing
    happens on a file system without the flag.
    """
    chattr = shutil.which("chattr")
    if chattr is not None:
        subprocess.run([chattr, "+T", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=False)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float, *, what: str, process: subprocess.Popen | None = None,
                  host: str = "127.0.0.1") -> None:
    """Wait until something accepts connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what}: nothing listening on {host}:{port} after {timeout}s")


def wait_until(predicate, timeout: float, what: str, poll: float = 0.01) -> float:
    """Poll ``predicate`` until true; return ``time.monotonic()`` then, or raise after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)
