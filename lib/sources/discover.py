"""Discovery: a source root becomes SeriesRefs (SPEC §1, §2).

A root is a folder, one video file or one archive. Each video file and each
video member of an archive is one series, named by its path relative to the
root (`2026-11-20.tar/grow/clip_0003.mp4`). Partitions are the root's top-level
folders and archives; labels come from the parent folder, or a manifest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.csv as pv
import pyarrow.parquet as pq

from lstmpipe.lib.config import SourcesConfig
from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.failures import Failure
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.sources.archives import (
    READ_ERRORS,
    ArchiveLimits,
    Member,
    archive_suffix,
    list_members,
    printable,
    strip_archive_suffix,
)
from lstmpipe.lib.sources.hashing import HashMemo, content_hash, member_hashes
from lstmpipe.lib.sources.kinds import KINDS
from lstmpipe.lib.sources.kinds.video import VIDEO_SUFFIXES


@dataclass(frozen=True)
class Discovery:
    refs: list[SeriesRef] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


def discover(
    root: Path,
    manifest: Path | None = None,
    memo: HashMemo | None = None,
    limits: ArchiveLimits = ArchiveLimits(),
    sources: SourcesConfig = SourcesConfig(),
) -> Discovery:
    """Every series under `root` (other kinds first, then video), with the inputs that were refused."""
    root = Path(root)
    refs: list[SeriesRef] = []
    failures: list[Failure] = []
    base = root.parent if root.is_file() else root
    files, refused = _walk(root, base)
    failures += refused
    for kind in KINDS:  # DICOM, NIfTI, GeoTIFF, ... take their files first; the rest may be video
        claim = kind.claim(base, files, memo, sources)
        refs += claim.refs
        failures += claim.failures
        files = [f for f in files if f not in claim.claimed]
    for path in files:
        rel = path.relative_to(base).as_posix()
        if archive_suffix(path.name):
            found, refused = _archive_refs(path, rel, memo, limits)
            refs += found
            failures += refused
        elif _is_video(path.name):
            try:
                refs.append(
                    _ref(
                        rel,
                        content_hash(path, memo=memo),
                        path,
                        None,
                        path.stat().st_size,
                        _parent(rel),
                    )
                )
            except OSError as exc:
                failures.append(Failure(rel, str(path), "discover", f"unreadable: {exc.strerror}"))
    return Discovery(_relabel(refs, manifest) if manifest else refs, failures)


def partitions(root: Path) -> list[str]:
    """The sorted top-level folders and archives of `root`, archive suffix stripped: `2026-11-20`."""
    root = Path(root)
    if root.is_file():
        return [strip_archive_suffix(root.name)] if archive_suffix(root.name) else []
    return sorted(
        strip_archive_suffix(p.name)
        for p in root.iterdir()
        if not p.name.startswith(".") and (p.is_dir() or archive_suffix(p.name))
    )


def _walk(root: Path, base: Path) -> tuple[list[Path], list[Failure]]:
    """Regular files under `root` (or `root` itself), sorted, hidden files and folders skipped; and the
    refused: what is not a regular file (opening a fifo waits for a writer forever; a device may never
    end) and names that are not UTF-8 (ids, the cache and the failures table need UTF-8)."""
    if root.is_file():
        candidates = [root]
    else:
        candidates = []
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            candidates += [Path(folder, f) for f in files if not f.startswith(".")]
    found: list[Path] = []
    refused: list[Failure] = []
    for path in sorted(candidates, key=lambda p: p.relative_to(base).parts):
        rel = path.relative_to(base).as_posix()
        if printable(rel) != rel:
            refused.append(
                Failure(
                    printable(rel),
                    printable(str(path)),
                    "discover",
                    "file name is not valid UTF-8 (rename it)",
                )
            )
        elif not path.is_file():  # follows links: a link to a regular file is one
            refused.append(
                Failure(
                    rel,
                    str(path),
                    "discover",
                    "not a regular file (fifo, socket, device or broken link)",
                )
            )
        else:
            found.append(path)
    return found, refused


def _archive_refs(
    archive: Path, rel: str, memo: HashMemo | None, limits: ArchiveLimits
) -> tuple[list[SeriesRef], list[Failure]]:
    """One SeriesRef per acceptable video member; hashing reads the archive at most once."""
    members, failures = list_members(archive, limits, series_prefix=rel)
    videos = [m for m in members if _is_video(m.path) and not _hidden(m.path)]
    try:
        hashes, unreadable = member_hashes(archive, videos, memo)
    except READ_ERRORS as exc:  # not even opened
        return [], failures + [Failure(rel, str(archive), "discover", f"unreadable archive: {exc}")]
    videos = sorted(
        videos, key=lambda m: PurePosixPath(m.path).parts
    )  # sorted like the folder walk
    refs = [
        _ref(f"{rel}/{m.path}", hashes[m.name], archive, m, m.size, _parent(m.path))
        for m in videos
        if m.name in hashes
    ]
    failures += [
        Failure(f"{rel}/{m.path}", f"{archive}!{m.name}", "discover", unreadable[m.name])
        for m in videos
        if m.name in unreadable
    ]
    return refs, failures


def _ref(
    series_id: str, digest: str, path: Path, member: Member | None, size: int, label: str | None
) -> SeriesRef:
    parts = PurePosixPath(series_id).parts
    return SeriesRef(
        series_id=series_id,
        content_hash=digest,
        kind="video",
        path=str(path.resolve()),
        member=member.name if member else None,
        label=label,
        partition=strip_archive_suffix(parts[0]) if len(parts) > 1 else None,
        meta={"source_kind": "video", "bytes": size},
    )


def _parent(path: str) -> str | None:
    """The folder holding a file (UCF101's `class/clip.mp4`); None at the root of the source or archive."""
    parts = PurePosixPath(path).parts
    return parts[-2] if len(parts) > 1 else None


def _relabel(refs: list[SeriesRef], manifest: Path) -> list[SeriesRef]:
    """Labels from a `series_id,label` manifest win over folder names."""
    labels = read_manifest(manifest)
    return [replace(r, label=labels[r.series_id]) if r.series_id in labels else r for r in refs]


def read_manifest(manifest: Path) -> dict[str, str | None]:
    """{series_id: label} from a CSV or Parquet file with columns series_id,label."""
    manifest = Path(manifest)
    try:
        if manifest.suffix.lower() == ".parquet":
            table = pq.read_table(manifest)
        else:
            types = {
                "series_id": pa.string(),
                "label": pa.string(),
            }  # "1" stays a label, not a number
            table = pv.read_csv(manifest, convert_options=pv.ConvertOptions(column_types=types))
    except (OSError, pa.ArrowInvalid) as exc:
        raise BadInput(str(manifest), f"unreadable manifest: {exc}") from exc
    missing = {"series_id", "label"} - set(table.column_names)
    if missing:
        raise BadInput(
            str(manifest),
            f"manifest lacks column(s) {', '.join(sorted(missing))}; expected series_id,label",
        )
    ids = table["series_id"].cast(pa.string()).to_pylist()
    return dict(zip(ids, table["label"].cast(pa.string()).to_pylist(), strict=False))


def _is_video(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in VIDEO_SUFFIXES


def _hidden(member_path: str) -> bool:
    return any(part.startswith(".") for part in PurePosixPath(member_path).parts)
