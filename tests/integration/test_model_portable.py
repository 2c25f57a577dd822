"""A registered version loads and predicts where lstmpipe is not installed.

A new virtualenv holds only the version's requirements.txt, installed by its own pip; a
subprocess there, run from outside the checkout, loads the version by its models:/ URI.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import mlflow.tracking._model_registry.utils as registry_globals
import mlflow.tracking._tracking_service.utils as tracking_globals
import mlflow.tracking.fluent as fluent_globals
import numpy as np
import pytest
import torch
from mlflow.artifacts import download_artifacts

from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.registry import mlflow_store as registry
from lstmpipe.lib.training.bundle import ModelBundle
from lstmpipe.lib.training.model import ModelSpec, SeriesCentring

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
F, LABELS = 16, ["left", "right", "still"]

# Run by the new venv's python: saves the probabilities, prints sys.path and where every lstmpipe
# module it imported came from.
LOAD_AND_PREDICT = """
import importlib.util, json, sys
import numpy as np
assert importlib.util.find_spec("lstmpipe") is None, "lstmpipe is installed here"
import mlflow
model = mlflow.pyfunc.load_model(sys.argv[1])
batch = dict(np.load(sys.argv[2]))
np.save(sys.argv[3], model.predict(batch))
files = {n: m.__file__ for n, m in sys.modules.items() if n.startswith("lstmpipe.") and m.__file__}
print(json.dumps({"files": files, "path": sys.path}))
"""


@pytest.fixture
def store_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A SQLite tracking + registry store; MLflow's process-wide state is put back afterwards."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(var, raising=False)
    for module, name in (
        (tracking_globals, "_tracking_uri"),
        (registry_globals, "_registry_uri"),
        (fluent_globals, "_active_experiment_id"),
    ):
        monkeypatch.setattr(module, name, getattr(module, name))
    yield f"sqlite:///{tmp_path}/mlflow.db"


def tiny_bundle() -> ModelBundle:
    """An attention-pooled bidirectional LSTM over centred series: every part that has weights or
    buffers must travel. Untrained: loading, not accuracy, is under test."""
    spec = ModelSpec(
        "lstm",
        F,
        len(LABELS),
        hidden_size=8,
        input_proj=8,
        bidirectional=True,
        pooling="attention",
        input_norm="series",
    )
    torch.manual_seed(0)
    module = spec.build()
    assert isinstance(module.norm, SeriesCentring)
    module.norm.fit([np.random.default_rng(0).normal(size=(6, F)) * 3.0])
    recipe = FeatureRecipe(
        decoder="ffmpeg test",
        fps=None,
        num_frames=8,
        size=64,
        backbone="resnet18",
        weights="none(seed=0)",
        weights_digest="none",
        precision="fp32",
        feature_dim=F,
    )
    return ModelBundle(spec, module.eval(), LABELS, recipe)


def register(store_uri: str, artifact_root: Path, bundle: ModelBundle) -> str:
    """Log and register `bundle` as lstmpipe's training does; its models:/ URI."""
    client = registry.connect(store_uri)
    mlflow.set_experiment(
        experiment_id=registry.experiment_id(client, "portable", artifact_root.as_uri())
    )
    with mlflow.start_run():
        ref = registry.log_model(bundle, "portable")
    return f"models:/{ref.name}/{ref.version}"


def fresh_venv(venv: Path, requirements: Path) -> Path:
    """A new virtualenv holding `requirements` installed by its own pip; its python."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    # --no-compile: Python compiles what it imports anyway; compiling all of torch and mlflow
    # up front is a large part of the install's CPU time.
    done = subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-compile"]
        + ["-r", str(requirements)],
        env=outside_env(),
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return venv / "bin" / "python"


def predict_elsewhere(python: Path, store_uri: str, uri: str, batch: Path, workdir: Path) -> dict:
    """Run LOAD_AND_PREDICT with `python` in `workdir` (outside the checkout), isolated (-I: no
    PYTHONPATH, no script folder or cwd of the checkout on sys.path); its report, with the
    probabilities under "probabilities"."""
    (workdir / "load_and_predict.py").write_text(LOAD_AND_PREDICT)
    out = workdir / "probabilities.npy"
    done = subprocess.run(
        [python, "-I", "load_and_predict.py", uri, str(batch), str(out)],
        cwd=workdir,
        env={**outside_env(), "MLFLOW_TRACKING_URI": store_uri},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "probabilities": np.load(out)}


def children_cpu_s() -> float:
    """CPU seconds (user + system) of the finished child processes: on a shared machine, wall
    time says more about the neighbours than about the install."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def outside_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def test_a_registered_version_predicts_the_same_in_a_fresh_virtualenv(
    store_uri: str, tmp_path: Path
) -> None:
    """Measured on a shared 2-core machine under a load of 15 to 20 from other jobs: the venv and
    the pip install of torch 2.14.1 (with its 4 GB of CUDA libraries), numpy and mlflow took
    722 s of wall time but 116 CPU s; the load and prediction 30 s (20 CPU s); the whole test
    14.5 min. Alone on the machine, the install is bound by that CPU time and the disk."""
    bundle = tiny_bundle()
    uri = register(store_uri, tmp_path / "art", bundle)
    rng = np.random.default_rng(1)
    lengths = np.array([5, 9, 1], np.int64)
    features = np.zeros((3, 9, F), np.float32)
    for row, n in enumerate(lengths):
        features[row, :n] = rng.normal(size=(n, F))
    np.savez(tmp_path / "batch.npz", features=features, lengths=lengths)
    here = mlflow.pyfunc.load_model(uri).predict({"features": features, "lengths": lengths})
    np.testing.assert_allclose(
        here, bundle.predict([f[:n] for f, n in zip(features, lengths, strict=True)]), atol=1e-5
    )

    started, cpu = time.monotonic(), children_cpu_s()
    requirements = download_artifacts(f"{uri}/requirements.txt", dst_path=str(tmp_path))
    python = fresh_venv(tmp_path / "venv", Path(requirements))
    installed, installed_cpu = time.monotonic() - started, children_cpu_s() - cpu
    started, cpu = time.monotonic(), children_cpu_s()
    (tmp_path / "elsewhere").mkdir()
    there = predict_elsewhere(
        python, store_uri, uri, tmp_path / "batch.npz", tmp_path / "elsewhere"
    )
    loaded, loaded_cpu = time.monotonic() - started, children_cpu_s() - cpu
    print(
        f"venv and pip install: {installed:.0f} s ({installed_cpu:.0f} CPU s); "
        f"load and predict: {loaded:.0f} s ({loaded_cpu:.0f} CPU s)"
    )

    assert not [p for p in there["path"] if p.startswith(str(REPO))], there["path"]
    assert set(there["files"]) >= {
        "lstmpipe.lib.training.model",
        "lstmpipe.lib.training.bundle_files",
    }
    assert all(str(REPO) not in f and "/code/lstmpipe/" in f for f in there["files"].values())
    np.testing.assert_allclose(there["probabilities"], here, atol=1e-5)
