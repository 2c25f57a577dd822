"""A trained model as files: what the registry stores and what inference and serving load.

    spec.json     the network's shape (ModelSpec): enough to rebuild the module
    weights.pt    its state_dict, loaded with torch.load(weights_only=True)
    labels.json   class names, in logit order
    recipe.json   the feature recipe its inputs must be made with (FeatureRecipe.to_dict())
Rebuilding from a spec and a state_dict (rather than pickling the module or exporting with
fixed shapes) keeps loading safe and any sequence length valid.

This module imports torch and lstmpipe modules that import nothing else of lstmpipe's (model,
state_files, errors): a registered version carries them as code and loads where lstmpipe is not
installed (lib/registry/pyfunc_entry.py). The recipe stays a JSON dict here for that reason;
lib/training/bundle.py types it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lstmpipe.lib.state_files import load_state_dict
from lstmpipe.lib.training.model import ModelSpec


@dataclass(frozen=True)
class StoredBundle:
    """A bundle's files, read: the rebuilt network in eval mode and the JSON beside it."""

    spec: ModelSpec
    module: nn.Module
    labels: list[str]
    recipe: dict[str, Any]


def write_bundle(directory: Path, model: StoredBundle) -> Path:
    """The four files in `directory` (created); returns it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "spec.json").write_text(json.dumps(model.spec.to_dict(), indent=2))
    (directory / "labels.json").write_text(json.dumps(model.labels))
    (directory / "recipe.json").write_text(json.dumps(model.recipe, indent=2, sort_keys=True))
    torch.save(model.module.state_dict(), directory / "weights.pt")
    return directory


def read_bundle(directory: Path) -> StoredBundle:
    """Rebuild the network from spec.json and load weights.pt into it (tensors only)."""
    directory = Path(directory)
    spec = ModelSpec.from_dict(json.loads((directory / "spec.json").read_text()))
    module = spec.build()
    module.load_state_dict(load_state_dict(directory / "weights.pt", "model bundle"))
    return StoredBundle(
        spec=spec,
        module=module.eval(),
        labels=json.loads((directory / "labels.json").read_text()),
        recipe=json.loads((directory / "recipe.json").read_text()),
    )
