"""Flow `infer`: pin the model version, extract with its recipe, predict per shard, write Parquet."""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import flow

from flows.extract import discover_and_extract
from flows.runtime import load_runtime, run_id_of
from lib.summary import usable
from tasks.infer import (
    predict_shard,
    resolve_model,
    write_domain_outputs,
    write_predictions_file,
)


@flow(name="infer")
def infer(source: str, model: str, out: str | None = None, config_file: str | None = None,
          overrides: dict[str, Any] | None = None, run_id: str | None = None) -> dict[str, Any]:
    rt = load_runtime(config_file, overrides)
    run_id = run_id_of(run_id)
    pinned = resolve_model(rt.tracking_uri, model)  # once per run: the alias may move meanwhile
    refs, _, extraction = discover_and_extract(rt, source, None, run_id, recipe=pinned["recipe"])
    ready = usable(refs, extraction)
    size = rt.config.runtime.shard_size
    rows = [row for start in range(0, len(ready), size)
            for row in predict_shard(ready[start:start + size], pinned, rt.tracking_uri, rt.cache_root, run_id)]
    name, version = pinned["ref"]["name"], pinned["ref"]["version"]
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = out or str(rt.predictions_dir / f"{name}-v{version}-{stamp}.parquet")
    predictions = write_predictions_file(rows, target) if rows else None
    # beside the Parquet: <stem>.clinical.csv for DICOM/NIfTI series, <stem>.geojson for GeoTIFF stacks
    outputs = write_domain_outputs(predictions, ready, pinned["recipe"], rt.config.sampling,
                                   rt.tmp_dir) if predictions else {}
    return {
        "extract": extraction,
        "model": name,
        "version": version,
        "predictions": predictions,
        "outputs": outputs,
        "predicted": len(rows),
        "failed": extraction["failed"],
    }
