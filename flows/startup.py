"""Start-up, overlapped: Prefect's API boots while this process imports and loads the backbone.

With no Prefect API configured, Prefect would start a temporary API server (a
uvicorn subprocess: 8 s here, 14 s the first time a state directory is used, for
its migrations) when the first flow runs, after importing its whole server in this
process (4 s) — and only then would the flow's own work begin. Instead the CLI
starts that same server itself, before Prefect is even imported, points
PREFECT_API_URL at it, and lets it boot while this process imports torch, Prefect
and the flows and builds the backbone. It is stopped when the command ends, as
Prefect's own temporary server is; its database is Prefect's usual one under
PREFECT_HOME ($LSTMPIPE_HOME/prefect), so run history accumulates there.

It binds 127.0.0.1, where every local user can reach it: it requires a random auth
string of its own (PREFECT_SERVER_API_AUTH_STRING), which lives only in the
server's environment and this process's Prefect settings.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lstmpipe.flows.runtime import Runtime

# a first boot migrates a new database: 15 s on 2 idle cores, far more when busy
BOOT_TIMEOUT_S = 120.0


@dataclass
class TemporaryApi:
    """A Prefect API server of this command's own: `wait()` before the first flow, `stop()` at the
    end."""

    url: str
    process: subprocess.Popen
    auth_string: str  # what the server requires of every request but its health check
    boot_lock: BinaryIO | None = None  # held while booting: see start_temporary_api

    def wait(self, timeout_s: float = BOOT_TIMEOUT_S) -> None:
        try:
            self._wait(timeout_s)
        finally:
            self._release()

    def _wait(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"Prefect's temporary API server exited with code {self.process.returncode} "
                    f"while starting (set PREFECT_API_URL to use a running server instead)"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"Prefect's temporary API server did not answer within {timeout_s:.0f} s"
        )

    def _release(self) -> None:
        if self.boot_lock is not None:
            self.boot_lock.close()  # closing the file drops its flock
            self.boot_lock = None

    def stop(self) -> None:
        self._release()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_temporary_api(env: Mapping[str, str] | None = None) -> TemporaryApi | None:
    """Boot Prefect's API in the background unless one is configured (PREFECT_API_URL, or a Prefect
    profile naming a server); run flows inside `using(api)`."""
    env = os.environ if env is None else env
    if env.get("PREFECT_API_URL") or _profile_names_a_server(env):
        return None
    # Two commands starting at once on one state directory would both migrate Prefect's database
    # and one would die ("duplicate column name"): boots take turns, each holding the lock until
    # its server answers (wait()), by when the database is migrated for the next.
    home = Path(env.get("PREFECT_HOME", "~/.prefect")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    boot_lock = (home / ".lstmpipe-boot.lock").open("ab")
    fcntl.flock(boot_lock, fcntl.LOCK_EX)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    auth_string = new_auth_string()
    server_env = {
        **env,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        "PREFECT_SERVER_API_AUTH_STRING": auth_string,
    }
    process = subprocess.Popen(  # the command Prefect's own SubprocessASGIServer runs
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ],
        env=server_env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    return TemporaryApi(url, process, auth_string, boot_lock)


def new_auth_string() -> str:
    """A server's Prefect auth string: sent as HTTP basic credentials, `user:password`."""
    return f"lstmpipe:{secrets.token_urlsafe(32)}"


@contextmanager
def using(api: TemporaryApi | None) -> Iterator[None]:
    """Flows inside run against `api` once it answers (Prefect's own settings when None).

    A settings context rather than the environment: Prefect read the environment
    when it was imported, and a process may run several commands (tests do).
    """
    if api is None:
        yield
        return
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    api.wait()
    with temporary_settings(
        updates={PREFECT_API_URL: api.url, PREFECT_API_AUTH_STRING: api.auth_string}
    ):
        try:
            yield
        finally:
            _send_queued()


# Logs and events still queued when a command ends go to its API before the API stops: at exit
# Prefect drains them with no time limit, and against a stopped API each batch's retries take
# seconds to minutes (a backfill that failed with many task tracebacks hung at exit for over 13
# minutes). Bounded here, so a slow API delays a command by at most this much.
SEND_QUEUED_S = 30.0


def _send_queued() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        service.drain_all(timeout=SEND_QUEUED_S)


def load_backbone_early(rt: Runtime) -> None:
    """Build the configured backbone now, for in-process extraction to reuse (see tasks.extract)."""
    if rt.ray_address is not None:
        return  # Ray actors build their own
    from lstmpipe.tasks.extract import shared_backbone

    shared_backbone(
        rt.config.sampling, rt.config.backbone, Path(rt.torch_hub_dir), rt.config.sources
    )


def _profile_names_a_server(env: Mapping[str, str]) -> bool:
    """Whether the active Prefect profile (PREFECT_HOME/profiles.toml, or PREFECT_PROFILES_PATH)
    sets an API URL."""
    path = Path(
        env.get("PREFECT_PROFILES_PATH")
        or Path(env.get("PREFECT_HOME", "~/.prefect")) / "profiles.toml"
    )
    try:
        profiles = tomllib.loads(path.expanduser().read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False  # no profile file (the usual case), or one Prefect itself will complain about
    active = env.get("PREFECT_PROFILE") or profiles.get("active", "ephemeral")
    return bool(profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL"))


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
