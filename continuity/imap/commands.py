"""IMAP commands on mailboxes (RFC 3501 6.3, 6.4) with UIDPLUS (RFC 4315), MOVE (RFC 6851),
UNSELECT (RFC 3691), IDLE (RFC 2177), ENABLE (RFC 5161), NAMESPACE (RFC 2342),
CONDSTORE (RFC 7162), SPECIAL-USE (RFC 6154) and CHILDREN (RFC 3348).

A mixin of :class:`continuity.imap.server.IMAPServer`: every mail store call
runs on the worker pool (``self.run``); the selected folder's session state is
a :class:`~continuity.imap.mailbox.FolderView`, brought up to date after each
command (EXPUNGE responses only where RFC 3501 7.4.1 allows them).
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from continuity.imap.fetch import FetchItem, FetchPlan, Rows, parse_fetch, stream_fetch
from continuity.imap.mailbox import FolderView, parse_flags
from continuity.imap.parser import (
    Atom,
    ParseError,
    SequenceSet,
    astring,
    atom,
    compress,
    number,
    parse_date_time,
    quote,
)
from continuity.imap.search import BadCharset, Candidate, compile_search, run_search
from continuity.mailstore import INBOX_NAME, FolderName, InvalidMailboxName, MailboxNotFound

AUTH = ("auth", "select")
SELECTED = ("select",)
_STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ", "SIZE")


class Refusal(Exception):
    """A ``NO`` answer; ``text`` starts with its response code."""

    def __init__(self, text: bytes, allow_expunge: bool = True):
        super().__init__(text)
        self.text = text
        self.allow_expunge = allow_expunge


def load_folder(store: Any, address: Any, name: FolderName, claim: bool) -> tuple:
    """The folder's snapshot; with ``claim``, its ``new/`` messages become this session's \\Recent."""
    snapshot = store.snapshot(address, name)
    claimed: tuple[int, ...] = ()
    if claim and snapshot.has_recent:
        claimed = store.claim_recent(address, name)
        snapshot = store.snapshot(address, name)
    return snapshot, claimed


def expunge_deleted(store: Any, address: Any, name: FolderName, only: set[int] | None) -> tuple[int, ...]:
    """Expunge the messages flagged ``\\Deleted`` (of ``only``, for UID EXPUNGE)."""
    snapshot = store.snapshot(address, name)
    doomed = [m.uid for m in snapshot.messages if "T" in m.flags and (only is None or m.uid in only)]
    return store.expunge(address, name, doomed) if doomed else ()


def store_flags(store: Any, address: Any, name: FolderName, uids: list[int], mode: str, letters: str,
                keywords: tuple[str, ...], unchanged_since: int | None) -> tuple:
    """STORE: change flags and keywords, skipping messages modified since ``unchanged_since`` (RFC 7162 3.1.3)."""
    modified: list[int] = []
    if unchanged_since is not None:
        snapshot = store.snapshot(address, name)
        keep = []
        for uid in uids:
            ref = snapshot.get(uid)
            (modified if ref is not None and (ref.modseq or 0) > unchanged_since else keep).append(uid)
        uids = keep
    change = {"": store.set_flags, "+": store.add_flags, "-": store.remove_flags}[mode]
    return (change(address, name, uids, letters, keywords) if uids else ()), modified


def append_message(store: Any, address: Any, name: FolderName, message: bytes, letters: str,
                   keywords: tuple[str, ...], date: int | None) -> tuple[int, int]:
    """APPEND: deliver with a UID now; (UIDVALIDITY, UID) for APPENDUID."""
    ref = store.deliver(address, message, name, letters, internal_date=date, assign_uid=True, keywords=keywords)
    return store.uidvalidity(address, name), ref.uid


def _pattern(reference: str, pattern: str) -> re.Pattern[str]:
    """LIST wildcards (RFC 3501 6.3.8): ``*`` matches anything, ``%`` no hierarchy separator."""
    out = []
    for char in reference + pattern:
        out.append(".*" if char == "*" else "[^/]*" if char == "%" else re.escape(char))
    return re.compile("".join(out) + r"\Z")


def _matches(patterns: list[re.Pattern[str]], wire: str) -> bool:
    for pattern in patterns:
        if pattern.match(wire):
            return True
        if wire == "INBOX" and re.compile(pattern.pattern, re.IGNORECASE).match(wire):
            return True
    return False


class MailboxCommands:
    """The authenticated and selected states' commands; mixed into the server."""

    log: Logger
    store: Any
    run: Any
    factory: Any
    account: Any
    state: str
    session_id: str

    _MAILBOX_COMMANDS = {
        "SELECT": ("_cmd_select", AUTH),
        "EXAMINE": ("_cmd_examine", AUTH),
        "CREATE": ("_cmd_create", AUTH),
        "DELETE": ("_cmd_delete", AUTH),
        "RENAME": ("_cmd_rename", AUTH),
        "SUBSCRIBE": ("_cmd_subscribe", AUTH),
        "UNSUBSCRIBE": ("_cmd_unsubscribe", AUTH),
        "LIST": ("_cmd_list", AUTH),
        "LSUB": ("_cmd_lsub", AUTH),
        "STATUS": ("_cmd_status", AUTH),
        "APPEND": ("_cmd_append", AUTH),
        "NAMESPACE": ("_cmd_namespace", AUTH),
        "ENABLE": ("_cmd_enable", AUTH),
        "IDLE": ("_cmd_idle", AUTH),
        "CHECK": ("_cmd_check", SELECTED),
        "CLOSE": ("_cmd_close", SELECTED),
        "UNSELECT": ("_cmd_unselect", SELECTED),
        "EXPUNGE": ("_cmd_expunge", SELECTED),
        "SEARCH": ("_cmd_search", SELECTED),
        "FETCH": ("_cmd_fetch", SELECTED),
        "STORE": ("_cmd_store", SELECTED),
        "COPY": ("_cmd_copy", SELECTED),
        "MOVE": ("_cmd_move", SELECTED),
    }
    _MAILBOX_UID_COMMANDS = {
        name: (f"_cmd_{name.lower()}", SELECTED) for name in ("FETCH", "STORE", "COPY", "MOVE", "SEARCH", "EXPUNGE")
    }

    def _init_mailbox_state(self) -> None:
        self.view: FolderView | None = None
        self.condstore = False
        self._idling = False
        self._sync_lock = defer.DeferredLock()

    @property
    def address(self) -> Any:
        return self.account.address

    def _close_mailbox(self) -> None:
        if self._idling:
            self.factory.watcher.unwatch(self)
        self.view = None
        if self.state == "select":
            self.state = "auth"

    # -- keeping the client up to date ----------------------------------------------------

    async def _sync_after(self, allow_expunge: bool) -> None:
        """Announce what changed in the selected folder (RFC 3501 7.3.1, 7.4.1)."""
        if self.view is None:
            return
        await self._sync_lock.acquire()
        try:
            view = self.view
            if view is None:
                return
            try:
                snapshot, claimed = await self.run(load_folder, self.store, self.address, view.name,
                                                   not view.readonly)
            except MailboxNotFound:
                self._close_mailbox()
                self._send(b"* BYE [UNAVAILABLE] The selected mailbox was deleted")
                self.transport.loseConnection()
                return
            if self.view is view:
                self._send(*view.update(snapshot, allow_expunge, self.condstore, claimed))
                if self._idling:
                    self.factory.watcher.seen(self, snapshot)
        finally:
            self._sync_lock.release()

    async def _ok(self, tag: bytes, text: bytes, allow_expunge: bool = True) -> None:
        await self._sync_after(allow_expunge)
        self._send(tag + b" OK " + text)

    def folder_changed(self, snapshot: Any) -> None:
        """The watcher saw the idled folder change: tell the client now (RFC 2177)."""
        if self._idling and self.view is not None:
            d = defer.Deferred.fromCoroutine(self._sync_after(True))
            d.addErrback(lambda failure: self.log.failure("{session_id} IDLE update failed", failure,
                                                          session_id=self.session_id))

    # -- names ----------------------------------------------------------------------------

    def _folder(self, token: object, strip_separator: bool = False) -> FolderName:
        raw = astring(token)
        if strip_separator and len(raw) > 1:
            raw = raw.rstrip(b"/")
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidMailboxName("mailbox names are modified UTF-7 (RFC 3501 5.1.3)") from None
        if text.upper() == "INBOX":
            return INBOX_NAME
        return FolderName.from_mutf7(text)

    @staticmethod
    def _wire(name: FolderName) -> bytes:
        return b"INBOX" if name.is_inbox else quote(name.to_mutf7())

    def _require_writable(self) -> FolderView:
        assert self.view is not None
        if self.view.readonly:
            raise Refusal(b"[READ-ONLY] The mailbox is open read-only")
        return self.view

    # -- authenticated state ------------------------------------------------------------------

    async def _cmd_select(self, tag: bytes, args: list, readonly: bool = False) -> None:
        if not 1 <= len(args) <= 2:
            raise ParseError("SELECT takes a mailbox name")
        name = self._folder(args[0])
        if len(args) == 2:
            if not isinstance(args[1], list) or [str(a).upper() for a in args[1]] != ["CONDSTORE"]:
                raise ParseError("unknown SELECT parameter")
            self.condstore = True
        self._close_mailbox()  # RFC 3501 6.3.1: a failed SELECT leaves no mailbox selected
        snapshot, claimed = await self.run(load_folder, self.store, self.address, name, not readonly)
        view = FolderView.open(snapshot, readonly, claimed)
        self.view, self.state = view, "select"
        lines = [
            *view.flags_responses(),
            b"* %d EXISTS" % view.exists,
            b"* %d RECENT" % len(view.recent),
        ]
        unseen = view.unseen_first()
        if unseen is not None:
            lines.append(b"* OK [UNSEEN %d] First unseen" % unseen)
        lines += [
            b"* OK [UIDVALIDITY %d] UIDs valid" % view.uidvalidity,
            b"* OK [UIDNEXT %d] Predicted next UID" % view.uid_next,
            b"* OK [HIGHESTMODSEQ %d] Highest" % view.highest_modseq,
        ]
        self._send(*lines)
        verb = b"EXAMINE" if readonly else b"SELECT"
        self._send(tag + (b" OK [READ-ONLY] " if readonly else b" OK [READ-WRITE] ") + verb + b" completed")

    async def _cmd_examine(self, tag: bytes, args: list) -> None:
        await self._cmd_select(tag, args, readonly=True)

    async def _cmd_create(self, tag: bytes, args: list) -> None:
        if len(args) != 1:
            raise ParseError("CREATE takes a mailbox name")
        name = self._folder(args[0], strip_separator=True)
        if name.is_inbox:
            raise Refusal(b"[ALREADYEXISTS] INBOX exists already")
        await self.run(self.store.create_folder, self.address, name)
        await self._ok(tag, b"CREATE completed")

    async def _cmd_delete(self, tag: bytes, args: list) -> None:
        if len(args) != 1:
            raise ParseError("DELETE takes a mailbox name")
        name = self._folder(args[0])
        if name.is_inbox:
            raise Refusal(b"[CANNOT] INBOX cannot be deleted")
        if self.view is not None and self.view.name == name:
            self._close_mailbox()
        await self.run(self.store.delete_folder, self.address, name)
        await self._ok(tag, b"DELETE completed")

    async def _cmd_rename(self, tag: bytes, args: list) -> None:
        if len(args) != 2:
            raise ParseError("RENAME takes two mailbox names")
        old, new = self._folder(args[0]), self._folder(args[1], strip_separator=True)
        await self.run(self.store.rename_folder, self.address, old, new)
        await self._ok(tag, b"RENAME completed")

    async def _cmd_subscribe(self, tag: bytes, args: list) -> None:
        if len(args) != 1:
            raise ParseError("SUBSCRIBE takes a mailbox name")
        await self.run(self.store.subscribe, self.address, self._folder(args[0]))
        await self._ok(tag, b"SUBSCRIBE completed")

    async def _cmd_unsubscribe(self, tag: bytes, args: list) -> None:
        if len(args) != 1:
            raise ParseError("UNSUBSCRIBE takes a mailbox name")
        await self.run(self.store.unsubscribe, self.address, self._folder(args[0]))
        await self._ok(tag, b"UNSUBSCRIBE completed")

    def _list_args(self, args: list) -> tuple[set[str], str, list[str], set[str]]:
        """(selection options, reference, patterns, return options) of LIST (RFC 5258 syntax accepted)."""
        selection: set[str] = set()
        if args and isinstance(args[0], list):
            selection = {str(option).upper() for option in args[0]}
            args = args[1:]
        returns: set[str] = set()
        if len(args) == 4 and isinstance(args[2], Atom) and args[2].upper() == "RETURN" and isinstance(args[3], list):
            returns = {str(option).upper() for option in args[3]}
            args = args[:2]
        if len(args) != 2:
            raise ParseError("LIST takes a reference and a mailbox pattern")
        reference = astring(args[0]).decode("ascii", "replace")
        patterns = args[1] if isinstance(args[1], list) else [args[1]]
        return selection, reference, [astring(p).decode("ascii", "replace") for p in patterns], returns

    async def _cmd_list(self, tag: bytes, args: list) -> None:
        selection, reference, patterns, returns = self._list_args(args)
        if patterns == [""]:
            self._send(b'* LIST (\\Noselect) "/" ""')  # RFC 3501 6.3.8: the hierarchy delimiter
            await self._ok(tag, b"LIST completed")
            return
        compiled = [_pattern(reference, pattern) for pattern in patterns]
        folders = await self.run(self.store.list_folders, self.address)
        show_subscribed = "SUBSCRIBED" in selection or "SUBSCRIBED" in returns
        lines = []
        for info in folders:
            wire = "INBOX" if info.name.is_inbox else info.name.to_mutf7()
            if not _matches(compiled, wire):
                continue
            if "SUBSCRIBED" in selection and not info.subscribed:
                continue
            if "SPECIAL-USE" in selection and not info.special_use:
                continue
            attributes = [] if info.exists else [b"\\Noselect"]
            attributes.append(b"\\HasChildren" if info.has_children else b"\\HasNoChildren")
            if info.special_use:
                attributes.append(info.special_use.encode("ascii"))
            if show_subscribed and info.subscribed:
                attributes.append(b"\\Subscribed")
            lines.append(b"* LIST (" + b" ".join(attributes) + b') "/" ' + self._wire(info.name))
        self._send(*lines)
        await self._ok(tag, b"LIST completed")

    async def _cmd_lsub(self, tag: bytes, args: list) -> None:
        _, reference, patterns, _ = self._list_args(args)
        compiled = [_pattern(reference, pattern) for pattern in patterns]
        names = await self.run(self.store.subscriptions, self.address)
        lines = []
        for name in names:
            wire = "INBOX" if name.is_inbox else name.to_mutf7()
            if _matches(compiled, wire):
                lines.append(b'* LSUB () "/" ' + self._wire(name))
        self._send(*lines)
        await self._ok(tag, b"LSUB completed")

    async def _cmd_status(self, tag: bytes, args: list) -> None:
        if len(args) != 2 or not isinstance(args[1], list) or not args[1]:
            raise ParseError("STATUS takes a mailbox name and a list of items")
        name = self._folder(args[0])
        items = [atom(item) for item in args[1]]
        unknown = [item for item in items if item not in _STATUS_ITEMS]
        if unknown:
            raise ParseError(f"unknown STATUS item {unknown[0][:20]}")
        status = await self.run(self.store.folder_status, self.address, name)
        values = {
            "MESSAGES": status.messages, "RECENT": status.recent, "UIDNEXT": status.uid_next,
            "UIDVALIDITY": status.uidvalidity, "UNSEEN": status.unseen, "HIGHESTMODSEQ": status.highest_modseq,
            "SIZE": status.size,
        }
        if "HIGHESTMODSEQ" in items:
            self.condstore = True
        body = b" ".join(b"%s %d" % (item.encode(), values[item]) for item in items)
        self._send(b"* STATUS " + self._wire(name) + b" (" + body + b")")
        await self._ok(tag, b"STATUS completed")

    async def _cmd_append(self, tag: bytes, args: list) -> None:
        if not 2 <= len(args) <= 4 or not isinstance(args[-1], bytes) or isinstance(args[-1], Atom):
            raise ParseError("APPEND takes a mailbox, optional flags and date, and a literal")
        name = self._folder(args[0])
        letters, keywords, date = "", (), None
        for extra in args[1:-1]:
            if isinstance(extra, list):
                letters, keywords = parse_flags(astring(flag) for flag in extra)
            else:
                date = parse_date_time(extra)
        message = args[-1]
        if not message:
            raise Refusal(b"[CANNOT] Empty messages are not stored")
        if len(message) > self.limits.max_message_size:
            raise Refusal(b"[TOOBIG] Message too big")
        try:
            uidvalidity, uid = await self.run(append_message, self.store, self.address, name, message, letters,
                                              keywords, date)
        except MailboxNotFound:
            raise Refusal(b"[TRYCREATE] No such mailbox") from None
        await self._ok(tag, b"[APPENDUID %d %d] APPEND completed" % (uidvalidity, uid))

    async def _cmd_namespace(self, tag: bytes, args: list) -> None:
        self._send(b'* NAMESPACE (("" "/")) NIL NIL')
        await self._ok(tag, b"NAMESPACE completed")

    async def _cmd_enable(self, tag: bytes, args: list) -> None:
        if not args:
            raise ParseError("ENABLE takes capability names")
        enabled = []
        for name in args:
            if atom(name) == "CONDSTORE":
                self.condstore = True
                enabled.append(b"CONDSTORE")
        self._send(b"* ENABLED" + b"".join(b" " + name for name in enabled))
        await self._ok(tag, b"ENABLE completed")

    async def _cmd_idle(self, tag: bytes, args: list) -> None:
        if args:
            raise ParseError("IDLE takes no arguments")
        done: defer.Deferred = defer.Deferred()

        def line_received(line: bytes) -> None:
            self._continuation = None
            done.callback(line)

        self._continuation = line_received
        self._send(b"+ idling")
        view = self.view
        if view is not None:
            self._idling = True
            self.factory.watcher.watch(self, self.address, view.name, view.snapshot)
            await self._sync_after(True)
        self._read_during_command()
        line = await done
        self.paused = True
        if self._idling:
            self._idling = False
            self.factory.watcher.unwatch(self)
        if line.strip().upper() != b"DONE":
            self._bad(tag, b"Expected DONE")
            return
        await self._ok(tag, b"IDLE terminated")

    # -- selected state ---------------------------------------------------------------------

    async def _cmd_check(self, tag: bytes, args: list) -> None:
        await self._ok(tag, b"CHECK completed")

    async def _cmd_close(self, tag: bytes, args: list) -> None:
        view = self.view
        assert view is not None
        if not view.readonly:
            # RFC 3501 6.4.2: expunge silently, then leave the selected state.
            await self.run(expunge_deleted, self.store, self.address, view.name, None)
        self._close_mailbox()
        self._send(tag + b" OK CLOSE completed")

    async def _cmd_unselect(self, tag: bytes, args: list) -> None:
        self._close_mailbox()
        self._send(tag + b" OK UNSELECT completed")

    async def _cmd_expunge(self, tag: bytes, args: list, by_uid: bool = False) -> None:
        view = self._require_writable()
        only = None
        if by_uid:
            if len(args) != 1:
                raise ParseError("UID EXPUNGE takes a UID set")
            only = {uid for _, uid in view.resolve(SequenceSet.parse(args[0]), True)}
        elif args:
            raise ParseError("EXPUNGE takes no arguments")
        gone = await self.run(expunge_deleted, self.store, self.address, view.name, only)
        if self.view is view:
            self._send(*(b"* %d EXPUNGE" % seq for seq in view.forget(gone)))
        await self._ok(tag, b"EXPUNGE completed")

    async def _cmd_search(self, tag: bytes, args: list, by_uid: bool = False) -> None:
        view = self.view
        assert view is not None
        try:
            search = compile_search(args)
        except BadCharset:
            raise Refusal(b"[BADCHARSET (US-ASCII UTF-8)] Unsupported charset", by_uid) from None
        if search.wants_modseq:
            self.condstore = True
        largest_uid = view.uids[-1] if view.uids else 0
        candidates = [
            Candidate(seq, uid, view.refs[uid], uid in view.recent, self.store.read_message, len(view.uids),
                      largest_uid)
            for seq, uid in enumerate(view.uids, start=1)
        ]
        if search.needs_file:
            matched = await self.run(run_search, search, candidates)
        else:
            matched = run_search(search, candidates)
        numbers = b"".join(b" %d" % (c.uid if by_uid else c.seq) for c in matched)
        if search.wants_modseq and matched:
            numbers += b" (MODSEQ %d)" % max(c.ref.modseq or 0 for c in matched)
        self._send(b"* SEARCH" + numbers)
        await self._ok(tag, b"SEARCH completed", by_uid)

    async def _cmd_fetch(self, tag: bytes, args: list, by_uid: bool = False) -> None:
        view = self.view
        assert view is not None
        if len(args) < 2:
            raise ParseError("FETCH takes a sequence set and attributes")
        sequence = SequenceSet.parse(args[0])
        plan = parse_fetch(args[1:], by_uid, self.condstore)
        if plan.changed_since is not None or plan.wants_modseq:
            self.condstore = True
        seqs, uids = view.select(sequence, by_uid)
        if plan.changed_since is not None:
            since, refs = plan.changed_since, view.refs
            kept = [index for index, uid in enumerate(uids) if (refs[uid].modseq or 0) > since]
            seqs, uids = [seqs[index] for index in kept], [uids[index] for index in kept]
        if plan.sets_seen and not view.readonly:
            unseen = [uid for uid in uids if "S" not in view.refs[uid].flags and uid not in view.gone]
            if unseen:
                view.note_flags(await self.run(self.store.add_flags, self.address, view.name, unseen, "S"))
                if not plan.wants_flags:
                    plan = FetchPlan(plan.items + (FetchItem("FLAGS"),), plan.changed_since)
        refs, flags = view.refs, view.flags
        rows = Rows(seqs, [refs[uid] for uid in uids], [flags(uid) for uid in uids] if plan.wants_flags else None)
        missing = await stream_fetch(self.transport, rows, plan, self.run, self.store.read_messages,
                                     lambda: self._lost)
        if missing:
            await self._sync_after(by_uid)
            self._send(tag + b" NO [EXPUNGEISSUED] Some messages were expunged meanwhile")
            return
        await self._ok(tag, b"FETCH completed", by_uid)

    def _store_args(self, args: list) -> tuple[SequenceSet, int | None, str, bool, str, tuple[str, ...]]:
        if len(args) < 3:
            raise ParseError("STORE takes a sequence set, an item and flags")
        sequence = SequenceSet.parse(args[0])
        rest = args[1:]
        unchanged_since = None
        if isinstance(rest[0], list):
            modifier = rest[0]
            if len(modifier) != 2 or str(modifier[0]).upper() != "UNCHANGEDSINCE":
                raise ParseError("unknown STORE modifier")
            unchanged_since = number(modifier[1], bits=63)
            rest = rest[1:]
        if len(rest) < 2:
            raise ParseError("STORE takes an item and flags")
        item = atom(rest[0])
        match = re.fullmatch(r"([+-]?)FLAGS(\.SILENT)?", item)
        if match is None:
            raise ParseError(f"unknown STORE item {item[:20]}")
        flags = rest[1] if len(rest) == 2 and isinstance(rest[1], list) else rest[1:]
        letters, keywords = parse_flags(astring(flag) for flag in flags)
        return sequence, unchanged_since, match.group(1), bool(match.group(2)), letters, keywords

    async def _cmd_store(self, tag: bytes, args: list, by_uid: bool = False) -> None:
        sequence, unchanged_since, mode, silent, letters, keywords = self._store_args(args)
        view = self._require_writable()
        pairs = view.resolve(sequence, by_uid)
        if unchanged_since is not None:
            self.condstore = True
        uids = [uid for _, uid in pairs if uid not in view.gone]
        # A 27th keyword in the folder raises KeywordLimit: NO [LIMIT] (server.py), nothing changed.
        refs, modified = await self.run(store_flags, self.store, self.address, view.name, uids, mode, letters,
                                        keywords, unchanged_since)
        if self.view is view:
            view.note_flags(refs)
            lines = view.learn_keywords(refs)  # RFC 3501 7.2.6: a new keyword's FLAGS before its FETCH
            for ref in refs:
                parts = [] if silent else [b"FLAGS " + view.flags(ref.uid)]
                if by_uid:
                    parts.insert(0, b"UID %d" % ref.uid)
                if self.condstore:
                    parts.append(b"MODSEQ (%d)" % (ref.modseq or 0))
                if parts and (not silent or self.condstore):
                    lines.append(b"* %d FETCH (" % view.seq(ref.uid) + b" ".join(parts) + b")")
            self._send(*lines)
        if modified:
            numbers = modified if by_uid else [view.seq(uid) for uid in modified]
            await self._ok(tag, b"[MODIFIED " + compress(sorted(numbers)).encode() + b"] Conditional STORE failed",
                           by_uid)
            return
        await self._ok(tag, b"STORE completed", by_uid)

    async def _transfer(self, tag: bytes, args: list, by_uid: bool, move: bool) -> None:
        view = self._require_writable() if move else self.view
        assert view is not None
        if len(args) != 2:
            raise ParseError("COPY and MOVE take a sequence set and a mailbox")
        pairs = view.resolve(SequenceSet.parse(args[0]), by_uid)
        destination = self._folder(args[1])
        uids = [uid for _, uid in pairs if uid not in view.gone]
        operation = self.store.move if move else self.store.copy
        try:
            result = await self.run(operation, self.address, view.name, uids, destination)
        except MailboxNotFound:
            raise Refusal(b"[TRYCREATE] No such mailbox") from None
        code = b""
        if result.mapping:
            code = b"[COPYUID %d %s %s] " % (result.uidvalidity, compress(result.source_uids).encode(),
                                              compress(result.destination_uids).encode())
        if not move:
            await self._ok(tag, code + b"COPY completed")
            return
        if code:
            self._send(b"* OK " + code + b"Moved")  # RFC 6851 4.3: COPYUID before the EXPUNGEs
        if self.view is view:
            self._send(*(b"* %d EXPUNGE" % seq for seq in view.forget(result.source_uids)))
        await self._ok(tag, b"MOVE completed")

    async def _cmd_copy(self, tag: bytes, args: list, by_uid: bool = False) -> None:
        await self._transfer(tag, args, by_uid, move=False)

    async def _cmd_move(self, tag: bytes, args: list, by_uid: bool = False) -> None:
        await self._transfer(tag, args, by_uid, move=True)
