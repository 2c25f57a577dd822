"""Prefect tasks for batch inference: resolve the alias once, predict per shard, write once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from prefect import task

from lstmpipe.lib.config import SamplingConfig
from lstmpipe.lib.features.cache import FeatureCache
from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.inference.outputs import outputs_beside
from lstmpipe.lib.inference.predictions import frames_key, target_of, write_predictions
from lstmpipe.lib.inference.predictor import Predictor
from lstmpipe.lib.registry import mlflow_store as registry
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.state.places import StatePlaces
from lstmpipe.tasks.retry import transient_only


@dataclass(frozen=True)
class PinnedModel:
    """The version a run predicts with, and the feature recipe it was trained on."""

    ref: registry.ModelRef
    recipe: FeatureRecipe


@dataclass(frozen=True)
class ShardPredictions:
    """One shard's prediction rows (a few numbers per series; columns per class) and, if asked,
    its per-frame table."""

    rows: list[dict[str, Any]]
    frames: pa.Table | None


@task(name="resolve-model", retries=2, retry_condition_fn=transient_only)
def resolve_model(tracking_uri: str, model_uri: str) -> PinnedModel:
    """Pin `models:/NAME@alias` to one version for the whole run; return it with its recipe."""
    client = registry.connect(tracking_uri)
    ref = registry.resolve(client, model_uri)
    return PinnedModel(ref, registry.recipe_of(ref))


@task(name="predict-shard", tags=["infer"], retries=2, retry_condition_fn=transient_only)
def predict_shard(
    refs: list[SeriesRef],
    model: PinnedModel,
    tracking_uri: str,
    state: StatePlaces,
    run_id: str,
    per_frame: bool = False,
) -> ShardPredictions:
    """Prediction rows for one shard, and its per-frame table if asked."""
    registry.connect(tracking_uri)
    predictor = Predictor(
        registry.load_bundle(model.ref), model.ref, FeatureCache.at(state), run_id
    )
    return ShardPredictions(
        predictor(refs).to_pylist(), predictor.per_frame(refs) if per_frame else None
    )


@task(name="write-predictions", retries=2, retry_condition_fn=transient_only)
def write_predictions_file(
    rows: list[dict], frames: list[pa.Table], out: str, retry_s: float
) -> str:
    """The per-frame table first (when there is one), then the predictions: a predictions file
    written means its series are done, which is what a re-run checks. `out` is a path or an
    s3:// URL; the URI written is returned."""
    store, key = target_of(out, retry_s)
    if frames:
        write_predictions(pa.concat_tables(frames), store, frames_key(key))
    write_predictions(pa.Table.from_pylist(rows), store, key)
    return store.uri(key)


@task(name="write-domain-outputs", retries=2, retry_condition_fn=transient_only)
def write_domain_outputs(
    predictions: str,
    refs: list[SeriesRef],
    recipe: FeatureRecipe,
    sampling: SamplingConfig,
    tmp_dir: str,
    retry_s: float,
) -> dict[str, str]:
    """The clinical CSV and the GeoJSON beside the predictions (a path or an s3:// URL), for the
    series of those domains: kind -> URI.

    Series are described with the model's recipe, so a stack's dates are the ones the model saw.
    """
    store, key = target_of(predictions, retry_s)
    return outputs_beside(
        store,
        key,
        refs,
        recipe.sampling(sampling),
        Path(tmp_dir),
        recipe.sources_config(),
    )
