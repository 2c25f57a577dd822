"""A "weights" file that carries a pickled payload (SPEC §6: weights are loaded with
torch.load(weights_only=True)). Whether torch's zip format or a bare pickle, as backbone weights or
as a registered model's weights.pt, it is refused with a message naming the file, and the payload,
which would create a marker file, never runs."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from lib.backbone import Backbone, resolve_weights
from lib.bundle import ModelBundle
from lib.config import BackboneConfig, SamplingConfig
from lib.errors import ConfigError
from lib.features import load_backbone
from lib.model import ModelSpec
from lib.recipe import FeatureRecipe


RECIPE = FeatureRecipe(decoder="ffmpeg 7.1", fps=4.0, num_frames=None, size=64, backbone="resnet18",
                       weights="none(seed=0)", weights_digest="random-seed-0", precision="fp32", feature_dim=4,
                       sources="{}")


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch '{self.marker}'",)


def trojan(path: Path, marker: Path, legacy: bool) -> Path:
    """A state_dict-looking file with the payload inside: torch's zip format, or a bare pickle stream."""
    state = {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.bias": Payload(marker)}
    if legacy:
        path.write_bytes(pickle.dumps(state, protocol=2))  # torch's own protocol: no warning
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("legacy", [False, True], ids=["torch-zip", "bare-pickle"])
def test_backbone_weights_with_a_payload_are_refused_unrun(tmp_path: Path, legacy: bool) -> None:
    marker = tmp_path / "payload-ran"
    path = trojan(tmp_path / "resnet18-trojan.pth", marker, legacy)
    config = BackboneConfig(weights=str(path), precision="fp32", optimize="none")
    with pytest.raises(ConfigError) as caught:
        load_backbone(SamplingConfig(size=32), config, tmp_path / "torch-hub")  # what `lstmpipe extract` calls
    message = str(caught.value)
    assert str(path) in message and "refused: loading it could run code" in message
    assert "weights_only=False" not in message  # torch's own advice to turn the protection off is not passed on
    assert isinstance(caught.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists(), "the pickled payload ran"


def test_a_registered_models_weights_with_a_payload_never_run(tmp_path: Path) -> None:
    """Inference loads a model bundle from the registry: its weights.pt goes through weights_only too."""
    spec = ModelSpec(kind="lstm", input_dim=4, num_classes=2, hidden_size=8)
    bundle = ModelBundle(spec, spec.build(), ["a", "b"], RECIPE)
    directory = bundle.save(tmp_path / "bundle")
    marker = tmp_path / "payload-ran"
    trojan(directory / "weights.pt", marker, legacy=False)
    with pytest.raises(pickle.UnpicklingError):
        ModelBundle.load(directory)
    assert not marker.exists(), "the pickled payload ran"


def test_a_trojan_is_refused_before_any_backbone_is_built(tmp_path: Path) -> None:
    """resolve_weights only hashes the file; the refusal comes from the one torch.load, weights_only=True."""
    marker = tmp_path / "payload-ran"
    path = trojan(tmp_path / "w.pth", marker, legacy=True)
    weights = resolve_weights(BackboneConfig(weights=str(path)), tmp_path)
    assert weights.path == path and not marker.exists()
    with pytest.raises(ConfigError, match="w.pth is not a plain state_dict"):
        Backbone(BackboneConfig(weights=str(path), optimize="none"), weights)
    assert not marker.exists()

