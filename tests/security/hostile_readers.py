"""Readers that misbehave, run by lstmpipe.lib.sources.reader_process in its reader process.

Each is an Opener named "tests.security.hostile_readers:NAME". `ref.path` is the input; a reader
that reports progress writes it to `ref.path + ".log"` (one line per frame handed to chunking,
then "closed"), so a test can see what the reader process did.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from lstmpipe.lib.config import SamplingConfig
from lstmpipe.lib.series import FrameChunk, OpenSeries, SeriesRef
from lstmpipe.lib.sources.frames import chunked

FRAMES = 40  # frames of the honest reader
_META = {"source_kind": "test"}


def _series(ref: SeriesRef, sampling: SamplingConfig, first: Any) -> Iterator[OpenSeries]:
    """An OpenSeries whose chunks run `first()` before the honest frames."""

    def chunks() -> Generator[FrameChunk, None, None]:
        first()
        yield from _frames(ref, sampling)

    yield OpenSeries({**_META, "pid": os.getpid()}, chunks())


def _frames(ref: SeriesRef, sampling: SamplingConfig) -> Generator[FrameChunk, None, None]:
    """FRAMES grey 8x8 frames, logged as they are made; "closed" when the generator ends."""
    log = Path(ref.path + ".log")

    def images() -> Iterator[tuple[np.ndarray, float]]:
        for i in range(FRAMES):
            with log.open("a") as out:
                out.write(f"{i}\n")
            yield np.full((8, 8, 3), i, dtype=np.uint8), float(i)

    try:
        yield from chunked(images(), sampling)
    finally:
        with log.open("a") as out:
            out.write("closed\n")


@contextmanager
def honest(ref: SeriesRef, sampling: SamplingConfig, *_: Any) -> Iterator[OpenSeries]:
    yield from _series(ref, sampling, lambda: None)


@contextmanager
def sleeps_opening(ref: SeriesRef, sampling: SamplingConfig, *_: Any) -> Iterator[OpenSeries]:
    """A header read that never returns (a hung mount)."""
    time.sleep(3600)
    yield from _series(ref, sampling, lambda: None)


@contextmanager
def reads_fifo(ref: SeriesRef, sampling: SamplingConfig, *_: Any) -> Iterator[OpenSeries]:
    """Metadata, then frames read from `ref.path`: a FIFO no one writes blocks the open forever
    (HDF5 external storage pointed at a named pipe)."""
    yield from _series(ref, sampling, lambda: Path(ref.path).read_bytes())


@contextmanager
def exits(ref: SeriesRef, sampling: SamplingConfig, *_: Any) -> Iterator[OpenSeries]:
    """A decoder that ends the process (a C library calling exit)."""
    yield from _series(ref, sampling, lambda: os._exit(7))


@contextmanager
def segfaults(ref: SeriesRef, sampling: SamplingConfig, *_: Any) -> Iterator[OpenSeries]:
    """A decoder's memory-safety bug."""
    yield from _series(ref, sampling, lambda: os.kill(os.getpid(), signal.SIGSEGV))


@contextmanager
def allocates(ref: SeriesRef, sampling: SamplingConfig, *_: Any) -> Iterator[OpenSeries]:
    """A reader bomb: 64 GiB for one frame, as a header may ask."""
    yield from _series(ref, sampling, lambda: np.ones(64 << 30, dtype=np.uint8))


@contextmanager
def breaks(ref: SeriesRef, sampling: SamplingConfig, *_: Any) -> Iterator[OpenSeries]:
    """Not bad input: a bug (or the environment) raises as it would in-process."""

    def fail() -> None:
        raise KeyError("a bug in a reader")

    yield from _series(ref, sampling, fail)
