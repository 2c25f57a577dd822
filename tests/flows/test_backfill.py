"""Partitions end to end: nightly does only new partitions; a killed backfill resumes; backfill
beside nightly.

The CLI runs as real subprocesses (so they can be killed, and run two at once) against this module's
Prefect test server, so they skip the temporary API boot and their flow runs are visible here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort
from prefect.settings import PREFECT_API_URL

from lstmpipe.flows.backfill import backfill
from lstmpipe.flows.nightly import nightly
from lstmpipe.flows.runtime import load_runtime
from lstmpipe.lib.demo.video import SampleSpec, generate_archive
from lstmpipe.lib.features.cache import FeatureCache

pytestmark = [pytest.mark.slow, pytest.mark.own_prefect_server]  # counts all its artifacts
LSTMPIPE = str(Path(sys.executable).parent / "lstmpipe")
MODEL = "parts"
DAYS = ("2026-11-18", "2026-11-19", "2026-11-20", "2026-11-21")  # folder, .tar, .zip, folder
CLI_TIMEOUT_S = 600  # bounds a hang; CI runs three shards on two cores


def tiny(home: Path) -> dict:
    """Small and quick: 64 px, random-init backbone, 2 epochs; one partition at a time, so a kill
    lands between."""
    return {
        "runtime.home": str(home),
        "sampling.size": 64,
        "sampling.fps": 4.0,
        "backbone.weights": "none",
        "train.epochs": 2,
        "train.patience": 2,
        "train.hidden_size": 16,
        "runtime.partition_concurrency": 1,
    }


def cli_args(home: Path) -> list[str]:
    return [f"--set={key}={value}" for key, value in tiny(home).items()] + ["--json"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four daily partitions of 8 clips (2 per class), labelled by folder name."""
    return generate_archive(
        tmp_path_factory.mktemp("sample"),
        SampleSpec(clips_per_class=8, partitions=DAYS, size=32, min_frames=8, max_frames=12),
    )


@pytest.fixture()
def root(sample: Path, tmp_path: Path) -> Path:
    """A copy of the sample without its manifest: labels come from the class folders."""
    root = tmp_path / "archive"
    shutil.copytree(sample, root, ignore=shutil.ignore_patterns("labels.csv", ".*"))
    return root


def cache_rows(home: Path) -> list[tuple]:
    with sqlite3.connect(home / "cache" / "index.sqlite") as db:
        return sorted(
            db.execute("SELECT content_hash, recipe_id, series_id, n_frames FROM entries")
        )


def record_rows(home: Path) -> list[tuple]:
    with sqlite3.connect(home / "partitions.sqlite") as db:
        return sorted(
            db.execute("SELECT partition, recipe_id, fingerprint, series, failed FROM done")
        )


def recorded(home: Path) -> int:
    """Partitions recorded so far; 0 also before the records file and its table exist."""
    if not (home / "partitions.sqlite").exists():
        return 0
    try:
        return len(record_rows(home))
    except sqlite3.OperationalError:  # created, its table not yet
        return 0


def spawn(home: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "LSTMPIPE_HOME": str(home), "PREFECT_API_URL": PREFECT_API_URL.value()}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [LSTMPIPE, *args, *cli_args(home)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=CLI_TIMEOUT_S)
    assert process.returncode == 0, f"exit {process.returncode}:\n{err[-4000:]}"
    return json.loads(out)


