"""The MIME structure of a stored message, as IMAP FETCH and SEARCH see it (RFC 3501 6.4.5, 7.4.2).

Works on the raw octets, so every ``BODY[section]`` is the exact bytes of the
file: header and body split at the first empty line, multipart bodies at their
boundaries (RFC 2046 5.1.1), ``message/rfc822`` parts opened as messages.
ENVELOPE and BODYSTRUCTURE are built here too (Twisted's versions break on
8-bit headers and parameters without ``=``).
"""

from __future__ import annotations

import email.utils
import re
from email.header import decode_header
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from continuity.imap.parser import nstring

MAX_PARTS_DEPTH = 20  # nested multiparts opened before the rest is treated as opaque
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FIELD_START = re.compile(rb"^([^\s:]+)[ \t]*:", re.MULTILINE)
_HEADER_PARSER = BytesHeaderParser(policy=compat32)


class SectionNotFound(LookupError):
    """A part number beyond the message's structure: FETCH returns an empty string (as Dovecot does)."""


def split_header(raw: bytes) -> tuple[bytes, bytes]:
    """(header including its terminating empty line, body)."""
    match = _HEADER_END.search(raw)
    if match is None:
        return raw, b""
    return raw[: match.end()], raw[match.end():]


def header_fields(header: bytes) -> list[tuple[bytes, bytes]]:
    """(name, the field's raw lines with its folded continuations) in order."""
    fields: list[tuple[bytes, bytes]] = []
    starts = [m for m in _FIELD_START.finditer(header)]
    for index, match in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(header)
        chunk = header[match.start(): end]
        if index + 1 == len(starts):
            chunk = chunk.rstrip(b"\r\n") + (b"\r\n" if b"\r\n" in chunk else b"\n")
        fields.append((match.group(1).lower(), chunk))
    return fields


def select_fields(header: bytes, names: set[bytes], negate: bool) -> bytes:
    """HEADER.FIELDS / HEADER.FIELDS.NOT: the matching fields and an empty line."""
    kept = [chunk for name, chunk in header_fields(header) if (name in names) != negate]
    return b"".join(kept) + b"\r\n"


