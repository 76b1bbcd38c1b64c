"""FETCH (RFC 3501 6.4.5, 7.4.2; RFC 7162 3.1.4 MODSEQ and CHANGEDSINCE): what was asked, its rendering and its streaming.

:func:`parse_fetch` turns the attribute list into a :class:`FetchPlan`;
:func:`render_batch` renders many messages into one buffer, reading their
files, and runs on the worker pool: a FETCH of 10,000 messages is a few dozen
thread hops and writes, not a Deferred per message. :func:`stream_fetch`
writes the batches as the client takes them; :class:`Prefetch` keeps the
worker calls running back to back a few batches ahead of the writes, so the
reactor finds the next batch rendered when the client has taken the last one.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Sequence
from itertools import repeat
from typing import Any

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure

from continuity.imap.mime import Part, SectionNotFound
from continuity.imap.parser import Atom, ParseError, format_date_time, number
from continuity.mailstore import MessageRef
from continuity.transport import WriteGate

_SECTION = re.compile(r"\A(BODY|BODY\.PEEK|BINARY|BINARY\.PEEK)\[([^\]]*)\](?:<(\d{1,10})\.(\d{1,10})>)?\Z", re.I)
_SECTION_TEXT = re.compile(r"\A((?:[1-9]\d{0,4}\.)*[1-9]\d{0,4})?\.?(HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME)?\Z")
_MACROS = {
    "ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
    "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
    "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"],
}
_SIMPLE = {"FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE", "BODY", "RFC822",
           "RFC822.HEADER", "RFC822.TEXT", "MODSEQ"}
_NEEDS_FILE = {"ENVELOPE", "BODYSTRUCTURE", "BODY", "RFC822", "RFC822.HEADER", "RFC822.TEXT", "SECTION"}
BATCH_BYTES = 1 << 20  # a rendered batch is about this big (one worker call, one write)
FIRST_BATCH_BYTES = 1 << 16  # the first batches are smaller, so the first response leaves sooner
BATCH_MESSAGES = 2000
FLAG_BATCH_MESSAGES = 2000  # a batch without files (FLAGS, UID...) is rendered on the reactor: about 80 KB
PREFETCH_BATCHES = 2  # rendered (or being rendered) batches a FETCH keeps ahead of the one being written


@attrs.frozen
class FetchItem:
    """One attribute: ``kind`` is a simple name or ``SECTION``."""

    kind: str
    label: bytes = b""  # SECTION: the response name, e.g. b"BODY[HEADER.FIELDS (FROM)]"
    numbers: tuple[int, ...] = ()
    text: str = ""
    fields: frozenset[bytes] = frozenset()
    partial: tuple[int, int] | None = None
    peek: bool = True


@attrs.frozen
class FetchPlan:
    items: tuple[FetchItem, ...]
    changed_since: int | None = None

    @property
    def needs_file(self) -> bool:
        return any(item.kind in _NEEDS_FILE for item in self.items)

    @property
    def sets_seen(self) -> bool:
        """Fetching a body without PEEK sets ``\\Seen`` (RFC 3501 6.4.5)."""
        return any(not item.peek for item in self.items)

    @property
    def wants_flags(self) -> bool:
        return any(item.kind == "FLAGS" for item in self.items)

    @property
    def wants_modseq(self) -> bool:
        return any(item.kind == "MODSEQ" for item in self.items)


def _item(token: object) -> list[FetchItem]:
    if not isinstance(token, Atom):
        raise ParseError("bad FETCH attribute")
    name = token.upper()
    if name in _MACROS:
        return [FetchItem(kind) for kind in _MACROS[name]]
    if name in _SIMPLE:
        return [FetchItem(name, peek=name not in ("RFC822", "RFC822.TEXT"))]
    match = _SECTION.match(str(token))
    if match is None:
        raise ParseError(f"unknown FETCH attribute {token[:40]}")
    verb, section = match.group(1).upper(), match.group(2)
    if verb.startswith("BINARY"):
        raise ParseError("BINARY is not supported")
    spec, _, field_list = section.partition(" ")
    spec = spec.upper()
    parsed = _SECTION_TEXT.match(spec)
    if parsed is None:
        raise ParseError(f"bad section {section[:40]}")
    numbers = tuple(int(n) for n in parsed.group(1).split(".")) if parsed.group(1) else ()
    text = parsed.group(2) or ""
    fields: frozenset[bytes] = frozenset()
    if text.startswith("HEADER.FIELDS"):
        names = field_list.strip()
        if not (names.startswith("(") and names.endswith(")")) or not names[1:-1].strip():
            raise ParseError("HEADER.FIELDS needs a list of field names")
        fields = frozenset(n.strip('"').lower().encode("latin-1") for n in names[1:-1].split())
        section = f"{spec} ({' '.join(names[1:-1].split()).upper()})"
    elif field_list:
        raise ParseError(f"bad section {section[:40]}")
    else:
        section = spec
    if text == "MIME" and not numbers:
        raise ParseError("MIME needs a part number")
    partial = None
    if match.group(3) is not None:
        partial = (int(match.group(3)), int(match.group(4)))
        if partial[1] == 0:
            raise ParseError("partial length must be positive")
    label = b"BODY[" + section.encode("latin-1") + b"]"
    return [FetchItem("SECTION", label, numbers, text, fields, partial, peek=verb == "BODY.PEEK")]


def parse_fetch(tokens: Sequence[object], by_uid: bool, condstore: bool) -> FetchPlan:
    """The attributes (one or a list) and the optional ``(CHANGEDSINCE n)`` modifier."""
    if not tokens or len(tokens) > 2:
        raise ParseError("FETCH needs attributes")
    wanted = tokens[0] if isinstance(tokens[0], list) else [tokens[0]]
    items: list[FetchItem] = []
    for token in wanted:
        items.extend(_item(token))
    changed_since = None
    if len(tokens) == 2:
        modifiers = tokens[1]
        if not isinstance(modifiers, list) or len(modifiers) != 2 or str(modifiers[0]).upper() != "CHANGEDSINCE":
            raise ParseError("unknown FETCH modifier")
        changed_since = number(modifiers[1], bits=63)
    if changed_since is not None or condstore and any(item.kind == "FLAGS" for item in items):
        items.append(FetchItem("MODSEQ"))
    if by_uid:
        items.insert(0, FetchItem("UID"))
    seen: set[FetchItem] = set()
    unique = [item for item in items if not (item in seen or seen.add(item))]
    if not unique:
        raise ParseError("FETCH needs attributes")
    return FetchPlan(tuple(unique), changed_since)


@attrs.frozen
class Rows:
    """Messages to render, as columns: sequence numbers, the listed files, and the flags as
    the session shows them (None when the FETCH shows no FLAGS); the UID and modseq are the ref's.

    Columns rather than an object per message: a FETCH of 10,000 messages then leaves
    nothing per message for the cyclic garbage collector, whose full passes over a
    process holding a folder's listings took a quarter of such a FETCH.
    """

    seqs: Sequence[int]
    refs: Sequence[MessageRef]
    flags: Sequence[bytes] | None = None

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, window: slice) -> Rows:
        return Rows(self.seqs[window], self.refs[window], None if self.flags is None else self.flags[window])


#: Reads a batch of messages: their bytes in order, None for one expunged meanwhile
#: (:meth:`continuity.mailstore.MaildirStore.read_messages`).
Reader = Callable[[Sequence[MessageRef]], "list[bytes | None]"]


def _render_into(out: list[bytes], seq: int, ref: MessageRef, flags: bytes, items: tuple[FetchItem, ...],
                 raw: bytes | None) -> None:
    """Append ``* seq FETCH (...)`` for one message to ``out``.

    A literal's octets go into ``out`` as they are (the batch's one join copies
    them once); the text between literals is gathered in ``text``.
    """
    text = b"* %d FETCH (" % seq
    part: Part | None = None
    sep = b""
    for item in items:
        kind = item.kind
        if kind == "RFC822":
            assert raw is not None
            out.append(text + sep + b"RFC822 {%d}\r\n" % len(raw))
            out.append(raw)
            text = b""
        elif kind == "UID":
            text += sep + b"UID %d" % ref.uid
        elif kind == "FLAGS":
            text += sep + b"FLAGS " + flags
        elif kind == "MODSEQ":
            text += sep + b"MODSEQ (%d)" % (ref.modseq or 0)
        elif kind == "INTERNALDATE":
            text += sep + b"INTERNALDATE " + format_date_time(ref.internal_date)
        elif kind == "RFC822.SIZE":
            text += sep + b"RFC822.SIZE %d" % ref.size
        else:
            assert raw is not None
            if part is None:
                part = Part.from_bytes(raw)
            if kind == "ENVELOPE":
                text += sep + b"ENVELOPE " + part.envelope()
            elif kind == "BODYSTRUCTURE":
                text += sep + b"BODYSTRUCTURE " + part.body_structure(True)
            elif kind == "BODY":
                text += sep + b"BODY " + part.body_structure(False)
            else:
                if kind == "RFC822.HEADER":
                    label, data = b"RFC822.HEADER", part.header
                elif kind == "RFC822.TEXT":
                    label, data = b"RFC822.TEXT", part.body
                else:
                    label = item.label
                    try:
                        data = raw if not item.numbers and not item.text else part.section(
                            list(item.numbers), item.text, set(item.fields))
                    except SectionNotFound:
                        data = b""
                    if item.partial is not None:
                        start, length = item.partial
                        data = data[start: start + length]
                        label += b"<%d>" % start
                out.append(text + sep + label + b" {%d}\r\n" % len(data))
                out.append(data)
                text = b""
        sep = b" "
    out.append(text + b")\r\n")


def batches(rows: Rows, needs_file: bool) -> list[Rows]:
    """Rows cut into batches of about :data:`BATCH_BYTES` of output.

    With files to read, the first batch is :data:`FIRST_BATCH_BYTES` and each
    next one four times bigger up to :data:`BATCH_BYTES`: the client gets its
    first responses after a short read, and the rest in few big writes.
    """
    if not needs_file:
        return [rows[i: i + FLAG_BATCH_MESSAGES] for i in range(0, len(rows), FLAG_BATCH_MESSAGES)]
    out = []
    start, size, limit = 0, 0, FIRST_BATCH_BYTES
    for index, ref in enumerate(rows.refs):
        size += ref.size + 100
        if size >= limit or index - start + 1 >= BATCH_MESSAGES:
            out.append(rows[start: index + 1])
            start, size, limit = index + 1, 0, min(limit * 4, BATCH_BYTES)
    if start < len(rows):
        out.append(rows[start:])
    return out


def render_batch(rows: Rows, plan: FetchPlan, read: Reader | None) -> tuple[bytes, int]:
    """One buffer of FETCH responses, and how many messages were found expunged meanwhile.

    When the plan needs the files, ``read`` reads the whole batch first: this
    runs on the worker pool.
    """
    out: list[bytes] = []
    items = plan.items
    flags = rows.flags if rows.flags is not None else repeat(b"")
    if not plan.needs_file:
        for seq, ref, shown in zip(rows.seqs, rows.refs, flags):
            _render_into(out, seq, ref, shown, items, None)
        return b"".join(out), 0
    assert read is not None
    missing = 0
    for seq, ref, shown, raw in zip(rows.seqs, rows.refs, flags, read(rows.refs)):
        if raw is None:
            missing += 1
        else:
            _render_into(out, seq, ref, shown, items, raw)
    return b"".join(out), missing


class Prefetch:
    """The rendered batches of a FETCH, read in order on the worker pool ahead of the writes.

    One worker call at a time renders the next batch (:func:`render_batch`);
    as soon as it is done the next one starts, until ``depth`` batches are
    rendered or being rendered and not yet taken by :meth:`next`. The reads
    then wait for the writer, which waits for the client: a slow client holds
    at most ``depth`` batches in memory and no worker thread.

    :param run: runs a blocking call on the worker pool, returning a Deferred.
    """

    def __init__(self, run: Callable[..., defer.Deferred], chunks: Sequence[Rows], plan: FetchPlan,
                 read: Reader, depth: int = PREFETCH_BATCHES):
        self._run = run
        self._chunks = chunks
        self._plan = plan
        self._read = read
        self._depth = depth
        self._next = 0  # the chunk the next worker call renders
        self._ready: deque[Any] = deque()  # (data, missing) or a Failure, in chunk order
        self._reading = False
        self._stopped = False  # no more reads: a read failed, or the writer is gone
        self._closed = False
        self._waiting: defer.Deferred | None = None
        self._fill()

    def _fill(self) -> None:
        if (self._reading or self._stopped or self._next >= len(self._chunks)
                or len(self._ready) + 1 > self._depth):
            return
        chunk = self._chunks[self._next]
        self._next += 1
        self._reading = True
        self._run(render_batch, chunk, self._plan, self._read).addBoth(self._rendered)

    def _rendered(self, result: Any) -> None:
        self._reading = False
        if self._closed:
            return  # nobody will take it (an error is dropped too: the connection is gone)
        self._ready.append(result)
        if isinstance(result, Failure):
            self._stopped = True  # the error ends the FETCH; nothing after it is read
        else:
            self._fill()
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    async def next(self) -> tuple[bytes, int]:
        """The next batch's responses and how many of its messages were gone; raises what its read raised."""
        while not self._ready:
            self._waiting = defer.Deferred()
            await self._waiting
        result = self._ready.popleft()
        if isinstance(result, Failure):
            result.raiseException()
        self._fill()
        return result

    def stop(self) -> None:
        """Start no more reads (the connection is gone); a read under way finishes and is dropped."""
        self._stopped = self._closed = True
        self._ready.clear()


