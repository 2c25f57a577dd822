"""tasks/tune.py: a real, tiny Ray Tune search over generated cached features, against SQLite
MLflow."""

from __future__ import annotations

from pathlib import Path

import mlflow
import mlflow.tracking._model_registry.utils as registry_globals
import mlflow.tracking._tracking_service.utils as tracking_globals
import mlflow.tracking.fluent as fluent_globals
import numpy as np
import pytest
import ray
from mlflow.tracking import MlflowClient

from lstmpipe.lib.config import load_config
from lstmpipe.lib.features.cache import FeatureCache, SeriesFeatures
from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.state.places import StatePlaces
from lstmpipe.lib.training.tune import SearchSpace
from lstmpipe.tasks.tune import tune_model

pytestmark = pytest.mark.slow

DIM = 8
RECIPE = FeatureRecipe(
    decoder="generated",
    fps=4.0,
    num_frames=None,
    size=64,
    backbone="none",
    weights="none(seed=0)",
    weights_digest="generated",
    precision="fp32",
    feature_dim=DIM,
)
CLASSES = ("rise", "fall", "flat_hi", "flat_lo")


def series(label: str, i: int, rng: np.random.Generator) -> np.ndarray:
    """(T, DIM): rise/fall are each other's time reversal; flats are constant; noise on top."""
    n = int(rng.integers(5, 10))
    ramp = np.linspace(-1, 1, n, dtype=np.float32)[:, None]
    base = {
        "rise": ramp,
        "fall": ramp[::-1],
        "flat_hi": np.full((n, 1), 0.8, np.float32),
        "flat_lo": np.full((n, 1), -0.8, np.float32),
    }[label]
    return (base * np.ones((1, DIM), np.float32) + 0.1 * rng.normal(size=(n, DIM))).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[SeriesRef]]:
    home = tmp_path_factory.mktemp("home")
    cache = FeatureCache.local(home / "cache")
    cache.add_recipe(RECIPE)
    rng = np.random.default_rng(0)
    refs, items = [], []
    for label in CLASSES:
        for i in range(8):
            sid = f"{label}/s{i}"
            refs.append(SeriesRef(sid, f"h-{label}-{i}", "video", f"/gen/{sid}.mp4", label=label))
            features = series(label, i, rng)
            items.append(
                SeriesFeatures(
                    sid, f"h-{label}-{i}", features, np.arange(len(features), dtype=np.float64)
                )
            )
    cache.write(RECIPE.recipe_id, items)
    return home, refs


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture()
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(var, raising=False)
    for module, name in (
        (tracking_globals, "_tracking_uri"),
        (registry_globals, "_registry_uri"),
        (fluent_globals, "_active_experiment_id"),
    ):
        monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    return f"sqlite:///{tmp_path}/mlflow.db"


def test_search_logs_trials_under_one_parent_and_registers_the_best(
    generated, local_ray, tracking: str, tmp_path: Path
) -> None:
    root, refs = generated
    config = load_config(
        overrides={
            "train.epochs": 8,
            "train.patience": 8,
            "train.hidden_size": 16,
            "train.val_fraction": 0.25,
            "train.test_fraction": 0.25,
        }
    )
    space = SearchSpace(hidden_size=(8, 16), num_layers=(1,), dropout=(0.0, 0.2), lr=(1e-4, 3e-2))
    out = tune_model.fn(
        refs,
        RECIPE,
        "tuned",
        config,
        StatePlaces(str(root)),
        tracking,
        (tmp_path / "art").as_uri(),
        "local",
        str(tmp_path / "tune"),
        {"lstmpipe.run_id": "t1"},
        trials=4,
        space=space,
        grace_period=2,
        reduction_factor=2,
    )

    client = MlflowClient(tracking, registry_uri=tracking)
    parent = client.get_run(out.parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    trials = [r for r in children if r.data.tags.get("lstmpipe.kind") == "trial"]
    assert len(trials) == 4
    assert {r.data.tags["lstmpipe.tune.status"] for r in trials} <= {"completed", "stopped"}
    assert sum(out.trials.values()) == 4 and out.trials["error"] == 0
    epochs = {
        r.info.run_id: len(client.get_metric_history(r.info.run_id, "val_macro_f1")) for r in trials
    }
    assert all(1 <= n <= 8 for n in epochs.values())
    # ASHA (grace 2, factor 2, 4 trials) cuts at least one trial at a rung, unless every one ran to
    # its end.
    stopped = [r for r in trials if r.data.tags["lstmpipe.tune.status"] == "stopped"]
    assert stopped or all(n == 8 for n in epochs.values())
    assert all(epochs[r.info.run_id] < 8 for r in stopped)
    assert parent.data.tags["lstmpipe.tune.best_trial_id"] == out.best_trial["trial_id"]
    assert parent.info.status == "FINISHED"
    assert "trials.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}

    # The best trial, retrained, is a version like `train` registers, nested under the search and
    # tagged with it.
    version = client.get_model_version("tuned", out.version)
    assert version.tags["lstmpipe.tune.parent_run_id"] == parent.info.run_id
    assert version.tags["lstmpipe.tune.trial_id"] == out.best_trial["trial_id"]
    assert version.tags["recipe_id"] == RECIPE.recipe_id and version.tags["dataset_hash"]
    retrain = client.get_run(out.run_id)
    assert retrain.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert retrain.data.params["train.hidden_size"] == str(out.best_trial["hp.hidden_size"])
    assert retrain.data.params["data.dataset_hash_covers"] == "ids+content"
    assert {"model_card.md", "per_class_report.csv"} <= {
        a.path for a in client.list_artifacts(out.run_id)
    }
    mlflow.set_registry_uri(tracking)
    assert mlflow.pyfunc.load_model(f"models:/tuned/{out.version}") is not None
