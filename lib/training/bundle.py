"""A trained model in memory: the network, its class names, its feature recipe, and prediction.

Its files and their layout are lib/training/bundle_files.py's, which a registered version
carries as code; this side adds the typed recipe and batch prediction (lib/training/loop.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.training.bundle_files import StoredBundle, read_bundle, write_bundle
from lstmpipe.lib.training.loop import predict_proba, predict_steps
from lstmpipe.lib.training.model import ModelSpec


@dataclass
class ModelBundle:
    spec: ModelSpec
    module: nn.Module
    labels: list[str]
    recipe: FeatureRecipe

    def save(self, directory: Path) -> Path:
        stored = StoredBundle(self.spec, self.module, self.labels, self.recipe.to_dict())
        return write_bundle(directory, stored)

    @classmethod
    def load(cls, directory: Path) -> ModelBundle:
        return cls.from_stored(read_bundle(directory), str(directory))

    @classmethod
    def from_stored(cls, stored: StoredBundle, where: str) -> ModelBundle:
        """The bundle of files already read (by read_bundle), its recipe typed and checked against
        the network: a refusal is a ConfigError naming `where` and recipe.json."""
        try:
            recipe = FeatureRecipe.from_dict(stored.recipe)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: recipe.json is not a feature recipe ({exc})") from exc
        if recipe.feature_dim != stored.spec.input_dim:
            raise ConfigError(
                f"{where}: recipe.json makes {recipe.feature_dim} features per frame; "
                f"spec.json's network reads {stored.spec.input_dim}"
            )
        return cls(stored.spec, stored.module, stored.labels, recipe)

    def predict(self, features: list[np.ndarray]) -> np.ndarray:
        """Class probabilities (N, C) for N variable-length (T_i, F) feature sequences."""
        return predict_proba(self.module, features)

    def predict_steps(self, features: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per series, (T_i, C) probabilities per frame and (T_i, S) per-timestep states."""
        return predict_steps(self.module, features)
