"""Start-up: Prefect's API is found running, or boots while this process imports and loads.

With no Prefect API configured, Prefect would start a temporary API server (a uvicorn
subprocess: 5-8 s here, 14 s the first time a state directory is used, for its migrations)
when the first flow runs, and stop it when the command ends: every command would pay
that boot. Instead the CLI keeps one server per state directory (flows/local_api.py):
the first command starts it, before Prefect is even imported, and loads the backbone
while it boots; later commands find it running and pay nothing; it stops after
`runtime.api_idle_s` seconds without a command. Its database is Prefect's usual one
under PREFECT_HOME ($LSTMPIPE_HOME/prefect), so run history accumulates there.

It binds 127.0.0.1, where every local user can reach it: it requires a random auth
string of its own (PREFECT_SERVER_API_AUTH_STRING), which lives in the server's
environment and in its address file, readable by its owner only.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from lstmpipe.flows.local_api import ADDRESS, LEASE
from lstmpipe.flows.runtime import Runtime

# a first boot migrates a new database: 15 s on 2 idle cores, far more when busy
BOOT_TIMEOUT_S = 120.0
LOG = "lstmpipe-api.log"  # under PREFECT_HOME: the server outlives the command that started it


@dataclass
class TemporaryApi:
    """A Prefect API server of one command's own (`lstmpipe serve`'s): `wait()` before the first
    flow, `stop()` at the end."""

    url: str
    process: subprocess.Popen
    auth_string: str  # what the server requires of every request but its health check

    def wait(self, timeout_s: float = BOOT_TIMEOUT_S) -> None:
        _wait_until(lambda: _answers(self.url), self.process, timeout_s)

    def stop(self) -> None:
        _terminate(self.process)


@dataclass
class LocalApi:
    """The state directory's own Prefect API (flows/local_api.py), leased by this command:
    `wait()` before the first flow, `release()` at the end."""

    url: str
    auth_string: str
    pid: int
    lease: BinaryIO | None  # a shared flock: the server does not stop while it is held
    process: subprocess.Popen | None = None  # set when this command started the server
    boot_lock: BinaryIO | None = None  # held while booting: see local_api

    @property
    def booting(self) -> bool:
        """Started by this command and not yet waited for: its boot can overlap other work."""
        return self.boot_lock is not None

    def wait(self, timeout_s: float = BOOT_TIMEOUT_S) -> None:
        """Until the server this command started answers and has published its address."""
        if self.process is None or self.boot_lock is None:
            return
        home = Path(self.boot_lock.name).parent

        def published() -> bool:
            found = _running(home)
            return found is not None and found.pid == self.pid

        try:
            _wait_until(published, self.process, timeout_s, home / LOG)
        finally:
            self.boot_lock.close()  # closing the file drops its flock
            self.boot_lock = None

    def release(self) -> None:
        """This command is done with the server; it stops once idle for `runtime.api_idle_s`."""
        for held in (self.boot_lock, self.lease):
            if held is not None:
                held.close()
        self.boot_lock = self.lease = None

    def stop(self) -> None:
        """Stop the server now, whoever started it (tests; a server that failed to boot)."""
        self.release()
        if self.process is not None:
            _terminate(self.process)
            return
        with suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)


def local_api(env: Mapping[str, str] | None = None, idle_s: float = 0.0) -> LocalApi | None:
    """The state directory's Prefect API, found running or booting in the background, unless
    one is configured (PREFECT_API_URL, or a Prefect profile naming a server); run flows inside
    `using(api)`. A server started here stops after `idle_s` seconds without a command."""
    env = os.environ if env is None else env
    if env.get("PREFECT_API_URL") or _profile_names_a_server(env):
        return None
    home = Path(env.get("PREFECT_HOME", "~/.prefect")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    lease = (home / LEASE).open("ab")
    fcntl.flock(lease, fcntl.LOCK_SH)  # waits while a server stops; then none is running
    if (found := _running(home)) is not None:
        return LocalApi(found.url, found.auth_string, found.pid, lease)
    # Two commands starting at once on one state directory would both migrate Prefect's database
    # and one would die ("duplicate column name"): boots take turns, each holding the lock until
    # its server has published its address (wait()); the next then finds that server.
    boot_lock = (home / ".lstmpipe-boot.lock").open("ab")
    fcntl.flock(boot_lock, fcntl.LOCK_EX)
    if (found := _running(home)) is not None:
        boot_lock.close()
        return LocalApi(found.url, found.auth_string, found.pid, lease)
    port, auth_string = _free_port(), new_auth_string()
    server_env = {
        **env,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        "PREFECT_SERVER_API_AUTH_STRING": auth_string,
    }
    command = [sys.executable, "-m", "lstmpipe.flows.local_api", "--home", str(home)]
    command += ["--port", str(port), "--idle-s", str(idle_s)]
    with (home / LOG).open("ab") as log:
        process = subprocess.Popen(
            command,
            env=server_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not stopped with the command's terminal or process group
        )
    url = f"http://127.0.0.1:{port}/api"
    return LocalApi(url, auth_string, process.pid, lease, process, boot_lock)


@dataclass(frozen=True)
class _Found:
    url: str
    auth_string: str
    pid: int


def _running(home: Path) -> _Found | None:
    """The server ADDRESS names, when its process lives and it answers."""
    try:
        document = json.loads((home / ADDRESS).read_text())
        found = _Found(document["url"], document["auth_string"], int(document["pid"]))
        os.kill(found.pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found if _answers(found.url) else None


def _answers(url: str) -> bool:
    """Whether the API at `url` says it is healthy (the one request that needs no auth)."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def _wait_until(
    ready: Callable[[], bool], process: subprocess.Popen, timeout_s: float, log: Path | None = None
) -> None:
    """Until `ready()`; the server `process` is stopped if it does not get there in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            said = f"; its log: {_tail(log)}" if log else ""
            raise RuntimeError(
                f"Prefect's API server exited with code {process.returncode} while starting "
                f"(set PREFECT_API_URL to use a running server instead){said}"
            )
        if ready():
            return
        time.sleep(0.05)
    _terminate(process)
    raise RuntimeError(f"Prefect's API server was not ready within {timeout_s:.0f} s")


def _tail(log: Path | None, size: int = 2000) -> str:
    try:
        return log.read_bytes()[-size:].decode(errors="replace").strip() if log else ""
    except OSError:
        return ""


def _terminate(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def new_auth_string() -> str:
    """A server's Prefect auth string: sent as HTTP basic credentials, `user:password`."""
    return f"lstmpipe:{secrets.token_urlsafe(32)}"


