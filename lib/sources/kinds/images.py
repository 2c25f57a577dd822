"""Image folders (PNG, JPEG, BMP, plain TIFF frames): one folder is one series (SPEC §2).

A folder is claimed when it holds at least two images and no video (a folder of
clips with a cover picture stays a folder of clips). TIFFs are only what the
GeoTIFF kind, tried earlier, left. Frames are the images in natural order of file
name (frame_2 before frame_10). An image folder has no clock: its frames are
taken to be 1/`sampling.fps` s apart and every frame is kept (t = index / fps),
or t is the frame index when fps is unset; `sampling.num_frames` picks N frames
uniformly (t keeps each frame's place in the folder).

Every image is read with Pillow, turned upright by its EXIF orientation (as video
rotation metadata is honoured), converted to RGB and resized on its own, so sizes
may differ within a folder. 16-bit greyscale frames are mapped with the fixed
range 0-65535 (Pillow's convert would clip them to white), the same for every
frame. A frame Pillow cannot read fails the whole series, naming the file: a
series with holes would pass for a shorter, faster one.

Pillow opens only FORMATS (never EPS, which runs Ghostscript, whatever a file's
name). Every image's header is checked at discovery and again when it is decoded
(files can change): frames over MAX_PIXELS and images declaring more than
MAX_FRAMES frames are refused unread, as is a folder of more than MAX_FRAMES
images. Only the first frame of a multi-frame image is used.

series_id is the folder's path (the root's own name when the root is the
folder); label is the name of the folder holding it (UCF style
`class/clip_folder/frame_0001.png`); content_hash hashes the frames' own hashes
in frame order, so reordering frames is a new series and renaming the folder is not.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import groupby
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

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
    scale_to_uint8,
    to_rgb,
)
from lstmpipe.lib.sources.hashing import HashMemo, content_hash
from lstmpipe.lib.sources.kinds.base import Claim, SourceKind, make_ref
from lstmpipe.lib.sources.kinds.video import is_video

SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
# The Pillow formats those suffixes name, and the only ones Image.open may try: whatever a file's
# name, its bytes never reach Pillow's other plugins (EPS runs Ghostscript; others read rarely
# used, little-tested formats). JPEG's plugin also opens its multi-picture variant, MPO.
FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
MIN_FRAMES = 2  # one picture is not a sequence
ORIENTATION = 0x0112  # the EXIF tag phones write instead of turning the pixels
# What Pillow raises on a file it cannot decode: UnidentifiedImageError and "image file is
# truncated" are OSErrors; some plugins raise SyntaxError or ValueError on a broken header.
_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def is_image(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


def natural_key(name: str) -> tuple[list[str | int], str]:
    """frame_2 before frame_10: digit runs compare as numbers (the name itself breaks ties)."""
    parts = re.split(r"(\d+)", name)  # str, int, str, int, ...: same types at the same positions
    return [int(p) if i % 2 else p.lower() for i, p in enumerate(parts)], name


def frame_files(folder: Path) -> list[Path]:
    """The folder's images in frame order (hidden files skipped, as discovery skips them)."""
    found = [
        p for p in folder.iterdir() if p.is_file() and is_image(p) and not p.name.startswith(".")
    ]
    return sorted(found, key=lambda p: natural_key(p.name))


def claim(base: Path, files: list[Path], memo: HashMemo | None) -> Claim:
    """One series per folder holding >= MIN_FRAMES images and no video."""

    refs: list[SeriesRef] = []
    failures: list[Failure] = []
    claimed: set[Path] = set()
    for folder, group in groupby(
        sorted(files, key=lambda p: p.parent.parts), key=lambda p: p.parent
    ):
        in_folder = list(group)
        images = sorted((p for p in in_folder if is_image(p)), key=lambda p: natural_key(p.name))
        if len(images) < MIN_FRAMES or any(is_video(p.name) for p in in_folder):
            continue
        rel = folder.name if folder == base else folder.relative_to(base).as_posix()
        try:
            check_frame_count(str(folder), len(images))  # one frame per image
            for image in images:
                _check(image)  # every one: a folder's images may differ
            digest = _series_hash(images, memo)
            size = sum(p.stat().st_size for p in images)
        except BadInput as exc:
            failures.append(Failure(rel, exc.path, "discover", exc.reason))
        except OSError as exc:
            failures.append(Failure(rel, str(folder), "discover", f"unreadable image: {exc}"))
        else:
            refs.append(
                make_ref(
                    "images",
                    rel,
                    digest,
                    folder,
                    {"source_kind": "images", "frames": len(images), "bytes": size},
                )
            )
        claimed.update(images)
    return Claim(refs, failures, frozenset(claimed))


