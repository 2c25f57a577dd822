"""`lstmpipe serve` against real servers: a deployment run of `nightly` goes through the Prefect
server, extracts on the Ray head (joined by address) and registers on the MLflow server (on
PostgreSQL where it is installed); a second run after a new partition lands does only that one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from lstmpipe.lib.demo.video import SampleSpec, generate_archive
from lstmpipe.lib.ops.partitions import PartitionRecords
from lstmpipe.lib.state.database import Database
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration
LSTMPIPE = str(Path(sys.executable).parent / "lstmpipe")
MODEL = "served"
DAYS = ("2026-11-19", "2026-11-20", "2026-11-21")
RUN_TIMEOUT_S = 600


def settings(root: Path) -> list[str]:
    values = {
        "nightly.root": root,
        "nightly.model": MODEL,
        "sampling.size": 64,
        "sampling.fps": 4.0,
        "backbone.weights": "none",
        "train.epochs": 2,
        "train.patience": 2,
        "train.hidden_size": 16,
    }
    return [f"--set={key}={value}" for key, value in values.items()]


def deployment_id(stack: Stack, name: str, serve: subprocess.Popen, log: Path) -> str:
    """Wait until `lstmpipe serve` has registered the deployment with the server."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert serve.poll() is None, (
            f"serve exited with {serve.returncode}:\n{log.read_text()[-3000:]}"
        )
        answer = httpx.get(
            f"{stack.prefect_api}/deployments/name/{name}", headers=stack.secrets.prefect_headers()
        )
        if answer.status_code == 200:
            return answer.json()["id"]
        time.sleep(1)
    raise AssertionError(f"deployment {name} never appeared:\n{log.read_text()[-3000:]}")


def scheduled_runs(stack: Stack, deployment: str) -> list[dict]:
    """The runs the server's scheduler created for the deployment's cron, waiting for their time."""
    query = {
        "flow_runs": {
            "deployment_id": {"any_": [deployment]},
            "state": {"type": {"any_": ["SCHEDULED"]}},
        }
    }
    return httpx.post(
        f"{stack.prefect_api}/flow_runs/filter", json=query, headers=stack.secrets.prefect_headers()
    ).json()


def run_deployment(stack: Stack, deployment: str, log: Path) -> dict:
    """Create a flow run of the deployment, as the scheduler
    (or `prefect deployment run`) does, and wait for it."""
    api, login = stack.prefect_api, stack.secrets.prefect_headers()
    # The same idempotency key on every try: a busy server's error (seen once in CI) is retried,
    # never doubled.
    key, answer = uuid.uuid4().hex, None
    for _ in range(5):
        answer = httpx.post(
            f"{api}/deployments/{deployment}/create_flow_run",
            json={"idempotency_key": key},
            headers=login,
            timeout=30,
        )
        if answer.status_code in (200, 201):
            break
        time.sleep(3)
    assert answer is not None
    assert answer.status_code in (200, 201), (
        f"create_flow_run: {answer.status_code} {answer.text[:1000]}"
    )
    flow_run = answer.json()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        answer = httpx.get(f"{api}/flow_runs/{flow_run['id']}", headers=login, timeout=30)
        state = answer.json() if answer.status_code == 200 else {}
        if state.get("state_type") in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
            return state
        time.sleep(2)
    raise AssertionError(
        f"flow run {flow_run['id']} still running after {RUN_TIMEOUT_S} s:\n"
        f"{log.read_text()[-3000:]}"
    )


def test_served_nightly_runs_through_the_servers_then_does_only_the_new_partition(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sample = generate_archive(
        tmp_path / "sample",
        SampleSpec(clips_per_class=6, partitions=DAYS, size=32, min_frames=8, max_frames=12),
    )
    root = tmp_path / "archive"
    root.mkdir()
    for entry in sorted(sample.iterdir()):  # the first two nights; the third lands later
        if entry.name.startswith(DAYS[:2]):
            (shutil.copytree if entry.is_dir() else shutil.copy)(entry, root / entry.name)
    home, log = tmp_path / "home", tmp_path / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [LSTMPIPE, "serve", *settings(root)],
            env={**stack.env, "LSTMPIPE_HOME": str(home)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        nightly = deployment_id(stack, "nightly/nightly", serve, log)
        first = run_deployment(stack, nightly, log)
        assert first["state_type"] == "COMPLETED", log.read_text()[-4000:]

        if shutil.which("initdb"):
            # the registry's rows are in PostgreSQL
            assert stack.mlflow_backend.startswith("postgresql")
        for name, value in stack.mlflow_login.items():
            monkeypatch.setenv(name, value)
        client = MlflowClient(stack.mlflow_uri, registry_uri=stack.mlflow_uri)
        champion = client.get_model_version_by_alias(MODEL, "champion")
        assert champion.version == "1"
        records = PartitionRecords(Database.sqlite(home / "partitions.sqlite"))
        done = {r.partition: r for r in records.records(root)}
        assert sorted(done) == list(DAYS[:2])

        for entry in sorted(sample.iterdir()):
            if entry.name.startswith(DAYS[2]):
                (shutil.copytree if entry.is_dir() else shutil.copy)(entry, root / entry.name)
        second = run_deployment(stack, nightly, log)
        assert second["state_type"] == "COMPLETED", log.read_text()[-4000:]
        again = {r.partition: r for r in records.records(root)}
        assert sorted(again) == list(DAYS)
        assert all(again[day] == done[day] for day in DAYS[:2])  # the first two were not redone
        assert again[DAYS[2]].run_id != done[DAYS[0]].run_id
        versions = client.search_model_versions(f"name='{MODEL}'")
        # a new partition: retrained on the servers
        assert sorted(int(v.version) for v in versions) == [1, 2]

        # The cron (02:00 UTC) is served: the server's scheduler has created the coming nights'
        # runs, each once, under its idempotency key (SQLAlchemy 2.1 broke that insert: no run was
        # ever scheduled).
        coming = scheduled_runs(stack, nightly)
        assert coming, log.read_text()[-3000:]
        assert len({run["idempotency_key"] for run in coming}) == len(coming)
        assert all(run["idempotency_key"].startswith(f"scheduled {nightly} ") for run in coming)
        assert {run["expected_start_time"][11:16] for run in coming} == {"02:00"}
    finally:
        os.killpg(serve.pid, signal.SIGINT)  # serve stops its runner on Ctrl-C
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait(30)
