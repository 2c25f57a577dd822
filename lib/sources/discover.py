"""Discovery: a source root becomes SeriesRefs (SPEC §1, §2).

A root is a folder, one file or one archive. Its regular files are offered to the
source kinds in order (lib/sources/kinds/); each claims its series, named by their
path relative to the root (`2026-11-20.tar/grow/clip_0003.mp4`). Partitions are the
root's top-level folders and archives; labels come from the parent folder, or a
manifest.
A bucket prefix (`s3://bucket/prefix`) is mirrored into a folder and discovered there, its
series then named by their objects (`discover_bucket`, lib/sources/bucket.py).

Nothing is dropped silently (SPEC §6): every regular file ends as a series, a failure, or an
`Ignored` entry saying why (its content, a sidecar of a series file, hidden), which the run
summary counts and lists.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
    ArchiveLimits,
    archive_suffix,
    printable,
    strip_archive_suffix,
)
from lstmpipe.lib.sources.bucket import Mirror, mirror, mirror_lock, mirror_root
from lstmpipe.lib.sources.hashing import HashMemo, with_stamps
from lstmpipe.lib.sources.kinds import KINDS
from lstmpipe.lib.sources.kinds.base import Ignored
from lstmpipe.lib.sources.kinds.cube import zarr_store
from lstmpipe.lib.sources.roots import BadSource
from lstmpipe.lib.sources.sniff import not_media, read_head
from lstmpipe.lib.state.places import StatePlaces
from lstmpipe.lib.state.store import S3Store, is_remote, parse_s3


@dataclass(frozen=True)
class Discovery:
    refs: list[SeriesRef] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)


class NoSeries(BadSource):
    """A source that exists and holds no series (nor a failed one): nothing for extract, train,
    tune or plan to work on, so bad usage; infer and nightly call it a quiet night."""

    def __init__(self, path: str, text: str) -> None:
        super().__init__(path, text, message=text)


def no_series(source: str | Path, ignored: Sequence[Ignored]) -> str:
    """The words "no series under SOURCE", and what it holds instead: its ignored entries,
    counted by reason (most common first), so a wrong folder or a wrong kind of file is told
    apart from an empty one."""
    if not ignored:
        return f"no series under {source}: it holds no files"
    counts = Counter(entry.reason for entry in ignored).most_common()
    shown = "; ".join(f"{n} × {reason}" for reason, n in counts[:3])
    more = f"; {len(counts) - 3} other reasons" if len(counts) > 3 else ""
    entries = "1 entry" if len(ignored) == 1 else f"{len(ignored)} entries"
    return f"no series under {source}: {entries} ignored ({shown}{more})"


def require_series(source: str | Path, found: Discovery) -> Discovery:
    """`found`, unless it holds neither a series nor a failure: then NoSeries, naming what was
    ignored."""
    if found.refs or found.failures:
        return found
    raise NoSeries(str(source), no_series(source, found.ignored))


def check_file(path: Path, state: StatePlaces, sources: SourcesConfig) -> None:
    """BadSource unless discovery reads a series (or a failed one) from the one file `path`: a
    video, an archive, a DICOM or NIfTI file, a GeoTIFF stack, a data cube. Its content hash is
    memoised, so the run's own discovery does not read the file again."""
    found = discover(path, None, HashMemo(state.memo_database()), sources=sources)
    if found.refs or found.failures:
        return
    if len(found.ignored) == 1:  # the file itself: why it is not read
        raise BadSource(str(path), found.ignored[0].reason)
    raise NoSeries(str(path), no_series(path, found.ignored))


def discover(
    root: Path,
    manifest: Path | None = None,
    memo: HashMemo | None = None,
    limits: ArchiveLimits = ArchiveLimits(),
    sources: SourcesConfig = SourcesConfig(),
) -> Discovery:
    """Every series under `root`, kind by kind, with the inputs that were refused and those
    ignored."""
    root = Path(root)
    refs: list[SeriesRef] = []
    base = root.parent if root.is_file() else root
    files, failures, ignored = _walk(root, base)
    claimed: set[Path] = set()
    for kind in KINDS:  # DICOM, NIfTI, GeoTIFF, ... take their files first; video comes last
        claim = kind.claim(base, files, memo, limits, sources)
        refs += claim.refs
        failures += claim.failures
        ignored += claim.ignored
        claimed |= claim.claimed
        files = [f for f in files if f not in claim.claimed]
    refs = with_stamps(refs)  # what extraction checks before caching (lib/sources/hashing.py)
    unread, unclaimed = _unclaimed(base, files, claimed)
    return Discovery(
        _relabel(refs, manifest) if manifest else refs,
        failures + unread,
        sorted(ignored + unclaimed, key=lambda i: i.path),
    )


