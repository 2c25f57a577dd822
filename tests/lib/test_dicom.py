"""lib.sources.kinds.dicom through discovery and decoding, on pydicom's, pydicom-data's and
nibabel's real DICOM files.

Files are copied out of the installed wheels (never fetched: `get_testdata_file`
downloads what a wheel lacks); the few bad inputs no package ships are written
with pydicom from a real file.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import MPEG2MPML, JPEGLSNearLossless, generate_uid

from lstmpipe.lib.config import SamplingConfig
from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.failures import Failure
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.sources.decode import decode, describe
from lstmpipe.lib.sources.discover import discover
from lstmpipe.lib.sources.hashing import HashMemo
from lstmpipe.lib.sources.kinds import KINDS, dicom
from tests.helpers import wheel_data

SMALL = SamplingConfig(fps=None, size=32, chunk_frames=8)
# discovery of the shared root: refs by series_id, failures
Found = tuple[dict[str, SeriesRef], list[Failure]]


@pytest.fixture(scope="module")
def pydicom_files() -> Path:
    path = wheel_data("pydicom", "pydicom/data/test_files")
    assert (path / "dicomdirtests").is_dir(), f"pydicom test files missing under {path}"
    return path


@pytest.fixture(scope="module")
def pydicom_data() -> Path:
    path = wheel_data("pydicom-data", "data_store/data")
    assert (path / "emri_small.dcm").is_file(), f"pydicom-data files missing under {path}"
    return path


@pytest.fixture(scope="module")
def nib_data() -> Path:
    return wheel_data("nibabel", "nibabel/tests/data")


@pytest.fixture(scope="module")
def root(
    tmp_path_factory: pytest.TempPathFactory,
    pydicom_files: Path,
    pydicom_data: Path,
    nib_data: Path,
) -> Path:
    """A source root: the dicomdirtests tree, multi-frame
    files, nibabel's pair, and bad inputs beside them."""
    root = tmp_path_factory.mktemp("dicom") / "source"
    shutil.copytree(pydicom_files / "dicomdirtests", root / "tree")
    (root / "multi").mkdir()
    for name in ("examples_ybr_color.dcm", "SC_rgb_rle_2frame.dcm"):
        shutil.copy(pydicom_files / name, root / "multi" / name)
    shutil.copy(pydicom_data / "emri_small.dcm", root / "multi" / "emri_small.dcm")
    (root / "nib" / "pair").mkdir(parents=True)
    for name in ("0.dcm", "1.dcm"):
        shutil.copy(nib_data / name, root / "nib" / "pair" / name)
    (root / "bad" / "cut").mkdir(parents=True)
    shutil.copy(pydicom_files / "MR_truncated.dcm", root / "bad" / "cut" / "MR_truncated.dcm")
    # a good series beside the bad ones
    shutil.copy(pydicom_files / "CT_small.dcm", root / "bad" / "ct.dcm")
    no_pixels = pydicom.dcmread(pydicom_files / "CT_small.dcm")
    no_pixels.SeriesInstanceUID = generate_uid()
    del no_pixels.PixelData
    no_pixels.save_as(root / "bad" / "no_pixels.dcm")
    (root / "bad" / "mixed").mkdir()
    for name, rows in (("a.dcm", 128), ("b.dcm", 64)):
        ds = pydicom.dcmread(pydicom_files / "CT_small.dcm")
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.Rows = rows
        ds.PixelData = ds.PixelData[: rows * ds.Columns * 2]
        ds.save_as(root / "bad" / "mixed" / name)
    # MR700 with its orientations made to agree: it passes the geometry check, and its files,
    # named out of instance order, test the ordering
    (root / "one-view").mkdir()
    first_view = None
    for path in sorted((pydicom_files / "dicomdirtests" / "98892003" / "MR700").iterdir()):
        ds = pydicom.dcmread(path)
        first_view = first_view or ds.ImageOrientationPatient
        ds.ImageOrientationPatient = first_view
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2"
        ds.save_as(root / "one-view" / path.name)
    (root / "bad" / "spacing").mkdir()
    for name, spacing in (("a.dcm", [0.5, 0.5]), ("b.dcm", [0.7, 0.7])):
        ds = pydicom.dcmread(pydicom_files / "CT_small.dcm")
        ds.SeriesInstanceUID, ds.PixelSpacing = "1.2.826.0.1.3680043.8.498.3", spacing
        ds.save_as(root / "bad" / "spacing" / name)
    (root / "bad" / "empty.dcm").write_bytes(b"")
    (root / "bad" / "text.dcm").write_text("not a DICOM file")
    return root


