"""lib.features.cache: exact round trips, many series per file, first writer wins, crash leftovers
invisible; row-range reads, float16 parts, read_stacked, old indexes, compaction and crashes at each
of its steps."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sqlalchemy.exc import OperationalError

from lstmpipe.lib.features import cache as lib_cache
from lstmpipe.lib.features.cache import FeatureCache, SeriesFeatures, feature_schema
from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.state import database as state_database
from tests.cache_files import failing_commits, features_dir, index_file, part_of, root_of

DIM = 8
RECIPE = FeatureRecipe(
    decoder="ffmpeg 7.1",
    fps=4.0,
    num_frames=None,
    size=64,
    backbone="resnet18",
    weights="none(seed=0)",
    weights_digest="random-seed-0",
    precision="fp32",
    feature_dim=DIM,
)
RID = RECIPE.recipe_id
OTHER_RID = dataclasses.replace(RECIPE, size=96).recipe_id


def series(name: str, frames: int, seed: int, dim: int = DIM, fps: float = 4.0) -> SeriesFeatures:
    rng = np.random.default_rng(seed)
    return SeriesFeatures(
        series_id=f"2026-11-20/{name}.mp4",
        content_hash=f"hash-{name}",
        # full float32 mantissas: exactness is tested
        features=rng.normal(size=(frames, dim)).astype(np.float32),
        t=np.arange(frames) / fps + 0.125,
    )


def assert_same(got: SeriesFeatures, want: SeriesFeatures) -> None:
    assert (got.series_id, got.content_hash) == (want.series_id, want.content_hash)
    assert got.features.dtype == np.float32 and got.t.dtype == np.float64
    # exact: no dtype round trip, no mixing
    np.testing.assert_array_equal(got.features, want.features)
    np.testing.assert_array_equal(got.t, want.t)


def parts(cache: FeatureCache) -> list[Path]:
    return sorted(features_dir(cache).glob("*.parquet"))


@pytest.fixture
def cache(tmp_path: Path) -> FeatureCache:
    return FeatureCache.local(tmp_path / "cache")


def test_write_then_read_is_exact(cache: FeatureCache) -> None:
    items = [series("a", 7, 0), series("b", 1, 1), series("c", 30, 2)]
    cache.write(RID, items)
    found = cache.read([(i.content_hash, RID) for i in items])
    assert set(found) == {(i.content_hash, RID) for i in items}
    for item in items:
        assert_same(found[(item.content_hash, RID)], item)


def test_many_series_share_one_file_and_a_subset_reads_back_unmixed(cache: FeatureCache) -> None:
    items = [series(f"s{i:02d}", 3 + i % 5, i) for i in range(40)]
    target = part_of(cache, cache.write(RID, items))
    assert parts(cache) == [target]  # one file for 40 series, not 40 files
    wanted = items[17:19] + items[3:4]
    found = cache.read([(i.content_hash, RID) for i in wanted])
    for item in wanted:
        assert_same(found[(item.content_hash, RID)], item)
    assert cache.stats()["series"] == 40 and cache.stats()["frames"] == sum(
        len(i.features) for i in items
    )


def test_missing_keys_are_absent_and_recipes_keep_entries_apart(cache: FeatureCache) -> None:
    a = series("a", 5, 0)
    cache.write(RID, [a])
    assert cache.read([("hash-a", OTHER_RID), ("hash-nope", RID)]) == {}
    assert cache.present([("hash-a", RID), ("hash-a", OTHER_RID), ("hash-nope", RID)]) == {
        ("hash-a", RID)
    }
    a_other = dataclasses.replace(series("a", 3, 9), series_id=a.series_id)
    cache.write(OTHER_RID, [a_other])  # same content, another recipe: another entry
    found = cache.read([("hash-a", RID), ("hash-a", OTHER_RID)])
    assert_same(found[("hash-a", RID)], a)
    assert_same(found[("hash-a", OTHER_RID)], a_other)
    assert cache.frame_counts([("hash-a", RID), ("hash-a", OTHER_RID), ("hash-b", RID)]) == {
        ("hash-a", RID): 5,
        ("hash-a", OTHER_RID): 3,
    }
    assert cache.present([]) == set() and cache.read([]) == {}


def test_rows_come_back_in_frame_order_whatever_the_file_order(cache: FeatureCache) -> None:
    """Other tools may rewrite a part (compaction, a copy): readers sort by frame_index, not row."""
    item = series("a", 12, 0)
    target = part_of(cache, cache.write(RID, [item, series("b", 4, 1)]))
    table = pq.read_table(target)
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    assert shuffled["frame_index"].to_pylist() != sorted(shuffled["frame_index"].to_pylist())
    pq.write_table(shuffled, target)
    assert_same(cache.read([("hash-a", RID)])[("hash-a", RID)], item)


def test_duplicate_keys_in_one_write_are_stored_once(cache: FeatureCache) -> None:
    # same content hash twice (a clip copied twice)
    first, again = series("a", 6, 0), series("a", 6, 1)
    target = part_of(cache, cache.write(RID, [first, series("b", 2, 2), again]))
    assert pq.read_metadata(target).num_rows == 6 + 2
    assert_same(cache.read([("hash-a", RID)])[("hash-a", RID)], first)
    assert cache.stats()["series"] == 2


def test_a_write_with_nothing_new_leaves_no_file(cache: FeatureCache) -> None:
    """The loser of a race (or a retried shard): its file would only wait for compaction's sweep."""
    kept = part_of(cache, cache.write(RID, [series("a", 6, 0), series("b", 2, 2)]))
    assert cache.write(RID, [series("a", 6, 1), series("b", 2, 3)]) is None
    assert sorted(p.name for p in features_dir(cache).glob("*.parquet")) == [kept.name]


