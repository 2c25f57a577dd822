"""Everything that talks to MLflow: logging a training run, registering, aliases, loading.

The model is logged as a pyfunc (pyfunc_entry.py) that rebuilds the network from its bundle
files (spec + state_dict, weights_only=True): any sequence length loads, unlike an exported
graph that bakes in the example's shapes. Each version carries the lstmpipe code that entry
imports and pins torch, numpy and mlflow, so it loads where lstmpipe is not installed: that
is for MLflow's users. lstmpipe itself loads a version as data (load_bundle), never its code.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.artifacts import download_artifacts
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Schema, TensorSpec

from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.registry import modelcard
from lstmpipe.lib.registry.carried_code import ENTRY, code_tree, requirements
from lstmpipe.lib.training.bundle import ModelBundle
from lstmpipe.lib.training.bundle_files import (
    JSON_FILES,
    MAX_JSON_BYTES,
    WEIGHTS,
    read_bundle,
    read_spec,
    weights_limit,
)
from lstmpipe.lib.training.experiment import Outcome
from lstmpipe.lib.training.metrics import PER_CLASS, per_class_report
from lstmpipe.lib.training.plots import confusion_matrix_png, learning_curves_png
from lstmpipe.lib.training.tune import TrialRecord

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class ModelRef:
    """A registered model version, resolved once so a run never sees the alias move."""

    name: str
    version: str
    run_id: str


_EXPORTED = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def connect(tracking_uri: str) -> MlflowClient:
    """Point MLflow's global state and a client at one store (tracking and registry).

    MLflow also exports the URIs to os.environ, where a later run in this process (with
    another state directory) would take them for the user's own setting: put those back.
    """
    _create_sqlite_store(tracking_uri)
    before = {name: os.environ.get(name) for name in _EXPORTED}
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _create_sqlite_store(tracking_uri: str) -> None:
    """Create a local SQLite store whole, or not at all.

    MLflow builds a new store's tables with migrations, and SQLite commits each CREATE TABLE
    at once: a process killed half-way left a store that no later run could open ("table
    secrets already exists"). The tables are built in a file of this process's own, which
    is then linked into place; link refuses to replace a store a concurrent run made first.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    if path.exists():
        return
    building = path.with_name(f".{path.name}.{os.getpid()}.building")
    building.unlink(missing_ok=True)
    try:
        store = SqlAlchemyStore(f"sqlite:///{building}", (path.parent / "mlartifacts").as_uri())
        store.engine.dispose()
        os.link(building, path)
    except FileExistsError:
        pass
    finally:
        building.unlink(missing_ok=True)


def experiment_id(client: MlflowClient, name: str, artifact_root: str | None) -> str:
    """The experiment's id, created with artifacts under `artifact_root` if given (local stores)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        folder = re.sub(r"[^\w.-]", "_", name)
        location = f"{artifact_root.rstrip('/')}/{folder}" if artifact_root else None
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        created = client.get_experiment_by_name(name)  # meanwhile, by a concurrent run
        if created is None:
            raise
        return created.experiment_id


def log_model(bundle: ModelBundle, model_name: str, tags: dict[str, Any] | None = None) -> ModelRef:
    """Log `bundle` as a pyfunc in the active run, then register it as a version of `model_name`.

    The version is created with its `tags` in one registry call (one transaction on the server),
    after every file of the model is stored: a failure or a kill at any point leaves no version,
    or a complete one.
    """
    dim = bundle.spec.input_dim
    signature = ModelSignature(
        inputs=Schema(
            [
                TensorSpec(np.dtype(np.float32), (-1, -1, dim), "features"),
                TensorSpec(np.dtype(np.int64), (-1,), "lengths"),
            ]
        ),
        outputs=Schema(
            [TensorSpec(np.dtype(np.float32), (-1, len(bundle.labels)), "probabilities")]
        ),
    )
    example = {"features": np.zeros((1, 3, dim), np.float32), "lengths": np.array([3], np.int64)}
    with tempfile.TemporaryDirectory() as tmp, _without_dict_example_warning():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(ENTRY),
            artifacts={"bundle": str(bundle.save(Path(tmp) / "bundle"))},
            code_paths=[str(code_tree(Path(tmp) / "code"))],
            signature=signature,
            input_example=example,
            # Listed, not inferred: inference re-imports the model and takes seconds.
            pip_requirements=requirements(),
        )
    version = mlflow.register_model(
        info.model_uri, model_name, tags={k: _text(v) for k, v in (tags or {}).items()}
    )
    return ModelRef(model_name, str(version.version), str(info.run_id))


class _DictExampleWarning(logging.Filter):
    """Drops MLflow 3.17's "Input example must be one of pandas.DataFrame, pandas.Series or list
    when using TypeFromExample" record: that check knows only list-like examples, while the
    explicit tensor signature (which validates every call) is built for exactly this dict of
    arrays."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "when using TypeFromExample" not in record.getMessage()


@contextmanager
def _without_dict_example_warning() -> Iterator[None]:
    logger, only = logging.getLogger("mlflow.pyfunc"), _DictExampleWarning()
    logger.addFilter(only)
    try:
        yield
    finally:
        logger.removeFilter(only)


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
        if not _not_found(exc):
            raise  # the server failed to answer (transient): not a verdict on the model
        raise LookupError(f"model {uri}: not in the registry ({exc.message})") from exc
    return ModelRef(name, str(version.version), version.run_id or "")


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelRef | None:
    """The version `alias` points at, or None when the alias (or the model) does not exist.

    Only the registry's "not found" means None: a server that fails to answer (5xx, unreachable)
    raises, or promotion would take an existing champion for none and promote without the gate.
    """
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise
    return ModelRef(name, str(version.version), version.run_id or "")


def _not_found(exc: MlflowException) -> bool:
    """The registry's answer "no such model, version or alias" (an unknown alias is
    INVALID_PARAMETER_VALUE)."""
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


# Written with the version in the one call that creates it (log_model): a version without it was
# registered by something other than lstmpipe's log_training.
COMPLETE_TAG = "recipe_id"


def check_complete(client: MlflowClient, ref: ModelRef) -> None:
    """Raise LookupError naming the version unless it is READY and carries its creation tags."""
    version = client.get_model_version(ref.name, ref.version)
    if version.status != "READY" or COMPLETE_TAG not in version.tags:
        raise LookupError(
            f"model {ref.name} version {ref.version}: half-registered (status {version.status}, "
            f"{'with' if COMPLETE_TAG in version.tags else 'without'} its {COMPLETE_TAG} tag); "
            "it is never promoted: train again to register a complete version"
        )


def filter_value(value: str) -> str:
    """`value` as a string literal of MLflow's search filters, quoted so that it cannot change
    the filter (`name = {filter_value(name)}`).

    The grammar has no escapes (MLflow strips the outer quotes, nothing more), so the value is
    quoted with a quote it does not hold. One holding both quotes, a backslash (the tokenizer
    reads \\' as a quote inside the string) or a control character cannot be written: refused.
    """
    if "\\" in value or not value.isprintable():
        raise ValueError(f"{value!r}: a backslash or control character cannot go in a filter")
    quote = next((q for q in ("'", '"') if q not in value), None)
    if quote is None:
        raise ValueError(f"{value!r}: holds both quote characters; it cannot go in a filter")
    return f"{quote}{value}{quote}"


def version_tags(client: MlflowClient, ref: ModelRef) -> dict[str, str]:
    return dict(client.get_model_version(ref.name, ref.version).tags)


# Where log_model's pyfunc keeps the bundle in a version's artifacts (artifacts={"bundle": ...}).
BUNDLE_PATH = "artifacts/bundle"


def load_bundle(ref: ModelRef) -> ModelBundle:
    """The version as data: its bundle's four files, each size-checked before it is downloaded,
    and the network rebuilt from them (lib/training/bundle_files.py read_bundle).

    Never mlflow.pyfunc.load_model: that imports the Python files stored with the version
    (pyfunc_entry.py, its code_paths), so whoever can register a version or write the artifact
    store would run code in promote and infer. No file from the store is imported or unpickled.
    """
    where = f"model {ref.name} version {ref.version}"
    uri = MlflowClient().get_model_version_download_uri(ref.name, ref.version)
    repository = get_artifact_repository(uri)
    sizes = _bundle_sizes(repository, where)
    with tempfile.TemporaryDirectory() as tmp:
        for name in JSON_FILES:
            _download(repository, name, sizes[name], MAX_JSON_BYTES, Path(tmp), where)
        folder = Path(tmp, BUNDLE_PATH)
        limit = weights_limit(read_spec(folder / "spec.json", where))
        _download(repository, WEIGHTS, sizes[WEIGHTS], limit, Path(tmp), where)
        return ModelBundle.from_stored(read_bundle(folder, where), where)


def _bundle_sizes(repository: ArtifactRepository, where: str) -> dict[str, int | None]:
    """The listed size of each bundle file of a version; a missing one is refused."""
    listed = {
        Path(f.path).name: f.file_size
        for f in repository.list_artifacts(BUNDLE_PATH)
        if not f.is_dir
    }
    missing = [name for name in (*JSON_FILES, WEIGHTS) if name not in listed]
    if missing:
        raise ConfigError(
            f"{where}: {BUNDLE_PATH} lacks {', '.join(missing)}: not a version lstmpipe logged"
        )
    return listed


def _download(
    repository: ArtifactRepository, name: str, size: int | None, limit: int, dst: Path, where: str
) -> None:
    """Download one bundle file to dst/BUNDLE_PATH/name, refused unread when its listed size is
    unknown, zero or over `limit` (read_bundle checks the size again, as it landed)."""
    if size is None or not 0 < size <= limit:
        raise ConfigError(
            f"{where}: {BUNDLE_PATH}/{name} refused before download: "
            f"listed as {size} bytes, the limit is 1 to {limit}"
        )
    repository.download_artifacts(f"{BUNDLE_PATH}/{name}", dst_path=str(dst))


def recipe_of(ref: ModelRef) -> FeatureRecipe:
    """The feature recipe a version was trained with, from its run's artifacts (loads no model)."""
    try:
        return FeatureRecipe.from_dict(load_run_json(ref.run_id, "recipe.json"))
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"model {ref.name} version {ref.version}: its run's recipe.json is not a feature "
            f"recipe ({exc})"
        ) from exc


