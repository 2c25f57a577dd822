"""`lstmpipe extract` and `lstmpipe nightly` killed with SIGKILL at random points, then run again
(issue 8, SPEC §6: a killed run resumes from what it finished).

An uninterrupted CLI run sets the reference state and its measured duration; each seed kills a fresh
run after a delay drawn uniformly within that duration (process start-up included, so some kills
land before any work), then runs the same command again in-process to completion. The final state
must equal the reference's, compared by content (run ids and times left out):
  - cache: the same (content hash, recipe, series, frames) entries, each once, with the same
    features;
  - failures: the same set of (series, path, stage, reason) rows (a killed run may have recorded
    some of them already: rows are per run, so they are compared as a set);
  - partition records: the same (partition, recipe, fingerprint, series, failed) rows;
  - registry: no half-registered version (each READY with the tags it is created with,
    lib/registry/mlflow_store.py), the champion alias on such a version; a kill during training may
    leave a run but no version;
  - predictions: the same label and probabilities per series, from the champion of the final state.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from prefect.settings import PREFECT_API_URL
from prefect.testing.utilities import prefect_test_harness

from lstmpipe.flows.extract import extract
from lstmpipe.flows.nightly import nightly
from lstmpipe.flows.runtime import load_runtime
from lstmpipe.lib.demo.video import SampleSpec, generate_archive
from lstmpipe.lib.features.cache import FeatureCache
from lstmpipe.lib.ops.failures import read_failures
from lstmpipe.lib.registry import mlflow_store as registry
from lstmpipe.lib.state.store import LocalStore
from tests.cache_files import index_file

pytestmark = pytest.mark.slow
LSTMPIPE = str(Path(sys.executable).parent / "lstmpipe")
MODEL = "killed"
SEEDS = (0, 1, 2)
TIMEOUT_S = 600  # bounds a hang; CI runs three shards on two cores


def tiny(home: Path) -> dict:
    return {
        "runtime.home": str(home),
        "sampling.size": 32,
        "sampling.fps": 4.0,
        "backbone.weights": "none",
        "train.epochs": 2,
        "train.patience": 2,
        "train.hidden_size": 16,
        "runtime.partition_concurrency": 1,
    }


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two daily partitions of 8 clips (a folder, a .tar; labels from the class folders), and a file
    in the folder that is no video."""
    sample = generate_archive(
        tmp_path_factory.mktemp("sample"),
        SampleSpec(
            clips_per_class=4,
            partitions=("2026-11-20", "2026-11-21"),
            size=32,
            min_frames=8,
            max_frames=12,
        ),
    )
    root = tmp_path_factory.mktemp("archive") / "root"
    shutil.copytree(sample, root, ignore=shutil.ignore_patterns("labels.csv", ".*"))
    (root / "2026-11-20" / "grow" / "broken.mp4").write_text("not a video\n")
    return root


