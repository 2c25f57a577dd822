"""Atomic file writes: write a temp file beside the target, fsync, rename.

A reader sees the old file or the new one, never half of one; a crash leaves at
most a `.tmp-*` file that no reader looks at.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq

_PUBLIC = 0o644  # mkstemp creates 0600; results are meant to be read by other tools and users


def write_atomic(target: Path, write: Callable[[IO[bytes]], None], suffix: str = "") -> Path:
    """Call `write(handle)` on a temp file, make it durable, then rename it over `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _PUBLIC)
        os.replace(tmp, target)
        fsync_path(target.parent)  # make the rename itself durable
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def write_parquet_atomic(table: pa.Table, target: Path, row_group_size: int | None = None) -> Path:
    return write_atomic(
        target, lambda handle: pq.write_table(table, handle, row_group_size=row_group_size, compression="zstd"),
        suffix=".parquet",
    )


def write_text_atomic(text: str, target: Path) -> Path:
    return write_atomic(target, lambda handle: handle.write(text.encode()))


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries (a rename), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
