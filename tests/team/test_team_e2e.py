"""The team deployment end to end, through the real CLI: PostgreSQL, SeaweedFS, an MLflow server
and two Ray nodes on this machine with no shared directory (tests/team/cluster.py).

The archive lives in the bucket; the drivers and the nodes each have their own LSTMPIPE_HOME, and
a later night runs from a fresh one, so any state left on a home instead of the database or the
store shows. The faults (a node killed, the S3 server or PostgreSQL down for a while, a driver
SIGKILLed) strike once the first series is indexed, while the run is going.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from mlflow.tracking import MlflowClient

from lstmpipe.lib.demo.video import SampleSpec, add_bad_files, generate_archive
from tests.team.cluster import LSTMPIPE, TeamCluster, wait_until
from tests.team.conftest import Team, TeamServers, s3_client

pytestmark = [pytest.mark.slow, pytest.mark.integration]
DAYS = ("2026-11-19", "2026-11-20", "2026-11-21")  # a folder, a .tar, a .zip (lib/demo/video.py)
CLIPS_PER_PARTITION = 6
FEATURES = ["--size", "32", "--fps", "4", "--weights", "none", "--shard-size", "2"]
TRAIN = ["--epochs", "2", "--hidden-size", "16"]
RUN_TIMEOUT_S = 900
# What a home must not hold in team mode: the database's and the store's business.
STATE_SUFFIXES = (".sqlite", ".parquet")
STATE_FOLDERS = ("cache", "failures", "predictions", "runs", "promotions", "locks")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three nights of two classes, six clips a night, 32 px (the same bytes on every call)."""
    return generate_archive(
        tmp_path_factory.mktemp("sample"),
        SampleSpec(
            classes=("grow", "shrink"),
            clips_per_class=len(DAYS) * CLIPS_PER_PARTITION // 2,
            partitions=DAYS,
            size=32,
            min_frames=8,
            max_frames=12,
        ),
    )


