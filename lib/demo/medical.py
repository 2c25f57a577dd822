"""Labelled cine-MR-like DICOM series whose classes only timing can tell apart.

Each series is one slice imaged over time: a folder of single-frame MR Image Storage
files (`root/<label>/series_<index>/IM_<frame>.dcm`) showing a disc (a ventricle, say)
whose radius beats. `regular` beats with one period (7-9 frames, 67-86 per minute);
`irregular` alternates a premature beat (half a period) with a compensatory pause (one
and a half), as in ventricular bigeminy, so both beat as often on average. Every frame
samples a beat's phase alike in both classes: frame averaging sees the same mean, an
LSTM sees the rhythm. Every series has its own draw (size, amplitude, period, phase,
noise): series that shared one across classes would let a model memorise pairs.
One protocol images them all, so the disc sits centred with the same blood and tissue
intensities (a random-init backbone's features move with contrast and position far
more than with the beat; see lib/training/model.py's SeriesCentring).

The files are real DICOM (pydicom, explicit VR little endian, 12-bit MONOCHROME2 in
uint16) with Study/Series/SOP Instance UIDs derived from the seed, InstanceNumber,
TriggerTime and AcquisitionTime per frame, PixelSpacing, SliceThickness and the
patient geometry. No patient data: PatientName is `Anon^Sample`. The same arguments
give byte-identical files. lib.kinds.dicom names each series
`<label>/series_<index>/<SeriesInstanceUID>` and labels it by the folder above it;
`labels.csv` (series_id,label) says the same, as lib.samples' archive does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from lstmpipe.lib.demo.folders import publish_sample
from lstmpipe.lib.errors import ConfigError

CLASSES = ("regular", "irregular")
FRAME_MS = 100.0  # ms between frames: real-time cine, so a beat of 7-9 frames is 0.7-0.9 s
FOV_MM = 320.0  # field of view: PixelSpacing = FOV / size
SLICE_MM = 8.0  # SliceThickness of a short-axis cine slice
BITS_STORED = 12  # what MR scanners store; values stay within 0..4095
WINDOW = (1100.0, 2400.0)  # WindowCenter, WindowWidth: one fixed window, so every series maps alike
BLOOD, TISSUE = 1950.0, 350.0  # stored values of the disc and of the background
BIGEMINY = (0.5, 1.5)  # irregular beats last these fractions of the period, alternately
STUDY_DATE = "20261119"
START_S = 9 * 3600.0  # AcquisitionTime of the first frame: 09:00:00
_FORMAT = 2  # bump when rendering or tags change: old samples are then regenerated
_UID_SALT = "lstmpipe-sample-medical"


@dataclass(frozen=True)
class BeatDraw:
    """Everything random about one series."""

    radius: float  # end-diastolic radius, fraction of the size
    amplitude: float  # systolic shrink, fraction of the radius
    period: float  # frames per beat
    phase: float  # beat phase at frame 0, in [0, 1)
    noise_sigma: float  # stored values of per-pixel Gaussian noise
    noise_seed: int


def draw_beat(rng: np.random.Generator) -> BeatDraw:
    return BeatDraw(
        radius=float(rng.uniform(0.2, 0.28)),
        amplitude=float(rng.uniform(0.25, 0.4)),
        period=float(rng.uniform(7.0, 9.0)),
        phase=float(rng.uniform(0.0, 1.0)),
        noise_sigma=float(rng.uniform(30.0, 70.0)),
        noise_seed=int(rng.integers(2**31)),
    )


def beat_phase(label: str, draw: BeatDraw, frames: int, rng: np.random.Generator) -> np.ndarray:
    """(T,) cumulative beat phase per frame (a beat per unit).

    Irregular beats alternate BIGEMINY's short and long fractions of the period, from a random
    one of the two, each within 10 %: the pattern, not any one beat, is what sets them apart.
    """
    if label == "regular":
        return draw.phase + np.arange(frames) / draw.period
    beats = frames + 2  # enough beats for any run of frames
    pattern = np.asarray(BIGEMINY)[(np.arange(beats) + rng.integers(2)) % 2]
    durations = draw.period * pattern * rng.uniform(0.9, 1.1, beats)
    starts = np.concatenate([[0.0], np.cumsum(durations)]) - draw.phase * durations[0]
    t = np.arange(frames, dtype=np.float64)
    beat = np.searchsorted(starts, t, side="right") - 1
    return beat + (t - starts[beat]) / durations[beat]


def render_series(label: str, draw: BeatDraw, phase: np.ndarray, size: int) -> np.ndarray:
    """(T, size, size) uint16 frames: a bright disc shrinking once per beat over darker tissue."""
    contraction = 0.5 - 0.5 * np.cos(2 * np.pi * phase)  # 0 at end-diastole, 1 at end-systole
    radius_px = draw.radius * size * (1.0 - draw.amplitude * contraction)  # (T,)
    centre = size / 2  # the disc sits in the middle of the field of view
    grid = np.arange(size, dtype=np.float64) + 0.5
    distance = np.hypot(grid[None, :] - centre, grid[:, None] - centre)  # (H, W)
    # (T, H, W), anti-aliased
    coverage = np.clip(0.5 - (distance[None] - radius_px[:, None, None]), 0.0, 1.0)
    noise = np.random.default_rng(draw.noise_seed).normal(0.0, draw.noise_sigma, coverage.shape)
    values = TISSUE + coverage * (BLOOD - TISSUE) + noise
    return np.clip(np.rint(values), 0, 2**BITS_STORED - 1).astype(np.uint16)


def generate_medical(
    root: Path, clips_per_class: int, seed: int, size: int = 64, frames: int = 32
) -> Path:
    """Write `clips_per_class` series per class under root and `labels.csv`; returns root.

    A re-run with the same arguments finds the marker and does nothing; other arguments
    regenerate in place. Files are staged in a hidden folder and moved in per class.
    """
    if clips_per_class < 1:
        raise ConfigError(f"clips_per_class: {clips_per_class} must be >= 1")
    if size < 16:
        raise ConfigError(f"size: {size} must be >= 16 px")
    if frames < 2:
        raise ConfigError(f"frames: {frames} must be >= 2 (a cine series shows motion)")
    spec = {
        "format": _FORMAT,
        "kind": "medical",
        "clips_per_class": clips_per_class,
        "seed": seed,
        "size": size,
        "frames": frames,
    }

    def write(staging: Path) -> list[tuple[str, str]]:
        rows = []
        for label in CLASSES:
            for index in range(clips_per_class):
                series_uid = write_series(
                    staging / label / f"series_{index:04d}", label, index, seed, size, frames
                )
                rows.append((f"{label}/series_{index:04d}/{series_uid}", label))
        return rows

    return publish_sample(root, spec, CLASSES, write)


def write_series(folder: Path, label: str, index: int, seed: int, size: int, frames: int) -> str:
    """Write one series' files into folder; returns its SeriesInstanceUID."""
    if label not in CLASSES:
        raise ConfigError(f"label: {label!r} unknown; choose one of {', '.join(CLASSES)}")
    stream = [seed, CLASSES.index(label), index]
    draw = draw_beat(np.random.default_rng([*stream, 0]))
    phase = beat_phase(label, draw, frames, np.random.default_rng([*stream, 1]))
    pixels = render_series(label, draw, phase, size)
    key = [_UID_SALT, str(seed), label, str(index)]
    study_uid = generate_uid(entropy_srcs=key + ["study"])
    series_uid = generate_uid(entropy_srcs=key + ["series"])
    folder.mkdir(parents=True, exist_ok=True)
    # pseudonymous patient number; says nothing of the class
    number = CLASSES.index(label) * 100_000 + index
    for frame in range(frames):
        ds = _frame_dataset(
            pixels[frame],
            frame,
            size,
            study_uid,
            series_uid,
            generate_uid(entropy_srcs=key + ["sop", str(frame)]),
            f"ANON{number:06d}",
        )
        ds.save_as(folder / f"IM_{frame + 1:04d}.dcm", enforce_file_format=True)
    return str(series_uid)


