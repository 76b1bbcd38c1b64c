"""Fixtures of the mail store tests: a store on a temporary mail root and an address."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from continuity.envelope import Address, parse_address
from continuity.mailstore import MaildirStore


@pytest.fixture
def mail_root(tmp_path: Path) -> str:
    """An empty mail root (``data_dir/mail``)."""
    return str(tmp_path / "mail")


@pytest.fixture
def store(mail_root: str) -> MaildirStore:
    """A MaildirStore on the temporary mail root."""
    return MaildirStore(mail_root, hostname="mx.example.test")


@pytest.fixture
def alice() -> Address:
    """A validated address."""
    return parse_address("alice@example.com")


def _set_mtimes(path: str, when: float) -> None:
    for subdir in ("new", "cur"):
        os.utime(os.path.join(path, subdir), (when, when))


@pytest.fixture
def age_folder() -> Callable[[str], float]:
    """A function putting a folder's new/ and cur/ mtimes 100 s back (so a scan is trusted); returns that time."""

    def age(path: str) -> float:
        past = time.time() - 100.0
        _set_mtimes(path, past)
        return past

    return age


@pytest.fixture
def restore_mtimes() -> Callable[[str, float], None]:
    """A function putting new/ and cur/ mtimes back to a time, hiding a change from the stat cache."""
    return _set_mtimes


def _drop_in(folder_path: str, name: str, content: bytes = b"Subject: dropped\n\nx\n", subdir: str = "new") -> str:
    tmp = os.path.join(folder_path, "tmp", name)
    with open(tmp, "wb") as handle:
        handle.write(content)
    target = os.path.join(folder_path, subdir, name)
    os.rename(tmp, target)
    return target


@pytest.fixture
def drop_in() -> Callable[..., str]:
    """A function putting a file into a Maildir the way another tool would (tmp/, then rename)."""
    return _drop_in
