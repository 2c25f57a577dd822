"""The local Prefect API server that outlives one command: `python -m lstmpipe.flows.local_api`.

Started by the first command that needs it (flows/startup.local_api), it serves every later
command on the same PREFECT_HOME until no command has used it for `idle_s` seconds: a
command pays Prefect's boot (5-8 s) once, not each time. Commands hold a shared flock on
LEASE while they use the server; the server stops only when it can take that lock
exclusively and has held it free for `idle_s`, so it never stops under a running command,
and a command arriving as it stops waits, then starts a fresh one.

It writes ADDRESS (url, pid, auth string; readable by its owner only) once it answers, and
removes it as it stops. It also stops when ADDRESS is gone or names another server (its
home was deleted, or a newer server replaced a stale file).

A new state directory's database starts as a copy of an empty, migrated one kept per Prefect
version under ~/.cache/lstmpipe (made by the first boot that migrated one): Prefect's
migrations take 6 s or more, and a state directory would otherwise pay them on its first
command.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sqlite3
import threading
import time
from contextlib import closing, suppress
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import uvicorn

ADDRESS = "lstmpipe-api.json"  # under PREFECT_HOME
LEASE = "lstmpipe-api.lease"
POLL_S = 0.5


def serve(home: Path, port: int, idle_s: float) -> None:
    """Serve Prefect's API on 127.0.0.1:`port` until idle; the auth string comes from the
    environment (PREFECT_SERVER_API_AUTH_STRING), never the command line."""
    import uvicorn  # late: the CLI imports this module for its file names only

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            """SIGTERM or SIGINT: no longer offered to new commands. uvicorn re-raises the
            signal once stopped, so the process ends by it and nothing after run() executes."""
            _forget(home / ADDRESS)
            super().handle_exit(sig, frame)

    server = Server(
        uvicorn.Config(
            "prefect.server.api.server:create_app",
            factory=True,
            host="127.0.0.1",
            port=port,
            log_level="error",
            lifespan="on",
        )
    )
    database = _default_database(home)
    # made by this boot's migrations, from nothing: the template for later state directories
    new = database is not None and not database.exists() and not _seed(database)
    watcher = threading.Thread(
        target=_watch, args=(server, home, port, idle_s, database if new else None), daemon=True
    )
    watcher.start()
    try:
        server.run()
    finally:
        _forget(home / ADDRESS)


def _watch(
    server: uvicorn.Server, home: Path, port: int, idle_s: float, new_database: Path | None
) -> None:
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.05)
    if new_database is not None:  # before any command writes to it: still empty
        _keep_template(new_database)
    address = home / ADDRESS
    _publish(address, port)
    lease = (home / LEASE).open("ab")
    idle_since = time.monotonic()
    while not server.should_exit:
        time.sleep(POLL_S)
        if not _still_ours(address):
            break
        try:
            fcntl.flock(lease, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a command is using the server
            idle_since = time.monotonic()
            continue
        if time.monotonic() - idle_since >= idle_s:
            _forget(address)  # under the exclusive lock: no command can be reading it now
            break  # the lock is kept until this process exits
        fcntl.flock(lease, fcntl.LOCK_UN)
    server.should_exit = True


def _default_database(home: Path) -> Path | None:
    """Prefect's SQLite file under `home`; None when a database URL is configured."""
    configured = ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")
    return None if any(os.environ.get(name) for name in configured) else home / "prefect.db"


def _template() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    return cache / "lstmpipe" / f"prefect-{version('prefect')}.db"


def _seed(database: Path) -> bool:
    """A new database as a copy of the migrated template; False when there is none (or it cannot
    be copied: Prefect then migrates, as without one)."""
    template = _template()
    partial = database.with_name(f".{database.name}.{os.getpid()}")
    try:
        if not template.is_file():
            return False
        shutil.copyfile(template, partial)
        partial.replace(database)
    except OSError:
        with suppress(OSError):
            partial.unlink(missing_ok=True)
        return False
    return True


def _keep_template(database: Path) -> None:
    """The freshly migrated `database` as the template, when there is none yet; best effort (a
    read-only home in a container has no cache to keep it in)."""
    template = _template()
    partial = template.with_name(f".{template.name}.{os.getpid()}")
    try:
        if template.exists() or not database.is_file():
            return
        template.parent.mkdir(parents=True, exist_ok=True)
        with (
            closing(sqlite3.connect(database)) as source,
            closing(sqlite3.connect(partial)) as copy,
        ):
            source.backup(copy)  # consistent, whatever the server has in its write-ahead log
        partial.replace(template)
    except (OSError, sqlite3.Error):
        with suppress(OSError):
            partial.unlink(missing_ok=True)


def _publish(address: Path, port: int) -> None:
    """ADDRESS, private: it holds the auth string. Written while the command that started this
    server holds the boot lock, so no other command reads it half-written."""
    document = {
        "url": f"http://127.0.0.1:{port}/api",
        "pid": os.getpid(),
        "auth_string": os.environ["PREFECT_SERVER_API_AUTH_STRING"],
    }
    write_private(address, json.dumps(document))


def write_private(path: Path, text: str) -> None:
    """A file only its owner can read, created afresh (O_EXCL: never through a planted link, never
    an older file's looser mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(text)


def _still_ours(address: Path) -> bool:
    try:
        return json.loads(address.read_text()).get("pid") == os.getpid()
    except (OSError, ValueError):
        return False


def _forget(address: Path) -> None:
    if _still_ours(address):
        address.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="PREFECT_HOME")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--idle-s", type=float, required=True)
    args = parser.parse_args()
    serve(args.home, args.port, args.idle_s)


if __name__ == "__main__":
    main()
