"""Shared test support: peers and fakes that tests in several packages use."""
