"""Flow `tune`: make sure features are cached, search the LSTM's hyperparameters on Ray Tune,
register the best."""

from __future__ import annotations

from typing import Any

from prefect import flow

from lstmpipe.flows.extract import discover_and_extract
from lstmpipe.flows.runtime import load_runtime, run_id_of
from lstmpipe.lib.ops.results import TuneRun
from lstmpipe.tasks.tune import tune_model


@flow(name="tune")
def tune(
    source: str,
    model: str,
    labels: str | None = None,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    run_id: str | None = None,
    trials: int = 8,
    grace_period: int = 3,
    gpus_per_trial: float = 0.0,
) -> TuneRun:
    """`trials` hyperparameter sets, ASHA-stopped on validation macro-F1 after `grace_period`
    epochs at the earliest; each trial an MLflow child run of one search run; the best retrained
    and registered as `model`."""
    rt = load_runtime(config_file, overrides)
    run_id = run_id_of(run_id)
    refs, recipe, extraction = discover_and_extract(rt, source, labels, run_id)
    searched = tune_model(
        extraction.usable(refs),
        recipe,
        model,
        rt.config,
        rt.state,
        rt.tracking_uri,
        rt.artifact_root,
        rt.ray_address,
        str(rt.home / "tune"),
        {"lstmpipe.run_id": run_id, "lstmpipe.source": source},
        trials=trials,
        grace_period=grace_period,
        gpus_per_trial=gpus_per_trial,
    )
    return TuneRun(extraction, searched)
