"""Shared lib fixtures: the configuration is shrunk here, once, and nowhere else.

Tiny means: 64 px frames sampled at 4 fps, a seeded random resnet18 (`weights=none`,
nothing downloaded), CPU, a few epochs; and a generated archive of 12 real H.264
clips (3 per class, one of each class in each of the folder, .tar and .zip
partitions). Session-scoped, because building the backbone and extracting the
archive are the slow parts and every test only reads them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lstmpipe.lib.config import Config, load_config
from lstmpipe.lib.demo.video import SampleSpec, generate_archive
from lstmpipe.lib.features.backbone import Backbone
from lstmpipe.lib.features.build import load_backbone
from lstmpipe.lib.features.cache import FeatureCache, SeriesFeatures
from lstmpipe.lib.features.extract import extract_many
from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.sources.discover import discover

SAMPLE = SampleSpec(clips_per_class=3, size=64)


@pytest.fixture(scope="session")
def one_thread() -> Iterator[None]:
    """Tiny networks gain nothing from intra-op threads; on a busy 2-core box those threads spin
    (3x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The whole pipeline shrunk for a laptop: 64 px, 4 fps, random-init resnet18, CPU, 15
    epochs."""
    home = tmp_path_factory.mktemp("home")
    return load_config(
        overrides={
            "sampling.size": 64,
            "sampling.fps": 4,
            "sampling.chunk_frames": 8,  # several chunks per clip: chunk boundaries get exercised
            "sampling.timeout_s": 30,
            "backbone.weights": "none",
            "backbone.precision": "fp32",  # auto is bf16 on AMX CPUs: the same numbers on every CPU
            "backbone.batch_size": 16,
            "train.epochs": 15,
            "train.patience": 15,
            "train.hidden_size": 32,
            "runtime.home": str(home),
        }
    )


@pytest.fixture(scope="session")
def torch_hub_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty torch cache: any test that needed downloaded weights would fail, not download."""
    return tmp_path_factory.mktemp("torch-hub")


@pytest.fixture(scope="session")
def backbone(
    tiny_config: Config, torch_hub_dir: Path, one_thread: None
) -> tuple[Backbone, FeatureRecipe]:
    return load_backbone(tiny_config.sampling, tiny_config.backbone, torch_hub_dir, device="cpu")


@pytest.fixture(scope="session")
def sample_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_archive(tmp_path_factory.mktemp("sample"), SAMPLE)


@pytest.fixture(scope="session")
def sample_refs(sample_archive: Path) -> list[SeriesRef]:
    found = discover(sample_archive)
    assert not found.failures and len(found.refs) == len(SAMPLE.classes) * SAMPLE.clips_per_class
    return found.refs


@pytest.fixture(scope="session")
def sample_cache(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_config: Config,
    sample_refs: list[SeriesRef],
    backbone: tuple[Backbone, FeatureRecipe],
) -> FeatureCache:
    """The sample archive's features, extracted once with the tiny config's backbone."""
    model, recipe = backbone
    cache = FeatureCache.local(tmp_path_factory.mktemp("cache"))
    cache.add_recipe(recipe)
    batch_size = tiny_config.backbone.batch_size
    assert batch_size is not None  # the tiny config sets it
    results = list(
        extract_many(
            sample_refs,
            tiny_config.sampling,
            model,
            batch_size,
            tmp_path_factory.mktemp("extract-tmp"),
        )
    )
    features = [r for r in results if isinstance(r, SeriesFeatures)]
    assert len(features) == len(results), results
    cache.write(recipe.recipe_id, features)
    return cache
