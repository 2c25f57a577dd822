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

Headers are checked before xarray opens a cube (`_dataset`, for discovery and decoding alike),
because a header costs nothing to write and xarray loads dimension coordinates at open:
- NetCDF-4 (HDF5, read by h5netcdf through h5py): every link is walked without being followed;
  external links, external raw-data storage and virtual datasets (data in other files, a FIFO
  among them) are refused, and the same open file is then handed to xarray.
- Zarr: no symbolic link may leave the store and no entry may be other than a file or folder;
  every array's metadata (its own file, and any consolidated copy, whose keys must stay in the
  store) must name a fixed-size numeric, date or string type (no object dtype) and only codecs
  that transform bytes and numbers (never numcodecs' pickle, JSON or msgpack, nor a plugin's).
- Both: no axis longer than MAX_FRAMES, no chunk over MAX_CHUNK_BYTES, no read (one time step;
  in Zarr, a whole coordinate too) touching over MAX_READ_CHUNKS chunks.
NetCDF-3 (scipy) stores every value it declares, so its sizes are bounded by the file's; its time
steps are checked against MAX_FRAMES like every cube's.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import stat
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from lstmpipe.lib.config import SamplingConfig, SourcesConfig
from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.failures import Failure
from lstmpipe.lib.series import OpenSeries, SeriesRef
from lstmpipe.lib.sources.archives import ArchiveLimits
from lstmpipe.lib.sources.frames import (
    MAX_FRAMES,
    check_frame_count,
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
    import h5py
    import xarray as xr

NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf")
ZARR_SUFFIX = ".zarr"
# What xarray and its backends (h5netcdf/h5py, scipy, zarr) raise on a broken file or store:
# h5py's OSError, "no backend matches" ValueError, zarr's node-not-found FileNotFoundError, and
# ValueError for bad JSON.
_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, RuntimeError)
_EPSG = re.compile(r'(?:AUTHORITY|ID)\[\s*"EPSG"\s*,\s*"?(\d+)"?\s*\]', re.IGNORECASE)

# What a cube's headers may declare (checked before xarray opens it). Each size is free to write
# (an HDF5 dataset or a Zarr array of fill values is a few hundred bytes whatever it declares),
# and xarray loads a dimension's coordinate when it opens the file.
# One chunk decoded: 4 time steps of the largest frame (MAX_PIXELS) as float32.
MAX_CHUNK_BYTES = 1 << 30
# Chunks one read touches: one time step of a variable (the largest frame in 64 x 64 chunks), or a
# whole 1-D coordinate in Zarr. zarr keeps ~2.3 KB per chunk of a selection before reading it:
# 65536 chunks measured +150 MiB and 34 s on a busy 2-core machine; a time coordinate of 2^20
# one-step chunks would take 2.4 GiB at discovery, 1 x 1 chunks over 8192 x 8192 px 150 GiB.
MAX_READ_CHUNKS = 1 << 14
# One Zarr JSON metadata file; the consolidated metadata of a thousand arrays is about 1 MB.
MAX_METADATA_BYTES = 8 << 20
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # NetCDF-4 is HDF5; xarray looks for this at byte 0 too
_NETCDF3_SIGNATURE = b"CDF"
_ZARR_METADATA = frozenset({".zarray", ".zgroup", ".zattrs", ".zmetadata", "zarr.json"})
# Codecs that only transform bytes and numbers: numcodecs ids (Zarr v2) and codec names (v3).
# Anything else is refused: pickle (runs code), JSON, msgpack, vlen and categorize (objects),
# and whatever a plugin registers.
_ZARR_V2_CODECS = frozenset(
    {
        "adler32",
        "astype",
        "bitround",
        "blosc",
        "bz2",
        "crc32",
        "crc32c",
        "delta",
        "fixedscaleoffset",
        "fletcher32",
        "gzip",
        "lz4",
        "lzma",
        "packbits",
        "quantize",
        "shuffle",
        "zlib",
        "zstd",
    }
)
_ZARR_V3_CODECS = frozenset(
    {"blosc", "bytes", "crc32c", "endian", "gzip", "sharding_indexed", "transpose", "zstd"}
    | {f"numcodecs.{name}" for name in _ZARR_V2_CODECS}
)
# Zarr v3 data types of a fixed size (bytes per element); variable-length strings and bytes and
# structured types are refused like v2's object dtype.
_ZARR_V3_TYPES = {
    "bool": 1,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "uint16": 2,
    "float16": 2,
    "int32": 4,
    "uint32": 4,
    "float32": 4,
    "int64": 8,
    "uint64": 8,
    "float64": 8,
    "complex64": 8,
    "complex128": 16,
    "numpy.datetime64": 8,
    "numpy.timedelta64": 8,
}
_ZARR_V3_SIZED_TYPES = frozenset({"fixed_length_utf32", "null_terminated_bytes"})
_ZARR_V2_KINDS = "biufcmMSU"  # numpy kinds of numbers, dates and fixed-length strings


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
    """The cube opened lazily (no dask: chunks=None; no caching: a read step is not kept) once its
    headers passed; BadInput when unreadable or refused."""
    # here: xarray and its backends take a second to import, and only cubes need them
    import xarray as xr

    what = "Zarr store" if fmt == "zarr" else "NetCDF file"
    with ExitStack() as stack:
        source, engine = _checked_source(path, fmt, stack)
        opened = None
        # decode_times False: an undecodable time unit or calendar keeps the stored numbers
        for decode_times in (True, False):
            if not isinstance(source, Path):
                source.seek(0)
            try:
                opened = xr.open_dataset(
                    source, engine=engine, chunks=None, cache=False, decode_times=decode_times
                )
                break
            except _READ_ERRORS as exc:
                if decode_times and "time" in str(exc).lower():
                    continue
                raise BadInput(str(path), f"unreadable {what}: {exc}") from exc
        assert opened is not None
        try:
            yield opened
        finally:
            opened.close()


