"""The failures table in the outputs store: append-only Parquet, one object per recording.

Each call writes its own object (`failures/<run_id>-<random>.parquet`, atomically), so a
crash never tears an earlier row, concurrent runs (on any host) never write the same
object, and a run that records twice (a nightly run's extraction, then its inference)
keeps both. Locally the store is the home folder and any Arrow tool reads the table:
`pyarrow.dataset.dataset(home / "failures")`; in team mode it is the bucket prefix
`s3://bucket/prefix/failures/`.
"""

from __future__ import annotations

import datetime as dt
import io
import uuid
from dataclasses import asdict

import pyarrow as pa
import pyarrow.parquet as pq

from lstmpipe.lib.failures import SCHEMA, Failure
from lstmpipe.lib.state.store import Store

PREFIX = "failures"  # the table's objects in the outputs store


def record_failures(store: Store, run_id: str, failures: list[Failure]) -> str | None:
    """Append this run's failures as one new object: its key; None when there were none."""
    if not failures:
        return None
    now = dt.datetime.now(dt.UTC)
    rows = [{"run_id": run_id, **asdict(f), "time": now} for f in failures]
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    key = f"{PREFIX}/{run_id}-{uuid.uuid4().hex[:12]}.parquet"
    store.put(key, lambda out: pq.write_table(table, out, compression="zstd"))
    return key


def read_failures(store: Store) -> pa.Table:
    """Every recorded failure, oldest first; an empty table when none.

    Objects are read in the order they were written (modification time, then key), then rows
    ordered by their `time`: S3 keeps modification times to the second only.
    """
    found = sorted(
        (info for info in store.list(PREFIX) if _is_table_object(info.key)),
        key=lambda info: (info.modified, info.key),
    )
    if not found:
        return SCHEMA.empty_table()
    tables = [
        pq.read_table(io.BytesIO(store.read_bytes(info.key)), schema=SCHEMA) for info in found
    ]
    return pa.concat_tables(tables).sort_by("time")


def _is_table_object(key: str) -> bool:
    """A Parquet object of the table; not a `.tmp-*` file a killed writer left in a folder."""
    return key.endswith(".parquet") and not key.rsplit("/", 1)[-1].startswith(".")
