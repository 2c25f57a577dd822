"""Backbones a user brings (an entry point, a TorchScript file) and grid pooling (issue 19).

The entry points are in tests/backbones.py; the pretrained one runs end to end in
tests/integration/test_efficientnet_lite.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lstmpipe.lib.config import BackboneConfig, SamplingConfig
from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.features.backbone import Backbone
from lstmpipe.lib.features.backbone_names import BackboneKind, backbone_kind
from lstmpipe.lib.features.build import check_recipe, load_backbone
from lstmpipe.lib.features.recipe import FeatureRecipe, recipe_key
from lstmpipe.lib.features.user_backbones import tensors_digest
from lstmpipe.lib.features.weights import resolve_weights
from tests.backbones import tiny_cnn
from tests.helpers import RECIPE

pytestmark = pytest.mark.usefixtures("one_thread")
SAMPLING = SamplingConfig(size=64, fps=4.0)
FRAMES = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)


def entry(callable_name: str, **more: object) -> BackboneConfig:
    return BackboneConfig.model_validate(
        {"name": f"tests.backbones:{callable_name}", "precision": "fp32", **more}
    )


def built(config: BackboneConfig, torch_hub_dir: Path) -> Backbone:
    return Backbone(config, resolve_weights(config, torch_hub_dir))


def seeded(make: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return make()


# -- what a name names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kind",
    [
        ("resnet18", BackboneKind.TORCHVISION),
        ("mobilenet_v3_small", BackboneKind.TORCHVISION),
        ("timm.models:resnet18", BackboneKind.ENTRY_POINT),
        ("tests.backbones:efficientnet_lite0", BackboneKind.ENTRY_POINT),
        ("model.pt", BackboneKind.TORCHSCRIPT),
        ("/models/resnet18", BackboneKind.TORCHSCRIPT),
        ("~/nets/x.torchscript", BackboneKind.TORCHSCRIPT),
    ],
)
def test_a_name_is_a_torchvision_model_an_entry_point_or_a_file(
    name: str, kind: BackboneKind
) -> None:
    assert backbone_kind(name) is kind


# -- entry points ---------------------------------------------------------------------------------


def test_an_entry_point_gives_vectors_and_a_recipe_naming_it_its_code_and_its_tensors(
    torch_hub_dir: Path,
) -> None:
    config = entry("tiny_cnn", optimize="none")
    backbone, recipe = load_backbone(SAMPLING, config, torch_hub_dir)
    assert backbone(FRAMES).shape == (3, 8) and recipe.feature_dim == 8
    assert recipe.backbone == "tests.backbones:tiny_cnn"
    assert recipe.weights == "DEFAULT"
    assert recipe.weights_digest == tensors_digest(seeded(tiny_cnn))  # seeded by backbone.seed
    # the entry point's module (outside every distribution), then the module's class's
    assert recipe.backbone_code == f"tests (no distribution); torch {version('torch')}"
    # a model version's recipe never chooses code to run: the caller names the entry point too
    with pytest.raises(ConfigError, match="runs only when named .*tests.backbones:tiny_cnn"):
        recipe.backbone_config(BackboneConfig())
    again = recipe.backbone_config(BackboneConfig(name=config.name, batch_size=4))
    assert (again.name, again.weights, again.pool, again.batch_size) == (
        config.name,
        "DEFAULT",
        "global",
        4,
    )
    check_recipe(recipe, load_backbone(SAMPLING, again, torch_hub_dir)[1])


def test_vectors_shaped_n_d_1_1_are_flattened(torch_hub_dir: Path) -> None:
    backbone = built(entry("tiny_cnn_unflattened", optimize="none"), torch_hub_dir)
    assert backbone.feature_dim == 8 and backbone(FRAMES).shape == (3, 8)


@pytest.mark.parametrize(
    "name, message",
    [
        ("no_such_package_here.nets:make", "cannot import it"),
        ("tests.backbones:missing", "tests.backbones has no missing"),
        ("tests.backbones:NOT_CALLABLE", "is not callable"),
        ("tests.backbones:not_a_module", "returned a str, not a torch.nn.Module"),
        ("tests.backbones:feature_map", r"returned \(1, 8, 31, 31\) for one 64 px frame"),
    ],
)
def test_a_bad_entry_point_is_a_config_error_naming_it(
    name: str, message: str, torch_hub_dir: Path
) -> None:
    config = BackboneConfig(name=name, precision="fp32", optimize="none")
    with pytest.raises(ConfigError, match=message) as caught:
        load_backbone(SAMPLING, config, torch_hub_dir)
    assert repr(name) in str(caught.value)


def test_an_entry_point_takes_its_own_weights_or_a_state_dict_never_none(
    tmp_path: Path, torch_hub_dir: Path
) -> None:
    with pytest.raises(ConfigError, match="use DEFAULT or a .pth state_dict"):
        resolve_weights(entry("tiny_cnn", weights="none"), torch_hub_dir)
    other = seeded(tiny_cnn, 5)
    torch.save(other.state_dict(), tmp_path / "mine.pth")
    config = entry("tiny_cnn", weights=str(tmp_path / "mine.pth"), optimize="none")
    backbone, recipe = load_backbone(SAMPLING, config, torch_hub_dir)
    assert (recipe.weights, recipe.weights_digest) == ("file:mine.pth", tensors_digest(other))
    with torch.no_grad():
        want = other.eval()(backbone.prepare(FRAMES)).numpy()
    np.testing.assert_allclose(backbone(FRAMES), want, atol=1e-6)
    # the caller names the file again, as for torchvision models
    base = BackboneConfig(name=config.name, weights=config.weights)
    assert recipe.backbone_config(base).weights == config.weights


def test_the_weights_digest_is_stable_and_follows_every_tensor() -> None:
    linear = nn.Linear(3, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.arange(6.0).view(2, 3))
        linear.bias.zero_()
    # pinned: the digest must not depend on the process, the device or the memory layout
    assert tensors_digest(linear) == "122848df011a1862789ca0286d3f6f0b"
    assert tensors_digest(seeded(tiny_cnn)) == tensors_digest(seeded(tiny_cnn))
    assert tensors_digest(seeded(tiny_cnn)) != tensors_digest(seeded(tiny_cnn, 1))
    nudged = seeded(tiny_cnn)
    with torch.no_grad():
        next(nudged.parameters()).view(-1)[0] += 1e-6
    assert tensors_digest(nudged) != tensors_digest(seeded(tiny_cnn))
    # dtype and buffers count; bf16, which numpy cannot hold, is read as bytes
    assert tensors_digest(seeded(tiny_cnn).to(torch.bfloat16)) != tensors_digest(seeded(tiny_cnn))
    norm = nn.BatchNorm2d(4)
    before = tensors_digest(norm)
    assert norm.running_mean is not None
    norm.running_mean += 1
    assert tensors_digest(norm) != before
    as_nchw = tensors_digest(seeded(tiny_cnn).to(memory_format=torch.channels_last))
    assert as_nchw == tensors_digest(seeded(tiny_cnn))


def test_freezing_an_entry_points_module_keeps_its_features(torch_hub_dir: Path) -> None:
    eager = built(entry("tiny_cnn", optimize="none"), torch_hub_dir)
    frozen = built(entry("tiny_cnn", optimize="freeze"), torch_hub_dir)
    assert isinstance(frozen.model, torch.jit.ScriptModule)
    np.testing.assert_allclose(frozen(FRAMES), eager(FRAMES), atol=1e-5)


def test_grid_pooling_is_for_torchvision_models_only(torch_hub_dir: Path) -> None:
    with pytest.raises(ConfigError, match="backbone.pool: grid2 needs a torchvision model"):
        built(entry("tiny_cnn", pool="grid2"), torch_hub_dir)


def test_the_recipe_key_names_an_entry_points_code_without_importing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "code" / "my_nets_for_keys"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (package / "nets.py").write_text("def small(): ...\n")
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    config = BackboneConfig(name="my_nets_for_keys.nets:small")
    key = recipe_key(SAMPLING, config, tmp_path)
    assert "my_nets_for_keys" not in sys.modules
    assert key == recipe_key(SAMPLING, config, tmp_path)
    assert key != recipe_key(
        SAMPLING, config.model_copy(update={"name": config.name + "2"}), tmp_path
    )
    (package / "nets.py").write_text("def small(): return None\n")
    os.utime(package / "nets.py", ns=(1, 1))
    assert recipe_key(SAMPLING, config, tmp_path) != key  # the code changed
    with pytest.raises(ConfigError, match="no module named 'not_installed_here'"):
        recipe_key(SAMPLING, BackboneConfig(name="not_installed_here:make"), tmp_path)


# -- TorchScript files ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scripted(
    tmp_path_factory: pytest.TempPathFactory, torch_hub_dir: Path
) -> tuple[Backbone, Path]:
    """A headless random-init resnet18 and the file torch.jit.script + save made of it."""
    config = BackboneConfig(weights="none", precision="fp32", optimize="none")
    eager = built(config, torch_hub_dir)
    path = tmp_path_factory.mktemp("scripted") / "resnet18.pt"
    torch.jit.save(torch.jit.script(eager.model), str(path))
    return eager, path


@pytest.mark.parametrize("optimize", ["none", "freeze", "inductor"])
def test_a_torchscript_file_gives_the_eager_modules_features(
    scripted: tuple[Backbone, Path], torch_hub_dir: Path, optimize: str
) -> None:
    eager, path = scripted
    config = BackboneConfig.model_validate(
        {"name": str(path), "precision": "fp32", "optimize": optimize}
    )
    backbone = built(config, torch_hub_dir)
    assert backbone.optimize == ("freeze" if optimize == "freeze" else "none")
    assert backbone.feature_dim == 512
    np.testing.assert_allclose(backbone(FRAMES), eager(FRAMES), rtol=1e-4, atol=1e-4)


def test_a_torchscript_recipe_names_the_file_and_its_digest(
    scripted: tuple[Backbone, Path], torch_hub_dir: Path, tmp_path: Path
) -> None:
    _, path = scripted
    config = BackboneConfig(name=str(path), precision="fp32")
    _, recipe = load_backbone(SAMPLING, config, torch_hub_dir)
    assert recipe.backbone == "torchscript:resnet18.pt"
    assert recipe.weights == "DEFAULT"
    assert recipe.weights_digest == hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    assert recipe.backbone_code == ""
    # the caller names the file; its digest is checked
    again = recipe.backbone_config(BackboneConfig(name=str(path)))
    check_recipe(recipe, load_backbone(SAMPLING, again, torch_hub_dir)[1])
    with pytest.raises(ConfigError, match=r"made by torchscript:resnet18.pt.*--backbone PATH"):
        recipe.backbone_config(BackboneConfig())
    other = tmp_path / "resnet18.pt"
    torch.jit.save(torch.jit.script(seeded(tiny_cnn)), str(other))
    elsewhere = recipe.backbone_config(BackboneConfig(name=str(other)))
    with pytest.raises(ConfigError, match="differing: .*weights_digest"):
        check_recipe(recipe, load_backbone(SAMPLING, elsewhere, torch_hub_dir)[1])


def test_a_file_torchscript_cannot_use_is_a_config_error(
    scripted: tuple[Backbone, Path], tmp_path: Path, torch_hub_dir: Path
) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    state_dict = tmp_path / "state.pt"
    torch.save(seeded(tiny_cnn).state_dict(), state_dict)
    for path in (junk, state_dict):
        with pytest.raises(ConfigError, match=f"{path.name} is not a TorchScript file"):
            built(BackboneConfig(name=str(path)), torch_hub_dir)
    with pytest.raises(ConfigError, match="TorchScript file .*missing.pt does not exist"):
        resolve_weights(BackboneConfig(name=str(tmp_path / "missing.pt")), torch_hub_dir)
    _, path = scripted
    with pytest.raises(ConfigError, match="holds its own weights"):
        resolve_weights(BackboneConfig(name=str(path), weights="none"), torch_hub_dir)
    with pytest.raises(ConfigError, match="is a TorchScript file and pools its own"):
        built(BackboneConfig(name=str(path), pool="grid3"), torch_hub_dir)


# -- grid pooling ---------------------------------------------------------------------------------


def dot(column: int | None, size: int = 224) -> np.ndarray:
    """One grey frame; with a white square in the given quarter column (0-3). 224 px: the final
    feature map is 7 x 7, so each of the 2 x 2 cells averages its own part of the frame."""
    frame = np.full((1, size, size, 3), 96, dtype=np.uint8)
    if column is not None:
        left, side = column * size // 4 + size // 16, size // 8
        frame[0, (size - side) // 2 : (size + side) // 2, left : left + side] = 255
    return frame


def test_grid_pooling_keeps_where_things_are(torch_hub_dir: Path) -> None:
    config = BackboneConfig(weights="none", precision="fp32", optimize="none", pool="grid2")
    grid = built(config, torch_hub_dir)
    assert grid.feature_dim == 512 * 2 * 2
    blank = grid(dot(None))

    def change(column: int) -> np.ndarray:
        """How much each cell's features moved: (rows, columns)."""
        moved = np.abs(grid(dot(column)) - blank).reshape(512, 2, 2)  # channel-major: (c, r, col)
        return moved.sum(axis=0)

    left, right = change(0), change(3)
    assert left[:, 0].sum() > 3 * left[:, 1].sum()
    assert right[:, 1].sum() > 3 * right[:, 0].sum()
    # global pooling: one average over the frame, where the dot was is gone
    assert built(config.model_copy(update={"pool": "global"}), torch_hub_dir).feature_dim == 512


