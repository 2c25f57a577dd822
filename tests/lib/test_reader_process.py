"""lib.sources.reader_process: series read in a pooled reader process, as in-process, and one frame
cap for every kind (lib.sources.frames.capped, applied by decode).

Readers that misbehave are tested in tests/security/test_reader_budget.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from lstmpipe.lib.config import SamplingConfig, SourcesConfig
from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.series import FrameChunk, OpenSeries, SeriesRef
from lstmpipe.lib.sources import decode as decode_module
from lstmpipe.lib.sources import reader_process
from lstmpipe.lib.sources.archives import ArchiveLimits
from lstmpipe.lib.sources.frames import MAX_FRAMES, capped, chunked
from lstmpipe.lib.sources.reader_process import open_in_reader
from tests.security import hostile_readers

SMALL = SamplingConfig(fps=None, size=8, chunk_frames=8, timeout_s=5.0)
REPO = Path(__file__).resolve().parents[2]


def _ref(path: Path) -> SeriesRef:
    return SeriesRef(series_id=path.name, content_hash="0" * 16, kind="test", path=str(path))


@contextmanager
def _open(opener: str, path: Path) -> Iterator[OpenSeries]:
    with open_in_reader(
        f"tests.security.hostile_readers:{opener}",
        _ref(path),
        SMALL,
        path.parent,
        ArchiveLimits(),
        SourcesConfig(),
    ) as series:
        yield series


def _log(path: Path) -> list[str]:
    log = Path(f"{path}.log")
    return log.read_text().split() if log.exists() else []


def _alive(pid: int) -> bool:
    """Running, not a zombie: the reader's parent may not have reaped it yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_series_comes_back_as_decoded_in_the_reader(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    with _open("honest", path) as series:
        chunks = list(series.chunks)
    assert series.meta["source_kind"] == "test"
    assert [(c.start, len(c)) for c in chunks] == [(0, 8), (8, 8), (16, 8), (24, 8), (32, 8)]
    frames = np.concatenate([c.frames for c in chunks])
    assert frames.shape == (40, 8, 8, 3) and frames.dtype == np.uint8
    assert frames.flags.writeable  # as in-process: a consumer may normalise in place
    np.testing.assert_array_equal(frames[:, 0, 0, 0], np.arange(40))
    np.testing.assert_array_equal(np.concatenate([c.t for c in chunks]), np.arange(40.0))
    assert _log(path)[-1] == "closed"


def test_closing_early_stops_the_readers_work_on_the_series(tmp_path: Path) -> None:
    path = tmp_path / "long.bin"
    with _open("honest", path) as series:
        first = next(series.chunks)
        series.chunks.close()
        # decoded one chunk on demand, nothing ahead; closed before close() returned
        assert _log(path) == [str(i) for i in range(len(first))] + ["closed"]


def test_metadata_alone_decodes_no_frame(tmp_path: Path) -> None:
    """describe(): the series is opened for its metadata and closed, its chunks never started."""
    path = tmp_path / "meta.bin"
    with _open("honest", path) as series:
        assert series.meta["source_kind"] == "test"
    assert _log(path) == []


def test_one_reader_serves_series_after_series(tmp_path: Path) -> None:
    pids = []
    for name in ("a.bin", "b.bin", "c.bin"):
        with _open("honest", tmp_path / name) as series:
            pids.append(series.meta["pid"])
            assert sum(len(c) for c in series.chunks) == hostile_readers.FRAMES
    assert len(set(pids)) == 1 and pids[0] != os.getpid()


def test_an_error_that_is_not_bad_input_is_raised_as_in_process_and_the_reader_kept(
    tmp_path: Path,
) -> None:
    with _open("breaks", tmp_path / "bug.bin") as series:
        pid = series.meta["pid"]
        with pytest.raises(KeyError, match="a bug in a reader") as raised:
            list(series.chunks)
    assert "in the reader process" in str(raised.value.__cause__)
    with _open("honest", tmp_path / "next.bin") as series:
        assert series.meta["pid"] == pid


def test_shutdown_ends_every_reader(tmp_path: Path) -> None:
    """What atexit runs: no reader outlives its caller."""
    with _open("honest", tmp_path / "a.bin") as series:
        pid = series.meta["pid"]
    assert _alive(pid)
    reader_process.shutdown()
    assert not _alive(pid)


