"""The feature recipe a configuration produces, and the backbone that produces it."""

from __future__ import annotations

import hashlib
import inspect
import json
from importlib.metadata import version
from pathlib import Path

import torch

from lstmpipe.lib.config import BackboneConfig, SamplingConfig, SourcesConfig
from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.features import backbone as backbone_module
from lstmpipe.lib.features import recipe as recipe_module
from lstmpipe.lib.features.backbone import Backbone, resolve_precision, resolve_weights
from lstmpipe.lib.features.recipe import FeatureRecipe, make_recipe
from lstmpipe.lib.sources.ffmpeg import ffmpeg_version


def load_backbone(
    sampling: SamplingConfig,
    config: BackboneConfig,
    torch_hub_dir: Path,
    device: str = "cpu",
    sources: SourcesConfig = SourcesConfig(),
) -> tuple[Backbone, FeatureRecipe]:
    """Build the backbone once; say exactly which features it makes (with `sampling`, `sources`)."""
    weights = resolve_weights(config, torch_hub_dir)
    backbone = Backbone(config, weights, device)
    recipe = make_recipe(
        decoder_versions(),
        sampling,
        sources,
        config.name,
        weights,
        backbone.precision,
        backbone.feature_dim,
        config.feature_dtype,
    )
    return backbone, recipe


def recipe_key(
    sampling: SamplingConfig,
    config: BackboneConfig,
    torch_hub_dir: Path,
    device: str = "cpu",
    sources: SourcesConfig = SourcesConfig(),
) -> str:
    """A key for the recipe load_backbone would return, found without building the backbone: the
    settings, the weights' identity, the precision resolved on this machine, the readers' versions
    and the code that makes recipes. Equal keys, equal recipes: flows cache the recipe under it
    instead of loading a model."""
    code = hashlib.blake2b(digest_size=16)
    for module in (recipe_module, backbone_module):
        code.update(Path(inspect.getfile(module)).read_bytes())
    code.update(Path(__file__).read_bytes())
    inputs = {
        "sampling": sampling.model_dump(),
        "backbone": config.model_dump(),
        "sources": sources.model_dump(),
        "weights": resolve_weights(config, torch_hub_dir).digest,
        "precision": resolve_precision(config.precision, torch.device(device)),
        "decoders": decoder_versions(),
        "code": code.hexdigest(),
    }
    return hashlib.blake2b(
        json.dumps(inputs, sort_keys=True, default=str).encode(), digest_size=16
    ).hexdigest()


# The readers whose output pixels could change with their version (Pillow resizes all but video).
DECODERS = ("pydicom", "nibabel", "tifffile", "xarray", "pillow")


def decoder_versions() -> str:
    """The readers' versions, "ffmpeg 9.0.2; pydicom 3.0.2; ...": an upgrade is a new recipe."""
    return "; ".join(
        [f"ffmpeg {ffmpeg_version()}", *(f"{name} {version(name)}" for name in DECODERS)]
    )


def check_recipe(expected: FeatureRecipe, built: FeatureRecipe) -> None:
    """A model's features must be made exactly as it was trained: never silently swapped."""
    if expected.recipe_id != built.recipe_id:
        differing = [
            k
            for k, v in expected.to_dict().items()
            if built.to_dict().get(k) != v and k != "recipe_id"
        ]
        raise ConfigError(
            f"feature recipe {expected.recipe_id} cannot be reproduced here "
            f"(got {built.recipe_id}); differing: {', '.join(differing)}"
        )
