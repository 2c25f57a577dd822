"""Outputs in team mode: failures, predictions (with their per-frame table and domain outputs),
run records and report pages are objects of the bucket, written by one host and read back by
another (a different home), and nothing of them lands on either host's disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lstmpipe.flows.cli import EXIT_FAILED_SERIES, EXIT_OK, main
from lstmpipe.lib.demo.video import SampleSpec, generate_archive
from lstmpipe.lib.failures import SCHEMA, Failure
from lstmpipe.lib.inference.outputs import write_outputs
from lstmpipe.lib.inference.predictions import (
    PREFIX,
    already_predicted,
    frames_key,
    predictions_table,
    target_of,
    write_predictions,
)
from lstmpipe.lib.ops.failures import read_failures, record_failures
from lstmpipe.lib.registry import report
from lstmpipe.lib.registry.runs import recent_runs, save_run
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.state.places import StatePlaces
from lstmpipe.lib.state.store import parse_s3
from tests.helpers import isolate_mlflow
from tests.team.conftest import Team, s3_client

FAILED = [Failure("a/bad.mp4", "s3://b/archive/a/bad.mp4", "decode", "moov atom not found")]
TILE = SeriesRef("tiles/t1", "h-tile", "geotiff", "s3://b/archive/tiles/t1")
CLIP = SeriesRef("clips/c1.mp4", "h-clip", "video", "s3://b/archive/clips/c1.mp4")
TILE_META = {"tiles/t1": {"crs": "EPSG:32613", "bounds": [336375, 4460595, 338205, 4462425]}}


def hosts(team: Team, tmp_path: Path) -> tuple[StatePlaces, StatePlaces]:
    """Two processes' places: the same database and bucket, each its own home."""
    return tuple(  # type: ignore[return-value]
        StatePlaces(str(tmp_path / name), team.database, team.store, retry_s=10)
        for name in ("driver", "worker")
    )


def bucket_keys(team: Team, prefix: str) -> list[str]:
    """Keys under the test's prefix as the bucket itself lists them (relative to the prefix)."""
    bucket, root = parse_s3(team.store)
    client = s3_client(team.servers.env)
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{root}/{prefix}")
    return sorted(item["Key"][len(root) + 1 :] for item in listed.get("Contents", []))


def on_disk(*homes: StatePlaces) -> list[str]:
    return sorted(str(p) for h in homes for p in Path(h.home).rglob("*") if p.is_file())


def test_failures_are_objects_read_back_from_another_host(team: Team, tmp_path: Path) -> None:
    driver, worker = hosts(team, tmp_path)
    written = record_failures(driver.outputs_store(), "night-1", FAILED)
    again = record_failures(worker.outputs_store(), "night-1", FAILED[:1])
    assert written and again and bucket_keys(team, "failures/") == sorted([written, again])
    assert driver.outputs_store().uri(written) == f"{team.store}/{written}"
    table = read_failures(worker.outputs_store())
    assert table.schema == SCHEMA and table["run_id"].to_pylist() == ["night-1", "night-1"]
    assert table["reason"].to_pylist() == ["moov atom not found"] * 2
    assert on_disk(driver, worker) == []


def test_predictions_frames_and_outputs_are_objects_and_skip_on_another_host(
    team: Team, tmp_path: Path
) -> None:
    driver, worker = hosts(team, tmp_path)
    store = driver.outputs_store()
    table = predictions_table(
        [TILE, CLIP], np.array([[0.8, 0.2], [0.3, 0.7]]), ["a", "b"], "m", "3", "r", "run-1"
    )
    key = f"{PREFIX}/m-v3-20261204T000000Z.parquet"
    write_predictions(table.slice(0, 1), store, frames_key(key))  # any table: a frames object
    write_predictions(table, store, key)
    written = write_outputs(table, TILE_META, store, key)

    assert written == {"geojson": f"{team.store}/{PREFIX}/m-v3-20261204T000000Z.geojson"}
    assert bucket_keys(team, f"{PREFIX}/") == sorted(
        [key, frames_key(key), f"{PREFIX}/m-v3-20261204T000000Z.geojson"]
    )
    # the other host reads them back: a re-run there skips what this version predicted
    other = worker.outputs_store()
    assert already_predicted(other, PREFIX, "m", "3") == {"h-tile", "h-clip"}
    assert already_predicted(other, PREFIX, "m", "4") == set()
    with other.open(key) as handle:
        assert pq.read_table(handle).equals(table)
    geojson = json.loads(other.read_bytes(f"{PREFIX}/m-v3-20261204T000000Z.geojson"))
    assert [f["id"] for f in geojson["features"]] == ["tiles/t1"]
    assert on_disk(driver, worker) == []


