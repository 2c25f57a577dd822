"""lib.recipe, lib.backbone and lib.features: what makes the features, and proof that it does.

Backbones are real torchvision resnet18s (random init, `weights=none`) run on 64 px
frames on the CPU; weight files are real `torch.save` outputs. Every backbone whose
numbers a test compares names its precision: `auto` is fp32 on an AVX2 CPU and bf16 on
one with AMX or AVX512-BF16, and both paths run on either (bf16 emulated, ~5x slower).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from lstmpipe.lib.config import BackboneConfig, Config, SamplingConfig, load_config
from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.features import weights as weights_module
from lstmpipe.lib.features.backbone import Backbone
from lstmpipe.lib.features.build import check_recipe, load_backbone
from lstmpipe.lib.features.recipe import FeatureRecipe, make_recipe, recipe_key
from lstmpipe.lib.features.weights import (
    WeightsSource,
    resolve_optimize,
    resolve_precision,
    resolve_weights,
)
from tests.helpers import RECIPE

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fp32(torch_hub_dir: Path) -> Backbone:
    """The reference that bf16 and float16 are measured against, fp32 whatever `auto` is here."""
    config = BackboneConfig(weights="none", seed=0, precision="fp32")
    return Backbone(config, resolve_weights(config, torch_hub_dir))


@pytest.fixture
def fast_bf16(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool], None]:
    """Makes this process believe its CPU has (True) or lacks (False) fast bf16."""

    def pretend(has: bool) -> None:
        monkeypatch.setattr(weights_module, "cpu_has_fast_bf16", lambda: has)

    return pretend


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """Six 64 px RGB frames with structure (gradients and a square), not just noise."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 64)
    base = np.stack(
        [np.add.outer(ramp, ramp) / 2, np.tile(ramp, (64, 1)), np.tile(ramp[:, None], (1, 64))], -1
    )
    out = np.repeat(base[None], 6, axis=0) + rng.normal(0, 20, (6, 64, 64, 3))
    for i in range(6):
        out[i, 8 + 4 * i : 30 + 4 * i, 10:40] = 255 - 30 * i
    return np.clip(out, 0, 255).astype(np.uint8)


# -- recipe ---------------------------------------------------------------------------------------


def test_recipe_id_is_stable_across_processes_and_versions() -> None:
    """Pinned: changing how the id is computed silently orphans every cache entry ever written."""
    assert RECIPE.recipe_id == "9996684c7cdbf61a"  # re-pinned when the recipe gained `sources`
    assert FeatureRecipe(**dataclasses.asdict(RECIPE)).recipe_id == RECIPE.recipe_id


CHANGES = [
    {"fps": 8.0},
    {"fps": None},
    {"num_frames": 16},
    {"size": 96},
    {"backbone": "resnet34"},
    {"weights": "IMAGENET1K_V1"},
    {"weights_digest": "random-seed-1"},
    {"precision": "bf16"},
    {"decoder": "ffmpeg 7.2"},
    {"feature_dim": 256},
    {"sources": '{"nifti_view":"mip"}'},
    {"feature_dtype": "float16"},
    {"pool": "grid2"},
    {"backbone_code": "timm 1.0.0"},
]


@pytest.mark.parametrize("change", CHANGES)
def test_recipe_id_changes_when_any_field_changes(change: dict) -> None:
    assert dataclasses.replace(RECIPE, **change).recipe_id != RECIPE.recipe_id


def test_every_recipe_field_is_covered_by_a_change() -> None:
    """A field added to the recipe without a case above could silently stop changing the key."""
    assert {key for change in CHANGES for key in change} == {
        f.name for f in dataclasses.fields(FeatureRecipe)
    }


def test_recipe_round_trips_and_detects_tampering() -> None:
    data = RECIPE.to_dict()
    assert data["recipe_id"] == RECIPE.recipe_id
    assert FeatureRecipe.from_dict(data) == RECIPE
    assert FeatureRecipe.from_dict({k: v for k, v in data.items() if k != "recipe_id"}) == RECIPE
    with pytest.raises(ValueError, match=RECIPE.recipe_id):
        FeatureRecipe.from_dict(
            {**data, "size": 96}
        )  # fields edited, id kept: not the recipe it claims


