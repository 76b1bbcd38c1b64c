"""Folder names: modified UTF-7 (RFC 3501 5.1.3) and the refusal of every unsafe name."""

from __future__ import annotations

import os

import pytest

from continuity.mailstore import FolderName, InvalidMailboxName, decode_mutf7, encode_mutf7, is_valid_mutf7


# -- modified UTF-7 -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("Entwürfe", "Entw&APw-rfe"),
        ("日本語", "&ZeVnLIqe-"),
        ("Tom & Jerry", "Tom &- Jerry"),
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 5.1.3 example
        ("plain", "plain"),
        ("😀 smile", "&2D3eAA- smile"),
    ],
)
def test_mutf7_round_trip(text: str, encoded: str) -> None:
    """Encoding gives the RFC 3501 spelling and decoding gives the text back."""
    assert encode_mutf7(text) == encoded
    assert decode_mutf7(encoded) == text


@pytest.mark.parametrize(
    "bad",
    [
        "&Jjo",  # no closing '-'
        "&Jjo!",  # no closing '-' before other text
        "&AGE-",  # printable ASCII ('a') must not be encoded
        "&AOQ-&APY-",  # two adjacent runs: not canonical
        "&AO-",  # impossible length, odd octets
        "&A-",  # a base64 run of one character
        "&2D0-",  # a lone high surrogate
        "Entwürfe",  # raw 8-bit is not modified UTF-7
        "a\tb",  # control characters must be encoded
        "&U/BTFw-",  # '/' instead of ',' in modified base64
        "&Jjp-",  # non-zero padding bits: not canonical
    ],
)
def test_invalid_mutf7_refused(bad: str) -> None:
    """Anything but canonical modified UTF-7 raises InvalidMailboxName."""
    assert not is_valid_mutf7(bad)
    with pytest.raises(InvalidMailboxName, match="modified UTF-7|invalid mailbox name"):
        decode_mutf7(bad)


def test_mutf7_ampersand() -> None:
    """'&-' is the ampersand itself."""
    assert decode_mutf7("&-") == "&"
    assert is_valid_mutf7("A&-B")


def test_from_mutf7_parses_imap_name() -> None:
    """A wire name decodes and splits on the separator."""
    assert FolderName.from_mutf7("Archiv/Entw&APw-rfe") == FolderName(("Archiv", "Entwürfe"))


def test_from_mutf7_refuses_bad_encoding() -> None:
    """A wire name in bad modified UTF-7 is refused."""
    with pytest.raises(InvalidMailboxName):
        FolderName.from_mutf7("&Jjo")


# -- folder names ------------------------------------------------------------------


def test_inbox_any_case() -> None:
    """INBOX is case-insensitive and is the Maildir root (RFC 3501 5.1)."""
    for spelling in ("INBOX", "inbox", "InBox", ["Inbox"]):
        name = FolderName.parse(spelling)
        assert name.is_inbox
        assert name.disk_name == ""
        assert str(name) == "INBOX"


def test_disk_name_of_sub_folder() -> None:
    """A sub-folder is '.Parent.Child' on disk, each part in modified UTF-7."""
    name = FolderName.parse("Archiv/Entwürfe")
    assert name.disk_name == ".Archiv.Entw&APw-rfe"
    assert FolderName.from_disk(".Archiv.Entw&APw-rfe") == name
    assert FolderName.parse(["Archiv", "Entwürfe"]) == name


def test_parts_and_string_forms_agree() -> None:
    """The '/'-separated text and the list of parts name the same folder."""
    assert FolderName.parse("a/b/c") == FolderName.parse(("a", "b", "c"))
    assert str(FolderName.parse(("a", "b"))) == "a/b"


def test_to_mutf7_with_other_separator() -> None:
    """The wire spelling can use '.' as IMAP hierarchy separator."""
    assert FolderName.parse("Archiv/Entwürfe").to_mutf7(".") == "Archiv.Entw&APw-rfe"


UNSAFE = {
    "dot_dot": "..",
    "dot_dot_prefix": "../x",
    "dot_dot_inside": "a/../b",
    "dot_dot_suffix": "a/..",
    "single_dot": ".",
    "absolute": "/abs",
    "absolute_etc": "/etc/passwd",
    "tilde": "~",
    "tilde_user": "~root/mail",
    "nul": "a\x00b",
    "cr": "a\rb",
    "lf": "a\nb",
    "tab": "a\tb",
    "del": "a\x7fb",
    "empty": "",
    "empty_part": "a//b",
    "trailing_separator": "a/",
    "leading_dot": ".hidden",
    "leading_dot_in_part": "a/.b",
    "dot_inside": "a.b",
    "star_wildcard": "a*",
    "percent_wildcard": "a%",
    "inbox_child": "INBOX/x",
    "lone_surrogate": "a\ud800",
    "too_long": "x" * 300,
}


@pytest.mark.parametrize("name", UNSAFE.values(), ids=UNSAFE.keys())
def test_unsafe_name_refused(name: str) -> None:
    """Every name that could leave the tree or confuse Maildir++ raises InvalidMailboxName."""
    with pytest.raises(InvalidMailboxName, match="invalid mailbox name"):
        FolderName.parse(name)


@pytest.mark.parametrize(
    "parts",
    [["a/b"], ["..", "x"], ["a", ""], [], ["x", "~"], ["a\x00"], ["INBOX", "x"], [".a"]],
    ids=["slash_in_part", "dot_dot_part", "empty_part", "no_parts", "tilde_part", "nul_part", "inbox_child", "dot"],
)
def test_unsafe_parts_refused(parts: list[str]) -> None:
    """A part with '/', '..', '~', NUL, or no part at all is refused in the list form too."""
    with pytest.raises(InvalidMailboxName):
        FolderName.parse(parts)


def test_direct_construction_validates() -> None:
    """A FolderName cannot be built around an unsafe part, even directly."""
    with pytest.raises(InvalidMailboxName):
        FolderName(("..",))


def test_refusal_message_names_the_rule() -> None:
    """The exception message says which rule the name breaks."""
    with pytest.raises(InvalidMailboxName, match="'~'"):
        FolderName.parse("~")
    with pytest.raises(InvalidMailboxName, match="absolute"):
        FolderName.parse("/abs")
    with pytest.raises(InvalidMailboxName, match="control character"):
        FolderName.parse("a\nb")


def test_from_disk_refuses_raw_utf8() -> None:
    """A directory written in raw UTF-8 by another tool is not a folder of ours."""
    with pytest.raises(InvalidMailboxName):
        FolderName.from_disk(".Entwürfe")


def test_unsafe_names_create_nothing(store, alice, mail_root) -> None:
    """The store refuses unsafe names without touching the disk outside the user's tree."""
    store.ensure_mailbox(alice)
    before = sorted(os.listdir(mail_root))
    for name in ("..", "../x", "/abs", "~", "a/../b", "a\x00b", "a\rb", "a\nb"):
        with pytest.raises(InvalidMailboxName):
            store.create_folder(alice, name)
    assert sorted(os.listdir(mail_root)) == before
    assert sorted(os.listdir(os.path.dirname(store.user_root(alice)))) == ["alice"]