class Part:
    """One body part: its header (None for the top message's body as part 1 of a
    non-multipart message), its body octets, and the parts below it."""

    def __init__(self, header: bytes, body: bytes, depth: int = 0, default_type: str = "text/plain"):
        self.header = header
        self.body = body
        self._depth = depth
        self._default_type = default_type
        self._message: Message | None = None
        self._children: list[Part] | None = None
        self._embedded: Part | None = None

    @classmethod
    def from_bytes(cls, raw: bytes, depth: int = 0, default_type: str = "text/plain") -> Part:
        header, body = split_header(raw)
        return cls(header, body, depth, default_type)

    @property
    def raw(self) -> bytes:
        return self.header + self.body

    @property
    def headers(self) -> Message:
        if self._message is None:
            self._message = _HEADER_PARSER.parsebytes(self.header.decode("latin-1").encode("latin-1"))
            if self._default_type != "text/plain":
                self._message.set_default_type(self._default_type)
        return self._message

    def get(self, name: str) -> bytes | None:
        """The unfolded raw value of the first field ``name``, or None."""
        lowered = name.lower().encode()
        for field, chunk in header_fields(self.header):
            if field == lowered:
                value = chunk.split(b":", 1)[1]
                return re.sub(rb"\r?\n[ \t]", b" ", value).strip()
        return None

    @property
    def content_type(self) -> tuple[str, str]:
        main, _, sub = self.headers.get_content_type().partition("/")
        return main, sub

    @property
    def children(self) -> list[Part]:
        """The parts of a multipart body (RFC 2046 5.1.1), else []."""
        if self._children is None:
            self._children = []
            main, sub = self.content_type
            boundary = self.headers.get_param("boundary") if main == "multipart" else None
            if isinstance(boundary, tuple):
                boundary = email.utils.collapse_rfc2231_value(boundary)
            if boundary and self._depth < MAX_PARTS_DEPTH:
                child_type = "message/rfc822" if sub == "digest" else "text/plain"
                for chunk in _split_multipart(self.body, boundary.encode("latin-1", "replace")):
                    self._children.append(Part.from_bytes(chunk, self._depth + 1, child_type))
        return self._children

    @property
    def embedded(self) -> Part | None:
        """The message inside a ``message/rfc822`` part (RFC 3501 6.4.5), or None."""
        if self._embedded is None and self.content_type == ("message", "rfc822") and self._depth < MAX_PARTS_DEPTH:
            self._embedded = Part.from_bytes(self.body, self._depth + 1)
        return self._embedded

    def navigate(self, numbers: list[int]) -> Part:
        """The part a section's numbers name (RFC 3501 6.4.5): a non-multipart
        message's part 1 is its own body; a ``message/rfc822`` part is entered."""
        node = self
        for index, number in enumerate(numbers):
            container = node if index == 0 else (node.embedded or node)
            children = container.children
            if children:
                if not 0 < number <= len(children):
                    raise SectionNotFound(number)
                node = children[number - 1]
            elif number == 1:
                node = container
            else:
                raise SectionNotFound(number)
        return node

    # -- FETCH BODY[section] -------------------------------------------------

    def section(self, numbers: list[int], text: str, fields: set[bytes] | None = None) -> bytes:
        """The octets of ``BODY[numbers.text]``; ``text`` is "", HEADER, TEXT, MIME,
        HEADER.FIELDS or HEADER.FIELDS.NOT."""
        if not numbers and text == "":
            return self.raw
        node = self.navigate(numbers)
        if text == "":
            return node.body
        if text == "MIME":
            return node.header
        message = self if not numbers else node.embedded
        if message is None:
            raise SectionNotFound(text)
        if text == "HEADER":
            return message.header
        if text == "TEXT":
            return message.body
        return select_fields(message.header, fields or set(), text.endswith(".NOT"))

    # -- ENVELOPE and BODYSTRUCTURE (RFC 3501 7.4.2) ----------------------------

    def envelope(self) -> bytes:
        date, subject = self.get("date"), self.get("subject")
        from_ = self.get("from")
        sender = self.get("sender") or from_
        reply_to = self.get("reply-to") or from_
        fields = [
            nstring(date),
            nstring(subject),
            _addresses(from_),
            _addresses(sender),
            _addresses(reply_to),
            _addresses(self.get("to")),
            _addresses(self.get("cc")),
            _addresses(self.get("bcc")),
            nstring(self.get("in-reply-to")),
            nstring(self.get("message-id")),
        ]
        return b"(" + b" ".join(fields) + b")"

    def body_structure(self, extended: bool) -> bytes:
        return self._structure(extended, self)

    def _structure(self, extended: bool, part: Part) -> bytes:
        headers = part.headers
        main, sub = part.content_type
        if part.children:
            out = b"".join(child._structure(extended, child) for child in part.children)
            out += b" " + nstring(sub.upper().encode())
            if extended:
                out += b" " + _params(headers, skip=()) + b" " + _disposition(headers)
                out += b" " + nstring(part.get("content-language")) + b" " + nstring(part.get("content-location"))
            return b"(" + out + b")"
        if main == "multipart":  # no boundary or parts: describe it as an empty text part
            main, sub = "text", "plain"
        encoding = (part.get("content-transfer-encoding") or b"7BIT").upper()
        fields = [
            nstring(main.upper().encode()),
            nstring(sub.upper().encode()),
            _params(headers, skip=("boundary",), default_charset=main == "text"),
            nstring(part.get("content-id")),
            nstring(part.get("content-description")),
            nstring(encoding),
            str(len(part.body)).encode(),
        ]
        if (main, sub) == ("message", "rfc822") and part.embedded is not None:
            inner = part.embedded
            fields += [inner.envelope(), inner._structure(extended, inner), str(_lines(part.body)).encode()]
        elif main == "text":
            fields.append(str(_lines(part.body)).encode())
        if extended:
            fields += [
                nstring(part.get("content-md5")),
                _disposition(headers),
                nstring(part.get("content-language")),
                nstring(part.get("content-location")),
            ]
        return b"(" + b" ".join(fields) + b")"

    # -- SEARCH ------------------------------------------------------------------------

    def decoded_header(self, name: str) -> str:
        """All ``name`` fields, RFC 2047 decoded, for case-insensitive SEARCH matching."""
        values = [value for key, value in _all_fields(self.header) if key == name.lower().encode()]
        return " ".join(_decode_words(value) for value in values)

    def text(self) -> str:
        """The header and body as text for SEARCH TEXT/BODY (8-bit kept as Latin-1/UTF-8)."""
        return _as_text(self.body)