def test_a_second_writer_of_a_key_changes_nothing_that_is_read(tmp_path: Path) -> None:
    """Two workers that extracted the same series: the first committed entry stays, read once."""
    # two handles, as two processes hold
    one, two = FeatureCache.local(tmp_path / "c"), FeatureCache.local(tmp_path / "c")
    first = series("a", 6, 0)
    one.write(RID, [first])
    two.write(
        RID,
        [dataclasses.replace(series("a", 9, 1), series_id="elsewhere/a.mp4"), series("b", 2, 2)],
    )
    for handle in (one, two):
        found = handle.read([("hash-a", RID), ("hash-b", RID)])
        assert_same(found[("hash-a", RID)], first)
        assert len(found[("hash-a", RID)].features) == 6  # not 6 + 9 rows from both files
        assert handle.frame_counts([("hash-a", RID)]) == {("hash-a", RID): 6}
    assert one.stats()["series"] == 2 and len(parts(one)) == 2


def test_unindexed_files_are_invisible(cache: FeatureCache) -> None:
    """A crash between the Parquet rename and the index commit leaves a file that nobody reads."""
    orphan = series("orphan", 5, 0)
    cache.write(RID, [series("kept", 3, 1)])
    rows = pa.table(
        {
            "series_id": [orphan.series_id] * 5,
            "content_hash": [orphan.content_hash] * 5,
            "recipe_id": [RID] * 5,
            "frame_index": pa.array(range(5), pa.int32()),
            "t": orphan.t,
            "feature": pa.FixedSizeListArray.from_arrays(
                pa.array(orphan.features.reshape(-1)), DIM
            ),
        },
        schema=feature_schema(DIM),
    )
    pq.write_table(rows, features_dir(cache) / "part-crashed.parquet")
    (features_dir(cache) / ".tmp-half.parquet").write_bytes(b"PAR1 half a file")
    key = (orphan.content_hash, RID)
    assert (
        cache.present([key]) == set()
        and cache.read([key]) == {}
        and cache.frame_counts([key]) == {}
    )
    assert cache.stats()["series"] == 1
    cache.write(RID, [orphan])  # and the real write of that key later works as usual
    assert_same(cache.read([key])[key], orphan)


