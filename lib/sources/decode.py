"""Decode any series into frame chunks: one dispatch on `SeriesRef.kind` (SPEC §3, stage 1).

Everything downstream sees only FrameChunks (frames + t) and a metadata dict;
each source kind (lib/sources/kinds/) brings its own opener.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lstmpipe.lib.config import SamplingConfig, SourcesConfig
from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.series import FrameChunk, OpenSeries, SeriesRef
from lstmpipe.lib.sources.archives import ArchiveLimits
from lstmpipe.lib.sources.bucket import fetched
from lstmpipe.lib.sources.frames import capped
from lstmpipe.lib.sources.kinds import KINDS
from lstmpipe.lib.sources.reader_process import Opener, open_in_reader
from lstmpipe.lib.state.store import is_remote

# how long fetching a series' objects rides out an unreachable object store (state.retry_s)
FETCH_RETRY_S = 120.0


def decode(
    ref: SeriesRef,
    sampling: SamplingConfig,
    tmp_dir: Path,
    limits: ArchiveLimits = ArchiveLimits(),
    sources: SourcesConfig = SourcesConfig(),
    retry_s: float = FETCH_RETRY_S,
) -> Iterator[FrameChunk]:
    """The series' frames in bounded chunks; BadInput naming `ref.location` if it is unreadable."""
    with open_series(ref, sampling, tmp_dir, limits, sources, retry_s) as series:
        yield from series.chunks


def describe(
    ref: SeriesRef,
    sampling: SamplingConfig,
    tmp_dir: Path,
    limits: ArchiveLimits = ArchiveLimits(),
    sources: SourcesConfig = SourcesConfig(),
    retry_s: float = FETCH_RETRY_S,
) -> dict[str, Any]:
    """The series' metadata (source kind, fps, size, duration, ...) without decoding frames."""
    with open_series(ref, sampling, tmp_dir, limits, sources, retry_s) as series:
        return series.meta


@contextmanager
def open_series(
    ref: SeriesRef,
    sampling: SamplingConfig,
    tmp_dir: Path,
    limits: ArchiveLimits = ArchiveLimits(),
    sources: SourcesConfig = SourcesConfig(),
    retry_s: float = FETCH_RETRY_S,
) -> Iterator[OpenSeries]:
    """Metadata and lazy chunks sharing one input (one temp copy for a compressed member).

    Video is decoded by ffmpeg, already a watched child process; every other kind is read in a
    reader process (reader_process.py) that is killed when silent for `sampling.timeout_s`.
    A series in a bucket (`s3://`) is first fetched under `tmp_dir`, each object only while it
    has the ETag discovery hashed, and read from those copies, removed when it is closed: any
    node decodes it, through the same readers and checks as a file on disk.
    """
    if ref.kind not in _OPENERS:
        raise BadInput(
            ref.location, f"unknown series kind {ref.kind!r}; known: {', '.join(sorted(_OPENERS))}"
        )
    if is_remote(ref.path):
        with (
            fetched(ref, Path(tmp_dir), retry_s) as local,
            open_series(local, sampling, tmp_dir, limits, sources) as series,
        ):
            yield series
        return
    if ref.kind in _OWN_PROCESS:
        with open_here(ref, sampling, Path(tmp_dir), limits, sources) as series:
            yield series
        return
    with open_in_reader(_HERE, ref, sampling, Path(tmp_dir), limits, sources) as series:
        yield series


@contextmanager
def open_here(
    ref: SeriesRef,
    sampling: SamplingConfig,
    tmp_dir: Path,
    limits: ArchiveLimits,
    sources: SourcesConfig,
) -> Iterator[OpenSeries]:
    """The series opened in this process by its kind, its frames capped at MAX_FRAMES."""
    with _OPENERS[ref.kind](ref, sampling, tmp_dir, limits, sources) as series:
        try:
            yield OpenSeries(series.meta, capped(series.chunks, ref.location))
        finally:
            series.chunks.close()  # stops the decoder when the consumer leaves early


_OPENERS: dict[str, Opener] = {kind.name: kind.open for kind in KINDS}
_OWN_PROCESS = frozenset({"video"})  # kinds whose decoder is a watched process of its own
_HERE = f"{__name__}:{open_here.__name__}"  # what a reader process runs
