"""Real servers for the integration tests: `prefect server start`, `ray start --head`,
`mlflow server`."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.servers import Server, free_port, start, start_postgres

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Stack:
    env: dict[str, str]  # what a client process needs to use the servers
    prefect_api: str
    mlflow_uri: str
    ray_address: str
    ray_dashboard: str
    mlflow_backend: str  # the MLflow server's store: postgresql://... or sqlite:///...


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("servers")
    token = secrets.token_hex(32)  # Ray's token authentication, on for the head and every client
    base = {
        **os.environ,
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
    }
    prefect_port, mlflow_port, ray_port, dashboard_port = (free_port() for _ in range(4))
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
                base,
                root,
            )
        )
        postgres = start_postgres(pg_work, root)
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
                ],
                f"http://127.0.0.1:{mlflow_port}/health",
                base,
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
                    "--disable-usage-stats",
                ],
                f"http://127.0.0.1:{dashboard_port}/api/version",
                base,
                root,
                headers={"Authorization": f"Bearer {token}"},
            )
        )
        env = {
            **base,
            "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
            "RAY_ADDRESS": f"127.0.0.1:{ray_port}",
        }
        yield Stack(
            env,
            env["PREFECT_API_URL"],
            env["MLFLOW_TRACKING_URI"],
            env["RAY_ADDRESS"],
            f"http://127.0.0.1:{dashboard_port}",
            backend,
        )
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(pg_work, ignore_errors=True)