def load_run_json(run_id: str, artifact: str) -> Any:
    return json.loads(load_run_text(run_id, artifact))


# A run's text artifacts are read whole (eval_set.json lists every evaluation series, ~300 bytes
# each): 128 MiB holds 400 000 of them, and keeps a planted giant from filling memory or disk.
MAX_RUN_TEXT_BYTES = 128 << 20


def load_run_text(run_id: str, artifact: str) -> str:
    """A run's artifact as text, refused before download when listed over MAX_RUN_TEXT_BYTES."""
    folder = artifact.rpartition("/")[0] or None
    listed = {f.path: f.file_size for f in MlflowClient().list_artifacts(run_id, folder)}
    size = listed.get(artifact)
    if size is not None and size > MAX_RUN_TEXT_BYTES:
        raise ConfigError(
            f"run {run_id}: {artifact} refused before download: {size} bytes, over the "
            f"{MAX_RUN_TEXT_BYTES} a run's text artifact may have"
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=tmp)
        return Path(path).read_text()


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def log_training(
    client: MlflowClient,
    outcome: Outcome,
    model_name: str,
    params: dict[str, Any],
    artifact_root: str | None,
    tags: dict[str, str],
    *,
    parent_run_id: str | None = None,
    content_hashes: Mapping[str, str] | None = None,
) -> ModelRef:
    """One MLflow run: params, per-epoch curves, final metrics of LSTM and baseline, plots,
    reports, model.

    `parent_run_id` nests the run under another (a search's); `content_hashes` (series id -> content
    hash) makes the dataset hash cover the bytes of every series, not only their ids.
    """
    mlflow.set_experiment(
        experiment_id=experiment_id(client, f"lstmpipe/{model_name}", artifact_root)
    )
    run_tags = {**tags, **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
    snapshot = data_snapshot(outcome, content_hashes)
    commit = source_commit()
    with mlflow.start_run(tags=run_tags) as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params({**params, "recipe_id": outcome.bundle.recipe.recipe_id, **snapshot})
        for row in outcome.fit.history:
            mlflow.log_metrics(
                {k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"])
            )
        mlflow.log_metrics(
            _flat("", outcome.metrics) | _flat("baseline_", outcome.baseline_metrics)
        )
        out = Path(tmp)
        test = outcome.metrics.get("test") or outcome.metrics["val"]
        labels = outcome.bundle.labels
        confusion_matrix_png(np.array(test["confusion"]), labels, out / "confusion_matrix.png")
        learning_curves_png(
            outcome.fit.history, out / "learning_curves.png", outcome.fit.best_epoch
        )
        (out / "eval_set.json").write_text(json.dumps(outcome.eval_set, indent=1))
        (out / "splits.json").write_text(json.dumps(outcome.splits, indent=1))
        # what a later run passes as train.split_record, so recorded series keep their split
        (out / "split_records.json").write_text(json.dumps(outcome.split_records, indent=1))
        if outcome.excluded:
            (out / "excluded.json").write_text(json.dumps(outcome.excluded, indent=1))
        (out / "metrics.json").write_text(
            json.dumps(
                {"lstm": outcome.metrics, "baseline": outcome.baseline_metrics},
                indent=1,
                default=float,
            )
        )
        (out / "recipe.json").write_text(
            json.dumps(outcome.bundle.recipe.to_dict(), indent=1, sort_keys=True)
        )
        _write_csv(
            out / "per_class_report.csv",
            ["model", "split", "class", *PER_CLASS],
            per_class_report(
                {"lstm": outcome.metrics, "baseline": outcome.baseline_metrics}, labels
            ),
        )
        mlflow.log_artifacts(str(out))
        version_tags_ = {
            COMPLETE_TAG: outcome.bundle.recipe.recipe_id,
            "labels": labels,
            "split_hash": outcome.split_hash,
            "dataset_hash": snapshot["data.dataset_hash"],
            "git_commit": commit,
            "eval_set": "eval_set.json",
            "test_macro_f1": f"{test['macro_f1']:.4f}",
            **tags,
        }
        ref = log_model(outcome.bundle, model_name, version_tags_)
        card = modelcard.render(
            model_name=model_name,
            version=ref.version,
            labels=labels,
            recipe=outcome.bundle.recipe.to_dict(),
            snapshot=snapshot,
            metrics=outcome.metrics,
            baseline=outcome.baseline_metrics,
            spec=outcome.bundle.spec.to_dict(),
            params=params,
            tags={k: v if isinstance(v, str) else json.dumps(v) for k, v in version_tags_.items()},
        )
        mlflow.log_text(card, "model_card.md")
    return ModelRef(ref.name, ref.version, run.info.run_id)


def data_snapshot(
    outcome: Outcome, content_hashes: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Params naming the data a run saw: series per split, the split-list hash, a dataset hash."""
    return {
        **{f"n_{name}": len(ids) for name, ids in outcome.splits.items()},
        "split_hash": outcome.split_hash,
        "data.classes": len(outcome.bundle.labels),
        "data.dataset_hash": dataset_hash(
            outcome.splits, outcome.bundle.recipe.recipe_id, content_hashes
        ),
        "data.dataset_hash_covers": "ids+content" if content_hashes is not None else "ids",
    }


def dataset_hash(
    splits: dict[str, list[str]], recipe_id: str, content_hashes: Mapping[str, str] | None
) -> str:
    """blake2b of (split, series id, content hash) rows and the recipe: same hash = same
    features, same splits."""
    rows = sorted(
        (split, sid, (content_hashes or {}).get(sid, ""))
        for split, ids in splits.items()
        for sid in ids
    )
    canonical = json.dumps({"recipe_id": recipe_id, "rows": rows}, separators=(",", ":"))
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


def source_commit() -> str:
    """The git commit lstmpipe's own source tree is at, with "-dirty" for local changes;
    "unknown" outside git."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    # no git, not a checkout (an installed wheel), or a hung git
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


# -- hyperparameter search: one parent run, one child run per trial -------------------------------


def start_search(
    client: MlflowClient,
    model_name: str,
    artifact_root: str | None,
    params: dict[str, Any],
    tags: dict[str, str],
) -> str:
    """The search's parent run (in the model's experiment); its id."""
    exp = experiment_id(client, f"lstmpipe/{model_name}", artifact_root)
    run = client.create_run(
        exp, run_name=f"tune-{model_name}", tags={**tags, "lstmpipe.kind": "search"}
    )
    client.log_batch(run.info.run_id, params=[Param(k, _text(v)) for k, v in params.items()])
    return run.info.run_id


def start_trial(
    client: MlflowClient, parent_run_id: str, trial_id: str, index: int, hp: dict[str, Any]
) -> str:
    """A child run for one trial: its hyperparameters as params; its id."""
    parent = client.get_run(parent_run_id)
    run = client.create_run(
        parent.info.experiment_id,
        run_name=f"trial-{index:03d}-{trial_id}",
        tags={
            "mlflow.parentRunId": parent_run_id,
            "lstmpipe.kind": "trial",
            "lstmpipe.tune.trial_id": trial_id,
            "lstmpipe.tune.index": str(index),
        },
    )
    client.log_batch(run.info.run_id, params=[Param(k, _text(v)) for k, v in hp.items()])
    return run.info.run_id


def log_trial_epoch(client: MlflowClient, run_id: str, row: dict[str, float]) -> None:
    step, at = int(row["epoch"]), _millis()
    client.log_batch(
        run_id, metrics=[Metric(k, float(v), at, step) for k, v in row.items() if k != "epoch"]
    )


def end_trial(client: MlflowClient, run_id: str, record: TrialRecord) -> None:
    """Best-epoch metrics and the trial's fate (completed | stopped by the scheduler | error)."""
    best = record.best or {}
    client.log_batch(
        run_id,
        metrics=[Metric(f"best_{k}", float(v), _millis(), 0) for k, v in best.items()],
        tags=[RunTag("lstmpipe.tune.status", record.status)],
    )
    client.set_terminated(run_id, "FAILED" if record.status == "error" else "FINISHED")


def end_search(
    client: MlflowClient,
    parent_run_id: str,
    trials: list[TrialRecord],
    best: TrialRecord | None,
    ref: ModelRef | None,
    failed: bool,
) -> None:
    """The search's summary on its parent run: the trial table, the best trial, the version it
    registered."""
    counts = {
        status: sum(t.status == status for t in trials)
        for status in ("completed", "stopped", "error")
    }
    tags = [
        RunTag(f"lstmpipe.tune.{k}", v)
        for k, v in {
            "best_trial_id": best.trial_id if best else "",
            "registered_version": ref.version if ref else "",
            "registered_run_id": ref.run_id if ref else "",
        }.items()
    ]
    metrics = [Metric(f"trials_{k}", v, _millis(), 0) for k, v in counts.items()]
    if best is not None and best.best is not None:
        metrics.append(Metric("best_val_macro_f1", float(best.best["val_macro_f1"]), _millis(), 0))
    client.log_batch(parent_run_id, metrics=metrics, tags=tags)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [t.summary() for t in sorted(trials, key=lambda t: t.index)]
        (Path(tmp) / "trials.json").write_text(json.dumps(rows, indent=1, default=str))
        client.log_artifact(parent_run_id, str(Path(tmp) / "trials.json"))
    client.set_terminated(parent_run_id, "FAILED" if failed else "FINISHED")


def _millis() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp() * 1000)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _flat(prefix: str, metrics: dict[str, dict[str, Any]]) -> dict[str, float]:
    """{"test": {"accuracy": .9, "recall/grow": 1.0}} -> {"test_accuracy": .9,
    "test_recall_grow": 1.0}."""
    return {
        f"{prefix}{split}_{key.replace('/', '_')}": float(value)
        for split, values in metrics.items()
        for key, value in values.items()
        if isinstance(value, (int, float))
    }
