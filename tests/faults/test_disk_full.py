"""Disk full while writing (issue 8, SPEC §6 nothing lost): the feature cache (Parquet part, then
SQLite index), the failures table and a predictions file. ENOSPC comes from the kernel (the temp
file's bytes redirected to /dev/full), from an fsync (delayed allocation), from the index commit, or
from a real 1 MiB tmpfs where this machine lets us mount one. Each time: an error naming the path,
nothing half-written under a final name, the index as it was, no temp file left; once space is back
the same write succeeds."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lstmpipe.lib import atomic
from lstmpipe.lib.failures import Failure
from lstmpipe.lib.features.cache import CacheIndexError, FeatureCache, SeriesFeatures
from lstmpipe.lib.inference.predictions import write_predictions
from lstmpipe.lib.ops.failures import read_failures, record_failures
from lstmpipe.lib.state.store import LocalStore
from tests.cache_files import failing_commits, features_dir, index_file

RID = "recipe"


@contextmanager
def disk_full(at: str) -> Iterator[None]:
    """ENOSPC from the next atomic write: at `write` (the temp file's data goes to /dev/full, where
    the kernel itself answers ENOSPC once the buffer flushes), or at `fsync` (the data was accepted
    but its blocks could not be allocated: what XFS, ext4 and NFS may report only then)."""
    if at == "write":
        real = os.fdopen

        def onto_a_full_device(fd: int, mode: str):
            os.close(fd)  # the temp file stays empty; write_atomic must still remove it
            return real(os.open("/dev/full", os.O_WRONLY), mode)

        with mock.patch.object(atomic.os, "fdopen", onto_a_full_device):
            yield
        return

    def no_room(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with mock.patch.object(atomic.os, "fsync", no_room):
        yield


def series(name: str, frames: int, dim: int = 16) -> SeriesFeatures:
    return SeriesFeatures(
        name,
        f"hash-{name}",
        np.full((frames, dim), len(name), np.float32),
        np.arange(frames, dtype=np.float64),
    )


def index_rows(cache: FeatureCache) -> list[tuple]:
    with sqlite3.connect(index_file(cache)) as db:
        return sorted(db.execute("SELECT * FROM entries").fetchall())


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".tmp-*")]


@pytest.mark.parametrize("at", ["write", "fsync", "index"])
def test_a_full_disk_while_caching_leaves_the_cache_as_it_was(tmp_path: Path, at: str) -> None:
    cache = FeatureCache.local(tmp_path / "cache")
    kept = series("kept", 3)
    cache.write(RID, [kept])
    before, files_before = index_rows(cache), sorted(p.name for p in features_dir(cache).iterdir())
    new = [series("new-a", 50), series("new-b", 20)]

    if at == "index":  # the part is renamed into place; the index commit finds the disk full
        with (
            failing_commits(cache, "database or disk is full"),
            pytest.raises(CacheIndexError) as caught,
        ):
            cache.write(RID, new)
        assert str(index_file(cache)) in str(caught.value) and "disk is full" in str(caught.value)
        assert "none of them was indexed" in str(caught.value)
    else:
        with disk_full(at), pytest.raises(OSError) as caught:
            cache.write(RID, new)
        assert caught.value.errno == errno.ENOSPC
        assert f"cannot write {features_dir(cache)}/part-" in str(
            caught.value
        ) and "No space left" in str(caught.value)
        # no partial part, no temp file
        assert sorted(p.name for p in features_dir(cache).iterdir()) == files_before

    assert index_rows(cache) == before
    assert cache.read([(s.content_hash, RID) for s in new]) == {}
    np.testing.assert_array_equal(
        cache.read([(kept.content_hash, RID)])[(kept.content_hash, RID)].features, kept.features
    )
    assert not leftovers(tmp_path)

    cache.write(RID, new)  # space is back: the same write goes through
    assert set(cache.read([(s.content_hash, RID) for s in new])) == {
        (s.content_hash, RID) for s in new
    }
    # the index case left an unindexed part: swept, nothing indexed is lost
    cache.compact(orphan_grace_s=0)
    with sqlite3.connect(index_file(cache)) as db:
        referenced = {name for (name,) in db.execute("SELECT DISTINCT file FROM entries")}
    assert {p.name for p in features_dir(cache).iterdir()} == referenced
    assert len(cache.read([(s.content_hash, RID) for s in [kept, *new]])) == 3


@pytest.mark.parametrize("at", ["write", "fsync"])
def test_a_full_disk_while_recording_failures_adds_no_row(tmp_path: Path, at: str) -> None:
    store, folder = LocalStore(tmp_path), tmp_path / "failures"
    record_failures(
        store, "run1", [Failure("a.mp4", "/src/a.mp4", "decode", "moov atom not found")]
    )
    with disk_full(at), pytest.raises(OSError) as caught:
        record_failures(
            store,
            "run2",
            [Failure(f"b{i}.mp4", "/src/b.mp4", "decode", "x" * 200) for i in range(50)],
        )
    assert caught.value.errno == errno.ENOSPC and f"cannot write {folder}/run2-" in str(
        caught.value
    )
    # the earlier run's row, nothing torn
    assert read_failures(store)["series_id"].to_pylist() == ["a.mp4"]
    assert [p.name for p in folder.iterdir() if not p.name.startswith("run1-")] == []


@pytest.mark.parametrize("at", ["write", "fsync"])
def test_a_full_disk_while_writing_predictions_keeps_the_old_file(tmp_path: Path, at: str) -> None:
    store, target = LocalStore(tmp_path / "out"), tmp_path / "out" / "preds.parquet"
    old = pa.table({"series_id": ["a"], "predicted_label": ["grow"]})
    write_predictions(old, store, "preds.parquet")
    new = pa.table(
        {"series_id": [f"s{i}" for i in range(2000)], "predicted_label": ["shrink"] * 2000}
    )
    with disk_full(at), pytest.raises(OSError) as caught:
        write_predictions(new, store, "preds.parquet")
    assert caught.value.errno == errno.ENOSPC and f"cannot write {target}" in str(caught.value)
    assert pq.read_table(target).equals(old)
    assert sorted(p.name for p in target.parent.iterdir()) == ["preds.parquet"]


@pytest.fixture()
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs (root with mount rights only; skipped elsewhere)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_real_full_file_system_while_caching(tiny_disk: Path) -> None:
    cache = FeatureCache.local(tiny_disk / "cache")
    small = series("small", 8)
    cache.write(RID, [small])
    before = index_rows(cache)
    rng = np.random.default_rng(0)
    big = SeriesFeatures(
        "big",
        "hash-big",
        rng.standard_normal((2000, 512)).astype(np.float32),  # 4 MB: no room
        np.arange(2000, dtype=np.float64),
    )
    with pytest.raises(OSError) as caught:
        cache.write(RID, [big])
    assert (
        caught.value.errno == errno.ENOSPC
        and f"cannot write {features_dir(cache)}/part-" in str(caught.value)
    )
    assert index_rows(cache) == before and not leftovers(tiny_disk)
    assert cache.read([("hash-big", RID)]) == {}
    other = series("other", 8)
    cache.write(RID, [other])  # the space the failed write took is free again
    assert set(cache.read([(small.content_hash, RID), (other.content_hash, RID)])) == {
        (small.content_hash, RID),
        (other.content_hash, RID),
    }
