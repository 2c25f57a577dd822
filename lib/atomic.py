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


def write_atomic(target: Path, write: Callable[[IO[bytes]], object], suffix: str = "") -> Path:
    """Call `write(handle)` on a temp file, make it durable, then rename it over `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=target.parent)
    except OSError as exc:
        raise _naming(exc, target) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())  # a full disk may only say so here (delayed allocation)
        os.chmod(tmp, _PUBLIC)
        os.replace(tmp, target)
    except OSError as exc:  # disk full, quota, I/O error: say which file, and that it is untouched
        raise _naming(exc, target) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_path(target.parent)  # make the rename itself durable
    return target


def _naming(exc: OSError, target: Path) -> OSError:
    """`exc` restated with the file it was writing (a bare ENOSPC names none); errno kept."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    message = (
        f"cannot write {target}: {reason}; the file was left as it was and no temp file remains"
    )
    return OSError(exc.errno, message) if exc.errno is not None else OSError(message)


def write_parquet_atomic(table: pa.Table, target: Path, row_group_size: int | None = None) -> Path:
    return write_atomic(
        target,
        lambda handle: pq.write_table(
            table, handle, row_group_size=row_group_size, compression="zstd"
        ),
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
