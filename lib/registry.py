"""Everything that talks to MLflow: logging a training run, registering, aliases, loading.

The model is logged as a pyfunc that rebuilds the network from its ModelBundle
files (config + state_dict, weights_only=True): any sequence length loads, unlike
an exported graph that bakes in the example's shapes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Schema, TensorSpec
from mlflow.types.type_hints import TypeFromExample

from lib.bundle import ModelBundle
from lib.experiment import Outcome
from lib.plots import confusion_matrix_png, learning_curves_png
from lib.recipe import FeatureRecipe

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class ModelRef:
    """A registered model version, resolved once so a run never sees the alias move."""

    name: str
    version: str
    run_id: str


class SequenceModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: {"features": (B, T, F) float32, "lengths": (B,) int64} -> (B, C) probabilities."""

    def load_context(self, context: Any) -> None:
        self.bundle = ModelBundle.load(Path(context.artifacts["bundle"]))

    # TypeFromExample: the input's type is the logged example's (a dict of arrays), which
    # MLflow's list-only type hints cannot spell; the explicit signature validates it.
    def predict(self, context: Any, model_input: TypeFromExample, params: dict | None = None) -> np.ndarray:
        features, lengths = model_input["features"], model_input["lengths"]
        return self.bundle.predict([f[:n] for f, n in zip(features, lengths)]).astype(np.float32)


_EXPORTED = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def connect(tracking_uri: str) -> MlflowClient:
    """Point MLflow's global state and a client at one store (tracking and registry).

    MLflow also exports the URIs to os.environ, where a later run in this process (with
    another state directory) would take them for the user's own setting: put those back.
    """
    before = {name: os.environ.get(name) for name in _EXPORTED}
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def experiment_id(client: MlflowClient, name: str, artifact_root: str | None) -> str:
    """The experiment's id, created with artifacts under `artifact_root` when given (local stores)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        folder = re.sub(r"[^\w.-]", "_", name)
        location = f"{artifact_root.rstrip('/')}/{folder}" if artifact_root else None
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by a concurrent run
        return client.get_experiment_by_name(name).experiment_id


def log_model(bundle: ModelBundle, model_name: str) -> ModelRef:
    """Log `bundle` as a pyfunc in the active run and register it as a new version of `model_name`."""
    dim = bundle.spec.input_dim
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, dim), "features"),
                       TensorSpec(np.dtype(np.int64), (-1,), "lengths")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(bundle.labels)), "probabilities")]),
    )
    example = {"features": np.zeros((1, 3, dim), np.float32), "lengths": np.array([3], np.int64)}
    with tempfile.TemporaryDirectory() as tmp:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
            artifacts={"bundle": str(bundle.save(Path(tmp) / "bundle"))},
            signature=signature,
            input_example=example,
            # Listed, not inferred: inference re-imports the model and takes seconds.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "lstmpipe"],
            registered_model_name=model_name,
        )
    run_id = mlflow.active_run().info.run_id
    return ModelRef(model_name, str(info.registered_model_version), run_id)


def tag_version(client: MlflowClient, ref: ModelRef, tags: dict[str, Any]) -> None:
    for key, value in tags.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        client.set_model_version_tag(ref.name, ref.version, key, text)


def resolve(client: MlflowClient, uri: str) -> ModelRef:
    """`models:/NAME@alias` or `models:/NAME/3` (or a bare NAME = @champion) -> a pinned version."""
    match = _MODEL_URI.match(uri if uri.startswith("models:/") else f"models:/{uri}@champion")
    if not match:
        raise ValueError(f"model {uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    name = match["name"]
    try:
        if match["alias"]:
            version = client.get_model_version_by_alias(name, match["alias"])
        else:
            version = client.get_model_version(name, match["version"])
    except MlflowException as exc:
        raise LookupError(f"model {uri}: not in the registry ({exc.message})") from exc
    return ModelRef(name, str(version.version), version.run_id)


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelRef | None:
    """The version `alias` points at, or None when the alias (or the model) does not exist."""
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return ModelRef(name, str(version.version), version.run_id)


def version_tags(client: MlflowClient, ref: ModelRef) -> dict[str, str]:
    return dict(client.get_model_version(ref.name, ref.version).tags)


def load_bundle(ref: ModelRef) -> ModelBundle:
    """Load through the pyfunc flavour, exactly as a consumer of the registry would."""
    model = mlflow.pyfunc.load_model(f"models:/{ref.name}/{ref.version}")
    return model.unwrap_python_model().bundle


def recipe_of(ref: ModelRef) -> FeatureRecipe:
    """The feature recipe a version was trained with, from its run's artifacts: no model is loaded."""
    return FeatureRecipe.from_dict(load_run_json(ref.run_id, "recipe.json"))


def load_run_json(run_id: str, artifact: str) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=tmp)
        return json.loads(Path(path).read_text())


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def log_training(client: MlflowClient, outcome: Outcome, model_name: str, params: dict[str, Any],
                 artifact_root: str | None, tags: dict[str, str]) -> ModelRef:
    """One MLflow run: params, per-epoch curves, final metrics of LSTM and baseline, plots, model."""
    mlflow.set_experiment(experiment_id=experiment_id(client, f"lstmpipe/{model_name}", artifact_root))
    with mlflow.start_run(tags=tags) as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params({**params, "recipe_id": outcome.bundle.recipe.recipe_id, "split_hash": outcome.split_hash,
                           **{f"n_{name}": len(ids) for name, ids in outcome.splits.items()}})
        for row in outcome.fit.history:
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        mlflow.log_metrics(_flat("", outcome.metrics) | _flat("baseline_", outcome.baseline_metrics))
        out = Path(tmp)
        test = outcome.metrics.get("test") or outcome.metrics["val"]
        confusion_matrix_png(np.array(test["confusion"]), outcome.bundle.labels, out / "confusion_matrix.png")
        learning_curves_png(outcome.fit.history, out / "learning_curves.png", outcome.fit.best_epoch)
        (out / "eval_set.json").write_text(json.dumps(outcome.eval_set, indent=1))
        (out / "splits.json").write_text(json.dumps(outcome.splits, indent=1))
        (out / "metrics.json").write_text(json.dumps({"lstm": outcome.metrics, "baseline": outcome.baseline_metrics},
                                                     indent=1, default=float))
        (out / "recipe.json").write_text(json.dumps(outcome.bundle.recipe.to_dict(), indent=1, sort_keys=True))
        mlflow.log_artifacts(str(out))
        ref = log_model(outcome.bundle, model_name)
    tag_version(client, ref, {
        "recipe_id": outcome.bundle.recipe.recipe_id,
        "labels": outcome.bundle.labels,
        "split_hash": outcome.split_hash,
        "eval_set": "eval_set.json",
        "test_macro_f1": f"{test['macro_f1']:.4f}",
        **tags,
    })
    return ModelRef(ref.name, ref.version, run.info.run_id)


def _flat(prefix: str, metrics: dict[str, dict[str, Any]]) -> dict[str, float]:
    """{"test": {"accuracy": .9, "recall/grow": 1.0}} -> {"test_accuracy": .9, "test_recall_grow": 1.0}."""
    return {
        f"{prefix}{split}_{key.replace('/', '_')}": float(value)
        for split, values in metrics.items()
        for key, value in values.items()
        if isinstance(value, (int, float))
    }
