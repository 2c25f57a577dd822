"""lib.cache: exact round trips, many series per file, first writer wins, crash leftovers invisible."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lib.cache import FeatureCache, SeriesFeatures, feature_schema
from lib.recipe import FeatureRecipe

DIM = 8
RECIPE = FeatureRecipe(decoder="ffmpeg 7.1", fps=4.0, num_frames=None, size=64, backbone="resnet18",
                       weights="none(seed=0)", weights_digest="random-seed-0", precision="fp32", feature_dim=DIM)
RID = RECIPE.recipe_id
OTHER_RID = dataclasses.replace(RECIPE, size=96).recipe_id


def series(name: str, frames: int, seed: int, dim: int = DIM, fps: float = 4.0) -> SeriesFeatures:
    rng = np.random.default_rng(seed)
    return SeriesFeatures(
        series_id=f"2026-11-20/{name}.mp4",
        content_hash=f"hash-{name}",
        features=rng.normal(size=(frames, dim)).astype(np.float32),  # full float32 mantissas: exactness is tested
        t=np.arange(frames) / fps + 0.125,
    )


def assert_same(got: SeriesFeatures, want: SeriesFeatures) -> None:
    assert (got.series_id, got.content_hash) == (want.series_id, want.content_hash)
    assert got.features.dtype == np.float32 and got.t.dtype == np.float64
    np.testing.assert_array_equal(got.features, want.features)  # exact: no dtype round trip, no mixing
    np.testing.assert_array_equal(got.t, want.t)


def parts(cache: FeatureCache) -> list[Path]:
    return sorted(cache.files.glob("*.parquet"))


@pytest.fixture
def cache(tmp_path: Path) -> FeatureCache:
    return FeatureCache(tmp_path / "cache")


def test_write_then_read_is_exact(cache: FeatureCache) -> None:
    items = [series("a", 7, 0), series("b", 1, 1), series("c", 30, 2)]
    cache.write(RID, items)
    found = cache.read([(i.content_hash, RID) for i in items])
    assert set(found) == {(i.content_hash, RID) for i in items}
    for item in items:
        assert_same(found[(item.content_hash, RID)], item)


def test_many_series_share_one_file_and_a_subset_reads_back_unmixed(cache: FeatureCache) -> None:
    items = [series(f"s{i:02d}", 3 + i % 5, i) for i in range(40)]
    target = cache.write(RID, items)
    assert parts(cache) == [target]  # one file for 40 series, not 40 files
    wanted = items[17:19] + items[3:4]
    found = cache.read([(i.content_hash, RID) for i in wanted])
    for item in wanted:
        assert_same(found[(item.content_hash, RID)], item)
    assert cache.stats()["series"] == 40 and cache.stats()["frames"] == sum(len(i.features) for i in items)


def test_missing_keys_are_absent_and_recipes_keep_entries_apart(cache: FeatureCache) -> None:
    a = series("a", 5, 0)
    cache.write(RID, [a])
    assert cache.read([("hash-a", OTHER_RID), ("hash-nope", RID)]) == {}
    assert cache.present([("hash-a", RID), ("hash-a", OTHER_RID), ("hash-nope", RID)]) == {("hash-a", RID)}
    a_other = dataclasses.replace(series("a", 3, 9), series_id=a.series_id)
    cache.write(OTHER_RID, [a_other])  # same content, another recipe: another entry
    found = cache.read([("hash-a", RID), ("hash-a", OTHER_RID)])
    assert_same(found[("hash-a", RID)], a)
    assert_same(found[("hash-a", OTHER_RID)], a_other)
    assert cache.frame_counts([("hash-a", RID), ("hash-a", OTHER_RID), ("hash-b", RID)]) == {
        ("hash-a", RID): 5, ("hash-a", OTHER_RID): 3}
    assert cache.present([]) == set() and cache.read([]) == {}


def test_rows_come_back_in_frame_order_whatever_the_file_order(cache: FeatureCache) -> None:
    """Another tool may rewrite a part (compaction, a copy): readers sort by frame_index, not row order."""
    item = series("a", 12, 0)
    target = cache.write(RID, [item, series("b", 4, 1)])
    table = pq.read_table(target)
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    assert shuffled["frame_index"].to_pylist() != sorted(shuffled["frame_index"].to_pylist())
    pq.write_table(shuffled, target)
    assert_same(cache.read([("hash-a", RID)])[("hash-a", RID)], item)


def test_duplicate_keys_in_one_write_are_stored_once(cache: FeatureCache) -> None:
    first, again = series("a", 6, 0), series("a", 6, 1)  # same content hash twice (a clip copied twice)
    target = cache.write(RID, [first, series("b", 2, 2), again])
    assert pq.read_metadata(target).num_rows == 6 + 2
    assert_same(cache.read([("hash-a", RID)])[("hash-a", RID)], first)
    assert cache.stats()["series"] == 2


def test_a_second_writer_of_a_key_changes_nothing_that_is_read(tmp_path: Path) -> None:
    """Two workers that extracted the same series: the first committed entry stays, read once."""
    one, two = FeatureCache(tmp_path / "c"), FeatureCache(tmp_path / "c")  # two handles, as two processes hold
    first = series("a", 6, 0)
    one.write(RID, [first])
    two.write(RID, [dataclasses.replace(series("a", 9, 1), series_id="elsewhere/a.mp4"), series("b", 2, 2)])
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
    rows = pa.table({
        "series_id": [orphan.series_id] * 5, "content_hash": [orphan.content_hash] * 5, "recipe_id": [RID] * 5,
        "frame_index": pa.array(range(5), pa.int32()), "t": orphan.t,
        "feature": pa.FixedSizeListArray.from_arrays(pa.array(orphan.features.reshape(-1)), DIM),
    }, schema=feature_schema(DIM))
    pq.write_table(rows, cache.files / "part-crashed.parquet")
    (cache.files / ".tmp-half.parquet").write_bytes(b"PAR1 half a file")
    key = (orphan.content_hash, RID)
    assert cache.present([key]) == set() and cache.read([key]) == {} and cache.frame_counts([key]) == {}
    assert cache.stats()["series"] == 1
    cache.write(RID, [orphan])  # and the real write of that key later works as usual
    assert_same(cache.read([key])[key], orphan)


def test_parts_are_plain_parquet_with_the_documented_schema(cache: FeatureCache) -> None:
    items = [series("a", 4, 0), series("b", 3, 1)]
    target = cache.write(RID, items)
    assert target.parent == cache.files and target.name.startswith("part-")
    table = pq.read_table(target)  # plain pyarrow: no lstmpipe code needed to read the cache
    assert table.schema.names == ["series_id", "content_hash", "recipe_id", "frame_index", "t", "feature"]
    assert table.schema.field("feature").type == pa.list_(pa.float32(), DIM)
    assert table.schema.field("frame_index").type == pa.int32() and table.schema.field("t").type == pa.float64()
    assert table["series_id"].to_pylist() == [items[0].series_id] * 4 + [items[1].series_id] * 3
    assert table["frame_index"].to_pylist() == [0, 1, 2, 3, 0, 1, 2]
    assert set(table["recipe_id"].to_pylist()) == {RID}
    np.testing.assert_array_equal(np.array(table["feature"].to_pylist()[4:], np.float32), items[1].features)
    with sqlite3.connect(cache.index_path) as db:  # the index is plain SQLite, too
        assert db.execute("SELECT content_hash, file, n_frames FROM entries ORDER BY content_hash").fetchall() == [
            ("hash-a", target.name, 4), ("hash-b", target.name, 3)]


def test_an_empty_write_writes_nothing(cache: FeatureCache) -> None:
    assert cache.write(RID, []) is None
    assert parts(cache) == []


def test_recipes_round_trip(cache: FeatureCache) -> None:
    assert cache.recipe(RID) is None
    cache.add_recipe(RECIPE)
    cache.add_recipe(RECIPE)  # idempotent
    assert cache.recipe(RID) == RECIPE
    assert FeatureCache(cache.root).recipe(RID) == RECIPE  # persisted, not held in memory
    with sqlite3.connect(cache.index_path) as db:
        stored = json.loads(db.execute("SELECT recipe FROM recipes").fetchone()[0])
    assert stored == RECIPE.to_dict()


def test_stats_count_series_frames_recipes_and_bytes(cache: FeatureCache) -> None:
    assert cache.stats() == {"series": 0, "frames": 0, "recipes": 0, "bytes": 0}
    cache.add_recipe(RECIPE)
    cache.write(RID, [series("a", 4, 0), series("b", 6, 1)])
    cache.write(OTHER_RID, [series("a", 2, 2)])
    stats = cache.stats()
    assert {k: stats[k] for k in ("series", "frames", "recipes")} == {"series": 3, "frames": 12, "recipes": 1}
    assert stats["bytes"] == sum(p.stat().st_size for p in parts(cache)) > 0
