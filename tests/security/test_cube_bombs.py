"""Data cubes whose headers declare what would exhaust memory at discovery, which runs in the flow's
own process: a 738-byte Zarr store and a 9 kB NetCDF-4 file declaring 2*10^7 time steps of fill
values (xarray loaded and decoded that time coordinate at open: +1377 MiB and 30 s for the Zarr
store, measured on the code before the checks), a NetCDF-3 file really holding 1.1 M time steps
(over MAX_FRAMES), and a Zarr array cut into 1 x 1 chunks (zarr would list 67 M chunks to read one
frame). All are refused from their headers, by file name, while the honest cube beside them is
found; one fresh interpreter measures the peak memory rise of the whole discovery
(lib/sources/kinds/cube.py `check_zarr`, `check_hdf5`, `_size_problem`; `_Cube.of` for NetCDF-3)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from tests.security.conftest import isolated
from tests.security.test_external_refs import netcdf

STEPS = 20_000_000
# measured: +3 MiB for the header bombs and the honest cube; +33 MiB for the NetCDF-3 file, whose
# 1.1 M real steps (9.9 MB) xarray loads at open, before their count is checked
RISE_BOUND = 64 << 20

DISCOVER = """
    from pathlib import Path
    import h5py, tifffile, xarray, zarr  # imported first: their own size is not the bombs'
    from lstmpipe.lib.sources.discover import discover

    def memory(key):
        return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) * 1024

    try:  # the peak restarts here (Linux >= 4.0), else it includes the imports: an upper bound
        open("/proc/self/clear_refs", "w").write("5")
    except OSError:
        pass
    before = memory("VmRSS")
    found = discover(Path({source!r}))
    result = {{"rise": memory("VmHWM") - before, "refs": [r.series_id for r in found.refs],
               "failures": {{f.series_id: [Path(f.path).name, f.stage, f.reason]
                            for f in found.failures}}}}
"""


def zarr_declaring(store: Path, shape: list[int], chunks: list[int]) -> None:
    """A Zarr v3 store of nothing but metadata (every value is the fill value): `red` (time, y, x)
    and its time coordinate."""
    for name, dims, size, chunk in (
        ("time", ["time"], shape[:1], chunks[:1]),
        ("red", ["time", "y", "x"], shape, chunks),
    ):
        (store / name).mkdir(parents=True)
        grid = {"name": "regular", "configuration": {"chunk_shape": chunk}}
        meta = {"zarr_format": 3, "node_type": "array", "shape": size, "data_type": "float64"}
        meta |= {"chunk_grid": grid, "fill_value": 0.0, "dimension_names": dims}
        meta |= {"codecs": [{"name": "bytes"}], "attributes": {"units": "days since 2024-01-01"}}
        meta |= {"chunk_key_encoding": {"name": "default"}}
        (store / name / "zarr.json").write_text(json.dumps(meta))
    (store / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')


@pytest.fixture(scope="module")
def shown(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The bombs and one honest cube, discovered once in a fresh interpreter."""
    source = tmp_path_factory.mktemp("cubes") / "source"
    zarr_declaring(source / "steps.zarr", [STEPS, 2, 2], [STEPS, 2, 2])
    zarr_declaring(source / "crumbs.zarr", [2, 8192, 8192], [1, 1, 1])

    def steps(f: h5py.File) -> None:
        f.create_dataset("time", (STEPS,), np.float64, chunks=(1 << 16,))

    def red(f: h5py.File) -> None:
        f.create_dataset("red", (STEPS, 4, 4), np.float32, chunks=(1 << 12, 4, 4))

    netcdf(source / "steps.nc", red=red, time=steps)
    many = xr.Dataset(
        {"red": (("time", "y", "x"), np.zeros((1_100_000, 1, 1), np.uint8))},
        coords={"time": np.arange(1_100_000, dtype=np.float64)},
    )
    many.to_netcdf(source / "classic.nc", engine="scipy")  # NetCDF-3 stores every step
    netcdf(source / "honest.nc")
    stored = {p: p.stat().st_size for p in source.rglob("*") if p.is_file()}
    assert sum(n for p, n in stored.items() if "steps.zarr" in p.parts) < 1000, stored
    assert stored[source / "steps.nc"] < 10_000, stored
    return isolated(DISCOVER.format(source=str(source)))["result"]


def test_the_honest_cube_is_found_and_memory_stays_bounded(shown: dict) -> None:
    assert shown["refs"] == ["honest.nc"]
    assert shown["rise"] < RISE_BOUND, shown["rise"]


@pytest.mark.parametrize("name", ["steps.zarr", "steps.nc"])
def test_a_few_bytes_declaring_20_million_time_steps_are_refused_unread(
    shown: dict, name: str
) -> None:
    path, stage, why = shown["failures"][name]
    assert (path, stage) == (name, "discover")
    assert why.startswith("refused unread: ") and f"axis of {STEPS} entries" in why
    assert "over the limit of 1048576 (time steps, rows or columns)" in why


def test_a_netcdf3_holding_over_max_frames_steps_is_refused(shown: dict) -> None:
    path, stage, why = shown["failures"]["classic.nc"]
    assert (path, stage) == ("classic.nc", "discover")
    assert "declares 1100000 frames, over the limit of 1048576 per series" in why


def test_a_frame_cut_into_67_million_chunks_is_refused(shown: dict) -> None:
    path, stage, why = shown["failures"]["crumbs.zarr"]
    assert (path, stage) == ("crumbs.zarr", "discover")
    assert "needs 67108864 chunks for one read, over the limit of 16384" in why
