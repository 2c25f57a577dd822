"""Batch inference (SPEC §3.6): a Predictor holds one registered model; calling it on
series whose features are cached under that model's recipe gives prediction rows.
"""

from __future__ import annotations

import pyarrow as pa

from lstmpipe.lib.features.cache import FeatureCache, SeriesFeatures
from lstmpipe.lib.inference.predictions import frames_table, predictions_table
from lstmpipe.lib.registry.mlflow_store import ModelRef
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.training.bundle import ModelBundle


class Predictor:
    """Load once in `__init__`; `__call__(refs) -> table` is pure given the cache."""

    def __init__(
        self, bundle: ModelBundle, model: ModelRef, cache: FeatureCache, run_id: str
    ) -> None:
        self.bundle = bundle
        self.model = model
        self.cache = cache
        self.run_id = run_id

    def __call__(self, refs: list[SeriesRef]) -> pa.Table:
        """Predictions for the series of `refs` that have features; the others are left out."""
        ready, features = self._cached(refs)
        probabilities = self.bundle.predict([f.features for f in features])
        return predictions_table(
            ready,
            probabilities,
            self.bundle.labels,
            self.model.name,
            self.model.version,
            self.bundle.recipe.recipe_id,
            self.run_id,
        )

    def per_frame(self, refs: list[SeriesRef]) -> pa.Table:
        """One row per frame of the series of `refs` that have features (see frames_table)."""
        ready, features = self._cached(refs)
        return frames_table(
            ready,
            features,
            self.bundle.predict_steps([f.features for f in features]),
            self.bundle.labels,
            self.model.name,
            self.model.version,
            self.bundle.recipe.recipe_id,
            self.run_id,
        )

    def _cached(self, refs: list[SeriesRef]) -> tuple[list[SeriesRef], list[SeriesFeatures]]:
        """The refs whose features the cache holds under the model's recipe, and those features."""
        recipe_id = self.bundle.recipe.recipe_id
        found = self.cache.read([(r.content_hash, recipe_id) for r in refs])
        ready = [r for r in refs if (r.content_hash, recipe_id) in found]
        return ready, [found[(r.content_hash, recipe_id)] for r in ready]
