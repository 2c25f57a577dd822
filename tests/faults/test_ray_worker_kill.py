"""A FeatureWorker actor's process killed with SIGKILL in the middle of extraction (issue 8, SPEC
§6: a killed Ray worker is retried without duplicate rows).

One shard over a real local Ray (two actors, one CPU each, groups of 8 series): as soon as the cache
holds a finished group, one busy actor's process is killed. Its group goes back to the queue and a
replacement joins the pool (tasks/ray_workers.py), so the shard itself completes, with no Prefect
retry: every series is indexed once, reads back complete, and the shard's statuses say what
happened (all extracted, none failed).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ray._private import state as ray_state

from lstmpipe.lib.config import SourcesConfig, load_config
from lstmpipe.lib.demo.video import SampleSpec, generate_archive
from lstmpipe.lib.features.cache import FeatureCache
from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.state.places import StatePlaces
from lstmpipe.tasks.extract import GROUP, discover_source, extract_shard, feature_recipe
from tests.cache_files import index_file

pytestmark = pytest.mark.slow
TINY = {
    "sampling.size": 64,
    "sampling.fps": 4.0,
    "backbone.weights": "none",
    "runtime.workers": 2,
    "runtime.executor": "ray",
}
SERIES = 48  # six groups of 8 over two actors: both are busy when the first group lands
TIMEOUT_S = 600  # a bound for a hang, not for speed: CI runs three shards on two cores


def indexed(cache_root: Path) -> int:
    try:
        with sqlite3.connect(cache_root / "index.sqlite") as db:
            return db.execute("SELECT count(*) FROM entries").fetchone()[0]
    except sqlite3.OperationalError:  # the index or its table not created yet
        return 0


def worker_pids() -> list[int]:
    """Live FeatureWorker processes from the GCS actor table (ray.util.state needs a dashboard)."""
    # Ray's private state module: the one way to a pid without the dashboard
    table = ray_state.actors().values()
    return [
        a["Pid"] for a in table if a["ActorClassName"] == "FeatureWorker" and a["State"] == "ALIVE"
    ]


def test_a_killed_feature_worker_is_retried_and_every_series_cached_once(
    tmp_path: Path, local_ray
) -> None:
    source = generate_archive(
        tmp_path / "src",
        SampleSpec(clips_per_class=SERIES // 4, size=32, min_frames=8, max_frames=12),
    )
    config, hub, cache_root = load_config(overrides=TINY), str(tmp_path / "hub"), tmp_path / "cache"
    found = discover_source.fn(str(source), None, StatePlaces(str(tmp_path)), SourcesConfig())
    assert len(found.refs) == SERIES and SERIES > 2 * GROUP
    recipe = FeatureRecipe.from_dict(feature_recipe.fn(config, hub))
    result: dict = {}

    def run() -> None:
        try:
            result["shard"] = extract_shard.fn(
                found.refs,
                recipe,
                config,
                StatePlaces(str(tmp_path)),
                str(tmp_path / "tmp"),
                hub,
                "local",
            )
        except BaseException as exc:  # handed to the test thread, which reports it
            result["error"] = exc

    extraction = threading.Thread(target=run, daemon=True)
    extraction.start()
    deadline = time.monotonic() + TIMEOUT_S
    while not indexed(cache_root):
        assert extraction.is_alive(), f"extraction ended before any series was cached: {result}"
        assert time.monotonic() < deadline, "no series cached in time"
        time.sleep(0.02)
    assert indexed(cache_root) < SERIES, "extraction finished before the kill could land"
    victim = worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    extraction.join(TIMEOUT_S)
    assert not extraction.is_alive(), "extraction did not finish after the kill"
    assert "error" not in result, f"the shard failed after a worker was killed: {result['error']!r}"
    assert victim not in worker_pids()  # the lost actor was replaced by a new process

    rows = result["shard"].outcomes
    refs = {r.series_id: r for r in found.refs}
    assert sorted(row.series_id for row in rows) == sorted(refs), (
        "a series reported twice, or not at all"
    )
    assert {row.status for row in rows} == {"extracted"}, (
        "a cold cache: every series was extracted by this run"
    )
    cache = FeatureCache.local(cache_root)
    with sqlite3.connect(index_file(cache)) as db:
        entries = db.execute(
            "SELECT content_hash, recipe_id, series_id, n_frames FROM entries"
        ).fetchall()
    keys = [(h, r) for h, r, _, _ in entries]
    assert len(keys) == len(set(keys)) == SERIES
    assert set(keys) == {(r.content_hash, recipe.recipe_id) for r in found.refs}
    frames = {row.series_id: row.frames for row in rows}
    found_features = cache.read(keys)
    for content_hash, recipe_id, series_id, n_frames in entries:
        entry = found_features[(content_hash, recipe_id)]
        assert frames[series_id] == n_frames == len(entry.features) == len(entry.t), series_id
        assert np.isfinite(entry.features).all() and (np.diff(entry.t) > 0).all(), series_id
