"""lib.sources.kinds.cube through discovery and decoding: generated NetCDF files and Zarr stores
with real CRS and dates."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from lstmpipe.lib.config import SamplingConfig
from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.sources.decode import decode, describe
from lstmpipe.lib.sources.discover import discover
from lstmpipe.lib.sources.kinds import cube

SMALL = SamplingConfig(fps=None, size=20, chunk_frames=3)
DAY = 86400.0
# EPSG:32613 as GDAL writes it into a CF grid-mapping variable's crs_wkt (WKT 1)
UTM13N_WKT = (
    'PROJCS["WGS 84 / UTM zone 13N",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,'
    '298.257223563,AUTHORITY["EPSG","7030"]],AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,'
    'AUTHORITY["EPSG","8901"]],UNIT["degree",0.0174532925199433,AUTHORITY["EPSG","9122"]],'
    'AUTHORITY["EPSG","4326"]],PROJECTION["Transverse_Mercator"],PARAMETER["latitude_of_origin",0],'
    'PARAMETER["central_meridian",-105],PARAMETER["scale_factor",0.9996],PARAMETER["false_easting",'
    '500000],PARAMETER["false_northing",0],UNIT["metre",1,AUTHORITY["EPSG","9001"]],AXIS["Easting",'
    'EAST],AXIS["Northing",NORTH],AUTHORITY["EPSG","32613"]]'
)
# stored out of order: frames must follow the time coordinate, not the file
DATES = ["2021-03-01", "2021-01-05", "2021-04-20", "2021-02-10"]
# brighter with time
LEVELS = {"2021-01-05": 0.1, "2021-02-10": 0.2, "2021-03-01": 0.3, "2021-04-20": 0.4}


def sample_cube() -> xr.Dataset:
    """(time 4, y 20, x 30) red and nir reflectance on a UTM
    grid, a CF `crs` variable, NaN where clouds were."""
    levels = np.array([LEVELS[d] for d in DATES], np.float32)[:, None, None]
    ramp = np.linspace(0.0, 0.05, 30, dtype=np.float32)[None, None, :]
    red = np.broadcast_to(levels + ramp, (4, 20, 30)).copy()
    nir = red + np.float32(0.2)
    red[DATES.index("2021-02-10"), :5] = np.nan  # a cloud over February's top rows
    grid = {"grid_mapping": "crs"}
    return xr.Dataset(
        {
            "red": (("time", "y", "x"), red, {"units": "1", **grid}),
            "nir": (("time", "y", "x"), nir, {"units": "1", **grid}),
            "crs": (
                (),
                np.int32(0),
                {
                    "grid_mapping_name": "transverse_mercator",
                    "crs_wkt": UTM13N_WKT,
                    "spatial_ref": UTM13N_WKT,
                },
            ),
        },
        coords={
            "time": pd.to_datetime(DATES),
            "y": 4462410.0 - 30.0 * np.arange(20),
            "x": 336390.0 + 30.0 * np.arange(30),
        },
    )


def write_zarr(ds: xr.Dataset, path: Path, zarr_format: int | None = None) -> None:
    # zarr 3 says consolidated metadata is not in its spec yet: not this test's concern
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(path, mode="w", zarr_format=zarr_format)


def files_under(root: Path) -> list[Path]:
    """Every file under `root`, sorted; unlike discovery's walk, Zarr v2's hidden .zarray too."""
    return sorted(p for p in root.rglob("*") if p.is_file())


def frames_of(ref: SeriesRef, tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    chunks = list(decode(ref, SMALL, tmp_path))
    return np.concatenate([c.frames for c in chunks]), np.concatenate([c.t for c in chunks])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The same cube as NetCDF and as Zarr (v3 and v2), a cube
    without time, a broken file, and a video-free rest."""
    root = tmp_path / "source"
    (root / "nc").mkdir(parents=True)
    sample_cube().to_netcdf(root / "nc" / "site.nc")
    write_zarr(sample_cube(), root / "zarr" / "site.zarr")
    write_zarr(sample_cube(), root / "zarr" / "site_v2.zarr", zarr_format=2)
    sample_cube().isel(time=0).drop_vars("time").to_netcdf(root / "nc" / "still.nc")
    (root / "nc" / "text.nc").write_text("not a cube")
    return root


