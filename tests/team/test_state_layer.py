"""lib/state on the real servers: one Database and Store API over SQLite/folder and PostgreSQL/S3."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from lstmpipe.lib.state.database import Database
from lstmpipe.lib.state.schema import Component, migrate
from lstmpipe.lib.state.store import open_store
from tests.team.conftest import Team

_META = sa.MetaData()
_ROWS = sa.Table(
    "things", _META, sa.Column("k", sa.String, primary_key=True), sa.Column("v", sa.Integer)
)
_THINGS = Component("things", _META, version=1)


def _databases(team: Team, tmp_path: Path) -> list[Database]:
    return [Database(f"sqlite:///{tmp_path / 'x.sqlite'}"), Database(team.database)]


def test_first_insert_wins_and_migration_is_recorded_on_both(team: Team, tmp_path: Path) -> None:
    for db in _databases(team, tmp_path):
        migrate(db, _THINGS)
        migrate(db, _THINGS)  # a second open is a no-op
        first = db.write(lambda c: db.insert_ignore(_ROWS, [{"k": "a", "v": 1}], c))
        second = db.write(
            lambda c: db.insert_ignore(_ROWS, [{"k": "a", "v": 2}, {"k": "b", "v": 3}], c)
        )
        assert (first, second) == (1, 1)
        rows = db.read(lambda c: sorted(c.execute(sa.select(_ROWS.c.k, _ROWS.c.v)).all()))
        assert [tuple(r) for r in rows] == [("a", 1), ("b", 3)]


def test_exclusive_serialises_holders(team: Team, tmp_path: Path) -> None:
    for db in _databases(team, tmp_path):
        inside: list[int] = []
        overlap: list[bool] = []

        def hold() -> None:
            with db.exclusive("promote:m"):
                inside.append(1)
                overlap.append(len(inside) > 1)
                threading.Event().wait(0.2)
                inside.pop()

        threads = [threading.Thread(target=hold) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert overlap == [False, False, False]


def test_store_roundtrip_ranged_reads_and_listing(team: Team, tmp_path: Path) -> None:
    for store in (open_store(tmp_path / "local"), open_store(team.store)):
        table = pa.table({"a": list(range(50_000))})
        store.put("features/p.parquet", lambda out: pq.write_table(table, out, row_group_size=5000))
        with store.open("features/p.parquet") as handle:
            parquet = pq.ParquetFile(handle)
            assert parquet.read_row_group(3)["a"][0].as_py() == 15_000
        assert [o.key for o in store.list("features")] == ["features/p.parquet"]
        assert store.delete("features/p.parquet") and not store.delete("features/p.parquet")
        assert store.info("features/p.parquet") is None


def test_wrong_secret_is_refused(team: Team, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = open_store(team.store)
    with pytest.raises(Exception, match="SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        store.put("x.txt", lambda out: out.write(b"x"))
