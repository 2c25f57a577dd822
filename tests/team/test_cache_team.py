"""The feature cache in team mode (PostgreSQL index, parts in an S3 bucket), on real servers:
the guarantees of lib/features/cache.py across processes that share no disk."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import IO

import numpy as np
import pytest
import sqlalchemy as sa

from lstmpipe.lib.features.cache import PARTS, FeatureCache, SeriesFeatures, entries
from lstmpipe.lib.state.places import StatePlaces
from tests.team.conftest import Team

RID = "recipe-team"
DIM = 4
GROUPS = 6  # writes per writer process, each of the same keys in both
PER_GROUP = 20


def series(key: int, writer: int, frames: int = 3) -> SeriesFeatures:
    """Features that say which key and which writer made them."""
    features = np.full((frames, DIM), key * 10 + writer, np.float32)
    features[:, 0] = np.arange(frames)
    return SeriesFeatures(f"s/{key}.mp4", f"h{key:06d}", features, np.arange(frames) / 4.0)


def places(team: Team, home: Path) -> StatePlaces:
    return StatePlaces(str(home), team.database, team.store, retry_s=30.0)


def part_keys(cache: FeatureCache) -> set[str]:
    return {item.key for item in cache.store.list(PARTS)}


def referenced(cache: FeatureCache) -> set[str]:
    return cache.db.read(
        lambda conn: {PARTS + f for (f,) in conn.execute(sa.select(entries.c.file).distinct())}
    )


def test_write_read_compact_round_trip_on_postgres_and_s3(team: Team, tmp_path: Path) -> None:
    cache = FeatureCache.at(places(team, tmp_path / "one"))
    written = {}
    for n in range(5):  # five small parts
        items = [series(10 * n + i, 0, frames=1 + i) for i in range(4)]
        assert cache.write(RID, items) is not None
        written |= {(i.content_hash, RID): i for i in items}
    keys = list(written)
    other = FeatureCache.at(places(team, tmp_path / "two"))  # another host's view
    assert other.present(keys + [("nope", RID)]) == set(keys)
    assert other.frame_counts(keys) == {k: len(v.features) for k, v in written.items()}
    found = other.read(keys)
    for key, want in written.items():
        np.testing.assert_array_equal(found[key].features, want.features)
        np.testing.assert_array_equal(found[key].t, want.t)
    before = other.stats()
    assert before["series"] == 20 and before["bytes"] > 0

    result = other.compact(orphan_grace_s=0)
    assert result["files_before"] == 5 and result["files_after"] == 1
    assert result["series_moved"] == 20
    stacked = cache.read_stacked(keys)
    assert stacked.missing == []
    for i, key in enumerate(stacked.keys):
        np.testing.assert_array_equal(stacked.series(i).numpy(), written[key].features)
    assert part_keys(cache) == referenced(cache)
    assert all(key.startswith(f"{PARTS}part-") for key in part_keys(cache))
    # nothing of the cache lies on either home's disk
    assert not list(tmp_path.rglob("*.parquet")) and not list(tmp_path.rglob("index.sqlite"))


def _write_groups(state: StatePlaces, writer: int, start: Event) -> None:
    """A writer process: every group of keys, one write each, as soon as `start` is set."""
    cache = FeatureCache.at(state)
    start.wait(60)
    for g in range(GROUPS):
        cache.write(RID, [series(g * PER_GROUP + i, writer) for i in range(PER_GROUP)])


def test_two_processes_writing_the_same_keys_index_each_once(team: Team, tmp_path: Path) -> None:
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Event()
    writers = [
        spawn.Process(target=_write_groups, args=(places(team, tmp_path / f"w{w}"), w + 1, start))
        for w in range(2)
    ]
    for process in writers:
        process.start()
    FeatureCache.at(places(team, tmp_path / "driver"))  # the tables exist before the race
    start.set()
    for process in writers:
        process.join(300)
        assert process.exitcode == 0

    cache = FeatureCache.at(places(team, tmp_path / "driver"))
    keys = [(f"h{k:06d}", RID) for k in range(GROUPS * PER_GROUP)]
    rows = cache.db.read(
        lambda conn: conn.execute(sa.select(entries.c.content_hash, entries.c.recipe_id)).all()
    )
    assert sorted(tuple(r) for r in rows) == sorted(keys)  # each key indexed once
    found = cache.read(keys)
    for g in range(GROUPS):  # a group was one write: won whole by one writer
        winners = {
            int(found[keys[g * PER_GROUP + i]].features[0, 1]) % 10 for i in range(PER_GROUP)
        }
        assert len(winners) == 1 and winners <= {1, 2}
    # each loser deleted its part: the bucket holds exactly the indexed parts, one per group
    assert part_keys(cache) == referenced(cache) and len(part_keys(cache)) == GROUPS


def _put_then_hang(state: StatePlaces, stored: Event) -> None:
    """A writer killed between storing its part and committing its index rows."""
    cache = FeatureCache.at(state)
    real = cache.store.put

    def put_then_wait(key: str, write: Callable[[IO[bytes]], object]) -> None:
        real(key, write)
        stored.set()
        time.sleep(600)  # SIGKILLed here

    cache.store.put = put_then_wait  # type: ignore[method-assign]
    cache.write(RID, [series(k, 1) for k in range(5)])


def test_a_writer_killed_before_its_commit_leaves_nothing_visible(
    team: Team, tmp_path: Path
) -> None:
    spawn = multiprocessing.get_context("spawn")
    stored = spawn.Event()
    cache = FeatureCache.at(places(team, tmp_path / "driver"))
    writer = spawn.Process(target=_put_then_hang, args=(places(team, tmp_path / "w"), stored))
    writer.start()
    assert stored.wait(120), "the writer never stored its part"
    writer.kill()
    writer.join(30)
    keys = [(f"h{k:06d}", RID) for k in range(5)]
    assert cache.present(keys) == set() and cache.read(keys) == {}
    assert cache.read_stacked(keys).missing == keys and cache.stats()["series"] == 0
    (orphan,) = part_keys(cache)  # its part is in the bucket, referenced by nothing
    assert cache.compact(orphan_grace_s=30)["orphans_deleted"] == 0  # young: may be committing
    assert part_keys(cache) == {orphan}
    time.sleep(3.5)  # S3 times are whole seconds
    assert cache.compact(orphan_grace_s=2)["orphans_deleted"] == 1
    assert part_keys(cache) == set()
    cache.write(RID, [series(k, 2) for k in range(5)])  # the series written again: all there
    assert cache.present(keys) == set(keys)


def test_a_part_swept_before_its_commit_is_never_indexed(team: Team, tmp_path: Path) -> None:
    """The sweep and a writer's commit take the same lock: the writer that stalled past the grace
    finds its part gone and indexes nothing, rather than rows of a deleted part."""
    cache = FeatureCache.at(places(team, tmp_path / "a"))
    real = cache.store.put

    def put_then_stall(key: str, write: Callable[[IO[bytes]], object]) -> None:
        real(key, write)
        FeatureCache.at(places(team, tmp_path / "b")).compact(orphan_grace_s=-60)

    cache.store.put = put_then_stall  # type: ignore[method-assign]
    with pytest.raises(FileNotFoundError, match="write the series again"):
        cache.write(RID, [series(1, 1)])
    assert cache.stats()["series"] == 0 and part_keys(cache) == set()


def test_present_and_frame_counts_for_100k_keys(team: Team, tmp_path: Path) -> None:
    cache = FeatureCache.at(places(team, tmp_path / "home"))
    n = 100_000
    # index rows made on the server (the lookups read only the index; 100k writes would only
    # time the writes)
    cache.db.write(
        lambda conn: conn.execute(
            sa.text(
                "INSERT INTO entries SELECT 'h' || lpad(k::text, 6, '0'), :rid, 's/' || k,"
                " 'part-x.parquet', 1 + k % 7, 0, k FROM generate_series(0, :n - 1) AS k"
            ),
            {"rid": RID, "n": n},
        )
    )
    # half cached, half not: what `plan` asks of a source with new series
    keys = [(f"h{k:06d}", RID) for k in range(n // 2, n + n // 2)]
    started = time.perf_counter()
    present = cache.present(keys)
    took_present = time.perf_counter() - started
    started = time.perf_counter()
    counts = cache.frame_counts(keys)
    took_counts = time.perf_counter() - started
    print(
        f"\n100k keys against PostgreSQL: present {took_present:.2f} s, "
        f"frame_counts {took_counts:.2f} s"
    )
    assert len(present) == n // 2 and counts == {
        (f"h{k:06d}", RID): 1 + k % 7 for k in range(n // 2, n)
    }
    assert took_present < 20 and took_counts < 20


def test_keys_of_any_text_are_looked_up_exactly(team: Team, tmp_path: Path) -> None:
    """Keys are sent as array literals: quotes, backslashes, commas and braces stay themselves."""
    cache = FeatureCache.at(places(team, tmp_path / "home"))
    odd = ['a"b', "c\\d", "e,f", "{g}", "h i", "NULL", "\u00e9"]
    items = [
        SeriesFeatures(f"s/{i}", text, np.ones((2, DIM), np.float32), np.arange(2.0))
        for i, text in enumerate(odd)
    ]
    cache.write(RID, items)
    keys = [(text, RID) for text in odd]
    assert cache.present(keys + [("a", RID), ("b", RID)]) == set(keys)
    assert cache.frame_counts(keys) == dict.fromkeys(keys, 2)
    assert set(cache.read(keys)) == set(keys)
    assert set(cache.recipes_of(odd)) == set(odd)
    cache.write(RID, [series(1, 1)])
    assert cache.compact(orphan_grace_s=0)["series_moved"] == len(odd) + 1
    assert set(cache.read(keys)) == set(keys)