def test_parts_are_plain_parquet_with_the_documented_schema(cache: FeatureCache) -> None:
    items = [series("a", 4, 0), series("b", 3, 1)]
    target = part_of(cache, cache.write(RID, items))
    assert target.parent == features_dir(cache) and target.name.startswith("part-")
    table = pq.read_table(target)  # plain pyarrow: no lstmpipe code needed to read the cache
    assert table.schema.names == [
        "series_id",
        "content_hash",
        "recipe_id",
        "frame_index",
        "t",
        "feature",
    ]
    assert table.schema.field("feature").type == pa.list_(pa.float32(), DIM)
    assert (
        table.schema.field("frame_index").type == pa.int32()
        and table.schema.field("t").type == pa.float64()
    )
    assert table["series_id"].to_pylist() == [items[0].series_id] * 4 + [items[1].series_id] * 3
    assert table["frame_index"].to_pylist() == [0, 1, 2, 3, 0, 1, 2]
    assert set(table["recipe_id"].to_pylist()) == {RID}
    np.testing.assert_array_equal(
        np.array(table["feature"].to_pylist()[4:], np.float32), items[1].features
    )
    with sqlite3.connect(index_file(cache)) as db:  # the index is plain SQLite, too
        assert db.execute(
            "SELECT content_hash, file, n_frames, row_offset FROM entries ORDER BY content_hash"
        ).fetchall() == [("hash-a", target.name, 4, 0), ("hash-b", target.name, 3, 4)]


def test_an_empty_write_writes_nothing(cache: FeatureCache) -> None:
    assert cache.write(RID, []) is None
    assert parts(cache) == []


def test_recipes_round_trip(cache: FeatureCache) -> None:
    assert cache.recipe(RID) is None
    cache.add_recipe(RECIPE)
    cache.add_recipe(RECIPE)  # idempotent
    assert cache.recipe(RID) == RECIPE
    assert FeatureCache.local(root_of(cache)).recipe(RID) == RECIPE  # persisted, not held in memory
    with sqlite3.connect(index_file(cache)) as db:
        stored = json.loads(db.execute("SELECT recipe FROM recipes").fetchone()[0])
    assert stored == RECIPE.to_dict()


def test_stats_count_series_frames_recipes_and_bytes(cache: FeatureCache) -> None:
    assert cache.stats() == {"series": 0, "frames": 0, "recipes": 0, "bytes": 0}
    cache.add_recipe(RECIPE)
    cache.write(RID, [series("a", 4, 0), series("b", 6, 1)])
    cache.write(OTHER_RID, [series("a", 2, 2)])
    stats = cache.stats()
    assert {k: stats[k] for k in ("series", "frames", "recipes")} == {
        "series": 3,
        "frames": 12,
        "recipes": 1,
    }
    assert stats["bytes"] == sum(p.stat().st_size for p in parts(cache)) > 0


# --- row ranges, float16, read_stacked ------------------------------------------------------------


def everything(cache: FeatureCache) -> dict:
    """Every indexed entry, read back: (key) -> SeriesFeatures."""
    with sqlite3.connect(index_file(cache)) as db:
        keys = db.execute("SELECT content_hash, recipe_id FROM entries").fetchall()
    found = cache.read(keys)
    assert set(found) == set(keys)  # every reported series reads back
    return found


def assert_all_same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key in want:
        assert_same(got[key], want[key])


def small_row_groups(monkeypatch: pytest.MonkeyPatch, rows: int = 16) -> None:
    """Many row groups from few rows, so that series cross group boundaries."""
    monkeypatch.setattr(lib_cache, "_row_group_rows", lambda feature: rows)


