"""Flow `infer`: pin the model version, extract with its recipe, predict per shard, write
Parquet."""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import flow

from lstmpipe.flows.extract import discover_and_extract
from lstmpipe.flows.runtime import load_runtime, run_id_of
from lstmpipe.lib.inference.predictions import PREFIX, already_predicted, frames_key, target_of
from lstmpipe.lib.ops.results import InferRun
from lstmpipe.lib.ops.summary import quiet
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
    `force`). A source holding no series is a quiet night: nothing predicted, said so.

    `per_frame` also writes <stem>.frames.parquet: per-frame class scores and per-timestep states.
    """
    rt = load_runtime(config_file, overrides)
    run_id = run_id_of(run_id)
    pinned = resolve_model(rt.tracking_uri, model)  # once per run: the alias may move meanwhile
    name, version = pinned.ref.name, pinned.ref.version
    # where this run's rows would go: the outputs store's predictions/ (a folder under home, or
    # the bucket in team mode), and the folder of --out
    outputs = rt.state.outputs_store()
    places = [(outputs, PREFIX), *([(target_of(out, rt.state.retry_s)[0], "")] if out else [])]
    done = (
        frozenset()
        if force
        else frozenset(
            h for store, folder in places for h in already_predicted(store, folder, name, version)
        )
    )
    refs, _, extraction = discover_and_extract(
        rt, source, None, run_id, recipe=pinned.recipe, skip_hashes=done, quiet_night=True
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
    target = out or outputs.uri(f"{PREFIX}/{name}-v{version}-{stamp}.parquet")
    predictions = write_predictions_file(rows, frames, target, rt.state.retry_s) if rows else None
    # beside the Parquet: <stem>.clinical.csv for DICOM/NIfTI series, <stem>.geojson for GeoTIFF
    # stacks
    written = (
        write_domain_outputs(
            predictions, ready, pinned.recipe, rt.config.sampling, rt.tmp_dir, rt.state.retry_s
        )
        if predictions
        else {}
    )
    if frames and predictions:
        written = written | {"frames": frames_key(predictions)}
    return InferRun(
        extraction, name, version, predictions, written, len(rows), quiet(source, extraction)
    )