@contextmanager
def using(api: TemporaryApi | LocalApi | None) -> Iterator[None]:
    """Flows inside run against `api` once it answers (Prefect's own settings when None).

    A settings context rather than the environment: Prefect read the environment
    when it was imported, and a process may run several commands (tests do).
    """
    if api is None:
        yield
        return
    from prefect.settings import (
        PREFECT_API_AUTH_STRING,
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    api.wait()
    # Their "Still processing items" warning, while they send what a run queued as it ended, would
    # be the only line after a command's own (a run that stopped at once left events queued); their
    # other warnings (a full queue dropping items) still show.
    for service in ("APILogWorker", "EventsWorker"):
        logging.getLogger(service).addFilter(_not_draining)  # once: the same function
    updates: dict[Any, object] = {  # keys: Prefect's Setting objects
        PREFECT_API_URL: api.url,
        PREFECT_API_AUTH_STRING: api.auth_string,
    }
    if isinstance(api, LocalApi):
        # Heartbeats let a watched server mark a killed run crashed; nothing watches the embedded
        # one, and at exit the heartbeat thread's join cost every command up to a second.
        updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
    with temporary_settings(updates=updates):
        try:
            yield
        finally:
            _send_queued()


# Logs and events still queued when a command ends go to its API before the API stops: at exit
# Prefect drains them with no time limit, and against a stopped API each batch's retries take
# seconds to minutes (a backfill that failed with many task tracebacks hung at exit for over 13
# minutes). Bounded here, so a slow API delays a command by at most this much.
SEND_QUEUED_S = 30.0


def _not_draining(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Still processing items")


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
