"""Prefect tasks for batch inference: resolve the alias once, predict per shard, write once."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from prefect import task

from lstmpipe.lib.atomic import write_parquet_atomic
from lstmpipe.lib.config import SamplingConfig
from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.inference.outputs import outputs_beside
from lstmpipe.lib.inference.predictions import frames_path, write_predictions
from lstmpipe.lib.inference.predictor import Predictor
from lstmpipe.lib.registry import mlflow_store as registry
from lstmpipe.lib.series import SeriesRef
from lstmpipe.tasks.retry import transient_only


@task(name="resolve-model", retries=2, retry_condition_fn=transient_only)
def resolve_model(tracking_uri: str, model_uri: str) -> dict:
    """Pin `models:/NAME@alias` to one version for the whole run; return it with its recipe."""
    client = registry.connect(tracking_uri)
    ref = registry.resolve(client, model_uri)
    return {"ref": ref.__dict__, "recipe": registry.recipe_of(ref).to_dict()}


@task(name="predict-shard", tags=["infer"], retries=2, retry_condition_fn=transient_only)
def predict_shard(
    refs: list[dict],
    model: dict,
    tracking_uri: str,
    cache_root: str,
    run_id: str,
    per_frame: bool = False,
) -> dict:
    """Prediction rows for one shard (small: a few numbers per series), and its per-frame table if asked."""
    registry.connect(tracking_uri)
    ref = registry.ModelRef(**model["ref"])
    predictor = Predictor(registry.load_bundle(ref), ref, Path(cache_root), run_id)
    series = [SeriesRef.from_dict(r) for r in refs]
    return {
        "rows": predictor(series).to_pylist(),
        "frames": predictor.per_frame(series) if per_frame else None,
    }


@task(name="write-predictions", retries=2, retry_condition_fn=transient_only)
def write_predictions_file(rows: list[dict], frames: list[pa.Table], out: str) -> str:
    """The per-frame table first (when there is one), then the predictions: a predictions file
    on disk means its series are done, which is what a re-run checks."""
    if frames:
        write_parquet_atomic(pa.concat_tables(frames), frames_path(Path(out)))
    return str(write_predictions(pa.Table.from_pylist(rows), Path(out)))


@task(name="write-domain-outputs", retries=2, retry_condition_fn=transient_only)
def write_domain_outputs(
    predictions: str, refs: list[dict], recipe: dict, sampling: SamplingConfig, tmp_dir: str
) -> dict[str, str]:
    """The clinical CSV and the GeoJSON beside the predictions, for the series of those domains.

    Series are described with the model's recipe, so a stack's dates are the ones the model saw.
    """
    wanted = FeatureRecipe.from_dict(recipe)
    return outputs_beside(
        Path(predictions),
        [SeriesRef.from_dict(r) for r in refs],
        wanted.sampling(sampling),
        Path(tmp_dir),
        wanted.sources_config(),
    )
