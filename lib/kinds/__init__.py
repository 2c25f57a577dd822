"""Source kinds other than video (SPEC §2): each groups files into series and opens a series.

A kind is two functions, both given the `sources` section of the configuration:
    claim(base, files, memo, sources) -> Claim   which of `files` (sorted, under the folder `base`)
                                       are its series; claimed files are not offered to later kinds
    open(ref, sampling, tmp_dir, limits, sources) -> context manager of OpenSeries   metadata + lazy FrameChunks
Kinds are tried in the order of KINDS (most specific first); whatever no kind claims
is looked at as video (lib/sources.py). After decoding nothing knows the kind.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from lib.archives import ArchiveLimits
from lib.config import SamplingConfig, SourcesConfig
from lib.failures import Failure
from lib.hashing import HashMemo
from lib.series import OpenSeries, SeriesRef


@dataclass(frozen=True)
class Claim:
    refs: list[SeriesRef] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    claimed: frozenset[Path] = frozenset()


@dataclass(frozen=True)
class SourceKind:
    name: str
    claim: Callable[[Path, list[Path], HashMemo | None, SourcesConfig], Claim]
    open: Callable[[SeriesRef, SamplingConfig, Path, ArchiveLimits, SourcesConfig],
                   AbstractContextManager[OpenSeries]]


def make_ref(kind: str, sid: str, digest: str, path: Path, meta: dict[str, Any]) -> SeriesRef:
    """A SeriesRef labelled by its parent folder and partitioned by its top-level folder, as videos are."""
    parts = PurePosixPath(sid).parts
    return SeriesRef(
        series_id=sid,
        content_hash=digest,
        kind=kind,
        path=str(path.resolve()),
        label=parts[-2] if len(parts) > 1 else None,
        partition=parts[0] if len(parts) > 1 else None,
        meta=meta,
    )


def with_options(name: str, claim: Callable[..., Claim], open_series: Callable[..., AbstractContextManager[OpenSeries]],
                 options_from: Callable[[SourcesConfig], Any]) -> SourceKind:
    """A kind whose claim and open take `options=` of their own type, made from the sources config."""
    return SourceKind(
        name,
        lambda base, files, memo, sources: claim(base, files, memo, options=options_from(sources)),
        lambda ref, sampling, tmp_dir, limits, sources: open_series(ref, sampling, tmp_dir, limits,
                                                                    options=options_from(sources)),
    )


# The kind modules import Claim and SourceKind from here, so they are imported after them.
# Order matters: earlier kinds claim their files first (dicom, nifti, geotiff, cube, images).
from lib.kinds import dicom  # noqa: E402
from lib.kinds import nifti  # noqa: E402
from lib.kinds import geotiff  # noqa: E402
from lib.kinds import cube  # noqa: E402
from lib.kinds import images  # noqa: E402

KINDS: tuple[SourceKind, ...] = (
    dicom.KIND,
    nifti.KIND,
    geotiff.KIND,
    cube.KIND,
    images.KIND,
)
