"""The feature recipe a configuration produces, and the backbone that produces it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lstmpipe.lib.config import BackboneConfig, SamplingConfig, SourcesConfig
from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.features.backbone import Backbone
from lstmpipe.lib.features.backbone_names import recipe_name
from lstmpipe.lib.features.recipe import FeatureRecipe, decoder_versions, make_recipe
from lstmpipe.lib.features.weights import resolve_weights


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
        recipe_name(config.name),
        replace(weights, digest=backbone.weights_digest),
        backbone.precision,
        backbone.feature_dim,
        config.feature_dtype,
        pool=config.pool,
        backbone_code=backbone.code,
    )
    return backbone, recipe


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