def test_float16_features_are_stored_as_float16_and_read_as_float32(cache: FeatureCache) -> None:
    half = [
        dataclasses.replace(
            series(f"h{i}", 5 + i, i),
            features=series(f"h{i}", 5 + i, i).features.astype(np.float16),
        )
        for i in range(3)
    ]
    target = part_of(cache, cache.write(RID, half))
    assert pq.read_schema(target).field("feature").type == pa.list_(pa.float16(), DIM)
    found = cache.read([(i.content_hash, RID) for i in half])
    for item in half:  # float16 -> float32 is exact
        assert_same(
            found[(item.content_hash, RID)],
            dataclasses.replace(item, features=item.features.astype(np.float32)),
        )
    stacked = cache.read_stacked([(i.content_hash, RID) for i in half])
    assert stacked.features.dtype == torch.float32
    np.testing.assert_array_equal(stacked.series(2).numpy(), half[2].features.astype(np.float32))


def test_float32_and_other_dtypes_are_stored_as_float32(cache: FeatureCache) -> None:
    mixed = series("m16", 4, 0)
    mixed = dataclasses.replace(mixed, features=mixed.features.astype(np.float16))
    wide = series("m64", 3, 1)
    wide = dataclasses.replace(wide, features=wide.features.astype(np.float64))
    # one float32 item (after conversion) makes the part float32
    target = part_of(cache, cache.write(RID, [mixed, wide]))
    assert pq.read_schema(target).field("feature").type == pa.list_(pa.float32(), DIM)
    found = cache.read([(mixed.content_hash, RID), (wide.content_hash, RID)])
    np.testing.assert_array_equal(
        found[(mixed.content_hash, RID)].features, mixed.features.astype(np.float32)
    )
    np.testing.assert_array_equal(
        found[(wide.content_hash, RID)].features, wide.features.astype(np.float32)
    )


def test_row_groups_are_sized_by_bytes_not_rows(cache: FeatureCache) -> None:
    wide = series("wide", 5000, 0, dim=512)  # 10 MB of float32: a few row groups of about 4 MiB
    meta = pq.read_metadata(part_of(cache, cache.write(RID, [wide])))
    assert meta.num_row_groups >= 2
    for g in range(meta.num_row_groups - 1):
        assert 1 << 20 < meta.row_group(g).total_byte_size <= 8 << 20


