"""Start the real servers on free localhost ports, wait for health, stop them for sure.

Each server runs in its own session so that terminate -> grace -> kill reaches
every child it spawned (uvicorn workers, Ray's GCS and raylet).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HEALTH_TIMEOUT_S = 120
GRACE_S = 15


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(GRACE_S)


def start(
    name: str,
    command: list[str],
    health_url: str,
    env: dict[str, str],
    log_dir: Path,
    headers: dict[str, str] | None = None,
) -> Server:
    """Launch `command`, then poll `health_url` until it answers 200 (or fail with the log tail)."""
    return _start(name, command, env, log_dir, lambda: _http_ok(health_url, headers), health_url)


def start_postgres(work: Path, log_dir: Path) -> tuple[Server, str] | None:
    """A throwaway PostgreSQL cluster on a free localhost port, or None where PostgreSQL is missing.

    Returns the server and a SQLAlchemy URL of an `mlflow` database on it. initdb and postgres
    refuse to run as root: as root they run as the `postgres` user, so `work` (a directory
    that user can reach, not under pytest's private temp root) is handed to it.
    """
    initdb, postgres, createdb = (shutil.which(b) for b in ("initdb", "postgres", "createdb"))
    if not (initdb and postgres and createdb):
        return None
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(work, "postgres", "postgres")
    data, port = work / "data", free_port()
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-U", "lstmpipe", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    server = _start(
        "postgres",
        [*as_user, postgres, "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(work)],
        dict(os.environ),
        log_dir,
        lambda: (
            subprocess.run(
                [createdb, "-h", "127.0.0.1", "-p", str(port), "-U", "lstmpipe", "mlflow"],
                capture_output=True,
                timeout=30,
            ).returncode
            == 0
        ),
        f"127.0.0.1:{port}",
    )
    return server, f"postgresql+psycopg2://lstmpipe@127.0.0.1:{port}/mlflow"


def _start(
    name: str,
    command: list[str],
    env: dict[str, str],
    log_dir: Path,
    ready: Callable[[], bool],
    where: str,
) -> Server:
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = Server(name, process, log)
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            )
        if ready():
            return server
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(
        f"{name} not ready at {where} after {HEALTH_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
    )


def _http_ok(url: str, headers: dict[str, str] | None) -> bool:
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers or {}), timeout=2
        ) as answer:
            return answer.status == 200
    except OSError:
        return False
