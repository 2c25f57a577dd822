"""The medical (DICOM) and remote-sensing (GeoTIFF) samples: real files the readers take unchanged,
labels, determinism, and classes that differ in timing only."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
from pydicom.uid import UID, MRImageStorage

from lstmpipe.lib.config import SamplingConfig
from lstmpipe.lib.demo import geo as samples_geo
from lstmpipe.lib.demo import medical as samples_medical
from lstmpipe.lib.demo.geo import (
    acquisition_days,
    draw_field,
    generate_geo,
    greenness,
    render_tile,
)
from lstmpipe.lib.demo.medical import (
    FRAME_MS,
    beat_phase,
    draw_beat,
    generate_medical,
    render_series,
)
from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.sources.decode import decode, describe
from lstmpipe.lib.sources.discover import discover

MEDICAL = {"clips_per_class": 2, "seed": 3, "size": 32, "frames": 10}
GEO = {"tiles_per_class": 2, "seed": 3, "size": 16, "dates": 8}
SAMPLING = SamplingConfig(fps=None, size=16, chunk_frames=4)


@pytest.fixture(scope="module")
def medical(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_medical(tmp_path_factory.mktemp("medical"), **MEDICAL)


@pytest.fixture(scope="module")
def geo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_geo(tmp_path_factory.mktemp("geo"), **GEO)


def hashes(root: Path) -> dict[str, str]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files
    }


def read_labels(root: Path) -> dict[str, str]:
    with (root / "labels.csv").open(newline="") as handle:
        return {row["series_id"]: row["label"] for row in csv.DictReader(handle)}


def frames_of(ref, tmp_path: Path) -> np.ndarray:
    return np.concatenate([chunk.frames for chunk in decode(ref, SAMPLING, tmp_path)])


# --- both ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("make", "args"), [(generate_medical, MEDICAL), (generate_geo, GEO)])
def test_same_seed_same_bytes_other_seed_other_pixels(make, args: dict, tmp_path: Path) -> None:
    first, second = hashes(make(tmp_path / "a", **args)), hashes(make(tmp_path / "b", **args))
    assert first == second and len(first) > 10
    other = hashes(make(tmp_path / "c", **{**args, "seed": args["seed"] + 1}))
    shared = set(other) & set(first)
    assert any(other[name] != first[name] for name in shared if name.endswith((".dcm", ".tif")))


@pytest.mark.parametrize(("make", "args"), [(generate_medical, MEDICAL), (generate_geo, GEO)])
def test_rerun_rewrites_nothing_and_new_args_regenerate(make, args: dict, tmp_path: Path) -> None:
    root = make(tmp_path, **args)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    make(root, **args)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    first = hashes(root)
    make(root, **{**args, "seed": args["seed"] + 1})
    assert not any(p.name.startswith(".tmp-") for p in root.iterdir())  # staging cleaned up
    assert set(hashes(root)) >= {"labels.csv", ".sample-spec.json"} and hashes(root) != first


@pytest.mark.parametrize(
    ("make", "args", "key"),
    [
        (generate_medical, {**MEDICAL, "clips_per_class": 0}, "clips_per_class"),
        (generate_medical, {**MEDICAL, "frames": 1}, "frames"),
        (generate_geo, {**GEO, "dates": 400}, "dates"),
        (generate_geo, {**GEO, "size": 4}, "size"),
    ],
)
def test_bad_arguments_name_the_key(make, args: dict, key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=key):
        make(tmp_path, **args)


# --- medical --------------------------------------------------------------------------------------


def test_medical_discovered_as_labelled_dicom_series(medical: Path, tmp_path: Path) -> None:
    found = discover(medical)
    assert found.failures == []
    assert len(found.refs) == len(samples_medical.CLASSES) * MEDICAL["clips_per_class"]
    assert {ref.kind for ref in found.refs} == {"dicom"}
    assert {ref.series_id: ref.label for ref in found.refs} == read_labels(medical)
    for ref in found.refs:
        assert ref.meta["frames"] == MEDICAL["frames"] and ref.meta["order"] == "InstanceNumber"
        assert ref.meta["modality"] == "MR" and ref.meta["slice_thickness"] == 8.0
        assert np.allclose(ref.meta["t"], np.arange(MEDICAL["frames"]) * FRAME_MS / 1000, atol=1e-3)
        assert frames_of(ref, tmp_path).shape == (MEDICAL["frames"], 16, 16, 3)


def test_medical_files_carry_uids_timing_and_geometry(medical: Path) -> None:
    series_uids, study_uids = set(), set()
    for folder in sorted(medical.glob("*/series_*")):
        files = sorted(folder.glob("*.dcm"))
        assert len(files) == MEDICAL["frames"]
        sets = [pydicom.dcmread(f) for f in files]
        first = sets[0]
        assert first.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert first.SOPClassUID == MRImageStorage == first.file_meta.MediaStorageSOPClassUID
        assert first.Modality == "MR" and str(first.PatientName) == "Anon^Sample"
        assert [float(v) for v in first.PixelSpacing] == [10.0, 10.0]  # 320 mm over 32 px
        assert (
            list(first.ImageOrientationPatient) == [1, 0, 0, 0, 1, 0]
            and len(first.ImagePositionPatient) == 3
        )
        assert first.PhotometricInterpretation == "MONOCHROME2" and first.BitsStored == 12
        for uid in (
            first.StudyInstanceUID,
            first.SeriesInstanceUID,
            *(ds.SOPInstanceUID for ds in sets),
        ):
            assert UID(uid).is_valid
        assert len({ds.SOPInstanceUID for ds in sets}) == len(sets)
        assert {ds.SeriesInstanceUID for ds in sets} == {first.SeriesInstanceUID}
        assert [ds.InstanceNumber for ds in sets] == list(range(1, len(sets) + 1))
        assert [float(ds.TriggerTime) for ds in sets] == [i * FRAME_MS for i in range(len(sets))]
        assert sorted(ds.AcquisitionTime for ds in sets) == [ds.AcquisitionTime for ds in sets]
        pixels = first.pixel_array
        assert pixels.dtype == np.uint16 and pixels.shape == (32, 32) and pixels.max() < 4096
        series_uids.add(first.SeriesInstanceUID)
        study_uids.add(first.StudyInstanceUID)
    assert (
        len(series_uids)
        == len(study_uids)
        == len(samples_medical.CLASSES) * MEDICAL["clips_per_class"]
    )


def beat_lengths(phase: np.ndarray) -> np.ndarray:
    """Frames between successive beat starts (where the phase crosses an integer)."""
    beats = np.floor(phase)
    starts = np.flatnonzero(np.diff(beats)) + 1
    fractions = (np.ceil(phase[starts - 1]) - phase[starts - 1]) / (
        phase[starts] - phase[starts - 1]
    )
    return np.diff(starts - 1 + fractions)


@pytest.mark.parametrize("index", range(6))
def test_medical_classes_differ_in_rhythm_not_in_amplitude(index: int) -> None:
    draw = draw_beat(np.random.default_rng([0, 0, index]))
    phases = {
        label: beat_phase(label, draw, 120, np.random.default_rng([0, 1, index]))
        for label in samples_medical.CLASSES
    }
    regular, irregular = beat_lengths(phases["regular"]), beat_lengths(phases["irregular"])
    assert np.allclose(regular, draw.period)  # one period throughout
    assert irregular.std() > 0.15 * draw.period  # beats of varied length
    short = irregular < draw.period
    assert np.all(short[1:] != short[:-1])  # bigeminy: premature beat, compensatory pause, in turn
    assert np.all(irregular[short] < 0.7 * draw.period) and np.all(
        irregular[~short] > 1.25 * draw.period
    )
    frames = {
        label: render_series(label, draw, phases[label], 48).astype(float)
        for label in samples_medical.CLASSES
    }
    means = {label: f.mean(axis=0) for label, f in frames.items()}  # what frame averaging sees
    spread = frames["regular"].std(axis=0).mean()
    assert np.abs(means["regular"] - means["irregular"]).mean() < 0.25 * spread
    # disc area per frame: same range
    sums = {label: f.sum(axis=(1, 2)) for label, f in frames.items()}
    assert abs(sums["regular"].min() - sums["irregular"].min()) < 0.05 * np.ptp(sums["regular"])
    assert abs(sums["regular"].max() - sums["irregular"].max()) < 0.1 * np.ptp(sums["regular"])


# --- remote sensing -------------------------------------------------------------------------------


def test_geo_discovered_as_labelled_geotiff_stacks(geo: Path, tmp_path: Path) -> None:
    found = discover(geo)
    assert found.failures == []
    assert len(found.refs) == len(samples_geo.CLASSES) * GEO["tiles_per_class"]
    assert {ref.kind for ref in found.refs} == {"geotiff"}
    assert {ref.series_id: ref.label for ref in found.refs} == read_labels(geo)
    footprints = set()
    for ref in found.refs:
        meta = describe(ref, SAMPLING, tmp_path)
        assert meta["layout"] == "product" and meta["crs"] == "EPSG:32613"
        assert meta["available_bands"] == ["b3", "b4", "b5"] and meta["mask_band"] == "fmask"
        assert len(meta["dates"]) == GEO["dates"] and meta["dropped_dates"] == []
        assert all(d.startswith("2025-") for d in meta["dates"]) and meta["dates"] == sorted(
            meta["dates"]
        )
        left, bottom, right, top = meta["bounds"]
        assert (
            meta["geotransform"][1] == samples_geo.PIXEL_M
            and meta["geotransform"][5] == -samples_geo.PIXEL_M
        )
        assert (right - left, top - bottom) == (GEO["size"] * samples_geo.PIXEL_M,) * 2
        footprints.add(tuple(meta["bounds"]))
        assert frames_of(ref, tmp_path).shape == (GEO["dates"], 16, 16, 3)
    assert len(footprints) == len(found.refs)  # every tile its own place


def test_geo_files_carry_nodata_and_fmask(geo: Path) -> None:
    scene = min((geo / "crop_early" / "tile_0000").iterdir())
    with tifffile.TiffFile(scene / f"{scene.name}_b4.tif") as tif:
        tags = tif.pages.first.tags
        assert tags[42113].value.strip("\x00") == "-9999"
        assert tif.pages.first.dtype == np.int16
        assert tags[34735].value[15] == 32613  # ProjectedCSTypeGeoKey
    fmask = tifffile.imread(scene / f"{scene.name}_fmask.tif")
    assert fmask.dtype == np.uint8 and set(np.unique(fmask)) <= {0, 4, 255}


@pytest.mark.parametrize("index", range(6))
def test_geo_classes_differ_in_season_timing_not_mean(index: int) -> None:
    draw = draw_field(np.random.default_rng([0, 0, index]))
    days = acquisition_days(24)
    curves = {label: greenness(label, draw, days) for label in samples_geo.CLASSES}
    early, late = (days[int(np.argmax(curves[label]))] for label in samples_geo.CLASSES)
    assert late - early > 50
    assert (
        abs(curves["crop_early"].mean() - curves["crop_late"].mean())
        < 0.02 * curves["crop_early"].max()
    )
    tiles = {
        label: render_tile(label, draw, days, 16)[0].astype(float) for label in samples_geo.CLASSES
    }
    nir = {label: np.where(t == -9999, np.nan, t)[:, 1] for label, t in tiles.items()}
    assert abs(np.nanmean(nir["crop_early"]) - np.nanmean(nir["crop_late"])) < 0.05 * np.nanstd(
        nir["crop_early"]
    )
