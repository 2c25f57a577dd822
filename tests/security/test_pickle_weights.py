"""A "weights" file that carries a pickled payload (SPEC §6: weights are loaded with
torch.load(weights_only=True)). Whether torch's zip format or a bare pickle, as backbone weights or
as a registered model's weights.pt, it is refused with a message naming the file, and the payload,
which would create a marker file, never runs. A weights file that is truncated, not torch's, or
declares an 8 GiB tensor in 16 bytes is a configuration error naming the file, never an 8 GiB
allocation."""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from lstmpipe.lib.config import BackboneConfig, SamplingConfig
from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.features.backbone import Backbone
from lstmpipe.lib.features.build import load_backbone
from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.features.weights import resolve_weights
from lstmpipe.lib.training.bundle import ModelBundle
from lstmpipe.lib.training.model import ModelSpec
from tests.security.conftest import isolated

RECIPE = FeatureRecipe(
    decoder="ffmpeg 7.1",
    fps=4.0,
    num_frames=None,
    size=64,
    backbone="resnet18",
    weights="none(seed=0)",
    weights_digest="random-seed-0",
    precision="fp32",
    feature_dim=4,
    sources="{}",
)


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch '{self.marker}'",)


def trojan(path: Path, marker: Path, legacy: bool) -> Path:
    """A state_dict-looking file with the payload inside: torch's zip format or a bare pickle."""
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
        # what `lstmpipe extract` calls
        load_backbone(SamplingConfig(size=32), config, tmp_path / "torch-hub")
    message = str(caught.value)
    assert str(path) in message and "refused: loading it could run code" in message
    # torch's own advice to turn the protection off is not passed on
    assert "weights_only=False" not in message
    assert isinstance(caught.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists(), "the pickled payload ran"


def test_a_registered_models_weights_with_a_payload_never_run(tmp_path: Path) -> None:
    """Inference loads a bundle from the registry: its weights.pt goes through weights_only too."""
    spec = ModelSpec(kind="lstm", input_dim=4, num_classes=2, hidden_size=8)
    bundle = ModelBundle(spec, spec.build(), ["a", "b"], RECIPE)
    directory = bundle.save(tmp_path / "bundle")
    marker = tmp_path / "payload-ran"
    trojan(directory / "weights.pt", marker, legacy=False)
    with pytest.raises(ConfigError, match="weights.pt is not a plain state_dict"):
        ModelBundle.load(directory)
    assert not marker.exists(), "the pickled payload ran"


def test_a_trojan_is_refused_before_any_backbone_is_built(tmp_path: Path) -> None:
    """resolve_weights only hashes the file; the refusal
    comes from the one torch.load, weights_only=True."""
    marker = tmp_path / "payload-ran"
    path = trojan(tmp_path / "w.pth", marker, legacy=True)
    weights = resolve_weights(BackboneConfig(weights=str(path)), tmp_path)
    assert weights.path == path and not marker.exists()
    with pytest.raises(ConfigError, match="w.pth is not a plain state_dict"):
        Backbone(BackboneConfig(weights=str(path), optimize="none"), weights)
    assert not marker.exists()


def lying_sizes(path: Path) -> Path:
    """A real 4-float state_dict whose pickle declares the
    tensor (and its storage) as 2^31 - 1 floats: 8 GiB."""
    small = path.with_suffix(".small")
    torch.save({"conv1.weight": torch.zeros(4)}, small)
    with zipfile.ZipFile(small) as source:
        name = next(n for n in source.namelist() if n.endswith("data.pkl"))
        data = source.read(name)
        huge = b"J" + struct.pack("<i", 2**31 - 1)  # BININT in place of BININT1 4
        assert data.count(b"K\x04") == 2, "storage numel and tensor size, as torch 2.x pickles them"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
            for info in source.infolist():
                out.writestr(
                    info,
                    data.replace(b"K\x04", huge) if info.filename == name else source.read(info),
                )
    small.unlink()
    return path


@pytest.mark.slow  # a fresh interpreter importing torch per case: 7 s each on 2 cores
@pytest.mark.parametrize("kind", ["lying-sizes", "truncated", "not-torch"])
def test_a_corrupt_weights_file_is_a_config_error_naming_it_in_bounded_memory(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / f"{kind}.pth"
    if kind == "lying-sizes":
        lying_sizes(path)
    elif kind == "truncated":
        torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
        path.write_bytes(path.read_bytes()[:5000])
    else:
        path.write_text("these are not weights\n")
    shown = isolated(f"""
        from lstmpipe.lib.features.backbone import Backbone
        from lstmpipe.lib.features.weights import resolve_weights
        from lstmpipe.lib.config import BackboneConfig
        from lstmpipe.lib.errors import ConfigError
        config = BackboneConfig(weights={str(path)!r}, optimize="none")
        try:
            Backbone(config, resolve_weights(config, None))
            result = "loaded"
        except ConfigError as exc:
            result = str(exc)
    """)
    assert shown["result"].startswith(f"backbone.weights: {path} is not a ")
    # torch itself is ~500 MB; 8 GiB of tensor never allocated
    assert shown["self_bytes"] < 1 << 30, shown
