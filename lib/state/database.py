"""The state database: SQLite files under home (local) or one PostgreSQL for a team.

Every query is written once, in SQLAlchemy Core, and runs on both. What differs is
hidden here:
- write transactions: SQLite takes its write lock at BEGIN (BEGIN IMMEDIATE), so two
  writers queue instead of failing half-way; PostgreSQL may also take a named
  transaction lock (`pg_advisory_xact_lock`) that readers never wait for;
- long exclusive sections (a promotion): a session advisory lock on PostgreSQL, a
  `flock` on a file beside the SQLite database (one host by definition);
- an unreachable server: a transaction that fails to connect, or loses its connection,
  is retried whole with back-off for `retry_s`, then `StateUnavailable` names the
  server. A transaction either committed or left nothing, so a retry is safe.
The password is never in the URL: libpq reads PGPASSWORD or PGPASSFILE itself.
"""

from __future__ import annotations

import fcntl
import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool

from lstmpipe.lib.state.errors import StateUnavailable

if TYPE_CHECKING:  # imported where used: see Database.insert
    from sqlalchemy.dialects import postgresql

_T = TypeVar("_T")
# a writer waits this long for another process's SQLite write lock (commits take milliseconds)
SQLITE_BUSY_TIMEOUT_S = 60.0
# first pause after a lost connection; doubled up to _MAX_PAUSE_S
_FIRST_PAUSE_S = 0.5
_MAX_PAUSE_S = 8.0
# bound parameters per statement: PostgreSQL allows 65 535
_MAX_PARAMETERS = 30_000


class Database:
    """One state database, opened per process (engines are not shared across processes)."""

    def __init__(self, url: str, retry_s: float = 120.0) -> None:
        self.url = sa.make_url(url)
        self.retry_s = retry_s
        self.is_postgres = self.url.get_backend_name() == "postgresql"
        if self.is_postgres:
            if self.url.drivername == "postgresql":
                self.url = self.url.set(drivername="postgresql+psycopg2")
            self.engine = sa.create_engine(
                self.url,
                pool_pre_ping=True,  # a restarted server's dead connections are replaced
                pool_size=2,
                max_overflow=4,
                connect_args={"connect_timeout": 10, "application_name": "lstmpipe"},
            )
        else:
            self.engine = _sqlite_engine(self.url)

    @classmethod
    def sqlite(cls, path: Path) -> Database:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{path}")

    @property
    def where(self) -> str:
        """The database as messages name it: no password, ever."""
        if self.is_postgres:
            return f"PostgreSQL at {self.url.host}:{self.url.port or 5432}/{self.url.database}"
        return str(self.url.database)

    def read(self, body: Callable[[Connection], _T]) -> _T:
        """Run `body` in a read transaction; retried whole while the server is unreachable."""
        return self._transaction(body, immediate=False, lock=None)

    def write(self, body: Callable[[Connection], _T], lock: str | None = None) -> _T:
        """Run `body` in a write transaction, committed when it returns.

        `lock`: a name other writers of the same name wait for until this commits (SQLite's
        write lock already serialises every writer of one file).
        """
        return self._transaction(body, immediate=True, lock=lock)

    @contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """Hold a named lock across a long operation; holders on any host queue."""
        if not self.is_postgres:
            with file_lock(Path(str(self.url.database)).with_suffix(f".{_safe(name)}.lock")):
                yield
            return
        connection = self._retrying(self.engine.connect)
        try:
            connection.execute(sa.select(sa.func.pg_advisory_lock(lock_key(name))))
            connection.commit()
            yield
        finally:
            try:
                connection.execute(sa.select(sa.func.pg_advisory_unlock(lock_key(name))))
                connection.commit()
            except DBAPIError:
                pass  # the connection died: the server dropped the lock with the session
            connection.close()

    def insert(self, table: sa.Table) -> sqlite.Insert | postgresql.Insert:
        """This database's own INSERT for `table`, with on_conflict_do_nothing/_update. The
        PostgreSQL dialect is imported only where it is used: 60 ms of every local command."""
        if not self.is_postgres:
            return sqlite.insert(table)
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)

    def insert_ignore(
        self, table: sa.Table, rows: Sequence[dict[str, Any]], conn: Connection
    ) -> int:
        """Insert `rows`, skipping any whose primary key exists: the first commit wins."""
        if not rows:
            return 0
        if not self.is_postgres:  # sqlite3's executemany runs in-process, row by row, fast
            statement = self.insert(table).on_conflict_do_nothing()
            return conn.execute(statement, list(rows)).rowcount
        # one multi-row INSERT per chunk: psycopg2's executemany is a round trip per row
        # (10 000 rows: 6.8 s against 0.6 s); a chunk stays under PostgreSQL's parameter limit
        chunk = max(1, _MAX_PARAMETERS // max(1, len(rows[0])))
        inserted = 0
        for start in range(0, len(rows), chunk):
            statement = self.insert(table).values(list(rows[start : start + chunk]))
            inserted += conn.execute(statement.on_conflict_do_nothing()).rowcount
        return inserted

    def dispose(self) -> None:
        self.engine.dispose()

    def _transaction(
        self, body: Callable[[Connection], _T], immediate: bool, lock: str | None
    ) -> _T:
        def attempt() -> _T:
            with self.engine.connect() as conn:
                conn = conn.execution_options(lstmpipe_immediate=immediate)
                with conn.begin():
                    if lock is not None and self.is_postgres:
                        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock_key(lock))))
                    return body(conn)

        return self._retrying(attempt)

    def _retrying(self, attempt: Callable[[], _T]) -> _T:
        """`attempt` again, with back-off, while the server is unreachable, for retry_s."""
        deadline = time.monotonic() + self.retry_s
        pause = _FIRST_PAUSE_S
        while True:
            try:
                return attempt()
            except DBAPIError as exc:
                if not _is_disconnect(exc, self.is_postgres):
                    raise
                if time.monotonic() > deadline:
                    raise self._unavailable(exc) from exc
                time.sleep(pause)
                pause = min(pause * 2, _MAX_PAUSE_S)

    def _unavailable(self, exc: DBAPIError) -> StateUnavailable:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        return StateUnavailable(
            f"{self.where}: unreachable for {self.retry_s:.0f} s ({first}); nothing of the "
            "unfinished transaction was committed, re-run once the database is back"
        )


