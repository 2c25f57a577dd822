"""One process keeps one backbone for the features it makes (tasks/extract.py shared_backbone):
settings that change the features, pooling included, build another."""

from __future__ import annotations

from pathlib import Path

from lstmpipe.lib.config import BackboneConfig, SamplingConfig, SourcesConfig
from lstmpipe.tasks.extract import shared_backbone


def test_another_pooling_builds_another_backbone(tmp_path: Path) -> None:
    sampling, sources = SamplingConfig(size=32), SourcesConfig()
    config = BackboneConfig(
        name="mobilenet_v3_small", weights="none", precision="fp32", optimize="none"
    )
    _, whole = shared_backbone(sampling, config, tmp_path, sources)
    grid = config.model_copy(update={"pool": "grid2"})
    _, cells = shared_backbone(sampling, grid, tmp_path, sources)
    assert (whole.pool, whole.feature_dim) == ("global", 576)
    assert (cells.pool, cells.feature_dim) == ("grid2", 576 * 4)
