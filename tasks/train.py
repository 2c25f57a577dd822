"""Prefect task: train on cached features, log to MLflow, register a new version."""

from __future__ import annotations

from prefect import task
from tqdm import tqdm

from lstmpipe.lib.config import Config
from lstmpipe.lib.features.cache import FeatureCache
from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.features.weights import default_device
from lstmpipe.lib.ops.results import TrainResult
from lstmpipe.lib.registry import mlflow_store as registry
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.state.places import StatePlaces
from lstmpipe.lib.training.experiment import candidates, run_experiment
from lstmpipe.tasks.retry import transient_only


@task(name="train-model", tags=["train", "gpu"], retries=1, retry_condition_fn=transient_only)
def train_model(
    refs: list[SeriesRef],
    recipe: FeatureRecipe,
    model_name: str,
    config: Config,
    state: StatePlaces,
    tracking_uri: str,
    artifact_root: str | None,
    tags: dict[str, str],
) -> TrainResult:
    """Fit LSTM + baseline on the labelled, cached series of `refs`; register the LSTM."""
    device = default_device()
    epochs = sum(c.epochs for c in candidates(config.train).values())  # at most: early stopping
    with tqdm(total=epochs, desc="train", unit="epoch", leave=False) as bar:
        outcome = run_experiment(
            FeatureCache.at(state),
            recipe,
            refs,
            config.train,
            on_epoch=lambda _: bar.update(),
            device=device,
        )
    client = registry.connect(tracking_uri)
    # the settings that trained the registered LSTM: train.select may have replaced some
    params = {f"train.{k}": v for k, v in outcome.config.__dict__.items()} | {
        "device": device,
        "train.selected": outcome.selected,
    }
    ref = registry.log_training(
        client,
        outcome,
        model_name,
        params,
        artifact_root,
        tags,
        content_hashes={r.series_id: r.content_hash for r in refs},
    )
    return TrainResult.of(ref, outcome)
