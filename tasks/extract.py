"""Prefect tasks for discovery and extraction: a task per shard, Ray actors per series inside."""

from __future__ import annotations

from pathlib import Path

import ray
import torch
from prefect import task
from ray.util import ActorPool
from tqdm import tqdm

from lib.cache import FeatureCache
from lib.config import Config, SourcesConfig
from lib.features import load_backbone
from lib.hashing import HashMemo
from lib.recipe import FeatureRecipe
from lib.series import SeriesRef
from lib.sources import discover
from tasks.ray_workers import FeatureWorker, ensure_ray, feature_workers, release_workers, worker_count
from tasks.retry import transient_only

GROUP = 8  # series per actor call: progress granularity and load balance; one cache file per call


@task(name="discover", retries=2, retry_condition_fn=transient_only)
def discover_source(source: str, manifest: str | None, memo_path: str, sources: SourcesConfig) -> dict:
    """Series refs (as dicts) and discovery failures of a source root, file or archive."""
    found = discover(Path(source), Path(manifest) if manifest else None, HashMemo(Path(memo_path)),
                     sources=sources)
    return {"refs": [r.to_dict() for r in found.refs], "failures": [f.__dict__ for f in found.failures]}


@task(name="feature-recipe")
def feature_recipe(config: Config, torch_hub_dir: str) -> dict:
    """The recipe this configuration yields on this machine (precision resolved)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    _, recipe = load_backbone(config.sampling, config.backbone, Path(torch_hub_dir), device, config.sources)
    return recipe.to_dict()


@task(name="extract-shard", tags=["extract"], retries=2, retry_condition_fn=transient_only)
def extract_shard(refs: list[dict], recipe: dict, config: Config, cache_root: str, tmp_dir: str,
                  torch_hub_dir: str, ray_address: str | None) -> list[dict]:
    """Statuses of one shard's series: cached, extracted now, or failed with a reason."""
    cache = FeatureCache(Path(cache_root))
    cache.add_recipe(FeatureRecipe.from_dict(recipe))
    recipe_id = recipe["recipe_id"]
    series = [SeriesRef.from_dict(r) for r in refs]
    cached = cache.frame_counts([(s.content_hash, recipe_id) for s in series])
    statuses = [{"series_id": s.series_id, "status": "cached", "frames": cached[(s.content_hash, recipe_id)]}
                for s in series if (s.content_hash, recipe_id) in cached]
    todo = [s.to_dict() for s in series if (s.content_hash, recipe_id) not in cached]
    if todo:
        statuses += _extract_on_ray(todo, recipe, config, cache_root, tmp_dir, torch_hub_dir, ray_address)
    return statuses


def _extract_on_ray(todo: list[dict], recipe: dict, config: Config, cache_root: str, tmp_dir: str,
                    torch_hub_dir: str, ray_address: str | None) -> list[dict]:
    ensure_ray(ray_address)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    # Everything that shapes the features comes from the recipe (a model's, at inference), not
    # from this run's flags; the precision too, so workers never re-resolve "auto" differently.
    wanted = FeatureRecipe.from_dict(recipe)
    sampling, backbone = wanted.sampling(config.sampling), wanted.backbone_config(config.backbone)
    workers = feature_workers(
        f"{recipe['recipe_id']}:{cache_root}", gpus or worker_count(config.runtime.workers),
        lambda: FeatureWorker.options(num_gpus=1 if gpus else 0).remote(
            sampling, backbone, recipe, torch_hub_dir, cache_root, tmp_dir),
    )
    groups = [todo[i:i + GROUP] for i in range(0, len(todo), GROUP)]
    statuses: list[dict] = []
    try:
        with tqdm(total=len(todo), desc="extract", unit="series", leave=False) as bar:
            for done in ActorPool(workers).map_unordered(lambda w, g: w.extract.remote(g), groups):
                statuses += done
                bar.update(len(done))
    except Exception:
        release_workers()  # a dead actor must not be reused by the retry
        raise
    return statuses
