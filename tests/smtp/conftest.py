"""Fixtures for the SMTP tests: Postfix's smtp-sink, a black hole, a dead port."""

from continuity.testing.sink import black_hole, dead_port, smtp_sink  # noqa: F401