def discover_root(
    source: str | Path,
    state: StatePlaces,
    manifest: str | Path | None = None,
    limits: ArchiveLimits = ArchiveLimits(),
    sources: SourcesConfig = SourcesConfig(),
) -> Discovery:
    """What every command discovers: a folder, file or archive on disk, or `s3://bucket/prefix`
    (or one object) mirrored under `home/mirror/<bucket>/<prefix>` (`discover_bucket`,
    `mirror_root`); the manifest may be an object too. Hashes are memoised in the state's memo
    database."""
    memo = HashMemo(state.memo_database())
    with _manifest_file(manifest, Path(state.home) / "tmp", state.retry_s) as labels:
        if is_remote(source):
            url = str(source)
            found, _ = discover_bucket(
                url,
                mirror_root(Path(state.home), url),
                labels,
                memo,
                limits,
                sources,
                state.retry_s,
            )
            return found
        return discover(Path(source), labels, memo, limits, sources)


@contextmanager
def _manifest_file(
    manifest: str | Path | None, scratch: Path, retry_s: float
) -> Iterator[Path | None]:
    """A local path of the manifest: itself, or a temp copy of an `s3://` object (its suffix,
    .csv or .parquet, kept); errors name the object."""
    if manifest is None or not is_remote(manifest):
        yield Path(manifest) if manifest is not None else None
        return
    bucket, key = parse_s3(str(manifest))
    try:
        data = S3Store(bucket, "", retry_s).read_bytes(key)
    except FileNotFoundError as exc:
        raise BadInput(str(manifest), "no such manifest object") from exc
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="manifest-") as folder:
        copy = Path(folder) / f"manifest{PurePosixPath(key).suffix.lower()}"
        copy.write_bytes(data)
        try:
            yield copy
        except BadInput as exc:
            if exc.path != str(copy):
                raise
            raise BadInput(str(manifest), exc.reason.replace(str(copy), str(manifest))) from exc


def discover_bucket(
    url: str,
    local_root: Path,
    manifest: Path | None = None,
    memo: HashMemo | None = None,
    limits: ArchiveLimits = ArchiveLimits(),
    sources: SourcesConfig = SourcesConfig(),
    retry_s: float = 120.0,
) -> tuple[Discovery, Mirror]:
    """Every series under `s3://bucket/prefix` (or in the one object a URL names): the prefix
    mirrored into `local_root` (only changed objects downloaded), discovered there as a folder
    is, and named by its objects (paths, meta, object stamps), so any node can fetch and decode
    it. The memo keys mirrored files by object (key, size, ETag). Keys that cannot be files, and
    series whose mirror copy moved while hashed, are failures. Also the Mirror, for partitions of
    the prefix."""
    with mirror_lock(local_root):
        mirrored = mirror(url, local_root, retry_s)
        found = discover(
            mirrored.source,
            manifest,
            memo.naming(mirrored) if memo else None,
            limits,
            sources,
        )
        refs: list[SeriesRef] = []
        moved: list[Failure] = []
        for ref in found.refs:
            try:
                refs.append(mirrored.to_remote(ref))
            except BadInput as exc:
                moved.append(Failure(ref.series_id, exc.path, "discover", exc.reason))
    failures = [mirrored.remote_failure(f) for f in found.failures]
    return Discovery(refs, [*mirrored.failures, *failures, *moved], found.ignored), mirrored


def partitions(root: Path) -> list[str]:
    """The sorted top-level folders and archives of `root`, suffix stripped: `2026-11-20`."""
    root = Path(root)
    if root.is_file():
        return [strip_archive_suffix(root.name)] if archive_suffix(root.name) else []
    return sorted(
        strip_archive_suffix(p.name)
        for p in root.iterdir()
        if not p.name.startswith(".") and (p.is_dir() or archive_suffix(p.name))
    )


