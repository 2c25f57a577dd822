"""lib.atomic (whole files or nothing) and lib.ops.failures (one append-only table)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from lstmpipe.lib.atomic import write_atomic, write_parquet_atomic, write_text_atomic
from lstmpipe.lib.failures import SCHEMA, Failure
from lstmpipe.lib.ops.failures import read_failures, record_failures
from lstmpipe.lib.state.store import LocalStore


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-"))


def test_text_write_is_complete_public_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "note.txt"  # parents are created
    text = "line\n" * 100_000
    assert write_text_atomic(text, target) == target
    assert target.read_text() == text
    # mkstemp's 0600 would hide results from other users
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert leftovers(target.parent) == []


def test_parquet_write_round_trips(tmp_path: Path) -> None:
    table = pa.table({"a": list(range(10_000)), "b": [str(i) for i in range(10_000)]})
    target = write_parquet_atomic(table, tmp_path / "t.parquet", row_group_size=1000)
    assert pq.read_table(target).equals(table)
    assert pq.ParquetFile(target).metadata.num_row_groups == 10
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert leftovers(tmp_path) == []


def test_overwrite_replaces_the_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "note.txt"
    write_text_atomic("old and much longer than the new text\n", target)
    write_text_atomic("new\n", target)
    assert target.read_text() == "new\n"


def test_failing_writer_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "table.parquet"
    write_text_atomic("old contents\n", target)

    def half_then_crash(handle: IO[bytes]) -> None:
        handle.write(b"half of the new con")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_atomic(target, half_then_crash, suffix=".parquet")
    assert target.read_text() == "old contents\n"
    assert leftovers(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == ["table.parquet"]


def test_failing_first_write_creates_nothing(tmp_path: Path) -> None:
    def crash(handle: IO[bytes]) -> None:
        raise ValueError("bad table")

    with pytest.raises(ValueError):
        write_atomic(tmp_path / "never.txt", crash)
    assert os.listdir(tmp_path) == []


FAILURES = [
    Failure(
        "2026-11-20/grow/broken.mp4",
        "/data/2026-11-20/grow/broken.mp4",
        "decode",
        "not a media file",
    ),
    Failure(
        "2026-11-21.tar/x.mp4",
        "/data/2026-11-21.tar!x.mp4",
        "discover",
        "member has an absolute path",
    ),
]


def rows(table: pa.Table) -> list[tuple[str, str, str, str, str]]:
    return sorted(
        zip(
            *(table[c].to_pylist() for c in ("run_id", "series_id", "path", "stage", "reason")),
            strict=False,
        )
    )


def test_failures_round_trip(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    written = record_failures(store, "run-1", FAILURES)
    assert written is not None and written.startswith("failures/") and written.endswith(".parquet")
    assert (tmp_path / written).is_file()
    table = read_failures(store)
    assert table.schema == SCHEMA
    assert rows(table) == sorted(
        ("run-1", f.series_id, f.path, f.stage, f.reason) for f in FAILURES
    )
    assert all(t is not None for t in table["time"].to_pylist())
    # Any Arrow tool reads the folder as one table.
    assert ds.dataset(str(tmp_path / "failures"), format="parquet").to_table().num_rows == 2


def test_two_runs_write_two_files_and_read_back_oldest_first(tmp_path: Path) -> None:
    store, folder = LocalStore(tmp_path), tmp_path / "failures"
    first = record_failures(store, "run-2", FAILURES[:1])
    second = record_failures(store, "run-1", FAILURES[1:])
    assert first is not None and second is not None and first != second
    assert sorted(f"failures/{p.name}" for p in folder.iterdir()) == sorted([first, second])
    # the order written, not the keys' (an S3 object's modification time is to the second only)
    assert read_failures(store)["run_id"].to_pylist() == ["run-2", "run-1"]


def test_one_run_recording_twice_keeps_both(tmp_path: Path) -> None:
    """A nightly run records extraction failures, then inference failures, under one run id."""
    store = LocalStore(tmp_path)
    record_failures(store, "nightly-7", FAILURES[:1])
    record_failures(store, "nightly-7", FAILURES[1:])
    assert rows(read_failures(store)) == sorted(
        ("nightly-7", f.series_id, f.path, f.stage, f.reason) for f in FAILURES
    )


def test_no_failures_writes_nothing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    assert record_failures(store, "run-1", []) is None
    assert not (tmp_path / "failures").exists()
    empty = read_failures(store)
    assert empty.num_rows == 0 and empty.schema == SCHEMA


def test_a_temp_file_a_killed_writer_left_is_not_read(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    record_failures(store, "run-1", FAILURES[:1])
    (tmp_path / "failures" / ".tmp-abc123.parquet").write_bytes(b"PAR1 torn")
    assert read_failures(store)["series_id"].to_pylist() == [FAILURES[0].series_id]