@contextmanager
def open_series(
    ref: SeriesRef, sampling: SamplingConfig, tmp_dir: Path, limits: ArchiveLimits = ArchiveLimits()
) -> Iterator[OpenSeries]:
    """The folder's frames, read one at a time; BadInput naming the frame Pillow cannot read."""
    folder = Path(ref.path)
    try:
        files = frame_files(folder)
    except OSError as exc:
        raise BadInput(ref.location, f"unreadable folder: {exc.strerror or exc}") from exc
    expected = ref.meta.get("frames")
    if expected is not None and len(files) != expected:
        raise BadInput(
            ref.location, f"folder changed since discovery: {len(files)} images, then {expected}"
        )
    if len(files) < MIN_FRAMES:
        raise BadInput(
            ref.location, f"{len(files)} image(s); an image series needs at least {MIN_FRAMES}"
        )
    indices = pick(len(files), sampling)
    width, height = _size(files[0])
    # width and height are the first frame's: others may differ
    meta = {
        "source_kind": "images",
        "frames": int(len(indices)),
        "fps": sampling.fps,
        "width": width,
        "height": height,
    }

    def frames() -> Iterator[tuple[np.ndarray, float]]:
        for index in indices:
            t = index / sampling.fps if sampling.fps else index
            yield _read(files[index]), float(t)

    yield OpenSeries(meta, chunked(frames(), sampling))


KIND = SourceKind(
    "images",
    lambda base, files, memo, limits, sources: claim(base, files, memo),
    lambda ref, sampling, tmp_dir, limits, sources: open_series(ref, sampling, tmp_dir, limits),
)


def _series_hash(images: list[Path], memo: HashMemo | None) -> str:
    """blake2b over the frames' hashes in frame order: the series' bytes, in the series' order."""
    digest = hashlib.blake2b(digest_size=16)
    for path in images:
        # fixed-length hex: no separator needed
        digest.update(content_hash(path, memo=memo).encode())
    return digest.hexdigest()


@contextmanager
def _opened(path: Path) -> Iterator[Image.Image]:
    """The image with only its header read, in one of FORMATS, its header checked; BadInput naming
    the file when Pillow refuses it, here or while the caller decodes it."""
    try:
        with Image.open(path, formats=FORMATS) as opened:
            _check_header(path, opened)
            yield opened
    except _READ_ERRORS as exc:
        raise BadInput(str(path), f"unreadable image {path.name}: {exc}") from exc


def _check_header(path: Path, opened: Image.Image) -> None:
    """Size and frame count, before a pixel is decoded. Only the first frame of a multi-frame image
    (APNG, multi-page TIFF, MPO) is used; one declaring more frames than a series may have is a
    bomb all the same."""
    width, height = opened.size
    try:
        check_frame_size(str(path), height, width)
        check_frame_count(str(path), getattr(opened, "n_frames", 1))
    except BadInput as exc:
        raise BadInput(exc.path, f"{path.name}: {exc.reason}") from None


def _check(path: Path) -> None:
    """BadInput naming the file unless Pillow reads its header and the header passes
    (`_check_header`); no pixel is decoded (nor EXIF: Pillow decodes a PNG to find it)."""
    with _opened(path):
        return


def _size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as shown (EXIF orientation applied), from its header alone."""
    with _opened(path) as opened:
        width, height = opened.size
        # 90-degree turns swap the sides
        turned = opened.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8)
    return (height, width) if turned else (width, height)


def _read(path: Path) -> np.ndarray:
    """One frame as (H, W, 3) uint8, upright; BadInput naming the file if Pillow cannot read it."""
    with _opened(path) as opened:
        image = ImageOps.exif_transpose(opened)
        if image.mode.startswith("I;16") or image.mode == "I":
            return to_rgb(scale_to_uint8(np.asarray(image), 0, 65535))
        return np.asarray(image.convert("RGB"))
