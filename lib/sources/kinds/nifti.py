"""NIfTI 4-D (.nii, .nii.gz): one file is one series, one frame per time point (SPEC §2).

Each time point becomes a 2-D view of its volume:
    "middle": the middle slice of the 3rd voxel axis (the default), or
    "mip":    the maximum-intensity projection along the 3rd voxel axis.
The view is shown as `imshow(view.T, origin="lower")` would: rows follow the 2nd
voxel axis (highest index at the top), columns the 1st. Voxel axes are not
reoriented to RAS: that would need the whole volume in memory (nibabel's
`as_closest_canonical`), and a series is compared with itself over time.

Intensities are scaled once per series, robustly (1st-99th percentile over the
views of up to RANGE_SAMPLE time points), so brightness is comparable across
frames; scl_slope/scl_inter are applied by nibabel. t = index x the header's time
step (pixdim[4] in its xyzt_units: s, ms or us); with no time unit, or a spectral
one (Hz, ppm, rad/s), t is the time-point index. The header is trusted as
written: nibabel's own example4d.nii.gz says 2000 *seconds*, and a PET frame can
truly last that long, so no guessing at mislabelled milliseconds. `sampling.fps`
does not resample a NIfTI series (the scanner's clock is the clock);
`sampling.num_frames` picks time points uniformly.

Memory is one volume (MIP) or one slice (middle) at a time: frames are read
through nibabel's array proxy on a file this module opens and closes, never with
`get_fdata()` on the 4-D array. A gzipped file is decompressed about twice (the
intensity sample, then the frames), sequentially; metadata (describe) needs the
header alone. A truncated .nii is refused at discovery (its size is short of what
the header promises); a truncated .nii.gz only shows when decoded, and fails then.
A .nii.gz promising more data than its size can inflate to (a gzip bomb), frames
beyond lib.frames.MAX_PIXELS, more time points than lib.frames.MAX_FRAMES and volumes
beyond MAX_VOLUME_VOXELS are refused at discovery too; a bomb within deflate's ratio
costs time, one volume of memory.

A 3-D (or 2-D) image is refused at discovery, "not a time series: 3-D volume",
rather than turned into a series of slices: slices of one volume are space, not
time, and an LSTM over them would learn something else than the user asked for.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.arrayproxy import ArrayProxy
from nibabel.filebasedimages import ImageFileError
from nibabel.openers import ImageOpener
from nibabel.spatialimages import HeaderDataError

from lstmpipe.lib.config import SamplingConfig
from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.failures import Failure
from lstmpipe.lib.series import OpenSeries, SeriesRef
from lstmpipe.lib.sources.archives import ArchiveLimits
from lstmpipe.lib.sources.frames import (
    check_frame_count,
    check_frame_size,
    chunked,
    pick,
    robust_range,
    scale_to_uint8,
    to_rgb,
)
from lstmpipe.lib.sources.hashing import HashMemo, content_hash
from lstmpipe.lib.sources.kinds.base import Claim, SourceKind, make_ref
from lstmpipe.lib.sources.kinds.recognise import is_nifti

VIEWS = ("middle", "mip")
# The 2-D view per time point when none is given; the pipeline passes `sources.nifti_view`
# (part of the feature recipe, so a changed view is a new cache entry).
VIEW = "middle"
# One time point is read at once (the MIP view reads the whole volume): 512^3 voxels (a CT
# volume is about 512 x 512 x 600 at most, an fMRI one 100 x 100 x 70). A header declaring more
# is refused unread.
MAX_VOLUME_VOXELS = 1 << 27
# Deflate cannot expand data more than 1032-fold: a .nii.gz promising more than that is
# truncated or lying.
GZIP_MAX_RATIO = 1100
# time points read to fix the intensity range: bounded work and memory, whatever the length
RANGE_SAMPLE = 16
_SECONDS_PER = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}
# What a broken or truncated file raises from nibabel, gzip or numpy while reading.
_READ_ERRORS = (OSError, EOFError, zlib.error, ValueError, ImageFileError, HeaderDataError)


def claim(base: Path, files: list[Path], memo: HashMemo | None) -> Claim:
    """Every .nii / .nii.gz file: a series when it is 4-D, a failure when it cannot be one."""
    refs: list[SeriesRef] = []
    failures: list[Failure] = []
    mine = [f for f in files if is_nifti(f)]
    for path in mine:
        rel = path.relative_to(base).as_posix()
        try:
            image = _image(path)
            shape = _time_series_shape(path, image)
            _check_size(path, image, shape)
            digest = content_hash(path, memo=memo)
            size = path.stat().st_size
        except BadInput as exc:
            failures.append(Failure(rel, str(path), "discover", exc.reason))
            continue
        except OSError as exc:
            failures.append(
                Failure(rel, str(path), "discover", f"unreadable: {exc.strerror or exc}")
            )
            continue
        refs.append(
            make_ref(
                "nifti",
                rel,
                digest,
                path,
                {"source_kind": "nifti", "bytes": size, **_header_meta(image)},
            )
        )
    return Claim(refs, failures, frozenset(mine))


@contextmanager
def open_series(
    ref: SeriesRef,
    sampling: SamplingConfig,
    tmp_dir: Path,
    limits: ArchiveLimits = ArchiveLimits(),
    *,
    view: str | None = None,
) -> Iterator[OpenSeries]:
    """Header metadata now, one frame per (picked) time point
    lazily; BadInput naming the file when unreadable."""
    view = VIEW if view is None else view
    if view not in VIEWS:
        raise ValueError(f"NIfTI view {view!r} unknown; choose one of {', '.join(VIEWS)}")
    path = Path(ref.path)
    image = _image(path)
    shape = _time_series_shape(path, image)
    indices = pick(shape[3], sampling)
    step = _time_step_s(image)
    meta = {
        "source_kind": "nifti",
        **_header_meta(image),
        "view": view,
        "frames": int(len(indices)),
    }
    with _opened(path, image) as proxy:

        def frames() -> Iterator[tuple[np.ndarray, float]]:
            # The range comes from the whole series, not the picked frames (a frame looks the same
            # whatever else is picked), and is read here, lazily: describe() reads the header only.
            sample = np.unique(
                np.linspace(0, shape[3] - 1, min(RANGE_SAMPLE, shape[3])).round().astype(int)
            )
            low, high = robust_range(
                np.concatenate([_view(proxy, shape, int(t), view, path).ravel() for t in sample])
            )
            for t in indices:
                plane = _view(proxy, shape, int(t), view, path)
                yield to_rgb(scale_to_uint8(plane, low, high)), float(t * step if step else t)

        yield OpenSeries(meta, chunked(frames(), sampling))


KIND = SourceKind(
    "nifti",
    lambda base, files, memo, limits, sources: claim(base, files, memo),
    lambda ref, sampling, tmp_dir, limits, sources: open_series(
        ref, sampling, tmp_dir, limits, view=sources.nifti_view
    ),
)


def _image(path: Path) -> nib.Nifti1Image:
    """The NIfTI-1 or -2 image with its data left on disk
    (nibabel reads the header only); BadInput if none."""
    try:
        image = nib.load(path)
    except _READ_ERRORS as exc:
        raise BadInput(str(path), f"unreadable NIfTI header: {exc}") from exc
    # e.g. CIFTI-2, which shares the suffix
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise BadInput(str(path), f"not a NIfTI-1/2 volume ({type(image).__name__})")
    return image


def _time_series_shape(path: Path, image: nib.Nifti1Image) -> tuple[int, ...]:
    """The data shape when time is on the 4th axis (trailing length-1 axes allowed) and has at
    most MAX_FRAMES time points; else BadInput."""
    shape = tuple(int(n) for n in image.shape)
    if len(shape) < 4:
        dims = "x".join(map(str, shape))
        raise BadInput(
            str(path),
            f"not a time series: {len(shape)}-D volume ({dims}); time must be the 4th axis",
        )
    if any(n != 1 for n in shape[4:]):
        raise BadInput(
            str(path), f"unsupported {len(shape)}-D image {shape}: only the 4th axis may be time"
        )
    if 0 in shape:
        raise BadInput(str(path), f"empty image: shape {shape}")
    # before a frame index is made: a 1x1x1 .nii.gz with 10^8 time points passes the gzip-ratio
    # check (100 MB from 100 kB) yet would allocate 800 MB of indices
    check_frame_count(str(path), shape[3])
    return shape


def _check_size(path: Path, image: nib.Nifti1Image, shape: tuple[int, ...]) -> None:
    """Refused from the header, before any data is read: a file that cannot hold what its header
    promises (a short .nii, or a .nii.gz promising more than any gzip stream of its size holds: a
    bomb), and frames or volumes too large to read one at a time."""
    found = _proxy(image)
    expected = int(found.offset) + int(np.prod(shape)) * found.dtype.itemsize
    actual = path.stat().st_size
    if path.name.lower().endswith(".gz"):
        if expected > actual * GZIP_MAX_RATIO:
            raise BadInput(
                str(path),
                f"declares {expected} bytes of data, more than a {actual}-byte gzip stream "
                "can hold (a decompression bomb, or truncated); refused unread",
            )
    elif actual < expected:
        raise BadInput(str(path), f"truncated: {actual} of {expected} bytes")
    check_frame_size(str(path), shape[1], shape[0])
    if (voxels := shape[0] * shape[1] * shape[2]) > MAX_VOLUME_VOXELS:
        raise BadInput(
            str(path),
            f"volumes of {'x'.join(map(str, shape[:3]))} = {voxels} voxels exceed the limit "
            f"of {MAX_VOLUME_VOXELS} per time point; refused unread",
        )


def _header_meta(image: nib.Nifti1Image) -> dict[str, Any]:
    header = image.header
    space_unit, time_unit = header.get_xyzt_units()
    return {
        "shape": [int(n) for n in header.get_data_shape()],
        "spacing": [float(z) for z in header.get_zooms()[:3]],
        "spacing_unit": space_unit,
        "time_step_s": _time_step_s(image),
        "time_unit": time_unit,
        "dtype": str(header.get_data_dtype()),
    }


def _time_step_s(image: nib.Nifti1Image) -> float | None:
    """pixdim[4] in seconds, or None when the header
    gives no usable time step (t is then the index)."""
    zooms = image.header.get_zooms()
    factor = _SECONDS_PER.get(str(image.header.get_xyzt_units()[1]))
    if len(zooms) < 4 or factor is None or not np.isfinite(zooms[3]) or zooms[3] <= 0:
        return None
    return float(zooms[3]) * factor


def _proxy(image: nib.Nifti1Image) -> ArrayProxy:
    """The image's data as nibabel left it: a proxy on the file (nib.load reads the header only)."""
    found = image.dataobj
    assert isinstance(found, ArrayProxy)  # what nib.load makes for NIfTI-1 and -2 files
    return found


