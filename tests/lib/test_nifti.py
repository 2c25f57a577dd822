"""lib.sources.kinds.nifti through discovery, decoding and extraction, on nibabel's real test files
and generated ones."""

from __future__ import annotations

import gzip
import shutil
import struct
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lstmpipe.lib.config import SamplingConfig
from lstmpipe.lib.failures import Failure
from lstmpipe.lib.features.extract import extract_many
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.sources.decode import decode, describe
from lstmpipe.lib.sources.discover import discover
from lstmpipe.lib.sources.kinds import KINDS, nifti
from tests.helpers import wheel_data

SMALL = SamplingConfig(fps=None, size=32, chunk_frames=8)


@pytest.fixture(scope="module")
def nib_data() -> Path:
    """nibabel's own test images, found in the installed wheel."""
    path = wheel_data("nibabel", "nibabel/tests/data")
    assert (path / "example4d.nii.gz").is_file(), f"nibabel test data missing under {path}"
    return path


@pytest.fixture
def root(nib_data: Path, tmp_path: Path) -> Path:
    """Real 4-D and 3-D files in a labelled folder, plus a
    truncated gzip, a truncated .nii and a fake one."""
    root = tmp_path / "source"
    (root / "rest").mkdir(parents=True)
    for name in ("example4d.nii.gz", "functional.nii", "anatomical.nii"):
        shutil.copy(nib_data / name, root / "rest" / name)
    cut = (nib_data / "example4d.nii.gz").read_bytes()[:100_000]  # time point 1 cut off
    (root / "rest" / "cut.nii.gz").write_bytes(cut)
    (root / "short.nii").write_bytes((nib_data / "functional.nii").read_bytes()[:1024])
    (root / "text.nii").write_text("not an image")
    return root


