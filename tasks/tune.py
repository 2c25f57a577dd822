"""Prefect task: a hyperparameter search on Ray Tune over cached features; the best trial
registered.

The data is read once (lib/tune.prepare) and reaches every trial through Ray's object
store (tune.with_parameters), never re-read per trial. Each trial is one CPU and one
torch thread (tiny LSTMs gain nothing from more, and a CPU per trial bounds the
concurrency), reports every epoch to ASHA, which stops the weak ones at its rungs.
MLflow is written only from this driver process, by a Tune callback, so trials
never contend for the tracking store (SQLite allows one writer at a time).
"""

from __future__ import annotations

import warnings
from typing import Any

import ray
import torch
from prefect import task
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from tqdm import tqdm

from lstmpipe.lib.config import Config, TrainConfig
from lstmpipe.lib.features.cache import FeatureCache
from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.ops.results import TuneResult
from lstmpipe.lib.registry import mlflow_store as registry
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.state.places import StatePlaces
from lstmpipe.lib.training.experiment import run_experiment
from lstmpipe.lib.training.tune import (
    METRIC,
    SearchData,
    SearchSpace,
    TrialRecord,
    pick_best,
    prepare,
    sample_trials,
    train_trial,
    trial_config,
)
from lstmpipe.tasks.ray_workers import ensure_ray


def run_trial(
    params: dict[str, Any], data: SearchData, trials: list[dict[str, Any]], base: TrainConfig
) -> None:
    """One Tune trial: the `index`-th hyperparameter set, reporting each epoch to Tune."""
    torch.set_num_threads(1)
    device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
    with warnings.catch_warnings():
        # The object store hands out read-only arrays; training only reads them, so no copy is made.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        train_trial(data, trial_config(base, trials[params["index"]]), tune.report, device=device)


class MlflowTrials(tune.Callback):
    """Driver side: a child run per trial under the search's parent run, every epoch logged as it
    arrives."""

    def __init__(
        self,
        tracking_uri: str,
        parent_run_id: str,
        trials: list[dict[str, Any]],
        max_epochs: int,
        bar: tqdm,
    ) -> None:
        self.tracking_uri, self.parent_run_id, self.trials, self.bar = (
            tracking_uri,
            parent_run_id,
            trials,
            bar,
        )
        self.max_epochs = max_epochs
        self.stopped: set[str] = set()  # trials the scheduler cut short
        self.runs: dict[str, str] = {}  # Tune trial id -> MLflow run id
        self.rows: dict[str, list[dict[str, float]]] = {}
        self.records: dict[str, TrialRecord] = {}

    # Tune may pickle its run config; the client and the bar stay here
    def __getstate__(self) -> dict:
        return {}

    @property
    def client(self):
        return registry.connect(self.tracking_uri)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        index = trial.config["index"]
        self.rows[trial.trial_id] = []
        self.runs[trial.trial_id] = registry.start_trial(
            self.client, self.parent_run_id, trial.trial_id, index, self.trials[index]
        )

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        row = {
            key: result[key]
            for key in ("epoch", "train_loss", "val_loss", "val_accuracy", METRIC, "lr")
            if key in result
        }
        self.rows[trial.trial_id].append(row)
        registry.log_trial_epoch(self.client, self.runs[trial.trial_id], row)
        # Tune marks the result a STOP decision was taken on as done before calling back; a trial
        # that returns by itself (its own early stopping) never has a done result here. ASHA also
        # stops every trial at max_t, which is running to the end, not being cut.
        if result.get("done") and row["epoch"] < self.max_epochs:
            self.stopped.add(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "stopped" if trial.trial_id in self.stopped else "completed")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "error")

    def _end(self, trial: Any, status: str) -> None:
        index = trial.config["index"]
        record = TrialRecord(
            trial.trial_id, index, self.trials[index], self.rows.get(trial.trial_id, []), status
        )
        self.records[trial.trial_id] = record
        if trial.trial_id in self.runs:
            registry.end_trial(self.client, self.runs[trial.trial_id], record)
        self.bar.update()


# no retries: a search is long, and a rerun is a new search
@task(name="tune-model", tags=["tune", "gpu"])
def tune_model(
    refs: list[SeriesRef],
    recipe: FeatureRecipe,
    model_name: str,
    config: Config,
    state: StatePlaces,
    tracking_uri: str,
    artifact_root: str | None,
    ray_address: str | None,
    storage_dir: str,
    tags: dict[str, str],
    trials: int = 8,
    space: SearchSpace | None = None,
    grace_period: int = 3,
    reduction_factor: int = 2,
    gpus_per_trial: float = 0.0,
) -> TuneResult:
    """Search `trials` hyperparameter sets with ASHA, each an MLflow child run; retrain and
    register the best."""
    space = space or SearchSpace()
    cache = FeatureCache.at(state)
    data = prepare(cache, recipe.recipe_id, recipe.feature_dim, refs, config.train)
    hps = sample_trials(config.train, space, trials, config.train.seed)
    ensure_ray(ray_address or "local")
    client = registry.connect(tracking_uri)
    parent = registry.start_search(
        client,
        model_name,
        artifact_root,
        {
            "trials": len(hps),
            "space": space.__dict__,
            "scheduler": "asha",
            "metric": METRIC,
            "grace_period": grace_period,
            "reduction_factor": reduction_factor,
            "max_epochs": config.train.epochs,
            "recipe_id": recipe.recipe_id,
            "split_hash": data.split_hash,
            **{f"n_{name}": len(ids) for name, ids in data.splits.items()},
            **{f"train.{k}": v for k, v in config.train.__dict__.items()},
        },
        tags,
    )
    best, ref, failed = None, None, True
    with tqdm(total=len(hps), desc="tune", unit="trial", leave=False) as bar:
        callback = MlflowTrials(tracking_uri, parent, hps, config.train.epochs, bar)
        try:
            cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
            tuner = tune.Tuner(
                tune.with_resources(
                    tune.with_parameters(run_trial, data=data, trials=hps, base=config.train),
                    {"cpu": 1, "gpu": gpus_per_trial},
                ),
                param_space={"index": tune.grid_search(list(range(len(hps))))},
                tune_config=tune.TuneConfig(
                    metric=METRIC,
                    mode="max",
                    max_concurrent_trials=cpus,
                    scheduler=ASHAScheduler(
                        time_attr="epoch",
                        max_t=config.train.epochs,
                        grace_period=min(grace_period, config.train.epochs),
                        reduction_factor=reduction_factor,
                    ),
                ),
                run_config=tune.RunConfig(
                    name=f"{model_name}-{parent[:12]}",
                    storage_path=storage_dir,
                    callbacks=[callback],
                    verbose=0,
                ),
            )
            tuner.fit()
            best = pick_best(list(callback.records.values()))
            device = "cuda" if torch.cuda.is_available() else "cpu"
            outcome = run_experiment(
                cache, recipe, refs, trial_config(config.train, best.hp), device=device
            )
            params = {
                f"train.{k}": v for k, v in trial_config(config.train, best.hp).__dict__.items()
            }
            ref = registry.log_training(
                client,
                outcome,
                model_name,
                params | {"device": device},
                artifact_root,
                {
                    **tags,
                    "lstmpipe.tune.parent_run_id": parent,
                    "lstmpipe.tune.trial_id": best.trial_id,
                },
                parent_run_id=parent,
                content_hashes={r.series_id: r.content_hash for r in refs},
            )
            searched = TuneResult.of(ref, parent, best, list(callback.records.values()), outcome)
            failed = False
        finally:
            registry.end_search(client, parent, list(callback.records.values()), best, ref, failed)
    return searched
