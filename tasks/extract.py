"""Prefect tasks for discovery and extraction: a task per shard, Ray actors per series inside."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import task
from tqdm import tqdm

from lstmpipe.lib.config import BackboneConfig, Config, SamplingConfig, SourcesConfig
from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.features.cache import FeatureCache
from lstmpipe.lib.features.extract import extract_to_cache, split_cached
from lstmpipe.lib.features.outcomes import SeriesOutcome, ShardResult
from lstmpipe.lib.features.placement import placement
from lstmpipe.lib.features.recipe import FeatureRecipe, recipe_key
from lstmpipe.lib.features.weights import default_device, resolve_precision, resolve_weights
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.sources.discover import Discovery, discover_root
from lstmpipe.lib.state.places import StatePlaces
from lstmpipe.tasks.retry import transient_only

if TYPE_CHECKING:  # torch and Ray load in seconds: imported where a series is extracted
    from lstmpipe.lib.features.backbone import Backbone

GROUP = 8  # series per actor call: progress granularity and load balance; one cache file per call


@task(name="discover", retries=2, retry_condition_fn=transient_only)
def discover_source(
    source: str, manifest: str | None, state: StatePlaces, sources: SourcesConfig
) -> Discovery:
    """Series refs and discovery failures of a source root, file or archive, on disk or in a
    bucket (`s3://bucket/prefix`, mirrored under home; its refs name the objects)."""
    return discover_root(source, state, manifest, sources=sources)


def _recipe_cache_key(_context: object, parameters: dict) -> str | None:
    config = parameters["config"]
    try:
        return "feature-recipe-" + recipe_key(
            config.sampling,
            config.backbone,
            Path(parameters["torch_hub_dir"]),
            default_device(),
            config.sources,
        )
    except ConfigError:
        return None  # not cached: the task raises the same error, once, naming the setting


# Cached across flow runs (persisted as JSON under Prefect's local storage): a run with nothing to
# extract, or one extracting on a Ray cluster, never loads the backbone in this process only to
# name the recipe. Hence a dict (FeatureRecipe.to_dict), not the FeatureRecipe itself.
@task(
    name="feature-recipe",
    cache_key_fn=_recipe_cache_key,
    persist_result=True,
    result_serializer="json",
)
def feature_recipe(config: Config, torch_hub_dir: str) -> dict:
    """The recipe this configuration yields on this machine (precision resolved)."""
    _, recipe = shared_backbone(
        config.sampling, config.backbone, Path(torch_hub_dir), config.sources
    )
    return recipe.to_dict()


@task(name="extract-shard", tags=["extract", "gpu"], retries=2, retry_condition_fn=transient_only)
def extract_shard(
    refs: list[SeriesRef],
    recipe: FeatureRecipe,
    config: Config,
    state: StatePlaces,
    tmp_dir: str,
    torch_hub_dir: str,
    ray_address: str | None,
) -> ShardResult:
    """One shard: an outcome per series (cached, extracted now, or failed with a reason) and the
    seconds spent extracting (in this process: from a loaded backbone on, the first shard's
    load being start-up). `ray_address` None extracts in this process, else on that Ray
    cluster."""
    cache = FeatureCache.at(state)
    cache.add_recipe(recipe)
    outcomes, todo = split_cached(cache, refs, recipe.recipe_id)
    if not todo:
        return ShardResult(tuple(outcomes), 0.0)
    if ray_address is None:
        extracted, seconds = _extract_here(
            todo, recipe, config, cache, Path(tmp_dir), Path(torch_hub_dir)
        )
        return ShardResult(tuple(outcomes + extracted), seconds)
    started = time.monotonic()
    outcomes += _extract_on_ray(todo, recipe, config, state, tmp_dir, torch_hub_dir, ray_address)
    return ShardResult(tuple(outcomes), time.monotonic() - started)


_loaded: dict[tuple, tuple[Backbone, FeatureRecipe]] = {}  # at most one backbone per process
# Shards run in threads: two building the backbone at once would trace it concurrently, and
# torch.jit's trace check then fails ("Graphs differed across invocations"). One builds; the
# others wait and share it.
_loading = threading.Lock()


def shared_backbone(
    sampling: SamplingConfig, config: BackboneConfig, torch_hub_dir: Path, sources: SourcesConfig
) -> tuple[Backbone, FeatureRecipe]:
    """load_backbone, once per process for the same features: feature_recipe, the CLI's early load
    and every shard share it. Keyed on what makes the features, with weights and precision
    resolved, so a config ("auto", "DEFAULT") and the recipe it produced find the same
    backbone."""
    from lstmpipe.lib.features.build import load_backbone

    device = default_device()
    key = (
        sampling.fps,
        sampling.num_frames,
        sampling.size,
        config.name,
        config.pool,
        config.feature_dtype,
        config.optimize,
        resolve_weights(config, torch_hub_dir).digest,
        resolve_precision(config.precision, device),
        sources,
    )
    with _loading:
        if key not in _loaded:
            _loaded.clear()  # free the previous model first
            _loaded[key] = load_backbone(sampling, config, torch_hub_dir, device, sources)
        return _loaded[key]


def _extract_here(
    todo: list[SeriesRef],
    wanted: FeatureRecipe,
    config: Config,
    cache: FeatureCache,
    tmp_dir: Path,
    torch_hub_dir: Path,
) -> tuple[list[SeriesOutcome], float]:
    """In this process: one backbone using every core, decoders and the cache writer in threads;
    (outcomes, seconds from the loaded backbone on)."""
    from lstmpipe.lib.features.build import check_recipe

    # Everything that shapes the features comes from the recipe (a model's, at inference), not
    # from this run's flags; the precision too, so "auto" is never re-resolved differently.
    sampling, sources = wanted.sampling(config.sampling), wanted.sources_config()
    backbone, built = shared_backbone(
        sampling, wanted.backbone_config(config.backbone), torch_hub_dir, sources
    )
    check_recipe(wanted, built)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    batch_size = backbone.batch_size(sampling.size, config.backbone.batch_size)
    started = time.monotonic()
    with tqdm(total=len(todo), desc="extract", unit="series", leave=False) as bar:
        outcomes = extract_to_cache(
            todo,
            sampling,
            backbone,
            batch_size,
            tmp_dir,
            sources,
            cache,
            wanted.recipe_id,
            decoders=config.runtime.decoders,
            on_series=bar.update,
        )
    return outcomes, time.monotonic() - started


def _extract_on_ray(
    todo: list[SeriesRef],
    wanted: FeatureRecipe,
    config: Config,
    state: StatePlaces,
    tmp_dir: str,
    torch_hub_dir: str,
    ray_address: str,
) -> list[SeriesOutcome]:
    import ray

    from lstmpipe.tasks.ray_workers import (
        FeatureWorker,
        ensure_ray,
        extract_groups,
        release_workers,
    )

    ensure_ray(ray_address)
    resources = {name: float(amount) for name, amount in ray.cluster_resources().items()}
    where = placement(config.runtime, resources)
    # Everything that shapes the features comes from the recipe (a model's, at inference), not
    # from this run's flags; the precision too, so workers never re-resolve "auto" differently.
    sampling, backbone = wanted.sampling(config.sampling), wanted.backbone_config(config.backbone)
    groups = [todo[i : i + GROUP] for i in range(0, len(todo), GROUP)]
    try:
        with tqdm(total=len(todo), desc="extract", unit="series", leave=False) as bar:
            return extract_groups(
                f"{wanted.recipe_id}:{state}:{where}",
                where.actors,
                lambda: FeatureWorker.options(
                    num_cpus=where.actor_cpus, num_gpus=where.actor_gpus
                ).remote(
                    sampling,
                    backbone,
                    wanted,
                    torch_hub_dir,
                    state,
                    tmp_dir,
                    config.runtime.decoders,
                    where.decode_cpus,
                ),
                groups,
                lambda done: bar.update(len(done)),
            )
    except Exception:
        release_workers()  # a dead actor must not be reused by the retry
        raise
