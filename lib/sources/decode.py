"""Decode any series into frame chunks: one dispatch on `SeriesRef.kind` (SPEC §3, stage 1).

Everything downstream sees only FrameChunks (frames + t) and a metadata dict;
the other source kinds (lib/sources/kinds/) bring their own openers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from lstmpipe.lib.config import SamplingConfig, SourcesConfig
from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.series import FrameChunk, OpenSeries, SeriesRef
from lstmpipe.lib.sources.archives import ArchiveLimits, find_member, member_input
from lstmpipe.lib.sources.kinds import KINDS, video


def decode(
    ref: SeriesRef,
    sampling: SamplingConfig,
    tmp_dir: Path,
    limits: ArchiveLimits = ArchiveLimits(),
    sources: SourcesConfig = SourcesConfig(),
) -> Iterator[FrameChunk]:
    """The series' frames in bounded chunks; BadInput naming `ref.location` when it cannot be read."""
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
    """Metadata and a lazy chunk iterator sharing one input (one temp copy for a compressed member)."""
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


@contextmanager
def _open_video(
    ref: SeriesRef,
    sampling: SamplingConfig,
    tmp_dir: Path,
    limits: ArchiveLimits,
    sources: SourcesConfig,
) -> Iterator[OpenSeries]:
    with _input(ref, tmp_dir, limits) as url:
        info = video.probe(url, ref.location, sampling.timeout_s)
        meta = {
            "source_kind": "video",
            "fps": info.fps,
            "width": info.width,
            "height": info.height,
            "duration_s": info.duration_s,
            "codec": info.codec,
            "rotation": info.rotation,
            "sampled_fps": video.output_fps(sampling, info, ref.location),
        }
        yield OpenSeries(meta, video.decode_video(url, ref.location, sampling, info))


@contextmanager
def _input(ref: SeriesRef, tmp_dir: Path, limits: ArchiveLimits) -> Iterator[str]:
    """An ffmpeg input for the file or the archive member; seekable, never a pipe."""
    path = Path(ref.path).resolve()
    if ref.member is None:
        yield str(path)  # absolute: a relative `a:b.mp4` would read as protocol `a`
        return
    with member_input(path, find_member(path, ref.member, limits), tmp_dir) as url:
        yield url


_Opener = Callable[
    [SeriesRef, SamplingConfig, Path, ArchiveLimits, SourcesConfig],
    AbstractContextManager[OpenSeries],
]
_OPENERS: dict[str, _Opener] = {"video": _open_video, **{kind.name: kind.open for kind in KINDS}}
