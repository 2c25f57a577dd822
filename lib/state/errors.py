"""The error of state that cannot be reached: not bad input, not a bug, but a server down."""

from __future__ import annotations


class StateUnavailable(RuntimeError):
    """The state database or object store stayed unreachable for `state.retry_s`.

    The message names the server (never a credential) and says what was left undone.
    """
