"""Team-mode state for tests: a real PostgreSQL and a real S3 server (SeaweedFS), started once.

`team` gives a database URL (fresh database per test) and a bucket URL (fresh prefix per
test) with the credentials in the environment, as a deployment passes them: PGPASSWORD and
the AWS variables, never in a URL or a config value. `team_cluster` adds two Ray nodes and an
MLflow server for the end-to-end tests (tests/team/cluster.py); the fault tests stop and
restart PostgreSQL and SeaweedFS through `TeamServers`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.servers import (
    Server,
    create_bucket,
    start_postgres,
    start_seaweed,
    state_credentials,
)
from tests.team.cluster import TeamCluster, relaunch, start_cluster


@dataclass
class TeamServers:
    postgres: Server
    postgres_url: str  # of its `mlflow` database; tests make their own databases
    seaweed: Server
    endpoint: str
    env: dict[str, str]  # PGPASSWORD, AWS_* for clients
    bucket: str

    def new_database(self) -> str:
        """A fresh, empty database on the server: its SQLAlchemy URL (no password)."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        port = self.postgres_url.rsplit(":", 1)[1].split("/")[0]
        subprocess.run(
            [
                shutil.which("createdb") or "createdb",
                "-h",
                "127.0.0.1",
                "-p",
                port,
                "-U",
                "lstmpipe",
                name,
            ],
            check=True,
            capture_output=True,
            env={**os.environ, **self.env},
            timeout=60,
        )
        return f"postgresql://lstmpipe@127.0.0.1:{port}/{name}"

    @property
    def postgres_port(self) -> int:
        return int(self.postgres_url.rsplit(":", 1)[1].split("/")[0])

    def stop_postgres(self) -> None:
        """A fast shutdown (SIGINT: sessions cut, as a server restart does); SIGTERM would
        wait for MLflow's pooled connections to close."""
        os.killpg(self.postgres.process.pid, signal.SIGINT)
        self.postgres.process.wait(60)

    def start_postgres(self) -> None:
        self.postgres = relaunch(self.postgres, self._postgres_ready)

    def stop_seaweed(self) -> None:
        self.seaweed.stop()

    def start_seaweed(self) -> None:
        self.seaweed = relaunch(self.seaweed, self._bucket_ready)

    def _postgres_ready(self) -> bool:
        import psycopg2

        psycopg2.connect(
            host="127.0.0.1",
            port=self.postgres_port,
            user="lstmpipe",
            password=self.env["PGPASSWORD"],
            dbname="mlflow",
            connect_timeout=2,
        ).close()
        return True

    def _bucket_ready(self) -> bool:
        s3_client(self.env).head_bucket(Bucket=self.bucket)
        return True


@dataclass
class Team:
    servers: TeamServers
    database: str  # postgresql://lstmpipe@127.0.0.1:PORT/t_xxx
    store: str  # s3://bucket/t-xxx


@pytest.fixture(scope="session")
def team_servers() -> Iterator[TeamServers]:
    if shutil.which("initdb") is None:
        pytest.skip("PostgreSQL is not installed (initdb not on PATH)")
    work = Path(tempfile.mkdtemp(prefix="lstmpipe-team-", dir="/tmp"))
    work.chmod(0o755)
    (work / "pg").mkdir()
    (work / "s3").mkdir()
    password = secrets.token_urlsafe(16)
    access, secret = "lstmpipe" + secrets.token_hex(4), secrets.token_urlsafe(24)
    servers: list[Server] = []
    team: TeamServers | None = None
    try:
        started = start_postgres(work / "pg", work, password)
        assert started is not None
        servers.append(started[0])
        seaweed, endpoint = start_seaweed(work / "s3", work, access, secret)
        servers.append(seaweed)
        env = state_credentials(password, access, secret, endpoint)
        bucket = "lstmpipe-test"
        create_bucket(s3_client(env), bucket)
        team = TeamServers(started[0], started[1], seaweed, endpoint, env, bucket)
        yield team
    finally:
        if team is not None:  # the fault tests may have restarted them
            servers = [team.postgres, team.seaweed]
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def s3_client(env: dict[str, str]) -> Any:
    """A boto3 S3 client with the team's credentials, for what tests put or read directly."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )


@pytest.fixture
def team(team_servers: TeamServers, monkeypatch: pytest.MonkeyPatch) -> Team:
    """A fresh database and bucket prefix, with the clients' credentials in the environment."""
    for name, value in team_servers.env.items():
        monkeypatch.setenv(name, value)
    return Team(
        team_servers,
        team_servers.new_database(),
        f"s3://{team_servers.bucket}/t-{uuid.uuid4().hex[:10]}",
    )


@pytest.fixture(scope="session")
def team_cluster(team_servers: TeamServers) -> Iterator[TeamCluster]:
    """Two Ray nodes and an MLflow server on the team's servers, once per session."""
    work = Path(tempfile.mkdtemp(prefix="lpc-", dir="/tmp"))  # short: Ray's socket paths
    try:
        cluster = start_cluster(work, team_servers.env, team_servers.postgres_url)
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