@contextmanager
def _opened(path: Path, image: nib.Nifti1Image) -> Iterator[ArrayProxy]:
    """An array proxy on a file handle this module owns: closed on exit, not left to garbage
    collection.

    The layout (offset, dtype, scaling, order) is the one nibabel found for the file: the image's
    header is not the file's (nibabel resets its vox_offset to 0).
    """
    found = _proxy(image)
    spec = (found.shape, found.dtype, found.offset, found.slope, found.inter)
    try:
        opener = ImageOpener(str(path), "rb")
    except _READ_ERRORS as exc:
        raise BadInput(str(path), f"unreadable: {exc}") from exc
    with opener:
        yield ArrayProxy(opener, spec, mmap=False, order=found.order)


def _view(proxy: ArrayProxy, shape: tuple[int, ...], t: int, view: str, path: Path) -> np.ndarray:
    """The 2-D view of time point `t`, as float64
    (rows = 2nd voxel axis reversed, columns = 1st)."""
    extra = (0,) * (len(shape) - 4)  # trailing length-1 axes
    try:
        if view == "middle":
            plane = np.asarray(
                proxy[(slice(None), slice(None), shape[2] // 2, t) + extra], dtype=np.float64
            )
        else:
            # as stored: no float64 copy
            volume = np.asarray(proxy[(slice(None), slice(None), slice(None), t) + extra])
            # fmax: a NaN voxel does not blank its ray
            plane = np.fmax.reduce(volume, axis=2).astype(np.float64)
    except _READ_ERRORS as exc:
        raise BadInput(str(path), f"unreadable data at time point {t}: {exc}") from exc
    return plane.T[::-1]