def _checked_source(path: Path, fmt: str, stack: ExitStack) -> tuple[Path | IO[bytes], str]:
    """What xarray opens, and with which engine, once the headers passed. A NetCDF-4 file is
    handed over as the very file object h5py checked: one swapped after the check is never read."""
    if fmt == "zarr":
        check_zarr(path)
        return path, "zarr"
    try:
        file = stack.enter_context(path.open("rb"))
        signature = file.read(len(_HDF5_SIGNATURE))
    except OSError as exc:
        raise BadInput(str(path), f"unreadable NetCDF file: {exc.strerror or exc}") from exc
    if signature.startswith(_HDF5_SIGNATURE):
        check_hdf5(file, str(path))
        return file, "h5netcdf"
    if signature.startswith(_NETCDF3_SIGNATURE):
        return path, "scipy"  # NetCDF-3 holds its own data: nothing in it names another file
    raise BadInput(
        str(path), "unreadable NetCDF file: no NetCDF-3 (CDF) or NetCDF-4 (HDF5) signature"
    )


# --- headers, checked before xarray opens a cube ------------------------------------------------


def check_hdf5(file: IO[bytes], where: str) -> None:
    """BadInput when a NetCDF-4 (HDF5) file would make h5py read another file, or allocate from
    a declared size: every link walked without following one, each dataset's storage and shape
    read from its header (its data never)."""
    import h5py

    try:
        with h5py.File(file, "r") as f:
            problem = f.visit_links(lambda name: _hdf5_problem(f, name))
    except _READ_ERRORS as exc:
        raise BadInput(where, f"unreadable NetCDF file: {exc}") from exc
    if problem:
        raise BadInput(where, f"refused unread: {problem}")