def _frame_dataset(
    pixels: np.ndarray,
    frame: int,
    size: int,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    patient_id: str,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid, "frame-of-reference"])
    ds.PatientName, ds.PatientID = "Anon^Sample", patient_id
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = STUDY_DATE
    ds.StudyTime = ds.SeriesTime = _tm(START_S)
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
    ds.Modality, ds.Manufacturer = "MR", "lstmpipe sample"
    ds.SeriesDescription, ds.SeriesNumber = "cine short axis (synthetic)", 1
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "GR", "SS", "2D"
    ds.InstanceNumber = frame + 1
    ds.TriggerTime = round(frame * FRAME_MS, 3)  # ms after the R wave's first trigger
    ds.AcquisitionTime = ds.ContentTime = _tm(START_S + frame * FRAME_MS / 1000.0)
    ds.PixelSpacing = [round(FOV_MM / size, 6)] * 2
    ds.SliceThickness = SLICE_MM
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    # one slice: the same place every frame
    ds.ImagePositionPatient = [-FOV_MM / 2, -FOV_MM / 2, 0.0]
    ds.SliceLocation = 0.0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = size, size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (
        16,
        BITS_STORED,
        BITS_STORED - 1,
        0,
    )
    ds.WindowCenter, ds.WindowWidth = WINDOW
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    return ds


def _tm(seconds: float) -> str:
    """Seconds after midnight as DICOM TM, HHMMSS.FFFFFF."""
    micros = round(seconds * 1_000_000)
    whole, fraction = divmod(micros, 1_000_000)
    return f"{whole // 3600:02d}{whole // 60 % 60:02d}{whole % 60:02d}.{fraction:06d}"
