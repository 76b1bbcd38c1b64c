"""continuity: an email continuity server on Twisted."""

__version__ = "0.1.0"
