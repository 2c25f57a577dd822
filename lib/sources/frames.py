"""Turning decoded images of any kind into the pipeline's frames: RGB uint8, size x size.

Shared by every non-video source kind (ffmpeg does the same for video): robust
intensity scaling, shorter-side resize + center crop, uniform frame picking and
chunking, so a DICOM series and a GeoTIFF stack come out exactly like a video.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator

import numpy as np
from PIL import Image

from lstmpipe.lib.config import SamplingConfig
from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.series import FrameChunk

# Frames larger than this are refused from their header, before anything is allocated: 8192 x 8192
# (8K UHD is 7680 x 4320). Decoding one costs a few bytes per pixel (ffmpeg: YUV in, RGB out;
# DICOM: 16-bit values; GeoTIFF: float32 per band): 100000 x 100000 would ask for tens of GB.
MAX_PIXELS = 8192 * 8192

# Frames one series may hand out, whatever its kind: 36 h at 8 fps, 9.7 h of every frame at 30 fps.
# Beyond this a file is more likely a bomb (2 video frames 277 h apart make the fps filter emit 4
# million duplicates from 3 kB; a 680-byte DICOM header can declare 4 million frames) than a series;
# even at the limit its features take 2 GiB (D=512, float32) before the LSTM sees them.
MAX_FRAMES = 1 << 20


def check_frame_size(where: str, rows: int, cols: int, max_pixels: int = MAX_PIXELS) -> None:
    """BadInput naming `where` when a header declares frames of more than `max_pixels` pixels."""
    if rows * cols > max_pixels:
        raise BadInput(
            where,
            f"frames of {cols}x{rows} pixels exceed the limit of {max_pixels} pixels "
            "(a decompression bomb, or a frame too large to decode here); refused unread",
        )


def check_frame_count(where: str, count: int, max_frames: int = MAX_FRAMES) -> None:
    """BadInput naming `where` when a header declares more than `max_frames` frames (or steps):
    checked before anything is allocated per frame."""
    if count > max_frames:
        raise BadInput(
            where,
            f"declares {count} frames, over the limit of {max_frames} per series "
            "(a header bomb, or a series too long to decode here); refused unread",
        )


def capped(
    chunks: Iterator[FrameChunk], where: str, max_frames: int = MAX_FRAMES
) -> Generator[FrameChunk, None, None]:
    """`chunks` until more than `max_frames` frames came out, then BadInput naming `where`: the
    frame cap of every kind, whatever its header said (decode applies it to every series)."""
    count = 0
    for chunk in chunks:
        count += len(chunk)
        if count > max_frames:
            raise BadInput(
                where,
                f"more than {max_frames} frames decoded, the limit per series "
                "(a header that understates its frames, or a series too long to decode here)",
            )
        yield chunk


def scale_to_uint8(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly to [0, 255], clipping; NaN (masked) becomes 0."""
    span = max(high - low, 1e-12)
    scaled = (np.asarray(image, dtype=np.float64) - low) * (255.0 / span)
    return np.nan_to_num(np.clip(scaled, 0, 255), nan=0.0).astype(np.uint8)


def robust_range(
    values: np.ndarray, lower_pct: float = 1.0, upper_pct: float = 99.0
) -> tuple[float, float]:
    """Percentile limits over the finite values: one outlier pixel does not wash out the series."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, [lower_pct, upper_pct])
    return float(low), float(high if high > low else low + 1.0)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) grey or (H, W, 3) colour uint8 -> (H, W, 3) uint8."""
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ValueError(f"expected (H, W) or (H, W, 3), got {image.shape}")


def resize_crop(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3): shorter side to
    `size`, then center crop, as ffmpeg does for video."""
    height, width = image.shape[:2]
    scale = size / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top : top + size, left : left + size]


def pick(count: int, sampling: SamplingConfig) -> np.ndarray:
    """Indices of the frames to keep: all of them, or `num_frames` spread uniformly."""
    if sampling.num_frames is None or sampling.num_frames >= count:
        return np.arange(count)
    return np.linspace(0, count - 1, sampling.num_frames).round().astype(int)


def chunked(
    frames: Iterable[tuple[np.ndarray, float]], sampling: SamplingConfig
) -> Generator[FrameChunk, None, None]:
    """(RGB uint8 image, t seconds) pairs -> FrameChunks of `chunk_frames`, resized to `size`."""
    batch: list[np.ndarray] = []
    times: list[float] = []
    start = 0
    for image, t in frames:
        batch.append(resize_crop(image, sampling.size))
        times.append(t)
        if len(batch) == sampling.chunk_frames:
            yield FrameChunk(np.stack(batch), np.asarray(times, dtype=np.float64), start)
            start += len(batch)
            batch, times = [], []
    if batch:
        yield FrameChunk(np.stack(batch), np.asarray(times, dtype=np.float64), start)
