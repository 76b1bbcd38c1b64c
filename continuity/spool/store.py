"""Spool files: each accepted message on disk with its envelope, durable before ``250``.

``spool/messages/<queue_id>`` holds one JSON line with the envelope (sender,
recipients, origin, time), then the message exactly as it will be delivered
(our ``Received:`` header first). The file is written in ``spool/tmp/``,
fsync'ed, linked into ``messages/`` and the directory fsync'ed
(:mod:`continuity.durable`): a name in ``messages/`` is always a whole
message on disk. Because the envelope travels with the body, the file alone
is enough to rebuild the queue index after a crash.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import weakref
from collections.abc import Iterable, Iterator

import attrs

from continuity import durable


def new_queue_id(now: float | None = None) -> str:
    """A sortable, unique queue id: microseconds since the epoch in hex, then randomness."""
    micros = int((time.time() if now is None else now) * 1_000_000)
    return f"{micros:014X}{random.getrandbits(24):06X}"  # unlikely to repeat, need not be secret


@attrs.frozen
class SpoolEnvelope:
    """What the spool file records besides the message itself."""

    queue_id: str
    sender: str  # "" for the null sender
    recipients: tuple[str, ...]
    received: float
    direction: str  # inbound | outbound
    origin: str  # smtp | submission | dsn | recovery
    client: str | None = None
    auth_user: str | None = None
    message_id: str | None = None
    # Extra routing facts (e.g. the user a CS-SENT copy belongs to).
    extra: dict = attrs.field(factory=dict)

    def to_line(self) -> bytes:
        data = attrs.asdict(self, recurse=False)  # json writes the tuple and the dict as they are
        data["v"] = 1
        return json.dumps(data, separators=(",", ":"), sort_keys=True).encode("utf-8") + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> "SpoolEnvelope":
        data = json.loads(line)
        data.pop("v", None)
        data["recipients"] = tuple(data["recipients"])
        return cls(**data)


class MessageSpool:
    """The directory of spool files (synchronous; the service calls it on a thread pool)."""

    def __init__(self, root: str):
        self.root = root
        self.messages_dir = os.path.join(root, "messages")
        self.tmp_dir = os.path.join(root, "tmp")
        self._messages_fd: int | None = None  # messages/, opened at the first write and kept for its fsyncs
        self._opening = threading.Lock()

    def prepare(self) -> None:
        """Create the directories and remove the half-written files of a crash (never acknowledged).

        Only while nothing writes here: before the service's listeners and SMTP workers start.
        """
        durable.make_dirs(self.messages_dir)
        durable.make_dirs(self.tmp_dir)
        for name in os.listdir(self.tmp_dir):
            os.unlink(os.path.join(self.tmp_dir, name))

    def path(self, queue_id: str) -> str:
        if not queue_id.isalnum():
            raise ValueError(f"bad queue id {queue_id!r}")
        return os.path.join(self.messages_dir, queue_id)

    def write(self, envelope: SpoolEnvelope, chunks: Iterable[bytes]) -> int:
        """Write the spool file durably; return the message size (without the envelope line)."""
        line = envelope.to_line()
        size = durable.write_file(self.path(envelope.queue_id), [line, *chunks],
                                  tmp_path=os.path.join(self.tmp_dir, envelope.queue_id), overwrite=False,
                                  directory_fd=self._directory_fd())
        return size - len(line)

    def _directory_fd(self) -> int:
        if self._messages_fd is None:
            with self._opening:
                if self._messages_fd is None:
                    fd = durable.open_directory(self.messages_dir)
                    weakref.finalize(self, os.close, fd)
                    self._messages_fd = fd
        return self._messages_fd

    def read_envelope(self, queue_id: str) -> SpoolEnvelope:
        with open(self.path(queue_id), "rb") as handle:
            return SpoolEnvelope.from_line(handle.readline())

    def read(self, queue_id: str) -> tuple[SpoolEnvelope, bytes]:
        """The envelope and the whole message."""
        envelope, message, _ = self.read_if_small(queue_id, None)
        return envelope, message

    def read_if_small(self, queue_id: str, limit: int | None) -> tuple[SpoolEnvelope, bytes | None, int]:
        """The envelope, the message when it is at most ``limit`` octets (None: any size; else None), and
        its size."""
        with open(self.path(queue_id), "rb") as handle:
            line = handle.readline()
            envelope = SpoolEnvelope.from_line(line)
            size = os.fstat(handle.fileno()).st_size - len(line)
            return envelope, (handle.read() if limit is None or size <= limit else None), size

    def exists(self, queue_id: str) -> bool:
        return os.path.exists(self.path(queue_id))

    def remove(self, queue_id: str) -> bool:
        """Remove a finished message's file.

        The directory is not fsync'ed: the index already says the message is
        done, so a file that a crash brings back is removed again at start-up
        (:meth:`~continuity.spool.intake.MessageIntake.recover_spool`).
        """
        return durable.remove_file(self.path(queue_id), sync_dir=False)

    def queue_ids(self) -> Iterator[str]:
        with os.scandir(self.messages_dir) as entries:
            for entry in entries:
                if entry.name.isalnum():
                    yield entry.name
