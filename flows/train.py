"""Flow `train`: make sure features are cached, train LSTM + baseline, register a new version."""

from __future__ import annotations

from typing import Any

from prefect import flow

from lstmpipe.flows.extract import discover_and_extract
from lstmpipe.flows.report import report_of_run
from lstmpipe.flows.runtime import load_runtime, run_id_of
from lstmpipe.lib.ops.results import TrainRun
from lstmpipe.tasks.train import train_model


@flow(name="train")
def train(
    source: str,
    model: str,
    labels: str | None = None,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> TrainRun:
    rt = load_runtime(config_file, overrides)
    run_id = run_id_of(run_id)
    refs, recipe, extraction = discover_and_extract(rt, source, labels, run_id)
    trained = train_model(
        extraction.usable(refs),
        recipe,
        model,
        rt.config,
        rt.state,
        rt.tracking_uri,
        rt.artifact_root,
        {"lstmpipe.run_id": run_id, "lstmpipe.source": source},
    )
    return TrainRun(extraction, trained, report_of_run(rt, trained.run_id))
