"""Real servers for the integration tests: `prefect server start`, `ray start --head`,
`mlflow server` (on PostgreSQL where installed), each requiring authentication.

The clients' credentials are files, named in `Stack.env` the way a deployment names its
secrets (MLFLOW_TRACKING_PASSWORD_FILE, PREFECT_API_AUTH_STRING_FILE, RAY_AUTH_TOKEN_PATH):
lstmpipe reads them (flows/runtime.py, Ray itself); the tests' own HTTP calls use `Stack.secrets`.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.servers import (
    MLFLOW_ADMIN,
    Server,
    free_port,
    mlflow_auth_env,
    start,
    start_postgres,
    write_secret,
)

BIN = Path(sys.executable).parent
# The caller's own credentials never reach the servers or the clients under test.
CREDENTIALS = ("RAY_AUTH_", "PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_", "PGPASS")


@dataclass(frozen=True)
class Secrets:
    ray_token: str
    prefect_auth: str  # PREFECT_SERVER_API_AUTH_STRING
    mlflow_password: str  # MLFLOW_ADMIN's
    postgres_password: str

    def prefect_headers(self) -> dict[str, str]:
        """What Prefect's client sends: HTTP basic with the auth string as user:password."""
        return {"Authorization": f"Basic {base64.b64encode(self.prefect_auth.encode()).decode()}"}

    def ray_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.ray_token}"}

    def values(self) -> list[str]:
        return [self.ray_token, self.prefect_auth, self.mlflow_password, self.postgres_password]


@dataclass(frozen=True)
class Stack:
    env: dict[str, str]  # what a client process needs to use the servers: secrets as files
    prefect_api: str
    mlflow_uri: str
    ray_address: str
    ray_dashboard: str
    mlflow_backend: str  # the MLflow server's store: postgresql://... or sqlite:///...
    secrets: Secrets
    ray_agent: str  # the head's dashboard agent, which serves the job API too
    servers: tuple[Server, ...]

    @property
    def mlflow_login(self) -> dict[str, str]:
        """MLflow's client variables for lstmpipe's account (set them with monkeypatch)."""
        return {
            "MLFLOW_TRACKING_USERNAME": MLFLOW_ADMIN,
            "MLFLOW_TRACKING_PASSWORD": self.secrets.mlflow_password,
        }


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("servers")
    keys = Secrets(*(secrets.token_hex(32) for _ in range(4)))
    files = tmp_path_factory.mktemp("secrets")
    base = {
        **{k: v for k, v in os.environ.items() if not k.startswith(CREDENTIALS)},
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
        # Ray's token authentication, on for the head and every client
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(write_secret(files / "ray-token", keys.ray_token)),
    }
    prefect_port, mlflow_port, ray_port, dashboard_port, agent_port = (
        free_port() for _ in range(5)
    )
    servers: list[Server] = []
    # reachable by the postgres user, unlike pytest's
    pg_work = Path(tempfile.mkdtemp(prefix="lstmpipe-pg-"))
    try:
        servers.append(
            start(
                "prefect",
                [
                    str(BIN / "prefect"),
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(prefect_port),
                    "--no-ui",
                    "--analytics-off",
                ],
                f"http://127.0.0.1:{prefect_port}/api/health",
                {**base, "PREFECT_SERVER_API_AUTH_STRING": keys.prefect_auth},
                root,
            )
        )
        postgres = start_postgres(pg_work, root, keys.postgres_password)
        if postgres is not None:
            servers.append(postgres[0])
        # PostgreSQL where installed
        backend = postgres[1] if postgres else f"sqlite:///{root / 'mlflow.db'}"
        servers.append(
            start(
                "mlflow",
                [
                    str(BIN / "mlflow"),
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(mlflow_port),
                    "--backend-store-uri",
                    backend,
                    "--artifacts-destination",
                    str(root / "mlartifacts"),
                    "--workers",
                    "1",
                    "--app-name",
                    "basic-auth",
                ],
                f"http://127.0.0.1:{mlflow_port}/health",
                {
                    **base,
                    **mlflow_auth_env(root, keys.mlflow_password),
                    "PGPASSWORD": keys.postgres_password,
                },
                root,
            )
        )
        servers.append(
            start(
                "ray",
                [
                    str(BIN / "ray"),
                    "start",
                    "--head",
                    "--block",
                    "--node-ip-address",
                    "127.0.0.1",
                    "--port",
                    str(ray_port),
                    "--num-cpus",
                    "2",
                    "--include-dashboard",
                    "true",
                    "--dashboard-host",
                    "127.0.0.1",
                    "--dashboard-port",
                    str(dashboard_port),
                    "--dashboard-agent-listen-port",
                    str(agent_port),
                    "--disable-usage-stats",
                ],
                f"http://127.0.0.1:{dashboard_port}/api/version",
                base,
                root,
                headers=keys.ray_headers(),
            )
        )
        env = {
            **base,
            "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
            "PREFECT_API_AUTH_STRING_FILE": str(write_secret(files / "prefect", keys.prefect_auth)),
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
            "MLFLOW_TRACKING_USERNAME": MLFLOW_ADMIN,
            "MLFLOW_TRACKING_PASSWORD_FILE": str(
                write_secret(files / "mlflow", keys.mlflow_password)
            ),
            "RAY_ADDRESS": f"127.0.0.1:{ray_port}",
        }
        yield Stack(
            env,
            env["PREFECT_API_URL"],
            env["MLFLOW_TRACKING_URI"],
            env["RAY_ADDRESS"],
            f"http://127.0.0.1:{dashboard_port}",
            backend,
            keys,
            f"http://127.0.0.1:{agent_port}",
            tuple(servers),
        )
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(pg_work, ignore_errors=True)
