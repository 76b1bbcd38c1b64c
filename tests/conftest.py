"""Fixtures shared by the whole suite (helpers live in support.py)."""

from support import cli, config_file  # noqa: F401
