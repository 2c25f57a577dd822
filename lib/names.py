"""Names that come from data (run tags, run ids, Prefect parameters) and end up in file names.

Only a plain name is used as given: letters, digits, `_`, `-` and `.`, starting with a letter or
digit, at most 128 characters. No `/`, no leading dot, nothing a shell or a path could read twice.
"""

from __future__ import annotations

import re

_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def is_plain_name(text: str) -> bool:
    return _PLAIN_NAME.fullmatch(text) is not None