@pytest.mark.slow  # a fresh interpreter importing the decoders, then its reader doing the same
def test_a_reader_leaves_when_its_caller_is_killed(tmp_path: Path) -> None:
    """SIGKILL leaves no atexit: the reader, stuck in a read that never returns, notices its parent
    is gone and exits within a second or two."""
    caller = subprocess.Popen(
        [sys.executable, "-c", _CALLER, str(tmp_path / "x.bin")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert caller.stdout is not None
    pid = int(caller.stdout.readline())  # its reader, now blocked opening a series
    time.sleep(0.5)
    caller.kill()
    caller.wait()
    deadline = time.monotonic() + 5.0
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), "the reader outlived its killed caller"


_CALLER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from lstmpipe.lib.config import SamplingConfig, SourcesConfig
    from lstmpipe.lib.series import SeriesRef
    from lstmpipe.lib.sources.archives import ArchiveLimits
    from lstmpipe.lib.sources.reader_process import open_in_reader

    ref = SeriesRef("x", "0", "test", sys.argv[1])
    args = (ref, SamplingConfig(timeout_s=3600), Path("."), ArchiveLimits(), SourcesConfig())
    with open_in_reader("tests.security.hostile_readers:honest", *args) as series:
        print(series.meta["pid"], flush=True)
    with open_in_reader("tests.security.hostile_readers:sleeps_opening", *args):
        pass
    """
)


@pytest.mark.slow  # a local Ray
@pytest.mark.usefixtures("local_ray")
def test_a_reader_works_from_a_ray_worker(tmp_path: Path) -> None:
    """Ray workers decode too: a reader started from one (not a multiprocessing child, so no
    daemon restriction) serves its series and is reaped when the worker leaves."""
    import ray

    @ray.remote
    def frames_in_worker(repo: str, path: str) -> tuple[int, int, int]:
        sys.path.insert(0, repo)  # where the reader finds tests.security.hostile_readers
        from lstmpipe.lib.sources.reader_process import open_in_reader

        ref = SeriesRef("r", "0", "test", path)
        args = (ref, SMALL, Path(path).parent, ArchiveLimits(), SourcesConfig())
        with open_in_reader("tests.security.hostile_readers:honest", *args) as series:
            return sum(len(c) for c in series.chunks), series.meta["pid"], os.getpid()

    count, reader, worker = ray.get(frames_in_worker.remote(str(REPO), str(tmp_path / "r.bin")))
    assert count == hostile_readers.FRAMES and reader != worker


# ---- the frame cap -------------------------------------------------------------------------------


def test_capped_stops_a_series_past_its_frame_limit_naming_it() -> None:
    images = ((np.zeros((4, 4, 3), np.uint8), float(i)) for i in range(100))
    seen = []
    with pytest.raises(BadInput, match="more than 20 frames decoded, the limit per series") as cap:
        for chunk in capped(chunked(images, SMALL), "/data/bomb.dcm", max_frames=20):
            seen.append(len(chunk))
    assert cap.value.path == "/data/bomb.dcm"
    assert seen == [8, 8]  # the chunk that crosses the limit is not handed out


def test_decode_caps_every_kind_at_max_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """open_here, what the reader runs for every kind: a kind handing out more than MAX_FRAMES
    frames (1x1 pixels, so the test is quick) is stopped by name, whatever its header said."""

    @contextmanager
    def endless(*_: object) -> Iterator[OpenSeries]:
        def chunks():
            start = 0
            while True:
                yield FrameChunk(np.zeros((1 << 16, 1, 1, 3), np.uint8), np.zeros(1 << 16), start)
                start += 1 << 16

        yield OpenSeries({}, chunks())

    monkeypatch.setitem(decode_module._OPENERS, "endless", endless)
    ref = SeriesRef("s", "0", "endless", "/data/endless.tif")
    args = (SMALL, Path("."), ArchiveLimits(), SourcesConfig())
    with decode_module.open_here(ref, *args) as series, pytest.raises(BadInput) as cap:
        for _ in series.chunks:
            pass
    assert cap.value.path == "/data/endless.tif"
    assert f"more than {MAX_FRAMES} frames decoded" in cap.value.reason
