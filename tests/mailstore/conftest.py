"""Fixtures of the mail store tests: a store on a temporary mail root and an address."""

from __future__ import annotations

import os
import time
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


def age_folder(path: str, seconds: float = 100.0) -> float:
    """Set the mtimes of ``path``'s new/ and cur/ into the past (so a scan is trusted); return it."""
    past = time.time() - seconds
    for subdir in ("new", "cur"):
        os.utime(os.path.join(path, subdir), (past, past))
    return past


def restore_mtimes(path: str, when: float) -> None:
    """Put new/ and cur/ mtimes back to ``when``, hiding a change from the stat-based cache."""
    for subdir in ("new", "cur"):
        os.utime(os.path.join(path, subdir), (when, when))
