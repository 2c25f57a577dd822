"""Image series declaring huge frames: a compressed DICOM claiming 65535 x 65535 pixels, a GeoTIFF
stack and a NetCDF cube claiming 100000 x 100000 are refused at discovery by file name
(lib.sources.frames.check_frame_size), never decoded into a gigabytes-large array; so are GeoTIFFs
declaring 48 bands of the largest frame, too many directories, or a loop of them. Each runs in a
fresh interpreter under a 4 GiB address-space limit."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile

from lstmpipe.lib.demo.geo import write_geotiff
from tests.helpers import wheel_data
from tests.security.conftest import isolated
from tests.security.test_external_refs import GEO_TAGS

RUN = """
    import time
    from pathlib import Path
    from lstmpipe.lib.config import SamplingConfig
    from lstmpipe.lib.sources.decode import decode
    from lstmpipe.lib.sources.discover import discover
    began = time.monotonic()
    found = discover(Path({source!r}))
    decoded = []
    # whatever discovery lets through must decode within bounds or fail as BadInput
    for ref in found.refs:
        try:
            decoded.append(sum(len(c) for c in decode(ref, SamplingConfig(size=32), Path({tmp!r}))))
        except Exception as exc:
            decoded.append(type(exc).__name__ + ": " + str(exc)[:200])
    result = {{"seconds": time.monotonic() - began, "decoded": decoded,
               "failures": [[f.series_id, f.path, f.stage, f.reason] for f in found.failures]}}
"""


@pytest.mark.parametrize("dataset", ["MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm"])
def test_a_compressed_dicom_claiming_65535_squared_is_refused(tmp_path: Path, dataset: str) -> None:
    series = tmp_path / "source" / "mr"
    series.mkdir(parents=True)
    ds = pydicom.dcmread(wheel_data("pydicom", "pydicom/data/test_files") / dataset)
    ds.Rows, ds.Columns = 65535, 65535  # 4.3 G pixels: 8-12 GiB once decoded
    ds.save_as(series / "huge.dcm")
    shown = isolated(RUN.format(source=str(tmp_path / "source"), tmp=str(tmp_path / "tmp")))
    assert shown["result"]["decoded"] == [], shown  # unbounded, this was a MemoryError (8 GiB)
    [(_, path, stage, why)] = shown["result"]["failures"]
    assert path.endswith("huge.dcm") and stage == "discover" and "65535x65535" in why


def declare_size(path: Path, width: int, height: int) -> None:
    """ImageWidth and ImageLength of a TIFF's first page patched in place: its data stays small."""
    with tifffile.TiffFile(path) as tif:
        spots = [
            (tif.pages.first.tags[name].valueoffset, tif.pages.first.tags[name].dtype, size)
            for name, size in (("ImageWidth", width), ("ImageLength", height))
        ]
    data = bytearray(path.read_bytes())
    for offset, dtype, size in spots:
        assert dtype == 4, "tifffile writes these as LONG"
        data[offset : offset + 4] = struct.pack("<I", size)
    path.write_bytes(bytes(data))


def test_a_geotiff_stack_claiming_100000_squared_is_refused(tmp_path: Path) -> None:
    field = tmp_path / "source" / "field"
    for i, day in enumerate(["20240501", "20240601"]):
        path = write_geotiff(
            field / f"LC08_{day}.tif",
            np.full((32, 32), 100, np.uint16),
            (500000.0, 4400000.0),
            "0",
            120 + 30 * i,
        )
        declare_size(path, 100_000, 100_000)  # 1 kB claiming 10 G pixels
    shown = isolated(RUN.format(source=str(tmp_path / "source"), tmp=str(tmp_path / "tmp")))
    assert shown["result"]["decoded"] == [], shown  # unbounded, a MemoryError (18.6 GiB)
    failures = shown["result"]["failures"]  # each date's file, by name
    assert sorted(Path(path).name for _, path, _, _ in failures) == [
        "LC08_20240501.tif",
        "LC08_20240601.tif",
    ]
    assert all(stage == "discover" and "100000x100000" in why for _, _, stage, why in failures)


