"""flows/tune.py under prefect_test_harness: a generated sample archive -> extract -> a 2-trial
search -> a version."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
from mlflow.tracking import MlflowClient
from prefect.testing.utilities import prefect_test_harness

from lstmpipe.flows.tune import tune
from lstmpipe.lib.demo.video import SampleSpec, generate_archive

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness():
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False
    )  # ensure_ray joins this one
    try:
        with prefect_test_harness(server_startup_timeout=120):
            yield
    finally:
        ray.shutdown()


def test_tune_flow_extracts_searches_and_registers(tmp_path: Path, harness) -> None:
    archive = generate_archive(tmp_path / "sample", SampleSpec(clips_per_class=3, size=64))
    overrides = {
        "runtime.home": str(tmp_path / "home"),
        "sampling.size": 64,
        "sampling.fps": 4,
        "backbone.weights": "none",
        "train.epochs": 4,
        "train.patience": 4,
        "train.hidden_size": 16,
    }
    out = tune(str(archive), "tuned", overrides=overrides, run_id="tune1", trials=2, grace_period=2)

    assert out.failed == 0 and out.extract.series == 12
    assert sum(out.tune.trials.values()) == 2
    uri = f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    version = MlflowClient(uri, registry_uri=uri).get_model_version("tuned", out.tune.version)
    assert version.tags["lstmpipe.run_id"] == "tune1"
    assert version.tags["lstmpipe.tune.parent_run_id"] == out.tune.parent_run_id
    assert (tmp_path / "home" / "tune").is_dir()  # Tune's own files stay under the state directory
