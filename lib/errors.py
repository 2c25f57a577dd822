"""The errors lib raises on purpose, so callers can tell bad input from bugs."""

from __future__ import annotations


class BadInput(Exception):
    """One input (a file, an archive member, a series) cannot be used.

    Raised in lib, caught per series in tasks, recorded in the failures table;
    the run goes on. The message always names the input and the reason.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class ConfigError(ValueError):
    """A configuration key, value or file is wrong; the message names the key."""