def _hdf5_problem(f: h5py.File, name: str) -> str | None:
    """Why the object linked as `name` cannot be read, or None. The storage layout is checked
    before the shape: asking a virtual dataset its shape can open its source files."""
    import h5py

    link = f.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        return (
            f"{name!r} is an external link to {link.filename!r}:"
            " a NetCDF file must hold its own data"
        )
    if isinstance(link, h5py.SoftLink):
        return None  # a path inside this file: what it names is visited by its hard link
    if not isinstance(link, h5py.HardLink):
        return f"{name!r} is a user-defined link: a NetCDF file holds hard links only"
    node = f.get(name)
    if not isinstance(node, h5py.Dataset):
        return None
    plist = node.id.get_create_plist()
    if plist.get_layout() == h5py.h5d.VIRTUAL:
        return f"variable {name!r} is a virtual dataset, assembled from other files"
    if plist.get_external_count():
        other = os.fsdecode(plist.get_external(0)[0])
        return (
            f"variable {name!r} keeps its data in another file {other!r} (HDF5 external storage):"
            " a NetCDF file must hold its own data"
        )
    # h5py reads a 1-D coordinate's chunks in C, without an object per chunk: only frames count
    shape = list(node.shape)
    return _size_problem(name, shape, list(node.chunks or ()), node.dtype.itemsize, len(shape) > 1)