def test_recipe_gives_back_the_sampling_and_backbone_that_make_it() -> None:
    base_sampling = SamplingConfig(fps=1.0, size=224, chunk_frames=5, timeout_s=7.0)
    assert RECIPE.sampling(base_sampling) == SamplingConfig(
        fps=4.0, num_frames=None, size=64, chunk_frames=5, timeout_s=7.0
    )
    seeded = dataclasses.replace(RECIPE, weights="none(seed=12)")
    base = BackboneConfig(name="resnet50", weights="DEFAULT", batch_size=9, seed=0)
    assert seeded.backbone_config(base) == BackboneConfig(
        name="resnet18", weights="none", precision="fp32", batch_size=9, seed=12
    )
    named = dataclasses.replace(RECIPE, weights="IMAGENET1K_V1")
    assert named.backbone_config(base).weights == "IMAGENET1K_V1"
    from_file = dataclasses.replace(RECIPE, weights="file:mine.pth")
    assert (
        from_file.backbone_config(base.model_copy(update={"weights": "/w/mine.pth"})).weights
        == "/w/mine.pth"
    )


# -- weights --------------------------------------------------------------------------------------


def test_none_weights_are_a_labelled_seed(torch_hub_dir: Path) -> None:
    assert resolve_weights(BackboneConfig(weights="none", seed=3), torch_hub_dir) == WeightsSource(
        "none(seed=3)", "random-seed-3", None
    )
    assert resolve_weights(BackboneConfig(weights="None"), torch_hub_dir).label == "none(seed=0)"


def test_weights_file_is_identified_by_its_digest(tmp_path: Path, torch_hub_dir: Path) -> None:
    path = tmp_path / "mine.pth"
    torch.save({"w": torch.arange(10.0)}, path)
    source = resolve_weights(BackboneConfig(weights=str(path)), torch_hub_dir)
    assert source == WeightsSource(
        "file:mine.pth", hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest(), path
    )
    torch.save({"w": torch.arange(10.0) + 1}, path)
    assert resolve_weights(BackboneConfig(weights=str(path)), torch_hub_dir).digest != source.digest
    with pytest.raises(ConfigError, match="missing.pth does not exist"):
        resolve_weights(BackboneConfig(weights=str(tmp_path / "missing.pth")), torch_hub_dir)


@pytest.mark.parametrize("weights", ["IMAGENET1K_V1", "DEFAULT"])
def test_torchvision_weights_not_in_the_local_cache_are_an_error_offline(
    torch_hub_dir: Path, weights: str
) -> None:
    with pytest.raises(ConfigError, match="not in the local torch cache") as caught:
        resolve_weights(
            BackboneConfig(name="resnet18", weights=weights, offline=True), torch_hub_dir
        )
    assert "backbone.offline is set" in str(caught.value)
    assert "--weights none" in str(caught.value)
    assert not (torch_hub_dir / "checkpoints").exists()


def test_torchvision_weights_found_in_the_local_cache(tmp_path: Path) -> None:
    filename = Path(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url).name
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / filename).write_bytes(b"placed there by an admin")
    source = resolve_weights(BackboneConfig(name="resnet18", weights="DEFAULT"), tmp_path)
    assert source == WeightsSource("IMAGENET1K_V1", filename, tmp_path / "checkpoints" / filename)


def test_unknown_weights_name_is_a_config_error(torch_hub_dir: Path) -> None:
    with pytest.raises(ConfigError, match="'IMAGENET9K' is not a weights name of resnet18"):
        resolve_weights(BackboneConfig(name="resnet18", weights="IMAGENET9K"), torch_hub_dir)


# -- precision ------------------------------------------------------------------------------------