@pytest.mark.parametrize("name, cells", [("mobilenet_v3_small", 3), ("efficientnet_b0", 2)])
def test_grid_pooling_multiplies_the_channels_by_the_cells(
    name: str, cells: int, torch_hub_dir: Path
) -> None:
    config = BackboneConfig(name=name, weights="none", precision="fp32", optimize="none")
    channels = built(config, torch_hub_dir).feature_dim
    grid = built(config.model_copy(update={"pool": f"grid{cells}"}), torch_hub_dir)
    assert grid.feature_dim == channels * cells * cells


def test_grid_pooling_needs_an_avgpool_module(torch_hub_dir: Path) -> None:
    config = BackboneConfig(name="squeezenet1_1", weights="none", pool="grid2")
    with pytest.raises(ConfigError, match="backbone.pool: grid2 .*SqueezeNet has none"):
        built(config, torch_hub_dir)


def test_the_pool_is_part_of_the_recipe_and_its_key(torch_hub_dir: Path, tmp_path: Path) -> None:
    config = BackboneConfig(weights="none", precision="fp32", pool="grid2")
    _, recipe = load_backbone(SAMPLING, config, torch_hub_dir)
    assert (recipe.pool, recipe.feature_dim) == ("grid2", 2048)
    assert recipe.backbone_config(BackboneConfig()).pool == "grid2"
    assert recipe_key(SAMPLING, config, tmp_path) != recipe_key(
        SAMPLING, config.model_copy(update={"pool": "global"}), tmp_path
    )


# -- recipes from before keep their ids -----------------------------------------------------------

OLD = RECIPE  # its id is pinned there: recipes stored before these fields keep it


def test_recipes_from_before_pool_and_backbone_code_keep_their_ids() -> None:
    # the id tests/lib/test_recipe_and_backbone.py pinned before these fields existed
    assert OLD.recipe_id == "9996684c7cdbf61a"
    stored = {k: v for k, v in OLD.to_dict().items() if k not in {"pool", "backbone_code"}}
    assert FeatureRecipe.from_dict(stored) == OLD  # a recipe stored before: read back, same id
    assert dataclasses.replace(OLD, pool="grid2").recipe_id != OLD.recipe_id
    assert dataclasses.replace(OLD, backbone_code="timm 1.0").recipe_id != OLD.recipe_id
