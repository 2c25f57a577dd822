"""Data cubes with a time dimension (SPEC §2): each NetCDF (.nc) file or Zarr store is a series.

Read with xarray, lazily: nothing but the time coordinate is loaded until a frame is asked for,
and then one time step of the chosen variables (for Zarr: the chunks holding it).

- Time: the dimension `CubeOptions.time_dim`, else the one named `time`, else one whose coordinate
  holds dates or says `axis: T`. Frames follow the time coordinate (sorted, whatever the order
  on disk); t = seconds since the first time step. Times xarray cannot decode (an unknown
  calendar, no units) are used as stored numbers, and meta says their unit; a time dimension
  without a coordinate gives t = the step index. Repeated times are a failure.
- Bands: `CubeOptions.variables`, else the first three data variables that have the time
  dimension and two more (in the file's order; Zarr lists them alphabetically). Three
  variables are R, G, B; two are R, G with B black; one is grey. The two last dimensions
  of a variable are its rows and columns; any other dimension (a depth, a level) is held at
  its first index. Each variable is scaled with the robust range (1st-99th percentile) of a
  bounded sample over the whole series; NaN and _FillValue pixels (masked by xarray) are 0 in
  every channel.
- CRS: the WKT in the grid-mapping variable's `crs_wkt` or `spatial_ref` attribute (CF;
  GDAL and rioxarray write both), found through the variables' `grid_mapping` attribute or
  any variable carrying one; meta `epsg` is the WKT's last EPSG authority when it has one.

A Zarr store is a folder of many files: claim takes every file under `x.zarr/` and hashes the
whole store, hidden metadata files (.zarray, .zattrs of Zarr v2) included. Files are checked
at discovery (time dimension, variables), so a cube that cannot be a series is a discover
failure naming the file.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lstmpipe.lib.config import SamplingConfig, SourcesConfig
from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.failures import Failure
from lstmpipe.lib.series import OpenSeries, SeriesRef
from lstmpipe.lib.sources.archives import ArchiveLimits
from lstmpipe.lib.sources.frames import (
    check_frame_size,
    chunked,
    pick,
    robust_range,
    scale_to_uint8,
    to_rgb,
)
from lstmpipe.lib.sources.hashing import HashMemo, content_hash
from lstmpipe.lib.sources.kinds.base import Claim, make_ref, with_options
from lstmpipe.lib.sources.kinds.geotiff import combined_hash, iso, series_id

if TYPE_CHECKING:
    import xarray as xr

NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf")
ZARR_SUFFIX = ".zarr"
# What xarray and its backends (h5netcdf/h5py, scipy, zarr) raise on a broken file or store:
# h5py's OSError, "no backend matches" ValueError, zarr's node-not-found FileNotFoundError, and
# ValueError for bad JSON.
_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, RuntimeError)
_EPSG = re.compile(r'(?:AUTHORITY|ID)\[\s*"EPSG"\s*,\s*"?(\d+)"?\s*\]', re.IGNORECASE)


@dataclass(frozen=True)
class CubeOptions:
    """How a cube becomes frames: what a `cube:` config section would hold (not there yet)."""

    # 1 (grey), 2 or 3 (R, G[, B]) variables; None = the first three with time
    variables: tuple[str, ...] | None = None
    # None = `time`, else the dimension whose coordinate holds dates or says axis T
    time_dim: str | None = None
    percentiles: tuple[float, float] = (1.0, 99.0)  # robust range of each variable over the series
    stats_steps: int = 16  # time steps read for that range: bounded work on long series
    # values sampled per variable for that range: bounded memory on big grids
    stats_pixels: int = 1_000_000

    def __post_init__(self) -> None:
        if self.variables is not None and not 1 <= len(self.variables) <= 3:
            raise ValueError(
                f"cube variables {self.variables!r}: give one (grey), two or three (R, G, B)"
            )


DEFAULTS = CubeOptions()
RECIPE = "cube-1"  # bump when the same bytes and options would give other frames


def claim(
    base: Path, files: list[Path], memo: HashMemo | None, *, options: CubeOptions | None = None
) -> Claim:
    """Every NetCDF file and every Zarr store under `base`, checked: a series each, or a failure."""
    options = options or DEFAULTS
    base = Path(base)
    stores: dict[Path, list[Path]] = defaultdict(list)
    cubes: list[tuple[Path, str]] = []
    for path in files:
        store = zarr_store(base, path)
        if store is not None:
            stores[store].append(path)
        elif path.suffix.lower() in NETCDF_SUFFIXES:
            cubes.append((path, "netcdf"))
    cubes += [(store, "zarr") for store in stores]
    refs: list[SeriesRef] = []
    failures: list[Failure] = []
    for path, fmt in sorted(cubes, key=lambda c: c[0].parts):
        sid = series_id(base, path)
        try:
            with _dataset(path, fmt) as ds:
                cube = _Cube.of(ds, options, str(path))
            parts = _store_files(path) if fmt == "zarr" else [path]
            named = [
                (
                    p.relative_to(path).as_posix() if fmt == "zarr" else p.name,
                    content_hash(p, memo=memo),
                )
                for p in parts
            ]
            size = sum(p.stat().st_size for p in parts)
        except BadInput as exc:
            failures.append(Failure(sid, str(path), "discover", exc.reason))
            continue
        except OSError as exc:
            failures.append(
                Failure(sid, str(path), "discover", f"unreadable: {exc.strerror or exc}")
            )
            continue
        meta = {
            "source_kind": "cube",
            "format": fmt,
            "variables": cube.variables,
            "time_dim": cube.time_dim,
            "frames": cube.steps,
            "width": cube.width,
            "height": cube.height,
            "bytes": size,
        }
        refs.append(
            make_ref("cube", sid, combined_hash(named, f"{RECIPE} {options!r}"), path, meta)
        )
    claimed = {p for p, fmt in cubes if fmt == "netcdf"} | {
        f for found in stores.values() for f in found
    }
    return Claim(refs, failures, frozenset(claimed))


def zarr_store(base: Path, path: Path) -> Path | None:
    """The outermost `*.zarr` folder holding `path` (the root itself when it is one), else None."""
    if base.name.lower().endswith(ZARR_SUFFIX):
        return base
    parts = path.relative_to(base).parts
    for i, part in enumerate(parts[:-1]):
        if part.lower().endswith(ZARR_SUFFIX):
            return base.joinpath(*parts[: i + 1])
    return None


def _store_files(store: Path) -> list[Path]:
    """Every file of a Zarr store, hidden ones too:
    Zarr v2 keeps its metadata in .zarray / .zattrs."""
    found: list[Path] = []
    for folder, dirs, names in os.walk(store):
        dirs.sort()
        found += [Path(folder, name) for name in sorted(names)]
    return found


@contextmanager
def _dataset(path: Path, fmt: str) -> Iterator[xr.Dataset]:
    """The cube opened lazily (no dask: chunks=None; no caching:
    a read step is not kept); BadInput when unreadable."""
    # here: xarray and its backends take a second to import, and only cubes need them
    import xarray as xr

    # None: xarray picks h5netcdf (NetCDF-4) or scipy (NetCDF-3) from the bytes
    engine = "zarr" if fmt == "zarr" else None
    opened = None
    # decode_times False: an undecodable time unit or calendar keeps the stored numbers
    for decode_times in (True, False):
        try:
            opened = xr.open_dataset(
                path, engine=engine, chunks=None, cache=False, decode_times=decode_times
            )
            break
        except _READ_ERRORS as exc:
            if decode_times and "time" in str(exc).lower():
                continue
            raise BadInput(
                str(path), f"unreadable {'Zarr store' if fmt == 'zarr' else 'NetCDF file'}: {exc}"
            ) from exc
    assert opened is not None
    try:
        yield opened
    finally:
        opened.close()


@dataclass(frozen=True)
class _Cube:
    """Which variables and dimensions make the frames, and the time of every step."""

    variables: list[str]
    time_dim: str
    rows: str
    cols: str
    fixed: dict[str, int]  # other dimensions, held at this index
    seconds: np.ndarray  # (steps,) float64, relative to the earliest step, file order
    labels: list[str | None]  # ISO time of each step, None when the times are not dates
    t_unit: str
    height: int
    width: int

    @property
    def steps(self) -> int:
        return len(self.seconds)

    @classmethod
    def of(cls, ds: xr.Dataset, options: CubeOptions, where: str) -> _Cube:
        time_dim = _time_dim(ds, options, where)
        candidates = [
            str(name)
            for name, var in ds.data_vars.items()
            if time_dim in var.dims and var.ndim >= 3 and np.issubdtype(var.dtype, np.number)
        ]
        variables = list(options.variables) if options.variables else candidates[:3]
        if not variables:
            raise BadInput(
                where,
                f"no data variable with dimension {time_dim!r} and a 2-D grid; variables:"
                f" {', '.join(map(str, ds.data_vars)) or 'none'}",
            )
        missing = [v for v in variables if v not in candidates]
        if missing:
            raise BadInput(
                where,
                f"variable {missing[0]!r} has no {time_dim!r} and 2-D grid; "
                f"usable: {', '.join(candidates)}",
            )
        grids = {tuple(d for d in ds[v].dims if d != time_dim) for v in variables}
        if len(grids) > 1:
            raise BadInput(
                where, f"variables {', '.join(variables)} lie on different grids: {sorted(grids)}"
            )
        others = grids.pop()
        rows, cols = str(others[-2]), str(others[-1])
        check_frame_size(where, int(ds.sizes[rows]), int(ds.sizes[cols]))
        seconds, labels, t_unit = _times(ds, time_dim, where)
        return cls(
            variables,
            time_dim,
            rows,
            cols,
            {str(d): 0 for d in others[:-2]},
            seconds,
            labels,
            t_unit,
            int(ds.sizes[rows]),
            int(ds.sizes[cols]),
        )

    def read(self, ds: xr.Dataset, step: int, where: str) -> np.ndarray:
        """(C, H, W) float32 of one time step, NaN (masked)
        in every channel where any variable is."""
        try:
            stack = np.stack(
                [
                    np.asarray(
                        ds[v]
                        .isel({self.time_dim: step, **self.fixed})
                        .transpose(self.rows, self.cols)
                        .values,
                        dtype=np.float32,
                    )
                    for v in self.variables
                ]
            )
        except _READ_ERRORS as exc:
            raise BadInput(where, f"unreadable time step {step}: {exc}") from exc
        stack[:, ~np.isfinite(stack).all(axis=0)] = np.nan
        return stack


def _time_dim(ds: xr.Dataset, options: CubeOptions, where: str) -> str:
    if options.time_dim is not None:
        if options.time_dim not in ds.dims:
            raise BadInput(
                where,
                f"no dimension {options.time_dim!r}; dimensions: {', '.join(map(str, ds.dims))}",
            )
        return options.time_dim
    if "time" in ds.dims:
        return "time"
    for dim in map(str, ds.dims):
        coord = ds.coords.get(dim)
        if coord is not None and (
            np.issubdtype(coord.dtype, np.datetime64) or coord.attrs.get("axis") == "T"
        ):
            return dim
    raise BadInput(
        where,
        f"no time dimension (named 'time', dated, or axis T); dimensions:"
        f" {', '.join(map(str, ds.dims)) or 'none'}",
    )


def _times(ds: xr.Dataset, time_dim: str, where: str) -> tuple[np.ndarray, list[str | None], str]:
    """Seconds of each step since the earliest, ISO labels, and the unit of those seconds."""
    count = int(ds.sizes[time_dim])
    if time_dim not in ds.coords:
        return np.arange(count, dtype=np.float64), [None] * count, "index"
    values = ds[time_dim].values
    if np.issubdtype(values.dtype, np.datetime64):
        if np.isnat(values).any():
            raise BadInput(where, f"time coordinate {time_dim!r} has missing values")
        moments = values.astype("datetime64[us]").astype(dt.datetime)
        seconds = (values - values.min()) / np.timedelta64(1, "s")
        labels: list[str | None] = [iso(m) for m in moments]
        unit = "s"
    elif values.dtype == object and len(values) and hasattr(values[0], "calendar"):  # cftime dates
        first = min(values)
        seconds = np.array([(v - first).total_seconds() for v in values], dtype=np.float64)
        labels, unit = [v.isoformat() for v in values], "s"
    elif np.issubdtype(values.dtype, np.number):
        seconds = (
            values.astype(np.float64) - float(np.nanmin(values))
            if count
            else values.astype(np.float64)
        )
        labels = [None for _ in range(count)]
        unit = str(ds[time_dim].attrs.get("units", "as stored"))
    else:
        raise BadInput(
            where,
            f"time coordinate {time_dim!r} of type {values.dtype} is neither dates nor numbers",
        )
    if not np.isfinite(seconds).all():
        raise BadInput(where, f"time coordinate {time_dim!r} has missing values")
    if len(np.unique(seconds)) != count:
        raise BadInput(
            where, f"time coordinate {time_dim!r} repeats a time: a series needs one frame per time"
        )
    return np.asarray(seconds, dtype=np.float64), labels, unit


def _crs(ds: xr.Dataset, variables: list[str]) -> str | None:
    """The WKT of the grid mapping of the first variable
    that names one, else of any variable carrying one."""
    names: list[str] = []
    for v in variables:
        mapping = ds[v].attrs.get("grid_mapping") or ds[v].encoding.get("grid_mapping")
        if isinstance(mapping, str) and mapping.strip():
            names.append(re.split(r"[:\s]", mapping.strip())[0])  # CF 1.7 form "crs: x y" too
    names += [
        str(n) for n, var in ds.variables.items() if {"crs_wkt", "spatial_ref"} & set(var.attrs)
    ]
    for name in names:
        if name in ds.variables:
            attrs = ds[name].attrs
            wkt = attrs.get("crs_wkt") or attrs.get("spatial_ref")
            if isinstance(wkt, str) and wkt.strip():
                return wkt.strip()
    return None


def epsg_of(wkt: str | None) -> str | None:
    """EPSG:32613 from a WKT 1 (AUTHORITY) or WKT 2
    (ID) string: the last one names the whole CRS."""
    found = _EPSG.findall(wkt or "")
    return f"EPSG:{found[-1]}" if found else None


@contextmanager
def open_series(
    ref: SeriesRef,
    sampling: SamplingConfig,
    tmp_dir: Path,
    limits: ArchiveLimits = ArchiveLimits(),
    *,
    options: CubeOptions | None = None,
) -> Iterator[OpenSeries]:
    """Metadata now, one frame per (picked) time step lazily; BadInput naming the file or store.

    tmp_dir and limits are unused: cubes are read in place, never from archives.
    """
    options = options or DEFAULTS
    path = Path(ref.path)
    where = ref.location
    fmt = str(ref.meta.get("format") or ("zarr" if path.is_dir() else "netcdf"))
    with _dataset(path, fmt) as ds:
        cube = _Cube.of(ds, options, where)
        order = np.argsort(cube.seconds, kind="stable")  # time order, whatever the order on disk
        # the range of each variable over the series, not the picked frames: a step looks the same
        # whatever else is picked
        spread = (
            np.linspace(0, cube.steps - 1, min(cube.steps, options.stats_steps)).round().astype(int)
        )
        sample_steps = sorted({int(order[i]) for i in spread})
        stride = max(
            1,
            math.ceil(
                math.sqrt(
                    cube.height * cube.width * len(sample_steps) / max(options.stats_pixels, 1)
                )
            ),
        )
        samples = [cube.read(ds, s, where)[:, ::stride, ::stride] for s in sample_steps]
        ranges = [
            robust_range(np.concatenate([s[c].ravel() for s in samples]), *options.percentiles)
            for c in range(len(cube.variables))
        ]
        del samples
        picked = [int(order[i]) for i in pick(cube.steps, sampling)]
        crs = _crs(ds, cube.variables)
        meta = {
            "source_kind": "cube",
            "format": fmt,
            "fps": None,
            "variables": cube.variables,
            "mode": {1: "grey", 2: "rg", 3: "rgb"}[len(cube.variables)],
            "time_dim": cube.time_dim,
            "dims": [cube.rows, cube.cols],
            "fixed_dims": cube.fixed,
            "width": cube.width,
            "height": cube.height,
            "crs": crs,
            "epsg": epsg_of(crs),
            "times": [cube.labels[i] for i in picked],
            "t_unit": cube.t_unit,
            "frames": len(picked),
            "value_range": [list(r) for r in ranges],
        }

        def frames() -> Iterator[tuple[np.ndarray, float]]:
            for step in picked:
                yield _frame(cube.read(ds, step, where), ranges), float(cube.seconds[step])

        yield OpenSeries(meta, chunked(frames(), sampling))


def _frame(values: np.ndarray, ranges: list[tuple[float, float]]) -> np.ndarray:
    """(C, H, W) float, NaN = masked -> (H, W, 3) uint8; C = 1 grey, 2 R + G (B black), 3 RGB."""
    channels = [
        scale_to_uint8(v, low, high) for v, (low, high) in zip(values, ranges, strict=False)
    ]
    if len(channels) == 1:
        return to_rgb(channels[0])
    if len(channels) == 2:
        channels.append(np.zeros_like(channels[0]))
    return np.stack(channels, axis=-1)


def options_from(sources: SourcesConfig) -> CubeOptions:
    """The `sources.cube_*` keys (validated when loaded) as CubeOptions."""
    return CubeOptions(variables=sources.cube_variables, time_dim=sources.cube_time_dim)


KIND = with_options("cube", claim, open_series, options_from)