def test_precision_resolution(fast_bf16: Callable[[bool], None]) -> None:
    cpu = "cpu"
    for explicit in ("fp32", "bf16", "fp16"):
        assert resolve_precision(explicit, cpu) == explicit
    fast_bf16(True)  # AMX or AVX512-BF16
    assert resolve_precision("auto", cpu) == "bf16"
    fast_bf16(False)  # AVX2 only: emulated bf16 is slower than fp32
    assert resolve_precision("auto", cpu) == "fp32"
    with pytest.raises(ConfigError, match="backbone.precision: 'fp8'"):
        resolve_precision("fp8", cpu)


def test_auto_on_a_cpu_with_fast_bf16_builds_a_bf16_backbone(
    tiny_config: Config,
    torch_hub_dir: Path,
    fp32: Backbone,
    frames: np.ndarray,
    fast_bf16: Callable[[bool], None],
) -> None:
    """What `auto` gives on an AMX Xeon, exercised on any CPU: the recipe says bf16, no freezing."""
    fast_bf16(True)
    auto = tiny_config.backbone.model_copy(update={"precision": "auto"})
    model, recipe = load_backbone(tiny_config.sampling, auto, torch_hub_dir, device="cpu")
    assert (model.precision, recipe.precision, model.optimize) == ("bf16", "bf16", "none")
    features, reference = model(frames[:2]), fp32(frames[:2])
    assert np.linalg.norm(features - reference) / np.linalg.norm(reference) < 0.05


# -- the backbone ---------------------------------------------------------------------------------


def test_backbone_gives_one_float32_vector_per_frame(
    backbone: tuple[Backbone, FeatureRecipe], tiny_config: Config, frames: np.ndarray
) -> None:
    model, recipe = backbone
    features = model(frames)
    assert features.shape == (6, 512) and features.dtype == np.float32
    assert np.isfinite(features).all() and features.std() > 0
    assert not np.allclose(features[0], features[1])  # different frames, different features
    np.testing.assert_allclose(
        model(frames[2:3]), features[2:3], rtol=1e-5, atol=1e-5
    )  # batching is invisible
    assert model.precision == "fp32"  # forced by tiny_config: the same numbers on every CPU
    assert (recipe.feature_dim, recipe.precision, recipe.size, recipe.fps) == (
        512,
        model.precision,
        64,
        4.0,
    )
    assert recipe.decoder.startswith("ffmpeg ") and recipe.weights == "none(seed=0)"
    assert tiny_config.backbone.weights == "none"


def test_none_weights_are_deterministic_per_seed(
    backbone: tuple[Backbone, FeatureRecipe], torch_hub_dir: Path, frames: np.ndarray
) -> None:
    model, _ = backbone
    again = Backbone(
        BackboneConfig(weights="none", seed=0, precision="fp32"),
        resolve_weights(BackboneConfig(weights="none", seed=0), torch_hub_dir),
    )
    np.testing.assert_array_equal(again(frames), model(frames))
    other = Backbone(
        BackboneConfig(weights="none", seed=1, precision="fp32"),
        resolve_weights(BackboneConfig(weights="none", seed=1), torch_hub_dir),
    )
    assert np.abs(other(frames) - model(frames)).max() > 1e-2


def test_state_dict_file_loads_the_same_network(
    tmp_path: Path,
    torch_hub_dir: Path,
    backbone: tuple[Backbone, FeatureRecipe],
    frames: np.ndarray,
) -> None:
    torch.manual_seed(123)
    network = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-seed123.pth"
    torch.save(network.state_dict(), path)

    config = BackboneConfig(
        weights=str(path), seed=0, precision="fp32", optimize="none"
    )  # seed 0: the file must win
    from_file = Backbone(config, resolve_weights(config, torch_hub_dir))
    loaded = from_file.model.state_dict()["conv1.weight"]
    torch.testing.assert_close(loaded, network.conv1.weight, rtol=0, atol=0)
    twin = BackboneConfig(
        weights="none", seed=123, precision="fp32", optimize="none"
    )  # the same network, in memory
    np.testing.assert_array_equal(
        from_file(frames), Backbone(twin, resolve_weights(twin, torch_hub_dir))(frames)
    )
    assert (
        np.abs(from_file(frames) - backbone[0](frames)).max() > 1e-2
    )  # and not the seed-0 network