def test_reads_fetch_only_the_row_groups_that_cover_the_wanted_rows(
    cache: FeatureCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_row_groups(monkeypatch)
    items = [series(f"s{i:03d}", 1 + i % 7, i) for i in range(100)]  # ~400 rows in ~25 groups of 16
    target = part_of(cache, cache.write(RID, items))
    groups_read: list[list[int]] = []
    real = pq.ParquetFile.read_row_groups

    def spy(self, row_groups, *args, **kwargs):
        groups_read.append(list(row_groups))
        return real(self, row_groups, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", spy)
    monkeypatch.setattr(pq.ParquetFile, "read", None)  # no whole-part filter read on this path
    wanted = items[50]
    found = cache.read([(wanted.content_hash, RID)])
    assert_same(found[(wanted.content_hash, RID)], wanted)
    first_row = sum(len(i.features) for i in items[:50])
    covering = set(range(first_row // 16, (first_row + len(wanted.features) - 1) // 16 + 1))
    assert set(groups_read[-1]) == covering and pq.read_metadata(target).num_row_groups > 20


def test_many_series_in_one_file_read_one_by_one_and_in_bulk(
    cache: FeatureCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_row_groups(monkeypatch)
    # many cross a group boundary
    items = [series(f"s{i:03d}", 1 + (i * 7) % 23, i) for i in range(120)]
    assert len(parts(cache)) == 0 and cache.write(RID, items) and len(parts(cache)) == 1
    for item in items[::4]:
        assert_same(cache.read([(item.content_hash, RID)])[(item.content_hash, RID)], item)
    shuffled = [items[i] for i in np.random.default_rng(1).permutation(len(items))]
    found = cache.read([(i.content_hash, RID) for i in shuffled])
    assert_all_same(found, {(i.content_hash, RID): i for i in items})


def test_read_stacked_matches_read(cache: FeatureCache, monkeypatch: pytest.MonkeyPatch) -> None:
    small_row_groups(monkeypatch)
    first = [series(f"a{i}", 2 + i % 5, i) for i in range(30)]
    second = [series(f"b{i}", 1 + i % 9, 100 + i) for i in range(30)]
    half = dataclasses.replace(
        series("half", 6, 7), features=series("half", 6, 7).features.astype(np.float16)
    )
    empty = series("empty", 0, 8)
    cache.write(RID, first)
    cache.write(RID, second + [empty])
    cache.write(RID, [half])
    keys = [(i.content_hash, RID) for i in second[::-1] + first + [half, empty]]
    keys = keys[:5] + [("hash-nope", RID)] + keys + [keys[3]]  # a missing key and a key asked twice
    stacked = cache.read_stacked(keys)
    found = cache.read(keys)
    assert stacked.keys == keys and stacked.missing == [("hash-nope", RID)]
    assert stacked.features.shape == (sum(len(f.features) for f in found.values()), DIM)
    assert stacked.features.dtype == torch.float32 and stacked.features.is_contiguous()
    for i, key in enumerate(keys):
        if key in found:
            assert stacked.lengths[i] == len(found[key].features)
            np.testing.assert_array_equal(stacked.series(i).numpy(), found[key].features)
        else:
            assert (stacked.offsets[i], stacked.lengths[i]) == (-1, 0)
            with pytest.raises(KeyError, match="hash-nope"):
                stacked.series(i)
    assert stacked.offsets[6 + 3] == stacked.offsets[-1]  # asked twice: the same rows
    assert found[(empty.content_hash, RID)].features.shape == (0, DIM)
    alone = series("alone", 0, 9)  # a file of one frameless series
    cache.write(RID, [alone])
    assert_same(cache.read([("hash-alone", RID)])[("hash-alone", RID)], alone)
    assert cache.read_stacked([("hash-alone", RID)]).lengths.tolist() == [0]
    nothing = cache.read_stacked([("hash-nope", RID)])
    assert nothing.features.shape == (0, 0) and nothing.missing == [("hash-nope", RID)]


def test_read_stacked_refuses_two_feature_dims(cache: FeatureCache) -> None:
    cache.write(RID, [series("a", 3, 0)])
    cache.write(OTHER_RID, [series("a", 3, 0, dim=DIM * 2)])
    with pytest.raises(ValueError, match="one recipe at a time"):
        cache.read_stacked([("hash-a", RID), ("hash-a", OTHER_RID)])


# --- an index from before row offsets -------------------------------------------------------------


def part_table(items: list[SeriesFeatures], recipe_id: str) -> pa.Table:
    """A part file's rows as lstmpipe wrote them, by hand."""
    return pa.table(
        {
            "series_id": [i.series_id for i in items for _ in range(len(i.features))],
            "content_hash": [i.content_hash for i in items for _ in range(len(i.features))],
            "recipe_id": [recipe_id] * sum(len(i.features) for i in items),
            "frame_index": pa.array([f for i in items for f in range(len(i.features))], pa.int32()),
            "t": np.concatenate([i.t for i in items]),
            "feature": pa.FixedSizeListArray.from_arrays(
                pa.array(np.concatenate([i.features for i in items]).reshape(-1)), DIM
            ),
        },
        schema=feature_schema(DIM),
    )


def old_cache(root: Path, files: list[list[SeriesFeatures]]) -> dict:
    """A cache as the index without row offsets left it: (key) -> SeriesFeatures written."""
    (root / "features").mkdir(parents=True)
    with sqlite3.connect(root / "index.sqlite") as db:
        db.execute(
            "CREATE TABLE entries (content_hash TEXT, recipe_id TEXT, series_id TEXT,"
            " file TEXT, n_frames INTEGER, written_at REAL, PRIMARY KEY (content_hash, recipe_id))"
        )
        db.execute("CREATE TABLE recipes (recipe_id TEXT PRIMARY KEY, recipe TEXT)")
        for n, items in enumerate(files):
            table = part_table(items, RID)
            if n % 2:  # rows of another layout: readers of old entries must not rely on row order
                table = table.take(np.random.default_rng(n).permutation(table.num_rows))
            pq.write_table(table, root / "features" / f"part-old{n}.parquet")
            db.executemany(
                "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (i.content_hash, RID, i.series_id, f"part-old{n}.parquet", len(i.features), n)
                    for i in items
                ],
            )
    return {(i.content_hash, RID): i for items in files for i in items}


def test_an_index_without_row_offsets_still_reads_and_compaction_upgrades_it(
    tmp_path: Path,
) -> None:
    written = old_cache(
        tmp_path / "c",
        [[series(f"o{n}{i}", 2 + i, 10 * n + i) for i in range(6)] for n in range(4)],
    )
    cache = FeatureCache.local(tmp_path / "c")
    with sqlite3.connect(index_file(cache)) as db:
        assert "row_offset" in {row[1] for row in db.execute("PRAGMA table_info(entries)")}
        assert (
            db.execute("SELECT COUNT(*) FROM entries WHERE row_offset IS NULL").fetchone()[0] == 24
        )
    assert_all_same(cache.read(list(written)), written)
    stacked = cache.read_stacked(list(written))
    for i, key in enumerate(stacked.keys):
        np.testing.assert_array_equal(stacked.series(i).numpy(), written[key].features)
    assert cache.frame_counts(list(written)) == {k: len(v.features) for k, v in written.items()}
    new = series("new", 4, 99)
    cache.write(RID, [new])  # new entries beside old ones
    written[(new.content_hash, RID)] = new
    assert_all_same(everything(cache), written)
    FeatureCache.local(root_of(cache))  # opening again changes nothing
    result = cache.compact(orphan_grace_s=0)
    assert result["series_moved"] == 25 and result["files_after"] == 1
    with sqlite3.connect(index_file(cache)) as db:
        assert (
            db.execute("SELECT COUNT(*) FROM entries WHERE row_offset IS NULL").fetchone()[0] == 0
        )
    assert_all_same(everything(cache), written)


# --- compaction -----------------------------------------------------------------------------------


def scattered(cache: FeatureCache) -> dict:
    """Small files of two recipes and two dtypes, with dead rows (keys a second writer lost)."""
    written = {}
    for n in range(12):
        items = [series(f"f{n}s{i}", 1 + (n + i) % 6, 100 * n + i) for i in range(1 + n % 3)]
        if n % 4 == 3:
            items = [dataclasses.replace(i, features=i.features.astype(np.float16)) for i in items]
        recipe_id = OTHER_RID if n % 5 == 4 else RID
        # dead rows in one file
        cache.write(recipe_id, items + ([series("f0s0", 9, 999)] if n == 6 else []))
        for i in items:
            want = (
                i
                if i.features.dtype == np.float32
                else dataclasses.replace(i, features=i.features.astype(np.float32))
            )
            written.setdefault((i.content_hash, recipe_id), want)
    return written


def indexed_files(cache: FeatureCache) -> set[str]:
    with sqlite3.connect(index_file(cache)) as db:
        return {name for (name,) in db.execute("SELECT DISTINCT file FROM entries")}


def assert_stored_once(cache: FeatureCache) -> None:
    """Files on disk are exactly the indexed ones, holding each entry's rows once, nothing else."""
    assert {p.name for p in parts(cache)} == indexed_files(cache)
    assert sum(pq.read_metadata(p).num_rows for p in parts(cache)) == cache.stats()["frames"]


def test_compaction_keeps_every_entry_exactly_and_drops_files(cache: FeatureCache) -> None:
    written = scattered(cache)
    assert_all_same(everything(cache), written)
    before = cache.stats()
    result = cache.compact(orphan_grace_s=0)
    # float32 and float16 parts stay apart
    assert result["files_before"] == 12 and result["files_after"] == 2
    assert result["series_moved"] == len(written) and result["files_written"] == 2
    assert result["bytes_before"] > 0 and result["bytes_after"] == cache.stats()["bytes"]
    assert_all_same(everything(cache), written)
    assert {k: v for k, v in cache.stats().items() if k != "bytes"} == {
        k: v for k, v in before.items() if k != "bytes"
    }
    assert_stored_once(cache)
    types = {
        (t.value_type, t.list_size)
        for t in (pq.read_schema(p).field("feature").type for p in parts(cache))
    }
    assert types == {(pa.float32(), DIM), (pa.float16(), DIM)}
    again = cache.compact(orphan_grace_s=0)  # nothing left to merge
    assert again["files_written"] == 0 and again["files_after"] == 2


def test_compaction_leaves_large_files_and_respects_the_target(cache: FeatureCache) -> None:
    big = [series(f"big{i}", 50, i) for i in range(4)]
    target = part_of(cache, cache.write(RID, big))  # 200 rows
    small = [[series(f"small{n}", 30, 10 + n)] for n in range(6)]
    for items in small:
        cache.write(RID, items)
    # 30-row files, three to a 90-row file
    result = cache.compact(target_rows=100, orphan_grace_s=0)
    assert target in parts(cache) and result["files_after"] == 3 and result["series_moved"] == 6
    assert all(pq.read_metadata(p).num_rows <= 100 for p in parts(cache) if p != target)
    assert_all_same(
        everything(cache), {(i.content_hash, RID): i for i in big + [s[0] for s in small]}
    )


def boom(*args, **kwargs):
    raise OSError("injected crash")


@pytest.mark.parametrize("step", ["write", "rename", "commit", "unlink"])
def test_a_crash_at_any_compaction_step_leaves_every_entry_readable(
    cache: FeatureCache, step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = scattered(cache)
    with monkeypatch.context() as crash, ExitStack() as failing:
        if step == "write":  # while the new file is written
            crash.setattr(cache.store, "put", boom)
        elif step == "rename":  # the temp file is complete and fsynced, the rename fails
            crash.setattr(os, "replace", boom)
        elif step == "commit":  # the new file is in place, repointing the index fails
            failing.enter_context(failing_commits(cache))
        else:  # the index points at the new file; deleting the old ones fails
            crash.setattr(os, "unlink", boom)
        with pytest.raises((OSError, OperationalError), match="injected"):
            cache.compact(orphan_grace_s=0)
    assert not list(features_dir(cache).glob(".tmp-*"))
    assert_all_same(everything(cache), written)  # complete, and nothing else reported
    assert cache.stats()["series"] == len(written)
    # the next compaction finishes the job and removes the leftovers
    cache.compact(orphan_grace_s=0)
    assert_all_same(everything(cache), written)
    assert_stored_once(cache)
    assert len(parts(cache)) == 2


def test_leftovers_younger_than_the_grace_are_kept(cache: FeatureCache) -> None:
    """A file renamed by a writer whose index rows are not committed yet looks orphaned: keep it."""
    written = scattered(cache)
    with failing_commits(cache), pytest.raises(OperationalError):
        cache.compact()
    leftovers = {p.name for p in parts(cache)} - indexed_files(cache)
    assert len(leftovers) == 1
    cache.compact()  # default grace: the young leftover stays
    assert leftovers <= {p.name for p in parts(cache)}
    cache.compact(orphan_grace_s=0)
    assert not leftovers & {p.name for p in parts(cache)}
    assert_all_same(everything(cache), written)


@pytest.mark.parametrize("reader", ["read", "read_stacked"])
def test_a_reader_whose_file_was_compacted_away_looks_again(
    cache: FeatureCache, reader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = scattered(cache)
    old_files = {p.name for p in parts(cache)}
    real = FeatureCache._locate
    calls = []

    def locate_then_compact(self, keys):
        located = real(self, keys)
        if not calls:  # between this reader's lookup and its open, another process compacts
            FeatureCache.local(root_of(self)).compact(orphan_grace_s=0)
        calls.append(len(located))
        return located

    monkeypatch.setattr(FeatureCache, "_locate", locate_then_compact)
    if reader == "read":
        assert_all_same(cache.read(list(written)), written)
    else:
        stacked = cache.read_stacked(list(written))
        assert stacked.missing == []
        for i, key in enumerate(stacked.keys):
            np.testing.assert_array_equal(stacked.series(i).numpy(), written[key].features)
    assert not old_files & {p.name for p in parts(cache)}
    assert calls == [len(written), len(written)]  # every key looked up once more, none lost


# --- crashes while writing ------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["rename", "after-rename", "commit"])
def test_a_crash_mid_write_leaves_no_torn_entry(
    cache: FeatureCache, step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = [series("kept", 3, 0)]
    cache.write(RID, kept)
    lost = [series("lost1", 5, 1), series("lost2", 2, 2), dataclasses.replace(series("kept", 4, 3))]
    real = cache.store.put

    def write_then_crash(*args, **kwargs):
        real(*args, **kwargs)
        raise OSError("injected crash after the rename")

    with monkeypatch.context() as crash, ExitStack() as failing:
        if step == "rename":
            crash.setattr(os, "replace", boom)
        elif step == "after-rename":
            crash.setattr(cache.store, "put", write_then_crash)
        else:
            failing.enter_context(failing_commits(cache))
        with pytest.raises(OSError, match="injected"):
            cache.write(RID, lost)
    assert not list(features_dir(cache).glob(".tmp-*"))
    lost_keys = [(i.content_hash, RID) for i in lost[:2]]
    assert cache.present(lost_keys) == set() and cache.read(lost_keys) == {}
    assert cache.read_stacked(lost_keys).missing == lost_keys
    assert_all_same(everything(cache), {("hash-kept", RID): kept[0]})
    cache.write(RID, lost)  # the retry commits them; the key already present keeps its first entry
    assert_all_same(
        everything(cache),
        {("hash-kept", RID): kept[0], **{(i.content_hash, RID): i for i in lost[:2]}},
    )
    cache.compact(orphan_grace_s=0)
    assert_stored_once(cache)


def test_a_write_whose_file_was_swept_as_an_orphan_indexes_nothing(
    cache: FeatureCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer stalled past the grace between rename and commit fails, not indexing a lost file."""
    real = cache.store.put

    def write_then_stall(key, write):
        real(key, write)
        # as if the file were already old
        FeatureCache.local(root_of(cache)).compact(orphan_grace_s=-60)

    monkeypatch.setattr(cache.store, "put", write_then_stall)
    with pytest.raises(FileNotFoundError, match="write the series again"):
        cache.write(RID, [series("a", 3, 0)])
    assert cache.stats()["series"] == 0 and parts(cache) == []


def test_opening_a_current_index_takes_no_write_lock(
    cache: FeatureCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers open the cache while one writes or compacts: opening never waits for the writer."""
    cache.write(RID, [series("a", 3, 0)])
    monkeypatch.setattr(state_database, "SQLITE_BUSY_TIMEOUT_S", 0.1)
    writer = sqlite3.connect(index_file(cache))
    try:
        writer.execute("BEGIN IMMEDIATE")
        assert FeatureCache.local(root_of(cache)).present([("hash-a", RID)]) == {("hash-a", RID)}
    finally:
        writer.close()


def test_a_merged_part_swept_before_its_repoint_moves_nothing(
    cache: FeatureCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two compactions at once, one sweeping with a short grace: the other's new part may be
    taken for an orphan before its entries are repointed; they then stay where they were."""
    written = scattered(cache)
    real = cache.store.put

    def put_then_swept(key, write):
        real(key, write)
        FeatureCache.local(root_of(cache)).compact(target_rows=1, orphan_grace_s=-60)

    monkeypatch.setattr(cache.store, "put", put_then_swept)
    assert cache.compact(orphan_grace_s=0)["series_moved"] == 0
    monkeypatch.undo()
    assert_all_same(everything(cache), written)
    cache.compact(orphan_grace_s=0)
    assert_all_same(everything(cache), written)
    assert_stored_once(cache)
