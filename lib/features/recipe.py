"""The feature recipe: everything that changes the numbers in the feature cache (SPEC §3.3).

A changed recipe is a different cache entry; an unchanged one is never recomputed.
Decode chunk size, timeouts, batch size and graph optimisation do not change the
features (beyond float rounding), so they are not part of it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from lstmpipe.lib.config import BackboneConfig, SamplingConfig, SourcesConfig
from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.features.backbone_names import (
    TORCHSCRIPT_PREFIX,
    BackboneKind,
    backbone_kind,
    code_identity,
    recipe_name,
)
from lstmpipe.lib.features.weights import WeightsSource, resolve_precision, weights_identity
from lstmpipe.lib.sources.ffmpeg import ffmpeg_version

_ABSENT = object()
# field -> the value recipes stored before it existed
_LATER_FIELDS = {"feature_dtype": "float32", "pool": "global", "backbone_code": ""}


@dataclass(frozen=True)
class FeatureRecipe:
    # "ffmpeg <version>; pydicom <version>; ...": decoded pixels can differ between versions
    decoder: str
    fps: float | None
    num_frames: int | None
    size: int
    # a torchvision name, an entry point "package.module:callable", or "torchscript:<file name>"
    backbone: str
    # label: "IMAGENET1K_V1", "file:x.pth", "none(seed=0)"; "DEFAULT": an entry point's or a
    # TorchScript file's own
    weights: str
    # a checkpoint's file name or hash; an entry point's: its state_dict's (names, dtypes, shapes,
    # bytes); a TorchScript file's: the file's
    weights_digest: str
    precision: str  # resolved: fp32 | bf16 | fp16, never "auto"
    feature_dim: int
    # how DICOM, NIfTI, GeoTIFF and cubes become frames: canonical JSON of SourcesConfig
    sources: str = field(default_factory=lambda: canonical_sources(SourcesConfig()))
    feature_dtype: str = "float32"  # as stored in the cache: float32 | float16
    pool: str = "global"  # global | gridk: the final feature map averaged over k x k cells
    # an entry point's code: the distributions it came from, "efficientnet-lite-pytorch 0.1.0"
    backbone_code: str = ""

    # a frozen recipe's id never changes; planning 100 000 series reads it often
    @functools.cached_property
    def recipe_id(self) -> str:
        """A short stable id: the hash of the canonical JSON of every field.

        Fields added after recipes were first stored count only when they differ from
        the value every earlier recipe implicitly had, so those recipes keep their ids.
        """
        hashed = {k: v for k, v in asdict(self).items() if _LATER_FIELDS.get(k, _ABSENT) != v}
        canonical = json.dumps(hashed, sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "recipe_id": self.recipe_id}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureRecipe:
        fields = {k: v for k, v in data.items() if k != "recipe_id"}
        recipe = cls(**fields)
        if "recipe_id" in data and data["recipe_id"] != recipe.recipe_id:
            raise ValueError(
                f"recipe {data['recipe_id']} does not match its fields (got {recipe.recipe_id})"
            )
        return recipe

    def sampling(self, base: SamplingConfig) -> SamplingConfig:
        """The sampling this recipe decodes with; chunking and timeouts come from `base`."""
        return SamplingConfig(
            fps=self.fps,
            num_frames=self.num_frames,
            size=self.size,
            chunk_frames=base.chunk_frames,
            timeout_s=base.timeout_s,
        )

    def sources_config(self) -> SourcesConfig:
        return SourcesConfig(**json.loads(self.sources))

    def backbone_config(self, base: BackboneConfig) -> BackboneConfig:
        """The backbone settings that reproduce this recipe; batch size, graph optimisation and
        where weights come from are `base`'s.

        A recipe made from a weights file needs that file again: `base.weights` must name it. A
        backbone that runs code (an entry point, a TorchScript file) runs only if `base.name`
        names it too: a recipe comes with a model version, which is data, never code
        (SECURITY.md). Digests are checked against the built backbone's (build.check_recipe).
        """
        name = self.backbone
        if backbone_kind(name) is not BackboneKind.TORCHVISION:
            if recipe_name(base.name) != name:
                flag = "PATH" if name.startswith(TORCHSCRIPT_PREFIX) else name
                raise ConfigError(
                    f"backbone.name: these features were made by {name}, which runs code: it "
                    f"runs only when named (--backbone {flag}); got {base.name!r}"
                )
            name = base.name
        if self.weights.startswith("none(seed="):
            weights, seed = "none", int(self.weights[len("none(seed=") : -1])
        elif self.weights.startswith("file:"):
            weights, seed = base.weights, base.seed
        else:
            weights, seed = self.weights, base.seed
        # validated: the recipe's texts must be among BackboneConfig's choices
        return BackboneConfig.model_validate(
            {
                **base.model_dump(),
                "name": name,
                "weights": weights,
                "precision": self.precision,
                "seed": seed,
                "feature_dtype": self.feature_dtype,
                "pool": self.pool,
            }
        )


def make_recipe(
    decoder: str,
    sampling: SamplingConfig,
    sources: SourcesConfig,
    backbone: str,
    weights: WeightsSource,
    precision: str,
    feature_dim: int,
    feature_dtype: str = "float32",
    pool: str = "global",
    backbone_code: str = "",
) -> FeatureRecipe:
    return FeatureRecipe(
        decoder=decoder,
        fps=sampling.fps,
        num_frames=sampling.num_frames,
        size=sampling.size,
        backbone=backbone,
        weights=weights.label,
        weights_digest=weights.digest,
        precision=precision,
        feature_dim=feature_dim,
        feature_dtype=feature_dtype,
        sources=canonical_sources(sources),
        pool=pool,
        backbone_code=backbone_code,
    )


def canonical_sources(sources: SourcesConfig) -> str:
    return json.dumps(sources.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


# The readers whose output pixels could change with their version (Pillow resizes all but video).
DECODERS = ("pydicom", "nibabel", "tifffile", "xarray", "pillow")


def decoder_versions() -> str:
    """The readers' versions, "ffmpeg 9.0.2; pydicom 3.0.2; ...": an upgrade is a new recipe."""
    return "; ".join(
        [f"ffmpeg {ffmpeg_version()}", *(f"{name} {version(name)}" for name in DECODERS)]
    )


