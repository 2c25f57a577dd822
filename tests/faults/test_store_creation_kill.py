"""A process SIGKILLed while it creates the local MLflow store (home/mlflow.db).

MLflow builds a new SQLite store with migrations that commit one table at a time; a kill
half-way used to leave a store no later run could open ("table secrets already exists"),
which a CI run of tests/faults/test_kill_points.py hit. `mlflow_store.connect` now builds
the store aside and links it into place: whenever the kill lands, the next run opens a
complete store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lstmpipe.lib.registry import mlflow_store as registry
from tests.helpers import isolate_mlflow

pytestmark = pytest.mark.slow
CREATE = "import sys; from lstmpipe.lib.registry import mlflow_store as r; r.connect(sys.argv[1])"
DELAYS_S = (0.0, 0.05, 0.2, 0.5, 1.0)  # after the half-built store appears
TIMEOUT_S = 300  # bounds a hang; CI runs three shards on two cores


def kill_while_building(uri: str, folder: Path, delay: float) -> bool:
    """Start a process creating the store at `uri`; SIGKILL it `delay` s into building.
    True when the kill landed while it was building."""
    process = subprocess.Popen([sys.executable, "-c", CREATE, uri])
    deadline = time.monotonic() + TIMEOUT_S
    while not list(folder.glob(".mlflow.db.*.building")):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            return False
        time.sleep(0.005)
    time.sleep(delay)
    building = process.poll() is None
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return building


def test_a_store_killed_while_created_opens_whole_on_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolate_mlflow(monkeypatch)
    landed = 0
    for delay in DELAYS_S:
        folder = tmp_path / f"delay-{delay}"
        folder.mkdir()
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        landed += kill_while_building(uri, folder, delay)
        if not (folder / "mlflow.db").exists():
            assert list(folder.glob(".mlflow.db.*.building")), "the kill landed before building"
        client = registry.connect(uri)
        assert client.search_registered_models() == []
        assert client.get_experiment_by_name("Default") is not None
        client.create_registered_model("m")
        assert [m.name for m in MlflowClient(uri, uri).search_registered_models()] == ["m"]
    assert landed >= 2, "too few kills landed while the store was being built"


def test_two_processes_creating_one_store_leave_one_that_both_use(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = CREATE + "; c = r.connect(sys.argv[1]); c.create_registered_model(sys.argv[2])"
    processes = [subprocess.Popen([sys.executable, "-c", script, uri, n]) for n in ("a", "b")]
    assert [p.wait(TIMEOUT_S) for p in processes] == [0, 0]
    names = sorted(m.name for m in MlflowClient(uri, uri).search_registered_models())
    assert names == ["a", "b"]
    assert not list(tmp_path.glob(".mlflow.db.*.building"))