@pytest.fixture(scope="module")
def found(root: Path) -> Found:
    discovery = discover(root)
    return {r.series_id: r for r in discovery.refs}, discovery.failures


def decoded(ref: SeriesRef, sampling: SamplingConfig = SMALL) -> tuple[np.ndarray, np.ndarray]:
    chunks = list(decode(ref, sampling, Path("/nonexistent-tmp")))  # DICOM writes no temp files
    assert all(len(c) <= sampling.chunk_frames for c in chunks)
    return np.concatenate([c.frames for c in chunks]), np.concatenate([c.t for c in chunks])


def series_of(refs: dict[str, SeriesRef], prefix: str) -> SeriesRef:
    (ref,) = [r for sid, r in refs.items() if sid.startswith(prefix)]
    return ref


def failure_of(failures: list[Failure], name: str) -> Failure:
    (failure,) = [f for f in failures if name in f.path]
    assert name in f"{failure.series_id} {failure.reason}", failure  # the stored row names the file
    return failure


def test_dicom_is_tried_first() -> None:
    assert KINDS[0].name == dicom.KIND.name == "dicom"


def test_a_source_without_dicom_never_imports_pydicom(tmp_path: Path) -> None:
    """The DICOM and NIfTI readers load only for a source holding such a file (0.25 s of every
    command's start-up otherwise); a fresh interpreter, since this one has them already."""
    (tmp_path / "clip.mp4").write_bytes(b"not a video")
    (tmp_path / "image.dcm.txt").write_text("a name, not DICOM")
    probe = (
        "import sys; from pathlib import Path; from lstmpipe.lib.sources.discover import discover;"
        f"discover(Path({str(tmp_path)!r}));"
        "print(sorted(m for m in ('pydicom', 'nibabel', 'torch') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_dicomdir_tree_is_one_series_per_series_instance_uid(root: Path, found: Found) -> None:
    refs, failures = found
    with_pixels: dict[str, list[int]] = {}
    without_pixels: set[str] = set()
    # counted with pydicom alone, pixel data and all
    for path in sorted((root / "tree").rglob("*")):
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, IsADirectoryError):
            continue
        if "SeriesInstanceUID" not in ds:
            continue  # a DICOMDIR: the index of the tree, not an image
        if "PixelData" in ds:
            with_pixels.setdefault(ds.SeriesInstanceUID, []).append(int(ds.InstanceNumber))
        else:
            without_pixels.add(ds.SeriesInstanceUID)
    tree = {sid: r for sid, r in refs.items() if sid.startswith("tree/")}
    mixed_views = {
        f.series_id.rsplit("/", 1)[1]: f for f in failures if "image orientations" in f.reason
    }
    # two 3-plane pilots, a 2-plane scout, a rotating MIP
    assert len(with_pixels) == 13 and len(mixed_views) == 4
    assert sorted(r.meta["series_uid"] for r in tree.values()) == sorted(
        set(with_pixels) - set(mixed_views)
    )
    for sid, ref in tree.items():
        uid = ref.meta["series_uid"]
        assert sid.endswith("/" + uid) and ref.kind == "dicom" and ref.partition == "tree"
        assert ref.meta["instances"] == ref.meta["frames"] == len(with_pixels[uid])
        numbers = [
            int(pydicom.dcmread(Path(ref.meta["root"]) / f, stop_before_pixels=True).InstanceNumber)
            for f in ref.meta["files"]
        ]
        assert numbers == sorted(with_pixels[uid])
    # TINY_ALPHA's 50 files are headers without pixels: one failure for the series, not 50
    (tiny,) = [f for f in failures if f.series_id.startswith("tree/TINY_ALPHA/")]
    assert {tiny.series_id.rsplit("/", 1)[1]} == without_pixels
    assert tiny.stage == "discover" and "no pixel data" in tiny.reason and "IM000000" in tiny.reason


