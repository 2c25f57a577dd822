"""Batch inference (SPEC §3.6): a Predictor holds one registered model; calling it on
series whose features are cached under that model's recipe gives prediction rows.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from lib.bundle import ModelBundle
from lib.cache import FeatureCache
from lib.predictions import predictions_table
from lib.registry import ModelRef
from lib.series import SeriesRef


class Predictor:
    """Load once in `__init__`; `__call__(refs) -> table` is pure given the cache."""

    def __init__(self, bundle: ModelBundle, model: ModelRef, cache_root: Path, run_id: str) -> None:
        self.bundle = bundle
        self.model = model
        self.cache = FeatureCache(cache_root)
        self.run_id = run_id

    def __call__(self, refs: list[SeriesRef]) -> pa.Table:
        """Predictions for the series of `refs` that have features; the others are left out."""
        recipe_id = self.bundle.recipe.recipe_id
        found = self.cache.read([(r.content_hash, recipe_id) for r in refs])
        ready = [r for r in refs if (r.content_hash, recipe_id) in found]
        probabilities = self.bundle.predict([found[(r.content_hash, recipe_id)].features for r in ready])
        return predictions_table(ready, probabilities, self.bundle.labels, self.model.name, self.model.version,
                                 recipe_id, self.run_id)