def spawn(home: Path, prefect_api: str, command: list[str]) -> subprocess.Popen:
    env = {**os.environ, "LSTMPIPE_HOME": str(home), "PREFECT_API_URL": prefect_api}
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    flags = [f"--set={key}={value}" for key, value in tiny(home).items()] + ["--json"]
    # its own group: the kill takes ffmpeg too
    return subprocess.Popen(
        [LSTMPIPE, *command, *flags],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def run_timed(home: Path, prefect_api: str, command: list[str]) -> float:
    started = time.monotonic()
    process = spawn(home, prefect_api, command)
    try:
        _, err = process.communicate(timeout=TIMEOUT_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 3, (
        f"exit {process.returncode} (3: one series failed):\n{err[-4000:]}"
    )
    return time.monotonic() - started


def kill_after(home: Path, prefect_api: str, command: list[str], delay: float) -> int | None:
    """Run `command`, SIGKILL its process group after `delay` s; its exit code if it ended first."""
    process = spawn(home, prefect_api, command)
    try:
        process.wait(timeout=delay)
        return process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return None
    finally:
        process.communicate()


def state(home: Path) -> dict:
    """Everything a run leaves, by content."""
    cache = FeatureCache.local(home / "cache")
    with sqlite3.connect(index_file(cache)) as db:
        entries = sorted(
            db.execute("SELECT content_hash, recipe_id, series_id, n_frames FROM entries")
        )
    keys = [(h, r) for h, r, _, _ in entries]
    assert len(keys) == len(set(keys)), "a series is indexed twice"
    features = cache.read(keys)
    failures = (
        read_failures(LocalStore(home)).select(["series_id", "path", "stage", "reason"]).to_pylist()
    )
    records = []
    if (home / "partitions.sqlite").exists():
        with sqlite3.connect(home / "partitions.sqlite") as db:
            records = sorted(
                db.execute("SELECT partition, recipe_id, fingerprint, series, failed FROM done")
            )
    predicted = {}
    for path in (
        sorted((home / "predictions").glob("*.parquet")) if (home / "predictions").exists() else []
    ):
        if path.name.endswith(".frames.parquet"):
            continue
        for row in pq.read_table(path).to_pylist():
            probs = tuple(round(v, 4) for k, v in sorted(row.items()) if k.startswith("prob_"))
            predicted[(row["series_id"], row["content_hash"])] = (row["predicted_label"], probs)
    return {
        "entries": entries,
        "features": features,
        "failures": {tuple(f.values()) for f in failures},
        "records": records,
        "predicted": predicted,
    }


def registry_state(home: Path) -> str | None:
    """Check the registry invariant; the champion's version (None when there is no model)."""
    rt = load_runtime(overrides=tiny(home))
    client = MlflowClient(rt.tracking_uri, registry_uri=rt.tracking_uri)
    versions = client.search_model_versions(f"name = '{MODEL}'")
    for version in versions:
        assert version.status == "READY" and registry.COMPLETE_TAG in version.tags, (
            f"v{version.version} is half-registered"
        )
    champion = registry.alias_version(client, MODEL, "champion")
    assert champion is None or champion.version in {str(v.version) for v in versions}
    return champion.version if champion else None


def assert_same(got: dict, want: dict) -> None:
    assert got["entries"] == want["entries"]
    for key, entry in want["features"].items():
        np.testing.assert_allclose(got["features"][key].features, entry.features, atol=1e-5)
    assert got["failures"] == want["failures"]
    assert got["records"] == want["records"]
    assert got["predicted"].keys() == want["predicted"].keys()
    for key, (label, probs) in want["predicted"].items():
        assert got["predicted"][key][0] == label, key
        np.testing.assert_allclose(got["predicted"][key][1], probs, atol=2e-3)


@pytest.mark.parametrize("command", ["extract", "nightly"])
def test_killed_at_random_points_a_rerun_ends_as_an_uninterrupted_run(
    command: str, root: Path, tmp_path: Path, prefect_api: str
) -> None:
    args = [command, str(root)] + (["--model", MODEL] if command == "nightly" else [])
    reference = tmp_path / "reference"
    duration = run_timed(reference, prefect_api, args)
    want = state(reference)
    assert len(want["entries"]) == 16 and len(want["failures"]) == 1
    if command == "nightly":
        assert registry_state(reference) == "1" and len(want["predicted"]) == 16

    for seed in SEEDS:
        home = tmp_path / f"seed-{seed}"
        delay = random.Random(seed).uniform(0, duration)
        finished = kill_after(home, prefect_api, args, delay)
        assert finished in (None, 3), f"seed {seed}: the run exited {finished} before the kill"
        overrides = tiny(home)
        if command == "extract":
            extract(str(root), overrides=overrides, run_id=f"rerun-{seed}")
        else:
            nightly(str(root), MODEL, overrides=overrides, run_id=f"rerun-{seed}")
            assert registry_state(home) is not None, f"seed {seed}: no champion after the re-run"
        got = state(home)
        assert_same(got, want)
        print(
            f"{command} seed {seed}: killed after {delay:.1f} of {duration:.1f} s"
            f"{' (it had finished)' if finished is not None else ''}; the re-run matches"
        )