class Payload:
    """Unpickling this runs code: it touches `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_weights_file_carrying_pickled_objects_is_refused(
    tmp_path: Path, torch_hub_dir: Path
) -> None:
    """weights_only=True: a file that would run code when unpickled is never loaded."""
    path, marker = tmp_path / "trojan.pth", tmp_path / "code-ran"
    torch.save({"conv1.weight": torch.zeros(2), "payload": Payload(marker)}, path)
    config = BackboneConfig(weights=str(path))
    with pytest.raises(ConfigError, match="trojan.pth") as caught:
        Backbone(config, resolve_weights(config, torch_hub_dir))
    assert isinstance(caught.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists()


def test_weights_file_for_another_network_is_refused(tmp_path: Path, torch_hub_dir: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save(OrderedDict(layer=torch.zeros(3, 3)), path)
    config = BackboneConfig(weights=str(path))
    with pytest.raises(ConfigError, match="other.pth does not fit resnet18"):
        Backbone(config, resolve_weights(config, torch_hub_dir))


def test_bf16_requested_on_cpu_still_works(
    fp32: Backbone, torch_hub_dir: Path, frames: np.ndarray
) -> None:
    config = BackboneConfig(weights="none", seed=0, precision="bf16")
    model = Backbone(config, resolve_weights(config, torch_hub_dir))
    assert model.precision == "bf16" and fp32.precision == "fp32"
    features = model(frames[:2])
    assert features.shape == (2, 512) and features.dtype == np.float32
    reference = fp32(frames[:2])
    # bf16 keeps ~3 significant digits: close to fp32, not equal to it.
    assert np.linalg.norm(features - reference) / np.linalg.norm(reference) < 0.05
    assert not np.array_equal(features, reference)


def test_float16_features_halve_the_storage_and_stay_close(
    fp32: Backbone, torch_hub_dir: Path, frames: np.ndarray
) -> None:
    """Only the storage is float16: the network runs in fp32, as the reference does."""
    config = BackboneConfig(weights="none", seed=0, precision="fp32", feature_dtype="float16")
    features = Backbone(config, resolve_weights(config, torch_hub_dir))(frames[:2])
    reference = fp32(frames[:2])
    assert features.dtype == np.float16 and features.nbytes * 2 == reference.nbytes
    assert (
        np.linalg.norm(features.astype(np.float32) - reference) / np.linalg.norm(reference) < 2e-3
    )


def test_unknown_feature_dtype_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="backbone.feature_dtype: 'int8'"):
        load_config(overrides={"backbone.feature_dtype": "int8"})


def test_batch_size_is_chosen_per_device_unless_given(
    backbone: tuple[Backbone, FeatureRecipe],
) -> None:
    assert (
        backbone[0].device.type == "cpu"
    )  # the GPU twin (a probe batch against free memory) needs a GPU
    assert backbone[0].batch_size(224) == 32
    assert backbone[0].batch_size(224, requested=8) == 8


@pytest.mark.parametrize("optimize", ["freeze", pytest.param("inductor", marks=pytest.mark.slow)])
def test_optimized_backbone_gives_the_same_features(
    torch_hub_dir: Path, frames: np.ndarray, optimize: str
) -> None:
    plain = BackboneConfig(weights="none", seed=0, precision="fp32", optimize="none")
    reference = Backbone(plain, resolve_weights(plain, torch_hub_dir))
    config = plain.model_copy(update={"optimize": optimize})
    optimized = Backbone(config, resolve_weights(config, torch_hub_dir))
    assert optimized.optimize == optimize and reference.optimize == "none"
    for batch in (frames[:1], frames):  # traced on one 64 px frame: any batch size still fits
        np.testing.assert_allclose(optimized(batch), reference(batch), rtol=1e-4, atol=1e-4)


def test_auto_optimisation_freezes_fp32_on_cpu_only() -> None:
    cpu, gpu = "cpu", "cuda"
    assert resolve_optimize("auto", cpu, "fp32") == "freeze"
    assert (
        resolve_optimize("auto", cpu, "bf16") == "none"
        and resolve_optimize("auto", gpu, "fp16") == "none"
    )
    with pytest.raises(ConfigError, match="backbone.optimize"):
        resolve_optimize("fast", cpu, "fp32")


def test_other_heads_are_removed_too(torch_hub_dir: Path, frames: np.ndarray) -> None:
    config = BackboneConfig(name="mobilenet_v3_small", weights="none", precision="fp32")
    model = Backbone(config, resolve_weights(config, torch_hub_dir))
    assert model.feature_dim == 576 and model(frames[:2]).shape == (
        2,
        576,
    )  # pooled features, not 1000 logits


def test_unknown_backbone_is_a_config_error(torch_hub_dir: Path) -> None:
    config = BackboneConfig(name="resnet19", weights="none")
    with pytest.raises(ConfigError, match="backbone.name: unknown torchvision model 'resnet19'"):
        Backbone(config, resolve_weights(config, torch_hub_dir))


# -- recipes made and checked ---------------------------------------------------------------------


def test_load_backbone_makes_the_recipe_of_its_config(
    backbone: tuple[Backbone, FeatureRecipe], tiny_config: Config
) -> None:
    model, recipe = backbone
    weights = WeightsSource("none(seed=0)", "random-seed-0", None)
    assert recipe == make_recipe(
        recipe.decoder,
        tiny_config.sampling,
        tiny_config.sources,
        "resnet18",
        weights,
        model.precision,
        512,
    )
    assert recipe.sources_config() == tiny_config.sources
    assert recipe.sampling(tiny_config.sampling) == tiny_config.sampling
    assert recipe.backbone_config(tiny_config.backbone) == tiny_config.backbone.model_copy(
        update={"precision": model.precision}
    )


def test_check_recipe_names_the_differing_fields() -> None:
    check_recipe(RECIPE, FeatureRecipe.from_dict(RECIPE.to_dict()))  # equal: no error
    built = dataclasses.replace(RECIPE, size=96, precision="bf16")
    with pytest.raises(ConfigError, match=RECIPE.recipe_id) as caught:
        check_recipe(RECIPE, built)
    assert str(caught.value).endswith("differing: size, precision")


def test_load_backbone_rejects_unknown_names_before_building(
    tiny_config: Config, torch_hub_dir: Path
) -> None:
    with pytest.raises(ConfigError, match="resnet19"):
        load_backbone(
            tiny_config.sampling,
            tiny_config.backbone.model_copy(update={"name": "resnet19"}),
            torch_hub_dir,
        )


def test_the_recipe_key_follows_what_makes_the_recipe(tmp_path: Path) -> None:
    """flows cache recipes under recipe_key: it follows the settings and the weights' content."""
    config = load_config(overrides={"sampling.size": 32, "backbone.weights": "none"})
    key = recipe_key(config.sampling, config.backbone, tmp_path)
    assert key == recipe_key(config.sampling, config.backbone, tmp_path)
    assert key != recipe_key(
        config.sampling.model_copy(update={"fps": 3.0}), config.backbone, tmp_path
    )
    assert key != recipe_key(
        config.sampling, config.backbone.model_copy(update={"seed": 7}), tmp_path
    )
    assert key != recipe_key(
        config.sampling,
        config.backbone,
        tmp_path,
        sources=config.sources.model_copy(update={"geotiff_bands": ("b4",)}),
    )
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"one")
    from_file = config.backbone.model_copy(update={"weights": str(weights)})
    before = recipe_key(config.sampling, from_file, tmp_path)
    weights.write_bytes(b"two")
    os.utime(weights, ns=(1, 1))
    assert recipe_key(config.sampling, from_file, tmp_path) != before
