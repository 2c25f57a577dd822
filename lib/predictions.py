"""The predictions table (SPEC §3.6): one row per series, readable by any Arrow tool.

Columns: series_id, content_hash, source_kind, predicted_label, probability,
prob_<class> (one per class), model_name, model_version, recipe_id, run_id,
predicted_at. Written atomically, so a reader never sees half a file.
Beside it, lib.outputs writes what each domain's users open: a clinical CSV for
DICOM/NIfTI series and a GeoJSON of tile footprints for GeoTIFF stacks.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lib.atomic import write_parquet_atomic
from lib.series import SeriesRef


def predictions_table(refs: list[SeriesRef], probabilities: np.ndarray, labels: list[str], model_name: str,
                      model_version: str, recipe_id: str, run_id: str) -> pa.Table:
    """`probabilities` is (N, C) in the order of `refs` and `labels`."""
    n = len(refs)
    now = dt.datetime.now(dt.timezone.utc)
    best = probabilities.argmax(axis=1) if n else np.zeros(0, dtype=int)
    columns: dict[str, pa.Array] = {
        "series_id": pa.array([r.series_id for r in refs], pa.string()),
        "content_hash": pa.array([r.content_hash for r in refs], pa.string()),
        "source_kind": pa.array([r.kind for r in refs], pa.string()),
        "predicted_label": pa.array([labels[i] for i in best], pa.string()),
        "probability": pa.array(probabilities.max(axis=1) if n else [], pa.float32()),
    }
    for c, label in enumerate(labels):
        columns[f"prob_{label}"] = pa.array(probabilities[:, c] if n else [], pa.float32())
    columns |= {
        "model_name": pa.array([model_name] * n, pa.string()),
        "model_version": pa.array([model_version] * n, pa.string()),
        "recipe_id": pa.array([recipe_id] * n, pa.string()),
        "run_id": pa.array([run_id] * n, pa.string()),
        "predicted_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
    }
    return pa.table(columns)


def write_predictions(table: pa.Table, target: Path) -> Path:
    return write_parquet_atomic(table, target)


def already_predicted(folder: Path, model_name: str, model_version: str) -> set[str]:
    """Content hashes that predictions files in `folder` hold for this model version: what a re-run skips.

    Only the three key columns are read, filtered by the Parquet reader; files that are
    not predictions tables (no such columns) are ignored.
    """
    found: set[str] = set()
    for path in sorted(Path(folder).glob("*.parquet")):
        try:
            table = pq.read_table(path, columns=["content_hash", "model_name", "model_version"],
                                  filters=[("model_name", "=", model_name), ("model_version", "=", model_version)])
        except (pa.ArrowInvalid, KeyError):
            continue
        found.update(table["content_hash"].to_pylist())
    return found