def test_an_out_url_in_the_bucket_is_written_and_checked_like_the_outputs_store(
    team: Team, tmp_path: Path
) -> None:
    """`lstmpipe infer --out s3://bucket/prefix/mine/p.parquet`."""
    out = f"{team.store}/mine/p.parquet"
    store, key = target_of(out, retry_s=10)
    assert (store.uri(key), key) == (out, "p.parquet")
    table = predictions_table([CLIP], np.array([[0.3, 0.7]]), ["a", "b"], "m", "3", "r", "run-1")
    write_predictions(table, store, key)
    write_predictions(table, store, "deeper/q.parquet")  # not in the --out folder itself
    assert bucket_keys(team, "mine/") == ["mine/deeper/q.parquet", "mine/p.parquet"]
    assert already_predicted(target_of(out)[0], "", "m", "3") == {"h-clip"}


def test_run_records_and_report_pages_are_objects(team: Team, tmp_path: Path) -> None:
    driver, worker = hosts(team, tmp_path)
    records = [
        {"run_id": "r1", "command": "extract", "seconds": 1.0, "failed": 0},
        {
            "run_id": "r2",
            "command": "train",
            "seconds": 9.0,
            "train": {"model": "m", "version": "1", "run_id": "mlflow-run-9"},
        },
    ]
    assert [save_run(driver.outputs_store(), r) for r in records] == [
        "runs/r1.json",
        "runs/r2.json",
    ]
    assert bucket_keys(team, "runs/") == ["runs/r1.json", "runs/r2.json"]
    recent = recent_runs(worker.outputs_store(), 10)
    assert sorted(r.record["run_id"] for r in recent) == ["r1", "r2"]
    assert all(r.finished > 0 for r in recent)
    assert [r.record["run_id"] for r in recent_runs(worker.outputs_store(), 1)] in (["r1"], ["r2"])
    # `lstmpipe report r2` on the other host finds the MLflow run through the record
    assert report.mlflow_run_id(worker.outputs_store(), "r2") == "mlflow-run-9"
    assert report.mlflow_run_id(worker.outputs_store(), "not-a-record") == "not-a-record"
    page = report.page_key(worker.outputs_store(), "../../x")
    uri = report.write({"run_id": "x", "tags": {}, "metrics": {}}, worker.outputs_store(), page)
    assert uri == f"{team.store}/{page}" and bucket_keys(team, "reports/") == [page]
    assert b"<!DOCTYPE html>" in driver.outputs_store().read_bytes(page)
    assert on_disk(driver, worker) == []


def test_the_cli_records_failures_and_runs_in_the_bucket_and_status_reads_them_elsewhere(
    team: Team,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`lstmpipe extract` in team mode: its failure and its run record are objects; `lstmpipe
    status` from another home lists both; neither home holds failures/ or runs/."""
    sample = generate_archive(
        tmp_path / "sample",
        SampleSpec(clips_per_class=1, partitions=("2026-11-18",), size=32, max_frames=12),
    )
    source = tmp_path / "src"
    shutil.copytree(sample / "2026-11-18", source)
    (source / "grow" / "broken.mp4").write_text("not a video\n")
    isolate_mlflow(monkeypatch)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("LSTMPIPE_STATE_DATABASE", team.database)
    monkeypatch.setenv("LSTMPIPE_STATE_STORE", team.store)
    flags = ["--size", "32", "--weights", "none", "--json"]

    def run(home: str, *argv: str) -> tuple[int, dict]:
        monkeypatch.setenv("LSTMPIPE_HOME", str(tmp_path / home))
        code = main(list(argv))
        return code, json.loads(capsys.readouterr().out)

    code, extracted = run("driver", "extract", str(source), *flags)
    assert code == EXIT_FAILED_SERIES and extracted["failed"] == 1
    failures_key = extracted["failures_file"].removeprefix(f"{team.store}/")
    assert failures_key.startswith("failures/") and bucket_keys(team, "failures/") == [failures_key]
    assert bucket_keys(team, "runs/") == [f"runs/{extracted['run_id']}.json"]

    code, status = run("elsewhere", "status", "--json")
    assert code == EXIT_OK and status["failures_total"] == 1
    assert status["recent_failures"][0]["series_id"] == "grow/broken.mp4"
    assert [(r["run_id"], r["failed"]) for r in status["runs"]] == [(extracted["run_id"], 1)]
    for home in ("driver", "elsewhere"):
        assert (
            not (tmp_path / home / "failures").exists() and not (tmp_path / home / "runs").exists()
        )
