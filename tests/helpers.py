"""Helpers shared by tests (importable: tests/ is a package)."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pytest

from lstmpipe.lib.features.recipe import FeatureRecipe


def ffmpeg_children() -> list[int]:
    """Pids of this process's ffmpeg children (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if (
            entry.name.isdigit()
            and int(fields[1]) == os.getpid()
            and "ffmpeg" in stat.split(")")[0]
        ):
            found.append(int(entry.name))
    return found


def wheel_data(distribution: str, path: str) -> Path:
    """A data folder shipped inside an installed wheel, found without importing the package."""
    return Path(str(importlib.metadata.distribution(distribution).locate_file(path)))


def isolate_mlflow(mp: pytest.MonkeyPatch) -> None:
    """MLflow's process-wide tracking/registry URIs and active experiment are put back when `mp`
    undoes, and nothing from the environment (MLFLOW_*_URI, MLFLOW_EXPERIMENT_ID) leaks in."""
    import mlflow.tracking._model_registry.utils as registry_globals
    import mlflow.tracking._tracking_service.utils as tracking_globals
    import mlflow.tracking.fluent as fluent_globals

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID"):
        mp.setenv(var, "")  # remembers the old value (or its absence) ...
        mp.delenv(var)  # ... and nothing from outside leaks in
    for module, name in (
        (tracking_globals, "_tracking_uri"),
        (registry_globals, "_registry_uri"),
        (fluent_globals, "_active_experiment_id"),
    ):
        mp.setattr(module, name, getattr(module, name))


# A recipe as stored before later fields existed: its id is pinned by the recipe tests.
RECIPE = FeatureRecipe(
    decoder="ffmpeg 7.1",
    fps=4.0,
    num_frames=None,
    size=64,
    backbone="resnet18",
    weights="none(seed=0)",
    weights_digest="random-seed-0",
    precision="fp32",
    feature_dim=512,
    sources='{"nifti_view":"middle"}',
)


# The smallest settings a whole command runs with: for tests of what it says and exits with, not of
# what it learns.
TINY_SETTINGS = {
    "sampling.size": 32,
    "sampling.fps": 4.0,
    "backbone.weights": "none",
    "train.epochs": 2,
    "train.patience": 2,
    "train.hidden_size": 8,
    "runtime.partition_concurrency": 1,
}