def test_a_series_mixing_views_is_refused_with_its_files_named(found: Found) -> None:
    """A multi-plane localizer is three views in one series, not a sequence: a recorded failure."""
    pilots = [f for f in found[1] if "98892003/MR2/" in f.series_id and "orientations" in f.reason]
    assert len(pilots) == 2
    assert all(
        "series mixes 3 image orientations" in f.reason and "tree/98892003/MR2/" in f.reason
        for f in pilots
    )
    rotation = failure_of(found[1], "MR700")
    assert "mixes 7 image orientations" in rotation.reason and rotation.stage == "discover"


def test_frames_come_in_instance_number_order(found: Found) -> None:
    """MR700's files are named out of order (4467 is instance 4): decoded frame i is instance i."""
    ref = series_of(found[0], "one-view/")
    assert ref.meta["order"] == "InstanceNumber" and ref.meta["instances"] == 7
    root = Path(ref.meta["root"])
    by_number = sorted(
        (int(ds.InstanceNumber), ds.pixel_array.astype(float).mean())
        for ds in (pydicom.dcmread(root / f) for f in sorted(ref.meta["files"]))
    )
    # native 16x16: no resampling
    frames, t = decoded(ref, SamplingConfig(fps=None, size=16, chunk_frames=3))
    assert frames.shape == (7, 16, 16, 3)
    means = frames[..., 0].astype(float).mean(axis=(1, 2))
    # one linear window for the whole series
    assert np.corrcoef(means, [m for _, m in by_number])[0, 1] > 0.99
    assert t.tolist() == list(range(7))  # no acquisition times that increase: the frame index


def test_multiframe_colour_ultrasound(found: Found) -> None:
    ref = found[0]["multi/examples_ybr_color.dcm"]
    assert ref.label == "multi" and ref.partition == "multi"
    assert ref.meta["photometric"] == "YBR_FULL_422" and ref.meta["modality"] == "US"
    frames, t = decoded(ref)
    assert frames.shape == (30, 32, 32, 3) and frames.dtype == np.uint8
    channels = frames.astype(int)
    assert np.abs(channels[..., 0] - channels[..., 1]).max() > 0  # not grey: YBR became RGB
    assert np.abs(channels[..., 1] - channels[..., 2]).max() > 0
    assert np.allclose(np.diff(t), 0.033333, atol=1e-6)  # FrameTime 33.333 ms
    picked, picked_t = decoded(ref, SamplingConfig(fps=None, num_frames=5, size=32, chunk_frames=2))
    assert picked.shape[0] == 5 and np.allclose(picked_t, t[[0, 7, 14, 22, 29]])
    assert np.array_equal(picked[0], frames[0]) and np.array_equal(picked[-1], frames[-1])


def test_multiframe_mr_and_rle(found: Found) -> None:
    emri = found[0]["multi/emri_small.dcm"]
    frames, t = decoded(emri)
    assert frames.shape == (10, 32, 32, 3) and t.tolist() == list(range(10))
    # no window in the file: percentiles
    assert emri.meta["window"] is None and 0 < frames.mean() < 255
    rle = found[0]["multi/SC_rgb_rle_2frame.dcm"]
    frames, _ = decoded(rle)
    # colour kept
    assert frames.shape == (2, 32, 32, 3) and len(np.unique(frames.reshape(-1, 3), axis=0)) > 2


