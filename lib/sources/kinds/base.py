"""What a source kind is: a claim over files and an opener of series (see kinds/__init__.py)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from lstmpipe.lib.config import SamplingConfig, SourcesConfig
from lstmpipe.lib.failures import Failure
from lstmpipe.lib.series import OpenSeries, SeriesRef
from lstmpipe.lib.sources.archives import ArchiveLimits
from lstmpipe.lib.sources.hashing import HashMemo

_T = TypeVar("_T")


def all_present(values: list[_T | None]) -> list[_T] | None:
    """`values` when none of them is None, else None: a field that every file of a series has."""
    present = [v for v in values if v is not None]
    return present if len(present) == len(values) else None


@dataclass(frozen=True)
class Ignored:
    """A file (or hidden folder) under a source that is neither a series nor a failure, and why."""

    path: str  # relative to the root's folder, like series ids; a hidden folder ends with "/"
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class Claim:
    refs: list[SeriesRef] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    claimed: frozenset[Path] = frozenset()
    ignored: list[Ignored] = field(default_factory=list)  # e.g. an archive's non-video members


@dataclass(frozen=True)
class SourceKind:
    name: str
    claim: Callable[[Path, list[Path], HashMemo | None, ArchiveLimits, SourcesConfig], Claim]
    open: Callable[
        [SeriesRef, SamplingConfig, Path, ArchiveLimits, SourcesConfig],
        AbstractContextManager[OpenSeries],
    ]


def loaded_when_needed(name: str, module: str, could_claim: Callable[[Path], bool]) -> SourceKind:
    """The kind `module`.KIND, imported only once a file it `could_claim` is offered, or a series
    of it is opened: a source without such files never pays for its reader's import."""

    def kind() -> SourceKind:
        return importlib.import_module(module).KIND

    def claim(
        base: Path,
        files: list[Path],
        memo: HashMemo | None,
        limits: ArchiveLimits,
        sources: SourcesConfig,
    ) -> Claim:
        if not any(could_claim(path) for path in files):
            return Claim()
        return kind().claim(base, files, memo, limits, sources)

    def open_series(
        ref: SeriesRef,
        sampling: SamplingConfig,
        tmp_dir: Path,
        limits: ArchiveLimits,
        sources: SourcesConfig,
    ) -> AbstractContextManager[OpenSeries]:
        return kind().open(ref, sampling, tmp_dir, limits, sources)

    return SourceKind(name, claim, open_series)


def make_ref(kind: str, sid: str, digest: str, path: Path, meta: dict[str, Any]) -> SeriesRef:
    """A SeriesRef labelled by its parent folder and partitioned by its top folder, as videos."""
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


def with_options(
    name: str,
    claim: Callable[..., Claim],
    open_series: Callable[..., AbstractContextManager[OpenSeries]],
    options_from: Callable[[SourcesConfig], Any],
) -> SourceKind:
    """A kind whose claim and open take `options=` of their own type, made from `sources`."""
    return SourceKind(
        name,
        lambda base, files, memo, limits, sources: claim(
            base, files, memo, options=options_from(sources)
        ),
        lambda ref, sampling, tmp_dir, limits, sources: open_series(
            ref, sampling, tmp_dir, limits, options=options_from(sources)
        ),
    )
