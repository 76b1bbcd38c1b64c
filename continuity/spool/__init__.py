"""Accepted messages on disk and the queue index of their per-recipient delivery state."""
