"""The feature cache under any interleaving of writes, crashes, compactions and reads (issue 8, SPEC
§3.3): every indexed entry is complete and matches its key, each key is indexed once, and its rows
lie exactly once in the file the index names. Hypothesis draws the interleavings; crashes are
exceptions injected at the narrowest points: inside the Parquet write before the rename, and between
the rename and the index commit (of a write, or of a compaction's merge)."""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pyarrow.parquet as pq
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from lstmpipe.lib import atomic
from lstmpipe.lib.features import cache
from lstmpipe.lib.features.cache import FeatureCache, SeriesFeatures
from tests.cache_files import features_dir, index_file

RECIPES = ["r1", "r2"]
HASHES = [f"h{i}" for i in range(6)]
DIM = 4
CRASHES = ["none", "in-parquet-write", "after-rename"]


class Crash(Exception):
    """An injected crash: what a killed process or failed disk leaves behind, minus the process."""


def series(content_hash: str, version: int) -> SeriesFeatures:
    """Features that say which key and which write made them: a read shows any mix-up."""
    frames = 1 + (int(content_hash[1:]) + version) % 4
    features = np.full((frames, DIM), int(content_hash[1:]) * 100 + version, np.float32)
    features[:, 0] = np.arange(frames)  # frame order is part of being complete
    return SeriesFeatures(f"id-{content_hash}", content_hash, features, np.arange(frames) / 4.0)


def crashing(where: str, feature_cache: FeatureCache):
    """A context that makes the next Parquet write of the cache crash at `where`."""
    if where == "in-parquet-write":
        real_write = atomic.pq.write_table

        def half_then_crash(table, handle, **kwargs):
            # half a file, then death
            real_write(table.slice(0, max(1, table.num_rows // 2)), handle, **kwargs)
            raise Crash("injected: killed while writing the Parquet file")

        return mock.patch.object(atomic.pq, "write_table", half_then_crash)
    real = feature_cache.store.put

    def renamed_then_crash(*args, **kwargs):
        real(*args, **kwargs)
        raise Crash("injected: killed between the rename and the index commit")

    return mock.patch.object(feature_cache.store, "put", renamed_then_crash)


class CacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(prefix="cache-props-")
        self.root = Path(self.tmp.name)
        self.cache = FeatureCache.local(self.root)
        # key -> the series its first committed write held
        self.first: dict[tuple[str, str], SeriesFeatures] = {}
        self.version = 0

    def teardown(self) -> None:
        self.tmp.cleanup()

    @rule(
        recipe=st.sampled_from(RECIPES),
        hashes=st.lists(st.sampled_from(HASHES), min_size=1, max_size=4),
        crash=st.sampled_from(CRASHES),
    )
    def write(self, recipe: str, hashes: list[str], crash: str) -> None:
        self.version += 1
        # a repeated hash within one write is stored once
        items = [series(h, self.version) for h in hashes]
        if crash == "none":
            self.cache.write(recipe, items)
            for item in items:
                self.first.setdefault((item.content_hash, recipe), item)
            return
        with crashing(crash, self.cache):
            try:
                self.cache.write(recipe, items)
            except Crash:
                pass  # nothing of this write may become visible
            else:
                raise AssertionError("the injected crash did not happen")

    @rule(
        target_rows=st.sampled_from([2, 8, 1 << 16]),
        crash=st.sampled_from(CRASHES),
        sweep=st.booleans(),
    )
    def compact(self, target_rows: int, crash: str, sweep: bool) -> None:
        # sweeping: no writer is between rename and commit here
        grace = 0.0 if sweep else cache.ORPHAN_GRACE_S
        if crash == "none":
            self.cache.compact(target_rows=target_rows, orphan_grace_s=grace)
            return
        # a merge that crashed leaves its entries pointing at the old files
        with crashing(crash, self.cache), contextlib.suppress(Crash):
            self.cache.compact(target_rows=target_rows, orphan_grace_s=grace)

    @rule(hashes=st.lists(st.sampled_from(HASHES), max_size=6), recipe=st.sampled_from(RECIPES))
    def read(self, hashes: list[str], recipe: str) -> None:
        keys = [(h, recipe) for h in hashes]
        other = FeatureCache.local(self.root)  # another process's view
        found = other.read(keys)
        assert set(found) == {k for k in keys if k in self.first}
        stacked = other.read_stacked(keys)
        assert set(stacked.missing) == {k for k in keys if k not in self.first}
        for i, key in enumerate(stacked.keys):
            if key in self.first:
                np.testing.assert_array_equal(stacked.series(i).numpy(), self.first[key].features)

    @invariant()
    def every_indexed_entry_is_complete_and_matches_its_key(self) -> None:
        with sqlite3.connect(index_file(self.cache)) as db:
            rows = db.execute(
                "SELECT content_hash, recipe_id, file, n_frames, row_offset FROM entries"
            ).fetchall()
        keys = [(h, r) for h, r, *_ in rows]
        assert len(keys) == len(set(keys)), "a key is indexed twice"
        assert set(keys) == set(self.first), (
            "the index lost a committed entry or shows an uncommitted one"
        )
        found = self.cache.read(keys)
        for key in keys:
            expected = self.first[key]
            np.testing.assert_array_equal(found[key].features, expected.features)
            np.testing.assert_array_equal(found[key].t, expected.t)
            assert found[key].series_id == expected.series_id
        # the named file holds the key's rows once, where the index says
        for h, r, name, n_frames, offset in rows:
            table = pq.read_table(
                features_dir(self.cache) / name,
                columns=["content_hash", "recipe_id", "frame_index"],
            )
            mine = [
                i
                for i, (th, tr) in enumerate(
                    zip(
                        table["content_hash"].to_pylist(),
                        table["recipe_id"].to_pylist(),
                        strict=False,
                    )
                )
                if (th, tr) == (h, r)
            ]
            assert mine == list(range(offset, offset + n_frames)), (h, r, name)
        assert not list(features_dir(self.cache).glob(".tmp-*")), "a temp file was left"


CacheMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=12,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_cache_under_writes_crashes_compactions_and_reads = CacheMachine.TestCase