def test_netcdf_cube_is_one_series_in_time_order(root: Path, tmp_path: Path) -> None:
    found = discover(root)
    refs = {r.series_id: r for r in found.refs}
    assert sorted(refs) == ["nc/site.nc", "zarr/site.zarr", "zarr/site_v2.zarr"]
    ref = refs["nc/site.nc"]
    assert (ref.kind, ref.label, ref.partition) == ("cube", "nc", "nc")
    meta = describe(ref, SMALL, tmp_path)
    frames, t = frames_of(ref, tmp_path)
    assert frames.shape == (4, 20, 20, 3) and frames.dtype == np.uint8
    assert meta["times"] == sorted(DATES) and meta["frames"] == 4
    assert list(t) == [0.0, 36 * DAY, 55 * DAY, 105 * DAY]
    # two bands: B black
    assert meta["variables"] == ["red", "nir"] and meta["mode"] == "rg" and not frames[..., 2].any()
    # red brightens with time, in frame order
    assert np.all(np.diff(frames[..., 0].mean(axis=(1, 2))) > 0)
    assert meta["epsg"] == "EPSG:32613" and "UTM zone 13N" in meta["crs"]
    assert (meta["time_dim"], meta["dims"], meta["width"], meta["height"]) == (
        "time",
        ["y", "x"],
        30,
        20,
    )
    february = frames[1]
    # the cloud is 0 in every channel, the rest shows
    assert not february[:5].any() and february[5:, :, :2].all()


def test_zarr_store_is_one_series_like_the_netcdf(root: Path, tmp_path: Path) -> None:
    found = discover(root)
    refs = {r.series_id: r for r in found.refs}
    # no file inside a store became a series of another kind
    assert {r.kind for r in found.refs} == {"cube"}
    nc_frames, nc_t = frames_of(refs["nc/site.nc"], tmp_path)
    for store in ("zarr/site.zarr", "zarr/site_v2.zarr"):
        meta = describe(refs[store], SMALL, tmp_path)
        frames, t = frames_of(refs[store], tmp_path)
        assert (
            meta["format"] == "zarr"
            and meta["times"] == sorted(DATES)
            and meta["epsg"] == "EPSG:32613"
        )
        assert np.array_equal(t, nc_t)
        # Zarr lists variables by name (nir, red): same pixels, channels in that order
        order = [meta["variables"].index(v) for v in ("red", "nir")]
        assert np.array_equal(frames[..., order], nc_frames[..., :2])


def test_zarr_hash_covers_the_whole_store(root: Path) -> None:
    store = root / "zarr" / "site_v2.zarr"
    # v2 metadata is hidden from the folder walk, yet defines the cube
    assert (store / ".zattrs").is_file()
    before = {r.series_id: r.content_hash for r in discover(root).refs}
    assert before == {r.series_id: r.content_hash for r in discover(root).refs}  # stable
    attrs = json.loads((store / ".zattrs").read_text())
    (store / ".zattrs").write_text(json.dumps({**attrs, "history": "edited"}))
    after = {r.series_id: r.content_hash for r in discover(root).refs}
    assert after["zarr/site_v2.zarr"] != before["zarr/site_v2.zarr"]
    assert after["nc/site.nc"] == before["nc/site.nc"]
    claimed = cube.claim(root, files_under(root), None)
    assert all(p.suffix == ".nc" or ".zarr" in p.as_posix() for p in claimed.claimed)
    assert sum(".zarr" in p.as_posix() for p in claimed.claimed) == sum(
        ".zarr" in p.as_posix() for p in files_under(root)
    )


def test_bad_cubes_are_failures_naming_the_file(root: Path) -> None:
    found = discover(root)
    failures = {f.series_id: f for f in found.failures}
    assert sorted(failures) == ["nc/still.nc", "nc/text.nc"]
    assert "no time dimension" in failures["nc/still.nc"].reason
    assert "unreadable NetCDF" in failures["nc/text.nc"].reason and failures[
        "nc/text.nc"
    ].path.endswith("text.nc")
    assert {f.stage for f in found.failures} == {"discover"}
    assert len(found.refs) == 3  # the good cubes are unaffected


def test_chosen_variables_and_repeated_times(tmp_path: Path) -> None:
    path = tmp_path / "one.nc"
    sample_cube().to_netcdf(path)
    claim = cube.claim(tmp_path, [path], None, options=cube.CubeOptions(variables=("nir",)))
    assert claim.refs[0].content_hash != cube.claim(tmp_path, [path], None).refs[0].content_hash
    with cube.open_series(
        claim.refs[0], SMALL, tmp_path, options=cube.CubeOptions(variables=("nir",))
    ) as series:
        frames = np.concatenate([c.frames for c in series.chunks])
        assert series.meta["mode"] == "grey" and series.meta["variables"] == ["nir"]
    assert np.array_equal(frames[..., 0], frames[..., 2])
    with (
        pytest.raises(BadInput, match="'ndvi'"),
        cube.open_series(
            claim.refs[0], SMALL, tmp_path, options=cube.CubeOptions(variables=("ndvi",))
        ),
    ):
        pass
    twice = tmp_path / "twice.nc"
    sample_cube().assign_coords(
        time=pd.to_datetime(["2021-01-01"] * 2 + ["2021-01-02"] * 2)
    ).to_netcdf(twice)
    failure = cube.claim(tmp_path, [twice], None).failures[0]
    assert "repeats a time" in failure.reason and failure.series_id == "twice.nc"