def test_a_netcdf_cube_declaring_100000_squared_is_refused(tmp_path: Path) -> None:
    """10 kB on disk: HDF5 allocates chunks lazily, so the variables are all fill value."""
    import h5netcdf

    source = tmp_path / "source"
    source.mkdir()
    with h5netcdf.File(source / "huge.nc", "w") as f:
        f.dimensions = {"time": 2, "y": 100000, "x": 100000}
        t = f.create_variable("time", ("time",), "f8")
        t.attrs["units"] = "days since 2024-01-01"
        t[:] = [0, 10]
        for name in ("red", "green", "blue"):
            f.create_variable(name, ("time", "y", "x"), "f4", chunks=(1, 1000, 1000), fillvalue=0.0)
    shown = isolated(RUN.format(source=str(source), tmp=str(tmp_path / "tmp")))
    assert shown["result"]["decoded"] == [], shown  # unbounded, a MemoryError (37 GiB)
    [(_, path, stage, why)] = shown["result"]["failures"]
    assert path.endswith("huge.nc") and stage == "discover" and "100000x100000" in why


def geotiff_pages(path: Path, count: int) -> list[int]:
    """A GeoTIFF of `count` 1 x 1 pages; the byte offset of each page's directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pages = np.zeros((count, 1, 1), np.uint8)
    tifffile.imwrite(path, pages, photometric="minisblack", extratags=GEO_TAGS, metadata=None)
    with tifffile.TiffFile(path) as tif:
        return [page.offset for page in tif.pages]


def test_geotiffs_declaring_48_huge_bands_1100_pages_or_a_directory_loop_are_refused(
    tmp_path: Path,
) -> None:
    """48 bands of 8192 x 8192 read whole as float32 (18 GiB); 1100 directories (tifffile parses
    each, and groups pages of differing shapes in quadratic time: minutes); a chain of directories
    looping back past tifffile's own check (which looks at the 100th only: it walked forever).
    Each is refused unread, by file name, from its header (lib/sources/kinds/geotiff.py
    `_check_date_bytes`, `_check_pages`); the honest stack beside them decodes."""
    source = tmp_path / "source"
    bands = source / "bands" / "LC08_20240501.tif"
    bands.parent.mkdir(parents=True)
    tifffile.imwrite(
        bands,
        np.zeros((48, 32, 32), np.uint16),
        photometric="minisblack",
        planarconfig="separate",
        extratags=GEO_TAGS,
        metadata=None,
    )
    declare_size(bands, 8192, 8192)
    geotiff_pages(source / "pages" / "many_20240501.tif", 1100)
    loop = source / "loop" / "loop_20240501.tif"
    offsets = geotiff_pages(loop, 200)
    data = bytearray(loop.read_bytes())
    (tags,) = struct.unpack_from("<H", data, offsets[-1])
    struct.pack_into("<I", data, offsets[-1] + 2 + 12 * tags, offsets[150])
    loop.write_bytes(bytes(data))
    for i, day in enumerate(["20240501", "20240601"]):
        write_geotiff(
            source / "field" / f"LC08_{day}.tif",
            np.full((32, 32), 100, np.uint16),
            (500000.0, 4400000.0),
            "0",
            120 + 30 * i,
        )
    shown = isolated(RUN.format(source=str(source), tmp=str(tmp_path / "tmp")), timeout_s=120)
    assert shown["result"]["decoded"] == [2], shown  # the honest stack: both dates
    failures = {sid: (Path(path).name, why) for sid, path, _, why in shown["result"]["failures"]}
    assert sorted(failures) == ["bands", "loop/loop_20240501.tif", "pages/many_20240501.tif"]
    assert failures["bands"][1] == (
        "bands/LC08_20240501.tif: 8192x8192 px x 48 bands of 2 byte(s) take 18432 MiB to read as"
        " float32, over the limit of 2048 MiB per date; refused unread"
    )
    assert (
        "holds over 1024 TIFF directories (pages), the limit"
        in failures["pages/many_20240501.tif"][1]
    )
    assert f"directories loop back to byte {offsets[150]}" in failures["loop/loop_20240501.tif"][1]