def _size_problem(
    name: str, shape: list[int], chunks: list[int], itemsize: int, count_reads: bool = True
) -> str | None:
    """Why sizes declared for one array cannot be read here, or None; `chunks` empty: contiguous,
    `count_reads` False: the chunks one read touches are not bounded."""
    longest = max(shape, default=0)
    if longest > MAX_FRAMES:
        return (
            f"{name!r} declares an axis of {longest} entries, over the limit of {MAX_FRAMES}"
            " (time steps, rows or columns): a header bomb"
        )
    if not chunks:
        return None
    size = math.prod(chunks) * itemsize
    if size > MAX_CHUNK_BYTES:
        return f"{name!r} declares chunks of {size} bytes, over the limit of {MAX_CHUNK_BYTES}"
    # one read: all of a 1-D array, else one index of the first axis (time) and all of the others
    axes = slice(0 if len(shape) == 1 else 1, None)
    reads = math.prod(-(-n // c) for n, c in zip(shape[axes], chunks[axes], strict=True))
    if count_reads and reads > MAX_READ_CHUNKS:
        return f"{name!r} needs {reads} chunks for one read, over the limit of {MAX_READ_CHUNKS}"
    return None


def check_zarr(store: Path) -> None:
    """BadInput when a Zarr store reaches outside itself (a symbolic link out, a FIFO or device,
    consolidated metadata naming a path out), or an array's metadata asks for an object dtype,
    a codec off the allow-list or a huge allocation: metadata only, before zarr reads it."""
    root = store.resolve()
    for folder, dirs, names in os.walk(store):
        dirs.sort()
        for name in sorted(dirs) + sorted(names):
            path = Path(folder, name)
            key = path.relative_to(store).as_posix()
            problem = _entry_problem(path, root)
            if problem is None and name in _ZARR_METADATA:
                problem = _zarr_metadata_problem(path, key)
            if problem:
                raise BadInput(str(store), f"refused unread: {key}: {problem}")


def _entry_problem(path: Path, root: Path) -> str | None:
    """Why zarr must not open this entry of a store, or None."""
    try:
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            return f"a symbolic link to {os.readlink(path)!r}, outside the store"
        mode = path.stat().st_mode
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic link loop
        return f"unreadable: {exc}"
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return "neither a file nor a folder (a FIFO, socket or device would block or never end)"
    return None


def _zarr_metadata_problem(path: Path, key: str) -> str | None:
    """Why a Zarr metadata file is refused: its own array, and every entry of consolidated
    metadata (a copy zarr prefers to the files), are checked alike."""
    if path.stat().st_size > MAX_METADATA_BYTES:
        return f"metadata over {MAX_METADATA_BYTES} bytes"
    try:
        meta = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting a parser gives up on
        return f"malformed metadata: {exc}"
    if not isinstance(meta, dict):
        return "malformed metadata: not a JSON object"
    version = 3 if path.name == "zarr.json" else 2
    arrays: list[tuple[str, Any]] = []
    if path.name == ".zarray" or meta.get("node_type") == "array":
        arrays.append((str(PurePosixPath(key).parent), meta))
    for listed, entry in _consolidated(path.name, meta).items():
        if not _inside(listed):
            return f"consolidated metadata names {listed!r}, outside the store"
        if listed.endswith(".zarray") or (
            isinstance(entry, dict) and entry.get("node_type") == "array"
        ):
            arrays.append((listed, entry))
    for name, array in arrays:
        problem = _zarr_array_problem(name, array, version)
        if problem:
            return problem
    return None


def _consolidated(name: str, meta: dict[str, Any]) -> dict[str, Any]:
    """{key: metadata} of the consolidated metadata a file holds (v2 .zmetadata, v3 group
    zarr.json); empty when it holds none."""
    if name == ".zmetadata":
        listed = meta.get("metadata")
    else:
        consolidated = meta.get("consolidated_metadata")
        listed = consolidated.get("metadata") if isinstance(consolidated, dict) else None
    return listed if isinstance(listed, dict) else {}


def _inside(key: str) -> bool:
    """A store key naming a place inside the store: relative, without '..', '.' or empty parts."""
    return all(part not in ("", ".", "..") for part in key.split("/"))


def _zarr_array_problem(name: str, meta: Any, version: int) -> str | None:
    """Why one Zarr array's metadata is refused (its type, codecs or sizes), or None."""
    if not isinstance(meta, dict):
        return f"{name!r}: malformed metadata"
    if version == 2:
        shape, chunks = _sizes(meta.get("shape")), _sizes(meta.get("chunks"))
        itemsize = _v2_itemsize(meta.get("dtype"))
        filters = meta.get("filters") or []
        codecs = [meta.get("compressor"), *filters] if isinstance(filters, list) else [filters]
        names = [c.get("id") if isinstance(c, dict) else c for c in codecs if c is not None]
        allowed = _ZARR_V2_CODECS
    else:
        grid = meta.get("chunk_grid")
        config = grid.get("configuration") if isinstance(grid, dict) else None
        shape = _sizes(meta.get("shape"))
        chunks = _sizes(config.get("chunk_shape")) if isinstance(config, dict) else None
        itemsize = _v3_itemsize(meta.get("data_type"))
        if meta.get("storage_transformers"):
            return f"{name!r} declares storage transformers, which lstmpipe does not read"
        problem, names, chunks = _v3_codecs(name, meta.get("codecs"), chunks)
        if problem:
            return problem
        allowed = _ZARR_V3_CODECS
    if itemsize is None:
        kind = meta.get("dtype", meta.get("data_type"))
        return (
            f"{name!r} has data type {kind!r}: only fixed-size numbers, dates and strings are"
            " read (no objects, no variable-length types)"
        )
    refused = [c for c in names if not isinstance(c, str) or c not in allowed]
    if refused:
        return (
            f"{name!r} uses codec {refused[0]!r}, not one lstmpipe reads (it may unpickle, or"
            " come from a plugin)"
        )
    if shape is None or chunks is None or len(shape) != len(chunks) or 0 in chunks:
        return f"{name!r}: malformed shape or chunks"
    return _size_problem(name, shape, chunks, itemsize)


def _v3_codecs(
    name: str, codecs: Any, chunks: list[int] | None
) -> tuple[str | None, list[Any], list[int] | None]:
    """(problem, every codec name, the chunk shape reads decode) of a v3 codec list; a sharded
    array is read by inner chunk, and its shard index (16 bytes per inner chunk) whole."""
    if not isinstance(codecs, list):
        return f"{name!r}: malformed codecs", [], chunks
    names: list[Any] = []
    for codec in codecs:
        names.append(codec.get("name") if isinstance(codec, dict) else codec)
        if names[-1] != "sharding_indexed" or not isinstance(codec, dict):
            continue
        config = codec.get("configuration")
        inner = _sizes(config.get("chunk_shape")) if isinstance(config, dict) else None
        if (
            not isinstance(config, dict)
            or inner is None
            or chunks is None
            or len(inner) != len(chunks)
            or 0 in inner
        ):
            return f"{name!r}: malformed sharding", names, chunks
        entries = math.prod(-(-s // i) for s, i in zip(chunks, inner, strict=True))
        if entries * 16 > MAX_CHUNK_BYTES:
            return f"{name!r} declares a shard index of {entries} entries", names, chunks
        for nested in ("codecs", "index_codecs"):
            problem, more, _ = _v3_codecs(name, config.get(nested, []), inner)
            names += more
            if problem:
                return problem, names, chunks
        chunks = inner
    return None, names, chunks


def _sizes(value: Any) -> list[int] | None:
    """A JSON shape: a list of non-negative integers, else None."""
    if isinstance(value, list) and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value
    ):
        return value
    return None


def _v2_itemsize(dtype: Any) -> int | None:
    """Bytes per element of a Zarr v2 dtype string naming a number, date or fixed-length string;
    None for anything else (object, structured, void)."""
    if not isinstance(dtype, str):
        return None
    try:
        parsed = np.dtype(dtype)
    except (TypeError, ValueError, OverflowError):
        return None
    return parsed.itemsize if parsed.kind in _ZARR_V2_KINDS and parsed.itemsize else None


def _v3_itemsize(data_type: Any) -> int | None:
    """Bytes per element of a Zarr v3 data type of fixed size, else None."""
    if isinstance(data_type, str):
        return _ZARR_V3_TYPES.get(data_type)
    if not isinstance(data_type, dict) or not isinstance(data_type.get("name"), str):
        return None
    if data_type["name"] not in _ZARR_V3_SIZED_TYPES:
        return _ZARR_V3_TYPES.get(data_type["name"])
    config = data_type.get("configuration")
    size = config.get("length_bytes") if isinstance(config, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


@dataclass(frozen=True)
class _Cube:
    """Which variables and dimensions make the frames, and the time of every step."""

    variables: list[str]
    time_dim: str
    rows: str
    cols: str
    fixed: dict[str, int]  # other dimensions, held at this index
    seconds: np.ndarray  # (steps,) float64, relative to the earliest step, file order
    # the date of each step (datetime64 or cftime), None when the times are not dates; labelled
    # only when picked: a million ISO strings would cost 70 MiB at discovery
    dates: np.ndarray | None
    t_unit: str
    height: int
    width: int

    @property
    def steps(self) -> int:
        return len(self.seconds)

    def label(self, step: int) -> str | None:
        """The ISO time of one step; None when the times are not dates."""
        if self.dates is None:
            return None
        moment = self.dates[step]
        if isinstance(moment, np.datetime64):
            return iso(moment.astype("datetime64[us]").astype(dt.datetime))
        return moment.isoformat()  # cftime

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
        # before the times are decoded: NetCDF-3 may really hold that many
        check_frame_count(where, int(ds.sizes[time_dim]))
        seconds, dates, t_unit = _times(ds, time_dim, where)
        return cls(
            variables,
            time_dim,
            rows,
            cols,
            {str(d): 0 for d in others[:-2]},
            seconds,
            dates,
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


def _times(ds: xr.Dataset, time_dim: str, where: str) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Seconds of each step since the earliest, the dates (None when the times are not dates),
    and the unit of those seconds."""
    count = int(ds.sizes[time_dim])
    if time_dim not in ds.coords:
        return np.arange(count, dtype=np.float64), None, "index"
    values = ds[time_dim].values
    dates: np.ndarray | None = values
    if np.issubdtype(values.dtype, np.datetime64):
        if np.isnat(values).any():
            raise BadInput(where, f"time coordinate {time_dim!r} has missing values")
        seconds = (values - values.min()) / np.timedelta64(1, "s")
        unit = "s"
    elif values.dtype == object and len(values) and hasattr(values[0], "calendar"):  # cftime dates
        first = min(values)
        seconds = np.array([(v - first).total_seconds() for v in values], dtype=np.float64)
        unit = "s"
    elif np.issubdtype(values.dtype, np.number):
        seconds = (
            values.astype(np.float64) - float(np.nanmin(values))
            if count
            else values.astype(np.float64)
        )
        dates, unit = None, str(ds[time_dim].attrs.get("units", "as stored"))
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
    return np.asarray(seconds, dtype=np.float64), dates, unit


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
            "times": [cube.label(i) for i in picked],
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