def lock_key(name: str) -> int:
    """A name as PostgreSQL's 64-bit advisory lock key (stable across hosts and runs)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _is_disconnect(exc: DBAPIError, postgres: bool) -> bool:
    if exc.connection_invalidated:
        return True
    if not postgres or not isinstance(exc, OperationalError):
        return False
    # libpq's words for a server that is down, restarting or gone mid-transaction
    text = str(exc.orig).lower()
    return any(
        words in text
        for words in (
            "connection refused",
            "could not connect",
            "server closed the connection",
            "terminating connection",
            "the database system is starting up",
            "the database system is shutting down",
            "connection already closed",
            "no connection to the server",
            "timeout expired",
        )
    )


def _sqlite_engine(url: sa.URL) -> Engine:
    engine = sa.create_engine(
        url, poolclass=NullPool, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}
    )

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # BEGIN is ours to emit, below
        _wal(dbapi_connection)
        dbapi_connection.execute("PRAGMA temp_store=MEMORY")

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("lstmpipe_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _wal(dbapi_connection: Any) -> None:
    """Switch a file to WAL once. Only the first switch of a fresh file needs its exclusive
    lock, and SQLite does not wait for that lock (no busy handler): processes opening a fresh
    file at once retry here for the busy timeout instead of failing "database is locked"."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            mode = dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal":
                dbapi_connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (created): per open file, so threads of one process exclude
    each other too; released by the kernel if the holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _safe(name: str) -> str:
    """A lock name as part of a file name: readable, and short enough for any model name."""
    plain = "".join(c if c.isalnum() or c in "_.-" else "_" for c in name)
    if len(plain) <= 100:
        return plain
    return f"{plain[:80]}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"
