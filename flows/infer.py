"""Flow `infer`: pin the model version, extract with its recipe, predict per shard, write
Parquet."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from prefect import flow

from lstmpipe.flows.extract import discover_and_extract
from lstmpipe.flows.runtime import load_runtime, run_id_of
from lstmpipe.lib.inference.predictions import already_predicted, frames_path
from lstmpipe.lib.ops.results import InferRun
from lstmpipe.tasks.infer import (
    predict_shard,
    resolve_model,
    write_domain_outputs,
    write_predictions_file,
)


@flow(name="infer")
def infer(
    source: str,
    model: str,
    out: str | None = None,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    run_id: str | None = None,
    force: bool = False,
    per_frame: bool = False,
) -> InferRun:
    """Predict the series of `source` not yet predicted by the pinned version (all of them with
    `force`).

    `per_frame` also writes <stem>.frames.parquet: per-frame class scores and per-timestep states.
    """
    rt = load_runtime(config_file, overrides)
    run_id = run_id_of(run_id)
    pinned = resolve_model(rt.tracking_uri, model)  # once per run: the alias may move meanwhile
    name, version = pinned.ref.name, pinned.ref.version
    # where this run's rows would go
    folders = {rt.predictions_dir, *([Path(out).parent] if out else [])}
    done = (
        frozenset()
        if force
        else frozenset(h for f in folders for h in already_predicted(f, name, version))
    )
    refs, _, extraction = discover_and_extract(
        rt, source, None, run_id, recipe=pinned.recipe, skip_hashes=done
    )
    ready = extraction.usable(refs)
    size = rt.config.runtime.shard_size
    shards = [
        predict_shard(
            ready[start : start + size], pinned, rt.tracking_uri, rt.state, run_id, per_frame
        )
        for start in range(0, len(ready), size)
    ]
    rows = [row for shard in shards for row in shard.rows]
    frames = [shard.frames for shard in shards if shard.frames is not None]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = out or str(rt.predictions_dir / f"{name}-v{version}-{stamp}.parquet")
    predictions = write_predictions_file(rows, frames, target) if rows else None
    # beside the Parquet: <stem>.clinical.csv for DICOM/NIfTI series, <stem>.geojson for GeoTIFF
    # stacks
    outputs = (
        write_domain_outputs(predictions, ready, pinned.recipe, rt.config.sampling, rt.tmp_dir)
        if predictions
        else {}
    )
    if frames and predictions:
        outputs = outputs | {"frames": str(frames_path(Path(predictions)))}
    return InferRun(extraction, name, version, predictions, outputs, len(rows))