def test_nightly_does_only_new_partitions_and_skips_training_without_them(
    harness, root: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    late = root / DAYS[-1]
    late.rename(tmp_path / "late")  # the last day has not landed yet

    first = nightly(str(root), MODEL, overrides=tiny(home), run_id="n1")
    assert [p.partition for p in first.partitions.done] == list(DAYS[:3])
    assert first.train is not None and first.train_reason == "no version registered yet"
    assert first.infer is not None and first.infer.predicted == 24

    (tmp_path / "late").rename(late)
    second = nightly(str(root), MODEL, overrides=tiny(home), run_id="n2")
    parts = second.partitions
    assert [p.partition for p in parts.done] == [DAYS[-1]] and parts.already_done == 3
    assert (parts.series, parts.extracted, parts.cached) == (8, 8, 0)
    # training reads the whole root, from the cache
    assert second.train is not None and second.train.extract.cached == 32
    assert DAYS[-1] in second.train_reason
    assert second.infer is not None
    assert second.infer.predicted == 32 or second.infer.skipped > 0

    third = nightly(str(root), MODEL, overrides=tiny(home), run_id="n3")
    assert third.partitions.done == () and third.partitions.already_done == 4
    assert (
        third.train is None and third.promote is None and third.train_reason.startswith("skipped")
    )
    rt = load_runtime(overrides=tiny(home))
    client = MlflowClient(rt.tracking_uri, registry_uri=rt.tracking_uri)
    assert (
        len(client.search_model_versions(f"name = '{MODEL}'")) == 2
    )  # no version for a night without data

    # A night killed between registering v2 and promoting it: v1 still champion, v2 without a
    # decision. The next night has nothing new to train on, and judges v2 then.
    client.set_registered_model_alias(MODEL, "champion", "1")
    client.delete_model_version_tag(MODEL, "2", "promotion.decision")
    fourth = nightly(str(root), MODEL, overrides=tiny(home), run_id="n4")
    promoted = fourth.promote
    assert fourth.train is None and promoted and promoted["challenger"] == "2", promoted
    decision = client.get_model_version(MODEL, "2").tags["promotion.decision"]
    assert decision == ("promoted" if promoted["promoted"] else "rejected")
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert str(champion.version) == ("2" if promoted["promoted"] else "1")

    with get_client(sync_client=True) as prefect:  # what the Prefect UI shows for these runs

        def artifacts(key: str) -> list:
            return prefect.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                sort=ArtifactSort.CREATED_DESC,
            )[::-1]

        summaries, links = artifacts("nightly-summary"), artifacts("mlflow-run")
    assert len(summaries) == 4 and f"| {DAYS[-1]} | 8 |" in summaries[1].data
    assert "**train**: skipped" in summaries[2].data
    assert [link.data.split("/#/runs/")[1].split(")")[0] for link in links] == [
        first.train.train.run_id,
        second.train.train.run_id,
    ]


def test_a_killed_backfill_resumes_with_only_the_remainder(
    harness, root: Path, tmp_path: Path
) -> None:
    killed_home, whole_home = tmp_path / "killed", tmp_path / "whole"
    process = spawn(killed_home, "backfill", str(root), "--all")
    try:
        deadline = time.monotonic() + CLI_TIMEOUT_S
        while not recorded(killed_home):
            assert process.poll() is None, (
                f"finished before it could be killed:\n{process.communicate()[1][-3000:]}"
            )
            assert time.monotonic() < deadline, "no partition was recorded in time"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.communicate()
    finished = {row[0] for row in record_rows(killed_home)}
    assert 1 <= len(finished) < len(DAYS)

    resumed = finish(spawn(killed_home, "backfill", str(root), "--all"))
    assert resumed["already_done"] == len(finished)
    assert sorted(p["partition"] for p in resumed["done"]) == sorted(set(DAYS) - finished)
    assert sum(p["extracted"] for p in resumed["done"]) <= 8 * (len(DAYS) - len(finished))

    backfill(str(root), every=True, overrides=tiny(whole_home), run_id="whole")
    assert record_rows(killed_home) == record_rows(whole_home)
    assert cache_rows(killed_home) == cache_rows(whole_home)
    keys = [(h, r) for h, r, _, _ in cache_rows(whole_home)]
    before, after = (
        FeatureCache.local(killed_home / "cache").read(keys),
        FeatureCache.local(whole_home / "cache").read(keys),
    )
    assert all(np.allclose(before[k].features, after[k].features, atol=1e-5) for k in keys)


def test_backfill_beside_nightly_leaves_no_duplicates_and_one_champion(
    harness, root: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    runs = [
        spawn(home, "backfill", str(root), "--from", DAYS[1], "--to", "2026-11"),
        spawn(home, "nightly", str(root), "--model", MODEL),
    ]
    try:
        filled, night = finish(runs[0]), finish(runs[1])
    finally:
        for process in runs:
            process.kill()
    assert filled["selected"] == 3 and night["partitions"]["selected"] == 4

    rows = cache_rows(home)
    assert len(rows) == len({(h, r) for h, r, _, _ in rows}) == 32  # one entry per series
    records = record_rows(home)
    assert [r[0] for r in records] == sorted(DAYS) and len({r[1] for r in records}) == 1
    rt = load_runtime(overrides=tiny(home))
    client = MlflowClient(rt.tracking_uri, registry_uri=rt.tracking_uri)
    (version,) = client.search_model_versions(f"name = '{MODEL}'")
    assert client.get_model_version_by_alias(MODEL, "champion").version == version.version

    status = subprocess.run(
        [LSTMPIPE, "status", str(root), "--json"],
        env={**os.environ, "LSTMPIPE_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    shown = json.loads(status.stdout)["partitions"]
    assert (shown["done"], shown["pending"]) == (sorted(DAYS), [])
    assert (rt.home / "partitions.sqlite").is_file()
