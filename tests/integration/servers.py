"""Start the real servers on free localhost ports, wait for health, stop them for sure.

Each server runs in its own session so that terminate -> grace -> kill reaches
every child it spawned (uvicorn workers, Ray's GCS and raylet).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
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


def start(name: str, command: list[str], health_url: str, env: dict[str, str], log_dir: Path,
          headers: dict[str, str] | None = None) -> Server:
    """Launch `command`, then poll `health_url` until it answers 200 (or fail with the log tail)."""
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = Server(name, process, log)
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(urllib.request.Request(health_url, headers=headers or {}), timeout=2) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"{name} not healthy at {health_url} after {HEALTH_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
