"""A local FeatureCache's files, for tests that look at them directly, and a commit that fails."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from lstmpipe.lib.features.cache import PARTS, FeatureCache


def features_dir(cache: FeatureCache) -> Path:
    """The folder of the parts (`root/features`)."""
    path = cache.store.local_path(PARTS.rstrip("/"))
    assert path is not None, f"{cache.store.url}: not a folder"
    return path


def index_file(cache: FeatureCache) -> Path:
    """The SQLite index (`root/index.sqlite`)."""
    assert not cache.db.is_postgres
    return Path(str(cache.db.url.database))


def root_of(cache: FeatureCache) -> Path:
    return features_dir(cache).parent


@contextmanager
def failing_commits(cache: FeatureCache, reason: str = "disk I/O error") -> Iterator[None]:
    """Every write commit of the cache's index fails with an OperationalError, as SQLite's would."""
    import sqlite3

    def fail(conn: Any) -> None:
        if conn.get_execution_options().get("lstmpipe_immediate"):  # writes only, not reads
            raise OperationalError("COMMIT", {}, sqlite3.OperationalError(f"injected: {reason}"))

    event.listen(cache.db.engine, "commit", fail)
    try:
        yield
    finally:
        event.remove(cache.db.engine, "commit", fail)


def part_of(cache: FeatureCache, key: str | None) -> Path:
    """The file of a part `write` returned the key of."""
    assert key is not None, "nothing was written"
    return root_of(cache) / key