def _walk(root: Path, base: Path) -> tuple[list[Path], list[Failure], list[Ignored]]:
    """Regular files under `root` (or `root` itself), sorted; the refused: what is not a regular
    file (opening a fifo waits for a writer forever; a device may never end), names that are
    not UTF-8 (ids, the cache and the failures table need UTF-8) and folders that cannot be
    listed (their files would otherwise vanish without a word); and the entries skipped unread:
    hidden files and folders (a hidden folder is one entry), except inside a Zarr store, whose
    v2 metadata is hidden (.zarray), and links to folders (not followed: a link may loop, or
    lead out of the source)."""
    hidden: list[Path] = []
    linked: list[Path] = []
    unlisted: list[Failure] = []

    def unreadable(exc: OSError) -> None:
        path = Path(exc.filename)
        rel = printable(path.relative_to(base).as_posix()) + "/"
        reason = f"folder cannot be read ({exc.strerror}): its files were not read"
        unlisted.append(Failure(rel, printable(str(path)), "discover", reason))

    if root.is_file():
        candidates = [root]
    else:
        candidates = []
        for folder, dirs, files in os.walk(root, onerror=unreadable):
            hidden += [Path(folder, d) for d in dirs if d.startswith(".")]
            hidden += [Path(folder, f) for f in files if f.startswith(".")]
            linked += [Path(folder, d) for d in dirs if Path(folder, d).is_symlink()]
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            candidates += [Path(folder, f) for f in files if not f.startswith(".")]
    found, refused = _regular(candidates, base)
    links = [
        Ignored(
            printable(p.relative_to(base).as_posix()) + "/",
            f"link to a folder ({printable(os.readlink(p))}): not followed",
        )
        for p in linked
        if not p.name.startswith(".")
    ]
    return (
        found,
        sorted(refused + unlisted, key=lambda f: f.series_id),
        _hidden(hidden, base) + links,
    )


def _hidden(paths: list[Path], base: Path) -> list[Ignored]:
    """Hidden files and folders as ignored entries; what a Zarr store holds is the store's."""
    return [
        Ignored(
            printable(p.relative_to(base).as_posix()) + ("/" if p.is_dir() else ""),
            f"hidden {'folder' if p.is_dir() else 'file'} (its name starts with a dot): not read",
        )
        for p in sorted(paths, key=lambda p: p.relative_to(base).parts)
        if zarr_store(base, p) is None
    ]


def _regular(candidates: list[Path], base: Path) -> tuple[list[Path], list[Failure]]:
    """The regular files of `candidates`, sorted; and the refused, as _walk says."""
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
            refused.append(Failure(rel, str(path), "discover", _not_regular(path)))
        else:
            found.append(path)
    return found, refused


def _not_regular(path: Path) -> str:
    """Why a path os.walk listed as a file is not read: a link to nothing, or a special file."""
    if path.is_symlink() and not path.exists():
        return f"broken link: its target {printable(os.readlink(path))} does not exist"
    return "not a regular file (fifo, socket or device)"


def _unclaimed(
    base: Path, files: list[Path], claimed: set[Path]
) -> tuple[list[Failure], list[Ignored]]:
    """Why each file no kind claimed is not read: a sidecar of a claimed file (`clip.srt` beside
    `clip.mp4`), else what its first bytes are; a file that cannot be read is a failure."""
    stems = {(p.parent, _stem(p.name)): p for p in sorted(claimed, reverse=True)}
    unread: list[Failure] = []
    ignored: list[Ignored] = []
    for path in files:
        rel = path.relative_to(base).as_posix()
        owner = stems.get((path.parent, _stem(path.name)))
        if owner is not None:
            ignored.append(Ignored(rel, f"sidecar of {owner.relative_to(base).as_posix()}"))
            continue
        try:
            ignored.append(Ignored(rel, not_media(read_head(path))))
        except OSError as exc:
            unread.append(Failure(rel, str(path), "discover", f"unreadable: {exc.strerror}"))
    return unread, ignored


def _stem(name: str) -> str:
    """A name up to its first dot: `scan.nii.gz`, `scan.json` and `scan.tfw` share `scan`."""
    return name.split(".", 1)[0]


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
            # "1" stays a label, not a number
            types = {"series_id": pa.string(), "label": pa.string()}
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
