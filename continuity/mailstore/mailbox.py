"""One user's Maildir++ tree: INBOX at the root, folders as ``.Name`` directories, subscriptions.

Maildir++ (Courier's extension, as Dovecot reads it): ``ROOT/{cur,new,tmp}`` is
INBOX; each folder is a sibling directory ``ROOT/.Name`` (``ROOT/.Parent.Child``
for a sub-folder) with its own ``cur new tmp`` and an empty ``maildirfolder``
file. A parent needs no directory of its own. Names on disk are modified UTF-7
(:mod:`continuity.mailstore.names`).

Folder operations follow RFC 3501 6.3.3-6.3.7 the way Dovecot does them: CREATE
makes only the named folder; DELETE refuses INBOX and leaves sub-folders
alone; RENAME takes the sub-folders along; subscriptions are names, kept even
when the folder is deleted (RFC 3501 6.3.6). The default folders carry a
SPECIAL-USE attribute (RFC 6154 2). Tree changes are serialised by a lock file
in the root; the ``subscriptions`` file holds one ``/``-separated name per line.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterable, Mapping

from twisted.logger import Logger

from continuity.durable import fsync_dir, make_dirs, write_file
from continuity.envelope import Address
from continuity.mailstore.errors import InvalidMailboxName, MailboxExists, MailboxNotFound, MailboxRefused
from continuity.mailstore.filenames import UniqueNames
from continuity.mailstore.folder import MailFolder
from continuity.mailstore.locks import exclusive_lock
from continuity.mailstore.names import INBOX_NAME, FolderName
from continuity.mailstore.records import FolderInfo
from continuity.mailstore.uidlist import UIDLIST_NAME, UidList, UidValidityClock

# RFC 6154 2: the default folders and their SPECIAL-USE attributes.
DEFAULT_SPECIAL_USE: Mapping[str, str] = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
}
SUBSCRIPTIONS_NAME = "subscriptions"
TREE_LOCK_NAME = "continuity-folders.lock"
MAILDIR_FOLDER_MARKER = "maildirfolder"  # Maildir++: present in every folder but INBOX
# Directories being created or deleted start with ".~": '~' is refused in folder
# names, so they are never listed, and a crash leaves nothing that looks like a folder.
STAGING_PREFIX = ".~"
STALE_STAGING = 3600.0  # seconds after which a leftover staging directory is removed


def make_folder_dir(path: str, uidvalidity: int) -> None:
    """Create a Maildir++ folder at ``path`` atomically: built aside, then renamed into place.

    It gets ``cur/ new/ tmp/``, the ``maildirfolder`` marker and a uid list, so its
    UIDVALIDITY is fixed from the start.

    :raises MailboxExists: when ``path`` exists already.
    """
    parent = os.path.dirname(path)
    staging = os.path.join(parent, f"{STAGING_PREFIX}creating-{secrets.token_hex(6)}")
    os.mkdir(staging, 0o700)
    try:
        for subdir in ("cur", "new", "tmp"):
            os.mkdir(os.path.join(staging, subdir), 0o700)
        write_file(os.path.join(staging, MAILDIR_FOLDER_MARKER), [b""], sync_dir=False)
        write_file(os.path.join(staging, UIDLIST_NAME), [UidList(uidvalidity).serialise()], sync_dir=False)
        fsync_dir(staging)
        if os.path.lexists(path):
            raise MailboxExists(f"mailbox exists already: {os.path.basename(path)}")
        try:
            # rename() would replace an empty directory created meanwhile; a folder makes it fail.
            os.rename(staging, path)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise MailboxExists(f"mailbox exists already: {os.path.basename(path)}") from None
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(parent)


class UserMailbox:
    """The Maildir++ tree of one address under ``root``; thread-safe."""

    log = Logger()

    def __init__(
        self,
        root: str,
        address: Address,
        names: UniqueNames,
        uidvalidities: UidValidityClock,
        special_use: Mapping[str, str] = DEFAULT_SPECIAL_USE,
    ):
        self.root = root
        self.address = address
        self._names = names
        self._uidvalidities = uidvalidities
        self._special_use = {FolderName((name,)): attribute for name, attribute in special_use.items()}
        self._folders: dict[FolderName, MailFolder] = {}
        self._lock = threading.Lock()
        self._ensured = False

    def __repr__(self) -> str:
        return f"<UserMailbox {self.address}>"

    def _path(self, name: FolderName) -> str:
        return os.path.join(self.root, name.disk_name) if name.disk_name else self.root

    def exists(self) -> bool:
        """Whether the mailbox has been created (its INBOX exists)."""
        return os.path.isdir(os.path.join(self.root, "cur"))

    def ensure(self) -> None:
        """Create INBOX, the default folders and the subscriptions if missing (first access).

        Checked in full once per process; afterwards only INBOX's existence.
        """
        if self._ensured and self.exists():
            return
        created = not self.exists()
        for subdir in ("tmp", "new", "cur"):
            make_dirs(os.path.join(self.root, subdir))
        for name in self._special_use:
            if not os.path.isdir(self._path(name)):
                try:
                    make_folder_dir(self._path(name), self._uidvalidities())
                except MailboxExists:
                    pass  # another session was quicker
        if not os.path.exists(os.path.join(self.root, SUBSCRIPTIONS_NAME)):
            with exclusive_lock(os.path.join(self.root, TREE_LOCK_NAME)):
                if not os.path.exists(os.path.join(self.root, SUBSCRIPTIONS_NAME)):
                    self._write_subscriptions([INBOX_NAME, *self._special_use])
        self._remove_stale_staging()
        if created:
            self.log.info("created continuity mailbox of {address}", address=str(self.address))
        self._ensured = True

    def _remove_stale_staging(self) -> None:
        """Remove what a crash left of a folder being created or deleted (older than an hour)."""
        now = time.time()
        with os.scandir(self.root) as entries:
            staging = [entry for entry in entries if entry.name.startswith(STAGING_PREFIX)]
        for entry in staging:
            try:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > STALE_STAGING
            except FileNotFoundError:
                continue
            if stale and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)

    # -- folders -------------------------------------------------------------------

    def folder(self, name: FolderName) -> MailFolder:
        """The folder object for ``name`` (whether or not it exists; its methods tell)."""
        with self._lock:
            folder = self._folders.get(name)
            if folder is None:
                folder = MailFolder(self._path(name), name, self.address, self._names, self._uidvalidities)
                self._folders[name] = folder
            return folder

    def _forget(self, names: Iterable[FolderName]) -> None:
        with self._lock:
            for name in names:
                self._folders.pop(name, None)

    def special_use(self, name: FolderName) -> str | None:
        """The SPECIAL-USE attribute of ``name`` (RFC 6154 2), or None."""
        return self._special_use.get(name)

    def folder_names(self) -> list[FolderName]:
        """The folders that exist on disk, INBOX excluded; foreign directories we cannot name are skipped."""
        names = []
        try:
            entries = os.scandir(self.root)
        except FileNotFoundError:
            return []
        with entries:
            for entry in entries:
                if not entry.name.startswith(".") or entry.name.startswith(STAGING_PREFIX):
                    continue
                if not entry.is_dir(follow_symlinks=False):
                    continue
                try:
                    names.append(FolderName.from_disk(entry.name))
                except InvalidMailboxName:
                    continue
        return sorted(names)

    def list_folders(self) -> tuple[FolderInfo, ...]:
        """INBOX, every folder, and parents that exist only through a sub-folder; INBOX first."""
        existing = set(self.folder_names())
        every = set(existing)
        for name in existing:
            parent = name.parent
            while parent is not None:
                every.add(parent)
                parent = parent.parent
        subscribed = set(self.subscriptions())
        infos = [FolderInfo(INBOX_NAME, self.exists(), False, None, INBOX_NAME in subscribed)]
        for name in sorted(every):
            infos.append(
                FolderInfo(
                    name=name,
                    exists=name in existing,
                    has_children=any(other != name and other.is_within(name) for other in every),
                    special_use=self._special_use.get(name),
                    subscribed=name in subscribed,
                )
            )
        return tuple(infos)

    def create_folder(self, name: FolderName) -> None:
        """Create a folder (RFC 3501 6.3.3); its parents get no directory (Maildir++).

        :raises MailboxExists: when it exists (INBOX always does).
        """
        if name.is_inbox:
            raise MailboxExists("INBOX exists already")
        self.ensure()
        with exclusive_lock(os.path.join(self.root, TREE_LOCK_NAME)):
            make_folder_dir(self._path(name), self._uidvalidities())
        self._forget([name])
        self.log.info("created folder {folder} of {address}", folder=str(name), address=str(self.address))

    def delete_folder(self, name: FolderName) -> None:
        """Delete a folder and its messages (RFC 3501 6.3.4); sub-folders stay.

        The directory is renamed away first, so it disappears atomically for
        every other session, then removed.

        :raises MailboxRefused: for INBOX.
        :raises MailboxNotFound: when the folder does not exist.
        """
        if name.is_inbox:
            raise MailboxRefused("INBOX cannot be deleted")
        with exclusive_lock(os.path.join(self.root, TREE_LOCK_NAME)):
            path = self._path(name)
            if not os.path.isdir(path) or os.path.islink(path):
                raise MailboxNotFound(f"no such mailbox: {name}")
            doomed = os.path.join(self.root, f"{STAGING_PREFIX}deleted-{secrets.token_hex(6)}")
            os.rename(path, doomed)
            fsync_dir(self.root)
        self._forget([name])
        shutil.rmtree(doomed, ignore_errors=True)
        self.log.info("deleted folder {folder} of {address}", folder=str(name), address=str(self.address))

    def rename_folder(self, old: FolderName, new: FolderName) -> None:
        """Rename a folder with all its sub-folders (RFC 3501 6.3.5); INBOX is the store's business.

        Each folder keeps its UIDs and UIDVALIDITY. Subscriptions follow.

        :raises MailboxNotFound: when neither ``old`` nor a sub-folder of it exists.
        :raises MailboxExists: when ``new`` or a would-be sub-folder of it exists.
        :raises MailboxRefused: for a rename into the folder itself or of INBOX.
        """
        if old.is_inbox:
            raise MailboxRefused("INBOX is renamed by moving its messages")
        if new.is_inbox or new == old:
            raise MailboxExists(f"mailbox exists already: {new}")
        if new.is_within(old):
            raise MailboxRefused(f"cannot rename {old} into its own sub-folder {new}")
        with exclusive_lock(os.path.join(self.root, TREE_LOCK_NAME)):
            moving = [name for name in self.folder_names() if name.is_within(old)]
            if not moving:
                raise MailboxNotFound(f"no such mailbox: {old}")
            pairs = [(name, name.rebase(old, new)) for name in moving]
            for _, target in pairs:
                if os.path.lexists(self._path(target)):
                    raise MailboxExists(f"mailbox exists already: {target}")
            for source, target in pairs:
                os.rename(self._path(source), self._path(target))
            fsync_dir(self.root)
            subscribed = self._read_subscriptions()
            renamed = [name.rebase(old, new) if name.is_within(old) else name for name in subscribed]
            if renamed != subscribed:
                self._write_subscriptions(renamed)
        self._forget([name for pair in pairs for name in pair])
        self.log.info(
            "renamed folder {old} of {address} to {new}", old=str(old), new=str(new), address=str(self.address)
        )

    # -- subscriptions (RFC 3501 6.3.6, 6.3.7) --------------------------------------

    def _read_subscriptions(self) -> list[FolderName]:
        try:
            with open(os.path.join(self.root, SUBSCRIPTIONS_NAME), "rb") as handle:
                lines = handle.read().decode("utf-8", "replace").splitlines()
        except FileNotFoundError:
            return []
        names: list[FolderName] = []
        for line in lines:
            try:
                name = FolderName.parse(line)
            except InvalidMailboxName:
                continue  # a line another tool wrote that we cannot use
            if name not in names:
                names.append(name)
        return names

    def _write_subscriptions(self, names: Iterable[FolderName]) -> None:
        data = "".join(f"{name}\n" for name in names).encode("utf-8")
        path = os.path.join(self.root, SUBSCRIPTIONS_NAME)
        write_file(path, [data], tmp_path=f"{path}.tmp.{os.getpid()}.{secrets.token_hex(4)}")

    def subscriptions(self) -> list[FolderName]:
        """The subscribed names, existing or not, in the order they were subscribed."""
        return self._read_subscriptions()

    def subscribe(self, name: FolderName) -> None:
        """Add ``name`` to the subscriptions; it need not exist (RFC 3501 6.3.6)."""
        self.ensure()
        with exclusive_lock(os.path.join(self.root, TREE_LOCK_NAME)):
            names = self._read_subscriptions()
            if name not in names:
                self._write_subscriptions([*names, name])

    def unsubscribe(self, name: FolderName) -> None:
        """Remove ``name`` from the subscriptions.

        :raises MailboxNotFound: when it was not subscribed (RFC 3501 6.3.7 says NO).
        """
        self.ensure()
        with exclusive_lock(os.path.join(self.root, TREE_LOCK_NAME)):
            names = self._read_subscriptions()
            if name not in names:
                raise MailboxNotFound(f"not subscribed: {name}")
            self._write_subscriptions([other for other in names if other != name])
