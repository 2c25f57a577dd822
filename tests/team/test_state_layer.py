"""lib/state on real servers: one Database and Store API over SQLite/folder and PostgreSQL/S3."""

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


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if request.param == "sqlite":
        return Database(f"sqlite:///{tmp_path / 'x.sqlite'}")
    return Database(request.getfixturevalue("team").database)


def test_first_insert_wins_and_migration_is_recorded(db: Database) -> None:
    migrate(db, _THINGS)
    migrate(db, _THINGS)  # a second open is a no-op
    first = db.write(lambda c: db.insert_ignore(_ROWS, [{"k": "a", "v": 1}], c))
    second = db.write(
        lambda c: db.insert_ignore(_ROWS, [{"k": "a", "v": 2}, {"k": "b", "v": 3}], c)
    )
    assert (first, second) == (1, 1)
    rows = db.read(lambda c: sorted(c.execute(sa.select(_ROWS.c.k, _ROWS.c.v)).all()))
    assert [tuple(r) for r in rows] == [("a", 1), ("b", 3)]


def test_exclusive_serialises_holders(db: Database) -> None:
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


_TABLE = pa.table({"a": list(range(50_000))})


@pytest.mark.parametrize("where", ["folder", "bucket"])
def test_store_roundtrip_ranged_reads_and_listing(
    where: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = str(tmp_path / "local") if where == "folder" else request.getfixturevalue("team").store
    store = open_store(url)
    store.put("features/p.parquet", lambda out: pq.write_table(_TABLE, out, row_group_size=5000))
    with store.open("features/p.parquet") as handle:
        parquet = pq.ParquetFile(handle)
        assert parquet.read_row_group(3)["a"][0].as_py() == 15_000
    assert [o.key for o in store.list("features")] == ["features/p.parquet"]
    assert store.delete("features/p.parquet") and not store.delete("features/p.parquet")
    assert store.info("features/p.parquet") is None


def test_store_outage_is_retried_then_named(tmp_path: Path) -> None:
    """Nothing listens at the endpoint: retried for retry_s, then an error naming it."""
    from lstmpipe.lib.state.errors import StateUnavailable
    from tests.integration.servers import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL", endpoint)
        patch.setenv("AWS_ACCESS_KEY_ID", "x")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "y")
        store = open_store("s3://bucket/p", retry_s=1.0)
        with pytest.raises(StateUnavailable, match=endpoint.replace(".", r"\.")):
            store.put("k", lambda out: out.write(b"x"))


def test_database_outage_is_retried_then_named() -> None:
    from lstmpipe.lib.state.errors import StateUnavailable
    from tests.integration.servers import free_port

    db = Database(f"postgresql://nobody@127.0.0.1:{free_port()}/none", retry_s=1.0)
    with pytest.raises(StateUnavailable, match="PostgreSQL at 127.0.0.1"):
        db.read(lambda c: c.execute(sa.text("SELECT 1")).scalar())


def test_wrong_secret_is_refused(team: Team, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = open_store(team.store)
    with pytest.raises(Exception, match="SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        store.put("x.txt", lambda out: out.write(b"x"))
