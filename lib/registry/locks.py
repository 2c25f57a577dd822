"""Promotions of one model are serialised by a per-model file lock; other models' go on."""

from __future__ import annotations

import fcntl
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def lock_path(locks_dir: Path, model_name: str) -> Path:
    """One lock file per model: promotions of one model queue, other models' go on."""
    return Path(locks_dir) / f"promote-{re.sub(r'[^A-Za-z0-9_.-]', '_', model_name)}.lock"


@contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """One holder of the lock at a time, others wait (flock: per open file, so threads of one
    process exclude each other too)."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
