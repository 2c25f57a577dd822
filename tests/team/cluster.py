"""A team deployment on this one machine, with nothing shared on disk: two Ray nodes (a head and
a worker, each with its own `--temp-dir` and its own LSTMPIPE_HOME), an MLflow server, and the
PostgreSQL and SeaweedFS of `team_servers`; drivers run with a third home.

Ray requires its token (RAY_AUTH_MODE=token, the token a file named by RAY_AUTH_TOKEN_PATH, as in
tests/integration/conftest.py); the nodes get the team's credentials (PGPASSWORD, AWS_*) in their
environment, as infra/ gives them from Secrets. Each node has one CPU: the machine has two.
The fault tests stop and restart the worker node, PostgreSQL and SeaweedFS (`relaunch`).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.integration.conftest import BIN, CREDENTIALS
from tests.integration.servers import (
    GRACE_S,
    HEALTH_TIMEOUT_S,
    Server,
    free_port,
    start,
    write_secret,
)

# The caller's own settings never reach the nodes or the drivers under test.
FOREIGN = (*CREDENTIALS, "LSTMPIPE_", "RAY_", "MLFLOW_", "PREFECT_", "AWS_")
LSTMPIPE = str(BIN / "lstmpipe")
NODE_OBJECT_STORE_BYTES = 200 * 1024**2  # clips of 32 px: Ray's 30 % of RAM is not needed


@dataclass
class RayNode:
    """One `ray start --block` process in its own session: killed as a whole, started again."""

    name: str
    home: Path  # its LSTMPIPE_HOME
    command: list[str]
    env: dict[str, str]
    health_url: str  # the node's own dashboard agent: it answers once its raylet is up
    log_dir: Path
    headers: dict[str, str]
    server: Server | None = None

    def start(self, tries: int = 3) -> None:
        """Started and healthy; tried again when `ray start` gives up (it did on a machine whose
        2 cores ran 10 processes: "Failed to get node info: Deadline Exceeded")."""
        for attempt in range(1, tries + 1):
            try:
                self.server = start(
                    self.name, self.command, self.health_url, self.env, self.log_dir, self.headers
                )
                return
            except RuntimeError:
                if attempt == tries:
                    raise
                self._reap()

    def _reap(self) -> None:
        """What a failed `ray start` left behind (a raylet, an agent): the processes naming
        this node's own temp dir."""
        temp = self.command[self.command.index("--temp-dir") + 1].encode()
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and temp in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)
            except OSError:  # gone meanwhile
                continue

    def kill(self) -> None:
        """SIGKILL to the node's whole session: its raylet, workers and agents die at once."""
        assert self.server is not None
        os.killpg(self.server.process.pid, signal.SIGKILL)
        self.server.process.wait(GRACE_S)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        self._reap()  # an attempt interrupted while it started


@dataclass
class TeamCluster:
    address: str  # RAY_ADDRESS: the head's GCS
    dashboard: str
    mlflow_uri: str
    head: RayNode
    worker: RayNode
    base_env: dict[str, str]  # the caller's environment without its credentials
    team_env: dict[str, str]  # PGPASSWORD, AWS_*
    ray_env: dict[str, str]  # RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH
    token: str
    servers: list[Server] = field(default_factory=list)

    @property
    def homes(self) -> list[Path]:
        return [self.head.home, self.worker.home]

    def driver_env(self, home: Path, database: str, store: str, **extra: str) -> dict[str, str]:
        """What a driver (the `lstmpipe` CLI) runs with: its own home, the team's state, the
        cluster, the MLflow server; Prefect's temporary API is its own, under its home."""
        return {
            **self.base_env,
            **self.team_env,
            **self.ray_env,
            "LSTMPIPE_HOME": str(home),
            "LSTMPIPE_STATE_DATABASE": database,
            "LSTMPIPE_STATE_STORE": store,
            "RAY_ADDRESS": self.address,
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            **extra,
        }

    def alive_nodes(self) -> int:
        """Nodes the GCS counts as alive (the dashboard's view, with the token)."""
        answer = httpx.get(
            f"{self.dashboard}/nodes?view=summary",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10,
        )
        answer.raise_for_status()
        summary = answer.json()["data"]["summary"]
        return sum(1 for node in summary if node["raylet"]["state"] == "ALIVE")

    def wait_for_nodes(self, count: int, timeout_s: float = 120) -> None:
        wait_until(lambda: self.alive_nodes() == count, timeout_s, f"{count} alive Ray nodes")

    def stop(self) -> None:
        for node in (self.worker, self.head):
            node.stop()
        for server in reversed(self.servers):
            server.stop()


