"""Ray: joining a cluster (or starting a local one) and the feature-extraction actor.

An actor loads the backbone once and extracts many series; it writes features to
the cache itself and returns statuses only, so no frames or features cross the
object store.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch

from lib.cache import FeatureCache
from lib.config import BackboneConfig, SamplingConfig
from lib.extract import extract_to_cache
from lib.features import check_recipe, load_backbone
from lib.recipe import FeatureRecipe
from lib.series import SeriesRef


def ensure_ray(address: str) -> None:
    """Join `address` (a running cluster), or start a Ray of this process's own for "local"; once per process.

    The edge says "local", never None: a bare ray.init() silently joins whatever
    cluster `ray start` left on this machine (/tmp/ray/ray_current_cluster).
    """
    if ray.is_initialized():
        return
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
             configure_logging=False)


def worker_count(requested: int | None) -> int:
    """One actor per CPU Ray has (each with one torch thread), unless configured."""
    return requested or max(1, int(ray.cluster_resources().get("CPU", 1)))


_pool: tuple[str, list] | None = None  # (key, actors): at most one pool alive per process


def feature_workers(key: str, count: int, start: Callable[[], Any]) -> list:
    """The actors for `key`, started once and reused by every shard of the run.

    A pool for another key is killed first, so a long-lived process never holds
    CPUs for a recipe it no longer extracts.
    """
    global _pool
    if _pool is not None and _pool[0] == key and len(_pool[1]) >= count:
        return _pool[1][:count]
    release_workers()
    _pool = (key, [start() for _ in range(count)])
    return _pool[1]


def release_workers() -> None:
    """Kill the pool (after a worker died, or when the key changes)."""
    global _pool
    if _pool is not None:
        for actor in _pool[1]:
            ray.kill(actor)
    _pool = None


@ray.remote(num_cpus=1)
class FeatureWorker:
    """Holds one backbone; extracts groups of series into the cache."""

    def __init__(self, sampling: SamplingConfig, backbone: BackboneConfig, recipe: dict, torch_hub_dir: str,
                 cache_root: str, tmp_dir: str, decoders: int) -> None:
        torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
        device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        self.sampling = sampling
        self.batch_size = backbone.batch_size
        self.decoders = decoders
        self.recipe = FeatureRecipe.from_dict(recipe)
        self.sources = self.recipe.sources_config()
        self.backbone, built = load_backbone(sampling, backbone, Path(torch_hub_dir), device, self.sources)
        check_recipe(self.recipe, built)
        self.cache = FeatureCache(Path(cache_root))
        self.tmp_dir = Path(tmp_dir)
        os.makedirs(self.tmp_dir, exist_ok=True)

    def extract(self, refs: list[dict]) -> list[dict]:
        """Extract and commit `refs`; one status row per series."""
        return extract_to_cache([SeriesRef.from_dict(r) for r in refs], self.sampling, self.backbone,
                                self.batch_size, self.tmp_dir, self.sources, self.cache, self.recipe.recipe_id,
                                decoders=self.decoders)