async def stream_fetch(transport: Any, rows: Rows, plan: FetchPlan, run: Callable[..., defer.Deferred],
                       read: Reader, lost: Callable[[], bool]) -> int:
    """Write the FETCH responses of ``rows`` in batches as the client takes them; return how many
    messages were gone.

    Batches that need the files are read on the worker pool (``run``) a few
    ahead (:class:`Prefetch`); the others are rendered here, each when the one
    before has gone to the kernel, so the client reads the first while the
    next is rendered. ``lost`` tells that the connection is gone.
    """
    if not rows:
        return 0
    chunks = batches(rows, plan.needs_file)
    if len(chunks) == 1 and not plan.needs_file:
        if not lost():
            transport.write(render_batch(chunks[0], plan, None)[0])
        return 0
    prefetch = Prefetch(run, chunks, plan, read) if plan.needs_file else None
    flow = WriteGate()
    transport.registerProducer(flow, True)
    missing = 0
    try:
        for chunk in chunks:
            if prefetch is None:
                data, gone = render_batch(chunk, plan, None)
            else:
                data, gone = await prefetch.next()
            missing += gone
            if not lost() and data:
                transport.write(data)
            await flow.drained()
            if lost() or flow.stopped:
                break
    finally:
        if prefetch is not None:
            prefetch.stop()
        if not lost():
            transport.unregisterProducer()
    return missing
