"""Decode any series into frame chunks: one dispatch on `SeriesRef.kind` (SPEC §3, stage 1).

Everything downstream sees only FrameChunks (frames + t) and a metadata dict;
each source kind (lib/sources/kinds/) brings its own opener.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from lstmpipe.lib.config import SamplingConfig, SourcesConfig
from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.series import FrameChunk, OpenSeries, SeriesRef
from lstmpipe.lib.sources.archives import ArchiveLimits
from lstmpipe.lib.sources.kinds import KINDS


def decode(
    ref: SeriesRef,
    sampling: SamplingConfig,
    tmp_dir: Path,
    limits: ArchiveLimits = ArchiveLimits(),
    sources: SourcesConfig = SourcesConfig(),
) -> Iterator[FrameChunk]:
    """The series' frames in bounded chunks; BadInput naming `ref.location` if it is unreadable."""
    with open_series(ref, sampling, tmp_dir, limits, sources) as series:
        yield from series.chunks


def describe(
    ref: SeriesRef,
    sampling: SamplingConfig,
    tmp_dir: Path,
    limits: ArchiveLimits = ArchiveLimits(),
    sources: SourcesConfig = SourcesConfig(),
) -> dict[str, Any]:
    """The series' metadata (source kind, fps, size, duration, ...) without decoding frames."""
    with open_series(ref, sampling, tmp_dir, limits, sources) as series:
        return series.meta


@contextmanager
def open_series(
    ref: SeriesRef,
    sampling: SamplingConfig,
    tmp_dir: Path,
    limits: ArchiveLimits = ArchiveLimits(),
    sources: SourcesConfig = SourcesConfig(),
) -> Iterator[OpenSeries]:
    """Metadata and lazy chunks sharing one input (one temp copy for a compressed member)."""
    opener = _OPENERS.get(ref.kind)
    if opener is None:
        raise BadInput(
            ref.location, f"unknown series kind {ref.kind!r}; known: {', '.join(sorted(_OPENERS))}"
        )
    with opener(ref, sampling, Path(tmp_dir), limits, sources) as series:
        try:
            yield series
        finally:
            series.chunks.close()  # stops the decoder when the consumer leaves early


_Opener = Callable[
    [SeriesRef, SamplingConfig, Path, ArchiveLimits, SourcesConfig],
    AbstractContextManager[OpenSeries],
]
_OPENERS: dict[str, _Opener] = {kind.name: kind.open for kind in KINDS}