def test_nibabel_pair_is_one_series(found: Found) -> None:
    ref = series_of(found[0], "nib/pair/")
    assert ref.label == "nib" and ref.meta["files"] == ["nib/pair/0.dcm", "nib/pair/1.dcm"]
    assert ref.meta["window"] == [468.0, 1016.0] and ref.meta["pixel_spacing"] is not None
    frames, t = decoded(ref)
    # equal acquisition times: the index
    assert frames.shape == (2, 32, 32, 3) and t.tolist() == [0.0, 1.0]


def test_bad_inputs_are_recorded_and_the_rest_goes_on(found: Found) -> None:
    refs, failures = found
    truncated = failure_of(failures, "MR_truncated.dcm")
    assert truncated.stage == "discover" and "truncated" in truncated.reason
    assert "no pixel data" in failure_of(failures, "no_pixels.dcm").reason
    mixed = failure_of(failures, "mixed/a.dcm")
    assert (
        "mixes image sizes" in mixed.reason
        and "128x128" in mixed.reason
        and "64x128" in mixed.reason
    )
    spacing = failure_of(failures, "spacing/a.dcm")
    assert "mixes 2 pixel spacings" in spacing.reason and "[0.7, 0.7]" in spacing.reason
    assert failure_of(failures, "empty.dcm").reason.endswith("empty file")
    assert "not a readable DICOM file" in failure_of(failures, "text.dcm").reason
    assert len(failures) == 11  # the six above, TINY_ALPHA and the tree's four series mixing views
    # no patient names
    assert not any("Anonymized" in f"{f.series_id} {f.reason}" for f in failures)
    ct = series_of(refs, "bad/1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322")
    frames, _ = decoded(ct)
    assert frames.shape == (1, 32, 32, 3)


def test_everything_through_discover_and_decode(found: Found) -> None:
    refs, _ = found
    # the tree's one-view series, three multi-frame files, nibabel's pair,
    # the CT beside the bad ones, MR700 made one view
    assert len(refs) == 9 + 3 + 1 + 1 + 1
    for ref in refs.values():
        frames, t = decoded(SeriesRef.from_dict(ref.to_dict()))  # as a task receives it
        assert frames.shape == (ref.meta["frames"], 32, 32, 3) and frames.dtype == np.uint8
        assert t[0] == 0 and np.all(np.diff(t) > 0)
        meta = describe(ref, SMALL, Path("/nonexistent-tmp"))
        assert meta["source_kind"] == "dicom" and "files" not in meta


def test_content_hash_is_stable_and_follows_the_bytes(root: Path, tmp_path: Path) -> None:
    memo = HashMemo(tmp_path / "memo.sqlite")
    first = {r.series_id: r.content_hash for r in discover(root / "nib", memo=memo).refs}
    assert first == {r.series_id: r.content_hash for r in discover(root / "nib", memo=memo).refs}
    copy = tmp_path / "nib"
    shutil.copytree(root / "nib", copy)
    # the bytes, not the place
    assert set(first.values()) == {r.content_hash for r in discover(copy).refs}
    ds = pydicom.dcmread(copy / "pair" / "1.dcm")
    ds.WindowWidth = 500
    ds.save_as(copy / "pair" / "1.dcm")
    assert set(first.values()).isdisjoint(r.content_hash for r in discover(copy).refs)


def ct_copies(pydicom_files: Path, folder: Path, edits: list[dict[str, object]]) -> None:
    """Files of one series made from CT_small, named 0.dcm,
    1.dcm, ...; a None value deletes the element."""
    folder.mkdir(parents=True)
    for index, edit in enumerate(edits):
        ds = pydicom.dcmread(pydicom_files / "CT_small.dcm")
        ds.SOPInstanceUID = generate_uid()
        for keyword, value in edit.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.save_as(folder / f"{index}.dcm")


