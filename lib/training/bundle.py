"""A trained model as files: what the registry stores and what inference loads.

    spec.json     the network's shape (ModelSpec): enough to rebuild the module
    weights.pt    its state_dict, loaded with torch.load(weights_only=True)
    labels.json   class names, in logit order
    recipe.json   the feature recipe its inputs must be made with
Rebuilding from a config and a state_dict (rather than pickling the module or
exporting with fixed shapes) keeps loading safe and any sequence length valid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.state_files import load_state_dict
from lstmpipe.lib.training.loop import predict_proba, predict_steps
from lstmpipe.lib.training.model import ModelSpec


@dataclass
class ModelBundle:
    spec: ModelSpec
    module: nn.Module
    labels: list[str]
    recipe: FeatureRecipe

    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "spec.json").write_text(json.dumps(self.spec.to_dict(), indent=2))
        (directory / "labels.json").write_text(json.dumps(self.labels))
        (directory / "recipe.json").write_text(
            json.dumps(self.recipe.to_dict(), indent=2, sort_keys=True)
        )
        torch.save(self.module.state_dict(), directory / "weights.pt")
        return directory

    @classmethod
    def load(cls, directory: Path) -> ModelBundle:
        directory = Path(directory)
        spec = ModelSpec.from_dict(json.loads((directory / "spec.json").read_text()))
        module = spec.build()
        module.load_state_dict(load_state_dict(directory / "weights.pt", "model bundle"))
        return cls(
            spec=spec,
            module=module.eval(),
            labels=json.loads((directory / "labels.json").read_text()),
            recipe=FeatureRecipe.from_dict(json.loads((directory / "recipe.json").read_text())),
        )

    def predict(self, features: list[np.ndarray]) -> np.ndarray:
        """Class probabilities (N, C) for N variable-length (T_i, F) feature sequences."""
        return predict_proba(self.module, features)

    def predict_steps(self, features: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per series, (T_i, C) probabilities per frame and (T_i, S) per-timestep states."""
        return predict_steps(self.module, features)