def _all_fields(header: bytes) -> list[tuple[bytes, bytes]]:
    return [(name, re.sub(rb"\r?\n[ \t]", b" ", chunk.split(b":", 1)[1]).strip()) for name, chunk in
            header_fields(header)]


def _as_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _decode_words(value: bytes) -> str:
    text = _as_text(value)
    try:
        parts = decode_header(text)
    except Exception:  # noqa: BLE001 - malformed encoded words: match the raw text
        return text
    out = []
    for chunk, charset in parts:
        if isinstance(chunk, str):
            out.append(chunk)
        else:
            try:
                out.append(chunk.decode(charset or "utf-8", "replace"))
            except LookupError:
                out.append(chunk.decode("latin-1"))
    return "".join(out)


def _split_multipart(body: bytes, boundary: bytes) -> list[bytes]:
    """The parts between ``--boundary`` lines, without the CRLF before each delimiter."""
    delimiter = re.compile(rb"(?:\A|\r?\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r?\n|\Z)")
    parts: list[bytes] = []
    start = None
    for match in delimiter.finditer(body):
        if start is not None:
            parts.append(body[start: match.start()])
        if match.group(1):
            return parts
        start = match.end()
    if start is not None:
        parts.append(body[start:])
    return parts


def _lines(body: bytes) -> int:
    return body.count(b"\n") + (1 if body and not body.endswith(b"\n") else 0)


def _params(headers: Message, skip: tuple[str, ...], default_charset: bool = False) -> bytes:
    params = headers.get_params(header="content-type") or []
    out = []
    for index, (key, value) in enumerate(params):
        if index == 0 or not key or key.lower() in skip:
            continue  # the first is the type itself
        if isinstance(value, tuple):
            value = email.utils.collapse_rfc2231_value(value)
        out += [nstring(key.upper().encode("latin-1", "replace")),
                nstring(email.utils.unquote(value).encode("utf-8", "replace"))]
    if not out and default_charset:
        out = [b'"CHARSET"', b'"US-ASCII"']
    return b"(" + b" ".join(out) + b")" if out else b"NIL"


def _disposition(headers: Message) -> bytes:
    value = headers.get("content-disposition")
    if not value:
        return b"NIL"
    params = headers.get_params(header="content-disposition") or []
    if not params:
        return b"NIL"
    kind = params[0][0].upper().encode("latin-1", "replace")
    out = []
    for key, item in params[1:]:
        if isinstance(item, tuple):
            item = email.utils.collapse_rfc2231_value(item)
        out += [nstring(key.upper().encode("latin-1", "replace")),
                nstring(email.utils.unquote(item).encode("utf-8", "replace"))]
    return b"(" + nstring(kind) + b" " + (b"(" + b" ".join(out) + b")" if out else b"NIL") + b")"


def _addresses(value: bytes | None) -> bytes:
    """An address list of ENVELOPE: ``((name adl mailbox host) ...)`` with RFC 5322 groups."""
    if value is None:
        return b"NIL"
    text = value.decode("latin-1")
    items = []
    for name, address in email.utils.getaddresses([text]):
        if not address and not name:
            continue
        mailbox, _, host = address.rpartition("@") if "@" in address else (address, "", "")
        items.append(b"(" + b" ".join([
            nstring(name.encode("latin-1") if name else None),
            b"NIL",
            nstring(mailbox.encode("latin-1") if mailbox else None),
            nstring(host.encode("latin-1") if host else None),
        ]) + b")")
    return b"(" + b"".join(items) + b")" if items else b"NIL"