def test_order_falls_back_to_time_then_slice_position(pydicom_files: Path, tmp_path: Path) -> None:
    unnumbered = {"InstanceNumber": None, "ContentTime": None}
    ct_copies(
        pydicom_files,
        tmp_path / "cls" / "timed",
        [{**unnumbered, "AcquisitionTime": time} for time in ("120010.5", "120000", "120005")],
    )
    ct_copies(
        pydicom_files,
        tmp_path / "cls" / "stacked",
        [
            {
                **unnumbered,
                "AcquisitionTime": None,
                "SeriesInstanceUID": "1.2.3.4",
                "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
                "ImagePositionPatient": [0, 0, z],
            }
            for z in (5, -5, 0)
        ],
    )
    refs = {r.meta["order"]: r for r in discover(tmp_path).refs}
    timed, stacked = refs["AcquisitionTime"], refs["ImagePositionPatient"]
    assert timed.meta["files"] == ["cls/timed/1.dcm", "cls/timed/2.dcm", "cls/timed/0.dcm"]
    assert timed.meta["t"] == [0.0, 5.0, 10.5] and timed.label == "cls" and timed.partition == "cls"
    assert stacked.meta["files"] == ["cls/stacked/1.dcm", "cls/stacked/2.dcm", "cls/stacked/0.dcm"]
    assert stacked.series_id == "cls/stacked/1.2.3.4" and stacked.meta["t"] == [0.0, 1.0, 2.0]


def test_rescale_window_and_monochrome1(pydicom_files: Path, tmp_path: Path) -> None:
    """CT_small (intercept -1024) under a soft-tissue window; MONOCHROME1 is its negative."""
    ct_copies(pydicom_files, tmp_path / "m2", [{"WindowCenter": 40, "WindowWidth": 400}])
    ct_copies(
        pydicom_files,
        tmp_path / "m1",
        [{"WindowCenter": 40, "WindowWidth": 400, "PhotometricInterpretation": "MONOCHROME1"}],
    )
    (m2,) = discover(tmp_path / "m2").refs
    (m1,) = discover(tmp_path / "m1").refs
    size = SamplingConfig(fps=None, size=128)  # CT_small is 128x128: frames as stored
    grey, _ = decoded(m2, size)
    assert np.array_equal(decoded(m1, size)[0], 255 - grey)
    hounsfield = pydicom.dcmread(pydicom_files / "CT_small.dcm").pixel_array.astype(float) - 1024
    expected = np.clip((hounsfield - (40 - 0.5 - 399 / 2)) * 255 / 399, 0, 255).astype(np.uint8)
    assert np.abs(grey[0, ..., 0].astype(int) - expected).max() <= 1


def test_compressed_without_a_decoder_is_a_clear_decode_failure(
    pydicom_files: Path, tmp_path: Path
) -> None:
    ds = pydicom.dcmread(pydicom_files / "CT_small.dcm")
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "video.dcm")
    (ref,) = discover(tmp_path).refs  # discovery reads headers only
    with pytest.raises(BadInput, match="MPEG2 Main Profile / Main Level .* has no pixel decoder"):
        decoded(ref)


def test_jpeg_ls_decodes_where_a_plugin_is_installed(pydicom_files: Path, tmp_path: Path) -> None:
    shutil.copy(pydicom_files / "JPEGLSNearLossless_08.dcm", tmp_path / "jls.dcm")
    (ref,) = discover(tmp_path).refs
    if get_decoder(JPEGLSNearLossless).is_available:
        assert decoded(ref)[0].shape == (1, 32, 32, 3)
    else:
        with pytest.raises(BadInput, match="needs a decoder plugin .*pylibjpeg"):
            decoded(ref)


def test_files_other_kinds_may_want_are_left_alone(pydicom_files: Path, tmp_path: Path) -> None:
    # named by its UID, no .dcm
    shutil.copy(pydicom_files / "CT_small.dcm", tmp_path / "1.2.840.113619.2.55")
    (tmp_path / "notes").write_text("README")
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 200)
    found = dicom.claim(tmp_path, sorted(tmp_path.iterdir()), None)
    assert (
        found.claimed == {tmp_path / "1.2.840.113619.2.55"}
        and len(found.refs) == 1
        and not found.failures
    )
