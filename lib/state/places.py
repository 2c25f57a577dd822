"""Where each piece of state lives, chosen once by configuration and passed down as a value.

Local (no `state.database`, no `state.store`): SQLite files and folders under home,
exactly the layout lstmpipe always had. Team: every database role is the one PostgreSQL
(each holder has its own tables) and every store role a prefix of one bucket. Nothing a
node writes locally is needed by another node in team mode: `home` is then only that
process's scratch space (temp files, mirrors of sources).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from lstmpipe.lib.state.database import Database
from lstmpipe.lib.state.store import Store, open_store


@dataclass(frozen=True)
class StatePlaces:
    """Picklable: Ray ships it to workers, which open their own connections from it."""

    home: str  # this process's $LSTMPIPE_HOME
    database: str | None = None  # a PostgreSQL URL (no password); None: SQLite under home
    store: str | None = None  # s3://bucket/prefix; None: folders under home
    retry_s: float = 120.0

    @property
    def team(self) -> bool:
        return self.database is not None or self.store is not None

    def cache_database(self) -> Database:
        """The feature-cache index (entries, recipes)."""
        return self._database("cache/index.sqlite")

    def memo_database(self) -> Database:
        """The content-hash memo."""
        return self._database("cache/hashes.sqlite")

    def partitions_database(self) -> Database:
        return self._database("partitions.sqlite")

    def history_database(self) -> Database:
        """Promotion history and the promotion locks."""
        return self._database("promotions/history.sqlite")

    def cache_store(self) -> Store:
        """Feature Parquet files (`features/part-*.parquet`)."""
        return self._store("cache")

    def outputs_store(self) -> Store:
        """failures/, predictions/, runs/ (summaries and reports)."""
        return self._store("")

    def _database(self, local_file: str) -> Database:
        if self.database is not None:
            return _opened(self.database, self.retry_s)
        path = Path(self.home) / local_file
        path.parent.mkdir(parents=True, exist_ok=True)
        return _opened(f"sqlite:///{path}", self.retry_s)

    def _store(self, prefix: str) -> Store:
        if self.store is not None:
            return open_store(
                f"{self.store.rstrip('/')}/{prefix}" if prefix else self.store, self.retry_s
            )
        return open_store(Path(self.home) / prefix, self.retry_s)


@functools.lru_cache(maxsize=16)
def _opened(url: str, retry_s: float) -> Database:
    """One engine (and connection pool) per database per process."""
    return Database(url, retry_s=retry_s)
