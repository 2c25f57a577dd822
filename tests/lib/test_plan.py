"""lstmpipe plan: cached, new content, or a changed recipe naming the fields that changed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from lstmpipe.lib.features.cache import FeatureCache, SeriesFeatures
from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.ops.plan import PlanAction, plan
from lstmpipe.lib.series import SeriesRef

RECIPE = FeatureRecipe(
    decoder="ffmpeg 9",
    fps=4.0,
    num_frames=None,
    size=64,
    backbone="resnet18",
    weights="none(seed=0)",
    weights_digest="random-seed-0",
    precision="fp32",
    feature_dim=4,
)


def ref(name: str, digest: str) -> SeriesRef:
    return SeriesRef(series_id=name, content_hash=digest, kind="video", path=f"/src/{name}")


def test_plan_says_what_is_cached_and_why_the_rest_is_not(tmp_path: Path) -> None:
    cache = FeatureCache.local(tmp_path)
    cache.add_recipe(RECIPE)
    cache.write(
        RECIPE.recipe_id,
        [SeriesFeatures("a.mp4", "h-a", np.zeros((3, 4), np.float32), np.arange(3.0))],
    )
    refs = [ref("a.mp4", "h-a"), ref("b.mp4", "h-b")]

    same = plan(refs, RECIPE, cache)
    assert (same.count(PlanAction.CACHED), same.count(PlanAction.COMPUTE)) == (1, 1)
    reasons = {row.series_id: row.reason for row in same.per_series}
    assert reasons["b.mp4"].startswith("new content")

    bigger = dataclasses.replace(RECIPE, size=96)
    changed = {row.series_id: row for row in plan(refs, bigger, cache).per_series}
    assert changed["a.mp4"].action is PlanAction.COMPUTE
    assert (
        changed["a.mp4"].reason
        == f"recipe changed: cached under {RECIPE.recipe_id}, which differs in size"
    )