# The modules whose code decides what a recipe says (read as files: importing the backbone's
# would import torch)
_RECIPE_CODE = ("recipe", "weights", "backbone", "build", "backbone_names", "user_backbones")


def recipe_key(
    sampling: SamplingConfig,
    config: BackboneConfig,
    torch_hub_dir: Path,
    device: str = "cpu",
    sources: SourcesConfig = SourcesConfig(),
) -> str:
    """A key for the recipe build.load_backbone would return, found without torch: the settings,
    the weights' identity (a TorchScript file's digest), an entry point's code
    (backbone_names.code_identity), the precision resolved on this machine, the readers' versions
    and the code that makes recipes. Equal keys, equal recipes: flows cache the recipe under it
    instead of loading a model."""
    code = hashlib.blake2b(digest_size=16)
    for name in _RECIPE_CODE:
        spec = find_spec(f"lstmpipe.lib.features.{name}")
        assert spec is not None and spec.origin is not None
        code.update(Path(spec.origin).read_bytes())
    inputs = {
        "sampling": sampling.model_dump(),
        "backbone": config.model_dump(),
        "sources": sources.model_dump(),
        "weights": weights_identity(config, torch_hub_dir),
        "backbone_code": code_identity(config.name),
        "precision": resolve_precision(config.precision, device),
        "decoders": decoder_versions(),
        "code": code.hexdigest(),
    }
    return hashlib.blake2b(
        json.dumps(inputs, sort_keys=True, default=str).encode(), digest_size=16
    ).hexdigest()