def raw_header(path: Path) -> tuple[list[int], list[float], int]:
    """dim, pixdim and the time-unit code of a NIfTI-1 file, read with struct, not with nibabel."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as stream:
        block = stream.read(348)
    order = "<" if struct.unpack("<i", block[:4])[0] == 348 else ">"
    dim = list(struct.unpack(order + "8h", block[40:56]))
    pixdim = list(struct.unpack(order + "8f", block[76:108]))
    return dim, pixdim, block[123] & 0x38


def frames_of(
    ref: SeriesRef, sampling: SamplingConfig, tmp_path: Path
) -> tuple[np.ndarray, np.ndarray]:
    chunks = list(decode(ref, sampling, tmp_path))
    return np.concatenate([c.frames for c in chunks]), np.concatenate([c.t for c in chunks])


def mean_embed(frames: np.ndarray) -> np.ndarray:
    return frames.reshape(len(frames), -1).mean(axis=1, keepdims=True).astype(np.float32)  # (N, 1)


def write_nifti(path: Path, data: np.ndarray, tr: float, unit: str = "sec") -> Path:
    image = nib.Nifti1Image(data, np.eye(4))
    image.header.set_zooms((1.0, 1.0, 1.0, tr)[: data.ndim])
    image.header.set_xyzt_units("mm", unit)
    nib.save(image, path)
    return path


def test_nifti_is_a_registered_kind_before_images() -> None:
    names = [k.name for k in KINDS]
    assert "nifti" in names and names.index("nifti") < names.index("images")


def test_discovery_claims_4d_and_refuses_the_rest(root: Path, nib_data: Path) -> None:
    found = discover(root)
    assert [(r.series_id, r.kind, r.label, r.partition) for r in found.refs] == [
        # its header reads; its data does not (see below)
        ("rest/cut.nii.gz", "nifti", "rest", "rest"),
        ("rest/example4d.nii.gz", "nifti", "rest", "rest"),
        ("rest/functional.nii", "nifti", "rest", "rest"),
    ]
    reasons = {f.series_id: (f.stage, f.reason) for f in found.failures}
    assert reasons.keys() == {"rest/anatomical.nii", "short.nii", "text.nii"}
    assert reasons["rest/anatomical.nii"] == (
        "discover",
        "not a time series: 3-D volume (33x41x25); time must be the 4th axis",
    )
    # header + data, nothing after: the full promise
    whole = (nib_data / "functional.nii").stat().st_size
    assert reasons["short.nii"][1] == f"truncated: 1024 of {whole} bytes"
    assert reasons["text.nii"][1].startswith("unreadable NIfTI header")
    assert all(f.path.endswith(f.series_id) for f in found.failures)


def test_example4d_one_frame_per_time_point(root: Path, tmp_path: Path) -> None:
    path = root / "rest" / "example4d.nii.gz"
    dim, pixdim, time_unit = raw_header(path)
    assert (dim[0], time_unit) == (4, 8)  # 4-D, seconds
    ref = next(r for r in discover(root).refs if r.series_id == "rest/example4d.nii.gz")
    frames, t = frames_of(ref, SMALL, tmp_path)
    assert frames.shape == (dim[4], 32, 32, 3) and frames.dtype == np.uint8
    # the header's 2000 s, taken as written
    np.testing.assert_allclose(t, np.arange(dim[4]) * pixdim[4])
    assert frames.std() > 10  # a brain, not a blank
    assert ref.meta["shape"] == dim[1:5] and ref.meta["spacing"] == pytest.approx(pixdim[1:4])
    meta = describe(ref, SMALL, tmp_path)
    assert (meta["source_kind"], meta["view"], meta["frames"]) == ("nifti", "middle", dim[4])
    assert meta["time_step_s"] == pytest.approx(pixdim[4])


def test_functional_frames_times_and_uniform_pick(root: Path, tmp_path: Path) -> None:
    path = root / "rest" / "functional.nii"
    dim, pixdim, _ = raw_header(path)
    ref = next(r for r in discover(root).refs if r.series_id == "rest/functional.nii")
    frames, t = frames_of(ref, SMALL, tmp_path)
    assert frames.shape == (dim[4], 32, 32, 3) and dim[4] == 20
    np.testing.assert_allclose(t, np.arange(20) * pixdim[4])
    picked, t5 = frames_of(ref, SamplingConfig(fps=None, num_frames=5, size=32), tmp_path)
    assert len(picked) == 5
    np.testing.assert_allclose(t5, np.array([0, 5, 10, 14, 19]) * pixdim[4])
    # same scaling whatever is picked
    np.testing.assert_array_equal(picked, frames[[0, 5, 10, 14, 19]])


def test_truncated_gzip_fails_alone(root: Path, tmp_path: Path) -> None:
    refs = discover(root).refs
    results = list(extract_many(refs, SMALL, mean_embed, batch_size=16, tmp_dir=tmp_path))
    failed = [r for r in results if isinstance(r, Failure)]
    assert [(f.series_id, f.stage) for f in failed] == [("rest/cut.nii.gz", "decode")]
    assert (
        failed[0].path.endswith("cut.nii.gz")
        and "unreadable data at time point 1" in failed[0].reason
    )
    lengths = {r.series_id: len(r.features) for r in results if not isinstance(r, Failure)}
    assert lengths == {"rest/example4d.nii.gz": 2, "rest/functional.nii": 20}
    cut = next(r for r in refs if r.series_id == "rest/cut.nii.gz")
    assert describe(cut, SMALL, tmp_path)["frames"] == 2  # describe reads the header alone


def test_mip_and_middle_slice_differ(root: Path, tmp_path: Path) -> None:
    ref = next(r for r in discover(root).refs if r.series_id == "rest/example4d.nii.gz")
    with nifti.open_series(ref, SMALL, tmp_path, view="mip") as series:
        mip = np.concatenate([c.frames for c in series.chunks])
        assert series.meta["view"] == "mip"
    middle, _ = frames_of(ref, SMALL, tmp_path)
    assert mip.shape == middle.shape and np.abs(mip.astype(int) - middle).mean() > 5


def test_mip_sees_what_the_middle_slice_misses(tmp_path: Path) -> None:
    data = np.zeros((16, 16, 5, 3), dtype=np.float32)
    # a bright block in the first slice only; the middle slice (2) stays dark
    data[4:8, 4:8, 0, :] = 100.0
    data[0, 0, 4, :] = np.nan  # a NaN voxel blanks neither view
    ref = discover(write_nifti(tmp_path / "block.nii", data, 0.5)).refs[0]
    middle, _ = frames_of(ref, SamplingConfig(fps=None, size=16), tmp_path)
    with nifti.open_series(ref, SamplingConfig(fps=None, size=16), tmp_path, view="mip") as series:
        mip = np.concatenate([c.frames for c in series.chunks])
    assert middle.max() == 0
    # the block is the 99th percentile: full scale (less float rounding)
    bright = mip[..., 0] >= 250
    # 4x4 in each of 3 frames, and nothing else
    assert bright.sum() == 3 * 16 and mip[~bright].max() == 0
    # rows follow the 2nd voxel axis, highest index at the top (imshow(view.T, origin="lower"));
    # columns the 1st
    assert bright[:, 8:12, 4:8].all()
    with (
        pytest.raises(ValueError, match="'side' unknown; choose one of middle, mip"),
        nifti.open_series(ref, SMALL, tmp_path, view="side"),
    ):
        pass


@pytest.mark.parametrize(
    ("unit", "tr", "expected_step"),
    [("msec", 500.0, 0.5), ("usec", 250000.0, 0.25), ("unknown", 2.0, None), ("hz", 2.0, None)],
)
def test_time_step_from_header_units(
    tmp_path: Path, unit: str, tr: float, expected_step: float | None
) -> None:
    ref = discover(
        write_nifti(tmp_path / "t.nii.gz", np.ones((4, 4, 3, 4), np.int16), tr, unit)
    ).refs[0]
    _, t = frames_of(ref, SamplingConfig(fps=None, size=8), tmp_path)
    assert ref.meta["time_step_s"] == expected_step
    # no time unit: t is the index
    np.testing.assert_allclose(t, np.arange(4) * (expected_step or 1.0))


def test_memory_bounded_by_one_volume(tmp_path: Path) -> None:
    """Decoding a 4-D file never holds the 4-D array: peak allocation stays near one volume."""
    rng = np.random.default_rng(0)
    data = rng.normal(size=(48, 48, 16, 120)).astype(np.float32)  # 17.7 MB of voxels
    ref = discover(write_nifti(tmp_path / "long.nii.gz", data, 1.0)).refs[0]
    volume_bytes = 48 * 48 * 16 * 8  # one float64 volume, as the MIP reads it
    for view in nifti.VIEWS:
        tracemalloc.start()
        try:
            with nifti.open_series(
                ref, SamplingConfig(fps=None, size=32, chunk_frames=8), tmp_path, view=view
            ) as s:
                count = sum(len(c) for c in s.chunks)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert count == 120
        assert peak < 6 * volume_bytes < data.nbytes / 5, (view, peak)