@dataclass
class Bucket:
    """The archive's place in the team's bucket, and a client to put and read objects."""

    client: Any
    name: str
    prefix: str  # archive-xxxx

    @property
    def root(self) -> str:
        return f"s3://{self.name}/{self.prefix}/"

    def upload(self, local: Path, under: str = "") -> None:
        """A partition (a folder, a .tar, a .zip) or any file, as objects under the root."""
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        base = local.parent
        for path in files:
            key = f"{self.prefix}/{under}{path.relative_to(base).as_posix()}"
            self.client.upload_file(str(path), self.name, key)

    def keys(self, prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        return [
            item["Key"]
            for page in paginator.paginate(Bucket=self.name, Prefix=prefix)
            for item in page.get("Contents", [])
        ]

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()


@pytest.fixture
def bucket(team: Team) -> Bucket:
    return Bucket(
        s3_client(team.servers.env), team.servers.bucket, f"archive-{uuid.uuid4().hex[:8]}"
    )


def upload_nights(bucket: Bucket, sample: Path, days: tuple[str, ...]) -> None:
    for entry in sorted(sample.iterdir()):
        if entry.name.startswith(days):
            bucket.upload(entry)


@pytest.fixture(scope="module")
def uninterrupted(
    team_cluster: TeamCluster, team_servers: TeamServers, sample: Path, tmp_path_factory: Any
) -> list[tuple]:
    """The entries one backfill of the whole archive makes on its own, undisturbed: what the
    concurrent and the interrupted runs must equal."""
    team = Team(
        team_servers,
        team_servers.new_database(),
        f"s3://{team_servers.bucket}/t-{uuid.uuid4().hex[:10]}",
    )
    bucket = Bucket(
        s3_client(team_servers.env), team_servers.bucket, f"archive-{uuid.uuid4().hex[:8]}"
    )
    upload_nights(bucket, sample, DAYS)
    home = tmp_path_factory.mktemp("uninterrupted")
    driver(team_cluster, team, home).run("backfill", bucket.root, "--all", *FEATURES).expect(0)
    return identity(indexed_once(team, bucket, len(DAYS) * CLIPS_PER_PARTITION))


# --------------------------------------------------------------------------- running the CLI


@dataclass
class Driver:
    """One `lstmpipe` driver: its own home, the team's database and store, the cluster."""

    cluster: TeamCluster
    team: Team
    home: Path
    extra: dict[str, str]

    @property
    def env(self) -> dict[str, str]:
        return self.cluster.driver_env(self.home, self.team.database, self.team.store, **self.extra)

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [LSTMPIPE, *args, "--json"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # SIGKILL reaches its Prefect API too
        )

    def run(self, *args: str) -> Outcome:
        return finish(self.start(*args))


@dataclass
class Outcome:
    code: int
    result: dict[str, Any]
    stderr: str

    def expect(self, *codes: int) -> dict[str, Any]:
        assert self.code in codes, f"exit {self.code}:\n{self.stderr[-5000:]}"
        return self.result


def finish(process: subprocess.Popen) -> Outcome:
    try:
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(60)  # not communicate(): a Ray process in a session of its own keeps the pipes
        raise AssertionError(f"{process.args!r} still running after {RUN_TIMEOUT_S} s") from None
    text = stdout.strip()
    return Outcome(process.returncode, json.loads(text) if text.startswith("{") else {}, stderr)


def driver(cluster: TeamCluster, team: Team, home: Path, **extra: str) -> Driver:
    return Driver(cluster, team, home, extra)


# --------------------------------------------------------------------------- reading the state


def table(team: Team, name: str, columns: str = "*") -> list[dict[str, Any]]:
    """The rows of a table in the team's database ([] before the table exists)."""
    engine = sa.create_engine(
        team.database.replace("postgresql://", "postgresql+psycopg2://"),
        connect_args={"password": team.servers.env["PGPASSWORD"], "connect_timeout": 5},
    )
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(name):
                return []
            rows = conn.execute(sa.text(f"SELECT {columns} FROM {name}"))
            return [dict(row._mapping) for row in rows]
    finally:
        engine.dispose()


def entries(team: Team) -> list[dict[str, Any]]:
    """The cache index's rows."""
    return table(team, "entries", "series_id, content_hash, recipe_id, file, n_frames")


def identity(rows: list[dict[str, Any]]) -> list[tuple]:
    """What a series' entry must be whichever run indexed it (not which file holds it)."""
    return sorted((r["series_id"], r["content_hash"], r["recipe_id"], r["n_frames"]) for r in rows)


def indexed_once(team: Team, bucket: Bucket, series: int) -> list[dict[str, Any]]:
    """Every series has one entry, and every entry's feature file is an object in the store."""
    rows = entries(team)
    ids = [row["series_id"] for row in rows]
    assert len(ids) == len(set(ids)) == series, sorted(ids)
    prefix = store_prefix(team)
    stored = set(bucket.keys(f"{prefix}/cache/"))
    missing = {row["file"] for row in rows if not any(k.endswith(row["file"]) for k in stored)}
    assert not missing, f"indexed files missing from {team.store}/cache: {sorted(missing)[:5]}"
    return rows


def store_prefix(team: Team) -> str:
    return team.store.removeprefix(f"s3://{team.servers.bucket}/")


def state_left_on(homes: list[Path]) -> list[str]:
    """Files under the homes that belong in the database or the store."""
    found = []
    for home in homes:
        for path in home.rglob("*"):
            relative = path.relative_to(home)
            if path.is_file() and (
                path.suffix in STATE_SUFFIXES or relative.parts[0] in STATE_FOLDERS
            ):
                found.append(str(path))
    return found


def when_indexing(team: Team, process: subprocess.Popen, strike: Callable[[], None]) -> int:
    """Wait until the run has indexed its first series, then `strike`. Fails if the run had
    indexed every series first (the fault would have hit no extraction)."""
    wait_until(lambda: bool(entries(team)) or process.poll() is not None, 600, "first entry")
    indexed = len(entries(team))
    assert process.poll() is None and indexed < len(DAYS) * CLIPS_PER_PARTITION, (
        f"the fault came too late: {indexed} series indexed, run exit {process.poll()}"
    )
    strike()
    return indexed


def series_of(result: dict[str, Any]) -> dict[str, int]:
    return {done["partition"]: done["series"] for done in result["done"]}


# --------------------------------------------------------------------------- the cluster itself

NODE_PROBE = """
import json, os, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On

@ray.remote(num_cpus=1)
def probe():
    names = ("PGPASSWORD", "AWS_SECRET_ACCESS_KEY")
    return {
        "home": os.environ.get("LSTMPIPE_HOME"),
        "credentials": sorted(name for name in names if name in os.environ),
    }

ray.init(log_to_driver=False)
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
print(json.dumps([ray.get(probe.options(scheduling_strategy=On(n, soft=False)).remote())
                  for n in nodes]))
"""


def test_each_node_has_its_own_home_and_the_team_credentials(
    team_cluster: TeamCluster, team: Team, tmp_path: Path
) -> None:
    """The ground the other tests stand on: two nodes, each with a home of its own (neither
    the driver's), both with the team's credentials, joined with Ray's token."""
    env = team_cluster.driver_env(tmp_path / "driver", team.database, team.store)
    done = subprocess.run(
        [sys.executable, "-c", NODE_PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    nodes = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(n["home"] for n in nodes) == sorted(str(h) for h in team_cluster.homes)
    assert all(n["credentials"] == ["AWS_SECRET_ACCESS_KEY", "PGPASSWORD"] for n in nodes)


# --------------------------------------------------------------------------- (a) nightly


def test_nightly_from_the_bucket_on_two_nodes_keeps_nothing_on_a_home(
    team_cluster: TeamCluster, team: Team, bucket: Bucket, sample: Path, tmp_path: Path
) -> None:
    model = f"team-{uuid.uuid4().hex[:6]}"
    upload_nights(bucket, sample, DAYS[:2])
    bad = add_bad_files(tmp_path / "bad")  # broken.mp4, truncated.mp4
    for path in bad:
        bucket.upload(path, under=f"{DAYS[0]}/grow/")
    first_home = tmp_path / "driver-1"
    night = driver(team_cluster, team, first_home).run(
        "nightly", bucket.root, "--model", model, *FEATURES, *TRAIN
    )
    first = night.expect(3)  # the two bad files: recorded failures, exit 3
    parts = first["partitions"]
    assert sorted(series_of(parts)) == list(DAYS[:2])
    assert (parts["extracted"], parts["failed"]) == (2 * CLIPS_PER_PARTITION, len(bad))
    assert first["train"]["train"]["version"] == "1"
    assert first["promote"]["promoted"], first["promote"]
    predictions = first["infer"]["predictions"]
    assert predictions.startswith(team.store), predictions
    table_ = pq.read_table(
        io.BytesIO(bucket.read(predictions.removeprefix(f"s3://{bucket.name}/")))
    )
    assert table_.num_rows == 2 * CLIPS_PER_PARTITION
    prefix = store_prefix(team)
    failures = bucket.keys(f"{prefix}/failures/")
    assert failures, f"no failure objects under {team.store}/failures/"
    failed = pq.read_table(io.BytesIO(bucket.read(failures[0]))).column("series_id").to_pylist()
    assert {Path(s).name for s in failed} == {p.name for p in bad}
    indexed_once(team, bucket, 2 * CLIPS_PER_PARTITION)
    homes = [first_home, *team_cluster.homes]
    assert state_left_on(homes) == []

    # The next night lands; a driver with a fresh home does only it, and trains again.
    upload_nights(bucket, sample, DAYS[2:])
    second_home = tmp_path / "driver-2"
    again = driver(team_cluster, team, second_home).run(
        "nightly", bucket.root, "--model", model, *FEATURES, *TRAIN
    )
    second = again.expect(0, 3)
    parts = second["partitions"]
    assert series_of(parts) == {DAYS[2]: CLIPS_PER_PARTITION}
    assert (parts["already_done"], parts["extracted"]) == (2, CLIPS_PER_PARTITION)
    assert second["train"]["train"]["version"] == "2"
    indexed_once(team, bucket, 3 * CLIPS_PER_PARTITION)
    done = {row["partition"] for row in table(team, "done")}
    assert done == set(DAYS)
    client = MlflowClient(team_cluster.mlflow_uri, registry_uri=team_cluster.mlflow_uri)
    assert client.get_model_version_by_alias(model, "champion").version in {"1", "2"}
    assert state_left_on([second_home, *homes]) == []


# --------------------------------------------------------------------------- (b) two drivers


def test_two_drivers_at_once_index_each_series_once_and_leave_one_champion(
    team_cluster: TeamCluster,
    team: Team,
    bucket: Bucket,
    sample: Path,
    tmp_path: Path,
    uninterrupted: list[tuple],
) -> None:
    model = f"team-{uuid.uuid4().hex[:6]}"
    upload_nights(bucket, sample, DAYS)
    drivers = [driver(team_cluster, team, tmp_path / f"driver-{i}") for i in (1, 2)]

    runs = [d.start("backfill", bucket.root, "--all", *FEATURES) for d in drivers]
    results = [finish(run).expect(0) for run in runs]
    rows = indexed_once(team, bucket, len(DAYS) * CLIPS_PER_PARTITION)
    assert identity(rows) == uninterrupted
    # each series extracted by one or both (a race lost is work wasted, never a second entry)
    assert len(rows) <= sum(r["extracted"] for r in results) <= 2 * len(rows), results
    done = table(team, "done")
    assert sorted(row["partition"] for row in done) == list(DAYS)

    training = [d.start("train", bucket.root, "--model", model, *FEATURES, *TRAIN) for d in drivers]
    versions = sorted(finish(t).expect(0)["train"]["version"] for t in training)
    assert versions == ["1", "2"]
    promotions = [
        d.start("promote", model, "--version", v) for d, v in zip(drivers, versions, strict=True)
    ]
    decisions = [finish(p).expect(0) for p in promotions]
    client = MlflowClient(team_cluster.mlflow_uri, registry_uri=team_cluster.mlflow_uri)
    champion = client.get_model_version_by_alias(model, "champion").version
    history = sorted(
        (row for row in table(team, "decisions") if row["model"] == model), key=lambda r: r["id"]
    )
    assert len(history) == 2, history
    # serialised: the second decision saw the champion the first one left
    first, second = history
    assert second["champion_version"] == first["champion_after"], (history, decisions)
    assert second["champion_after"] == champion, (history, decisions)


# --------------------------------------------------------------------------- (c) faults


def test_a_worker_node_killed_mid_extraction_the_run_completes(
    team_cluster: TeamCluster, team: Team, bucket: Bucket, sample: Path, tmp_path: Path
) -> None:
    upload_nights(bucket, sample, DAYS)
    run = driver(team_cluster, team, tmp_path / "driver").start(
        "backfill", bucket.root, "--all", *FEATURES
    )
    try:
        when_indexing(team, run, team_cluster.worker.kill)
        outcome = finish(run)
    finally:
        team_cluster.worker.start()
        team_cluster.wait_for_nodes(2)
    outcome.expect(0)
    indexed_once(team, bucket, len(DAYS) * CLIPS_PER_PARTITION)


@pytest.mark.parametrize(
    ("stop", "start", "down_s"),
    [
        (TeamServers.stop_seaweed, TeamServers.start_seaweed, 8),
        (TeamServers.stop_postgres, TeamServers.start_postgres, 5),
    ],
    ids=["s3-server", "postgresql"],
)
def test_a_server_down_for_a_while_mid_run_is_ridden_out(
    team_cluster: TeamCluster,
    team: Team,
    bucket: Bucket,
    sample: Path,
    tmp_path: Path,
    stop: Callable[[TeamServers], None],
    start: Callable[[TeamServers], None],
    down_s: float,
) -> None:
    """The S3 server stopped, or PostgreSQL restarted, for less than retry_s: the run waits."""
    upload_nights(bucket, sample, DAYS)
    servers = team.servers
    run = driver(team_cluster, team, tmp_path / "driver").start(
        "backfill", bucket.root, "--all", *FEATURES
    )
    try:
        when_indexing(team, run, lambda: stop(servers))
        time.sleep(down_s)
    finally:
        start(servers)
    finish(run).expect(0)
    indexed_once(team, bucket, len(DAYS) * CLIPS_PER_PARTITION)


def test_the_s3_server_down_past_retry_s_stops_the_run_naming_it_with_nothing_half_indexed(
    team_cluster: TeamCluster, team: Team, bucket: Bucket, sample: Path, tmp_path: Path
) -> None:
    upload_nights(bucket, sample, DAYS)
    servers = team.servers
    run = driver(team_cluster, team, tmp_path / "driver", LSTMPIPE_STATE_RETRY_S="3").start(
        "backfill", bucket.root, "--all", *FEATURES
    )
    try:
        when_indexing(team, run, servers.stop_seaweed)
        outcome = finish(run)
    finally:
        servers.start_seaweed()
    assert outcome.code not in (0, 3), outcome.result
    assert servers.endpoint.removeprefix("http://") in outcome.stderr, outcome.stderr[-3000:]
    # whatever was indexed has its features in the store
    rows = entries(team)
    indexed_once(team, bucket, len(rows))


def test_a_driver_sigkilled_and_run_again_equals_the_uninterrupted_run(
    team_cluster: TeamCluster,
    team: Team,
    bucket: Bucket,
    sample: Path,
    tmp_path: Path,
    uninterrupted: list[tuple],
) -> None:
    upload_nights(bucket, sample, DAYS)
    home = tmp_path / "driver"
    run = driver(team_cluster, team, home).start("backfill", bucket.root, "--all", *FEATURES)
    when_indexing(team, run, lambda: os.killpg(run.pid, signal.SIGKILL))
    run.wait(60)
    driver(team_cluster, team, home).run("backfill", bucket.root, "--all", *FEATURES).expect(0)
    interrupted = indexed_once(team, bucket, len(DAYS) * CLIPS_PER_PARTITION)
    assert identity(interrupted) == uninterrupted
    assert sorted((r["partition"], r["series"]) for r in table(team, "done")) == [
        (day, CLIPS_PER_PARTITION) for day in DAYS
    ]
