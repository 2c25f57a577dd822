"""The failures table: one row per failed series per run, append-only Parquet.

Each call writes its own file (`failures/<run_id>-<random>.parquet`, atomically), so
a crash never tears an earlier row, concurrent runs never write the same file, and a
run that records twice (a nightly run's extraction, then its inference) keeps both.
Read the whole table with any Arrow tool: `pyarrow.dataset.dataset(dir)`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from lstmpipe.lib.atomic import write_parquet_atomic


@dataclass(frozen=True)
class Failure:
    """Why one series was skipped: the input, the stage that refused it and the reason."""

    series_id: str
    path: str
    stage: str  # discover | decode | extract | predict ...
    reason: str


SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("series_id", pa.string()),
        ("path", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("time", pa.timestamp("us", tz="UTC")),
    ]
)


def record_failures(directory: Path, run_id: str, failures: list[Failure]) -> Path | None:
    """Append this run's failures as one new file; None when there were none."""
    if not failures:
        return None
    now = dt.datetime.now(dt.UTC)
    rows = [{"run_id": run_id, **asdict(f), "time": now} for f in failures]
    target = Path(directory) / f"{run_id}-{uuid.uuid4().hex[:12]}.parquet"
    write_parquet_atomic(pa.Table.from_pylist(rows, schema=SCHEMA), target)
    return target


def read_failures(directory: Path) -> pa.Table:
    """Every recorded failure, oldest files first; an empty table when none."""
    directory = Path(directory)
    files = (
        sorted(directory.glob("*.parquet"), key=lambda p: p.stat().st_mtime)
        if directory.exists()
        else []
    )
    if not files:
        return SCHEMA.empty_table()
    return ds.dataset([str(f) for f in files], schema=SCHEMA, format="parquet").to_table()
