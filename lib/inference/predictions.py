"""The predictions table (SPEC §3.6): one row per series, readable by any Arrow tool.

Columns: series_id, content_hash, source_kind, predicted_label, probability,
prob_<class> (one per class), model_name, model_version, recipe_id, run_id,
predicted_at. Written atomically as one object of a store (`predictions/<name>-v<version>-
<stamp>.parquet` in the outputs store: a folder under home, or a bucket prefix in team mode;
or where the user's `--out` names), so a reader never sees half a file.
On request, `<stem>.frames.parquet` beside it holds one row per frame: the frame's
index and time, per-frame class probabilities and the LSTM's per-timestep state.
Beside it, lib.inference.outputs writes what each domain's users open: a clinical CSV for
DICOM/NIfTI series and a GeoJSON of tile footprints for GeoTIFF stacks.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lstmpipe.lib.features.cache import SeriesFeatures
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.state.store import Store, is_remote, open_store

PREFIX = "predictions"  # the predictions files in the outputs store
FRAMES_SUFFIX = ".frames.parquet"


def predictions_table(
    refs: list[SeriesRef],
    probabilities: np.ndarray,
    labels: list[str],
    model_name: str,
    model_version: str,
    recipe_id: str,
    run_id: str,
) -> pa.Table:
    """`probabilities` is (N, C) in the order of `refs` and `labels`."""
    columns: dict[str, pa.Array] = {
        "series_id": pa.array([r.series_id for r in refs], pa.string()),
        "content_hash": pa.array([r.content_hash for r in refs], pa.string()),
        "source_kind": pa.array([r.kind for r in refs], pa.string()),
    }
    columns |= _scores(probabilities.reshape(len(refs), len(labels)), labels)
    return pa.table(columns | _provenance(len(refs), model_name, model_version, recipe_id, run_id))


def frames_table(
    refs: list[SeriesRef],
    series: list[SeriesFeatures],
    steps: list[tuple[np.ndarray, np.ndarray]],
    labels: list[str],
    model_name: str,
    model_version: str,
    recipe_id: str,
    run_id: str,
) -> pa.Table:
    """One row per frame: its time, class probabilities and (LSTM/GRU) the network's state there.

    series[i] holds refs[i]'s cached features (for their times); `steps[i]` is its ((T_i, C)
    probabilities, (T_i, S) states), as lib.training.loop.predict_steps gives them. `state` is a
    fixed-size list of S float32; it is left out when S is 0 (the baseline).
    """
    counts = [len(s.t) for s in series]
    probabilities = np.concatenate([p for p, _ in steps]) if series else np.zeros((0, len(labels)))
    columns: dict[str, pa.Array] = {
        "series_id": pa.array(np.repeat([r.series_id for r in refs], counts).tolist(), pa.string()),
        "content_hash": pa.array(
            np.repeat([r.content_hash for r in refs], counts).tolist(), pa.string()
        ),
        "frame": pa.array(
            np.concatenate([np.arange(n, dtype=np.int32) for n in counts] or [[]]), pa.int32()
        ),
        "t": pa.array(np.concatenate([s.t for s in series] or [[]]), pa.float64()),
    }
    columns |= _scores(probabilities, labels)
    width = steps[0][1].shape[1] if series else 0
    if width:
        states = np.concatenate([st for _, st in steps]).astype(np.float32)
        columns["state"] = pa.FixedSizeListArray.from_arrays(pa.array(states.ravel()), width)
    return pa.table(
        columns | _provenance(sum(counts), model_name, model_version, recipe_id, run_id)
    )


def _scores(probabilities: np.ndarray, labels: list[str]) -> dict[str, pa.Array]:
    """predicted_label, probability (of it), prob_<class> per class, from (N, C) probabilities."""
    best = probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, dtype=int)
    columns = {
        "predicted_label": pa.array([labels[i] for i in best], pa.string()),
        "probability": pa.array(
            probabilities.max(axis=1) if len(probabilities) else [], pa.float32()
        ),
    }
    for c, label in enumerate(labels):
        columns[f"prob_{label}"] = pa.array(probabilities[:, c], pa.float32())
    return columns


def _provenance(
    n: int, model_name: str, model_version: str, recipe_id: str, run_id: str
) -> dict[str, pa.Array]:
    now = dt.datetime.now(dt.UTC)
    return {
        "model_name": pa.array([model_name] * n, pa.string()),
        "model_version": pa.array([model_version] * n, pa.string()),
        "recipe_id": pa.array([recipe_id] * n, pa.string()),
        "run_id": pa.array([run_id] * n, pa.string()),
        "predicted_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
    }


def write_predictions(table: pa.Table, store: Store, key: str) -> None:
    store.put(key, lambda out: pq.write_table(table, out, compression="zstd"))


def frames_key(predictions: str) -> str:
    """Where the per-frame table of a predictions file goes: `<stem>.frames.parquet` beside it."""
    return predictions.removesuffix(".parquet") + FRAMES_SUFFIX


def target_of(out: str, retry_s: float = 120.0) -> tuple[Store, str]:
    """A file path or `s3://bucket/.../name.parquet` as the store of its folder and its key there:
    the user's `--out`, written and checked for earlier predictions like the outputs store."""
    if is_remote(out):
        folder, _, name = out.rpartition("/")
        return open_store(folder, retry_s), name
    path = Path(out)
    return open_store(path.parent, retry_s), path.name


def already_predicted(store: Store, folder: str, model_name: str, model_version: str) -> set[str]:
    """Content hashes that the predictions files directly in `folder` of `store` hold for this
    model version (a re-run skips them).

    Only the three key columns are read (on S3, by ranged reads), filtered by the Parquet
    reader; objects that are not predictions tables (no such columns) are ignored.
    """
    found: set[str] = set()
    for key in _parquet_in(store, folder):
        if key.endswith(FRAMES_SUFFIX):
            # written before its predictions file: alone, it does not mean a series was predicted
            continue
        try:
            with store.open(key) as handle:
                table = pq.read_table(
                    handle,
                    columns=["content_hash", "model_name", "model_version"],
                    filters=[
                        ("model_name", "=", model_name),
                        ("model_version", "=", model_version),
                    ],
                )
        except (pa.ArrowInvalid, KeyError, FileNotFoundError):
            continue  # not a predictions table, or removed since it was listed
        found.update(table["content_hash"].to_pylist())
    return found


def _parquet_in(store: Store, folder: str) -> list[str]:
    """Keys of the `.parquet` objects directly in `folder`, by name. A local folder is read by
    its entries only: a user's `--out` folder may be their home directory, not walked whole."""
    prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
    local = store.local_path(folder)
    if local is not None:
        names = [p.name for p in local.glob("*.parquet") if p.is_file()] if local.is_dir() else []
    else:
        names = [
            info.key[len(prefix) :]
            for info in store.list(folder)
            if "/" not in info.key[len(prefix) :]
        ]
    return sorted(prefix + n for n in names if n.endswith(".parquet") and not n.startswith("."))