def start_cluster(work: Path, team_env: dict[str, str], postgres_url: str) -> TeamCluster:
    """The head, then the worker joining it, then MLflow on the team's PostgreSQL (its `mlflow`
    database) keeping artifacts in a folder of its own: the drivers reach them over HTTP only."""
    token = secrets.token_hex(32)
    base = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
    ray_env = {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(write_secret(work / "ray-token", token)),
        "RAY_USAGE_STATS_ENABLED": "0",
        # On 2 cores running 10 processes, a worker node's raylet registered with the GCS after
        # `ray start` had stopped waiting (30 s by default), and gave up on its dashboard agent
        # after 17 s ("Timed out waiting for file .../dashboard_agent_listen_port_...").
        "RAY_raylet_start_wait_time_s": "120",
        "RAY_agent_register_timeout_ms": "300000",
    }
    headers = {"Authorization": f"Bearer {token}"}
    port, dashboard_port = free_port(), free_port()
    head = _node(
        "ray-head",
        work,
        ["--head", "--port", str(port), "--include-dashboard", "true"]
        + ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port)],
        {**base, **team_env, **ray_env},
        headers,
    )
    worker = _node(
        "ray-worker",
        work,
        ["--address", f"127.0.0.1:{port}"],
        {**base, **team_env, **ray_env},
        headers,
    )
    cluster = TeamCluster(
        f"127.0.0.1:{port}",
        f"http://127.0.0.1:{dashboard_port}",
        "",
        head,
        worker,
        base,
        team_env,
        ray_env,
        token,
    )
    try:
        head.start()
        worker.start()
        cluster.wait_for_nodes(2)
        mlflow_port = free_port()
        (work / "mlartifacts").mkdir()
        cluster.servers.append(
            start(
                "mlflow",
                [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port)]
                + ["--backend-store-uri", postgres_url, "--workers", "1"]
                + ["--artifacts-destination", str(work / "mlartifacts")],
                f"http://127.0.0.1:{mlflow_port}/health",
                {**base, "PGPASSWORD": team_env["PGPASSWORD"]},
                work,
            )
        )
        cluster.mlflow_uri = f"http://127.0.0.1:{mlflow_port}"
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _node(
    name: str, work: Path, role: list[str], env: dict[str, str], headers: dict[str, str]
) -> RayNode:
    """A node of one CPU with its own temp dir, home and ports (two nodes share one host)."""
    home, temp = work / f"{name}-home", work / f"{name}-tmp"
    home.mkdir()
    temp.mkdir()
    agent = free_port()
    command = [
        str(BIN / "ray"),
        "start",
        *role,
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--num-cpus",
        "1",
        "--num-gpus",
        "0",
        "--object-store-memory",
        str(NODE_OBJECT_STORE_BYTES),
        "--temp-dir",
        str(temp),
        "--dashboard-agent-listen-port",
        str(agent),
        "--dashboard-agent-grpc-port",
        str(free_port()),
        "--runtime-env-agent-port",
        str(free_port()),
        "--metrics-export-port",
        str(free_port()),
        "--disable-usage-stats",
    ]
    return RayNode(
        name,
        home,
        command,
        {**env, "LSTMPIPE_HOME": str(home)},
        f"http://127.0.0.1:{agent}/api/local_raylet_healthz",
        work,
        headers,
    )


def relaunch(server: Server, ready: Callable[[], bool]) -> Server:
    """The same command again (same data directory, same ports) after `server` was stopped:
    a restarted PostgreSQL or SeaweedFS."""
    log = server.log.with_name(f"{server.log.stem}-again.log")
    with log.open("wb") as out:
        process = subprocess.Popen(
            server.process.args,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
            start_new_session=True,
        )
    wait_until(ready, HEALTH_TIMEOUT_S, f"{server.name} again (log {log})")
    return Server(server.name, process, log)


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"no {what} after {timeout_s:.0f} s (last error: {last!r})")
