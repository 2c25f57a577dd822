"""Sources on object storage: a bucket prefix mirrored into a folder, series fetched back anywhere.

Why local copies: every reader (ffmpeg, pydicom, nibabel, tifffile, zarr) and every hostile-input
check (archive traversal and bombs, header bounds, reader processes) keeps reading local files, so
a bucket is held to exactly the checks a disk is.
- The driver mirrors `s3://bucket/prefix` into a folder (`mirror`): only objects whose size or
  ETag moved are downloaded (atomically, mtime set to the object's LastModified, so partition
  fingerprints agree across hosts), files whose object is gone are removed, and keys that are
  not plain relative paths are refused by name, never written. Discovery then runs unchanged on
  the mirror, and `Mirror.to_remote` names the bucket in what leaves it: paths, meta and stamps
  (`etag=<ETag> size=<n>` of each object).
- A worker on any node (no shared filesystem) `fetch`es exactly the objects a ref's stamps name,
  each GET conditional on the stamped ETag, so an object replaced since discovery is refused, not
  decoded under the old content hash; the copies live only while that one series is decoded.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import IO, Any, NamedTuple
from urllib.parse import quote

from lstmpipe.lib.atomic import write_atomic
from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.failures import Failure
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.sources.archives import (
    BLOCK_BYTES,
    deflated_span,
    find_member,
    inflate,
    printable,
)
from lstmpipe.lib.sources.hashing import ObjectId, Stamp, parse_remote_stamp, remote_stamp
from lstmpipe.lib.state.database import file_lock
from lstmpipe.lib.state.store import ObjectInfo, S3Store, is_remote, parse_s3

# objects downloaded at once: S3 serves many small GETs best in parallel
PARALLEL_DOWNLOADS = 8
# a path component longer than this cannot be a file name on Linux filesystems
MAX_COMPONENT_BYTES = 255
# what writing a key's file may fail with when the key cannot name a file here
_UNNAMEABLE = frozenset({errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL})
# meta of a member fetched alone by byte range: where its bytes lie in the archive (_member_bytes)
MEMBER_BYTES = "member_bytes"
_FETCH_PREFIX = "fetch-"
_HOST = socket.gethostname().replace("-", "_")


@dataclass(frozen=True)
class MirroredObject:
    """One object as mirrored: what the bucket said of it, and the local copy's stamp once
    written (a copy whose stamp moved is no longer known to hold that ETag's bytes)."""

    size: int
    etag: str
    modified: float
    stamp: str


@dataclass(frozen=True)
class Mirror:
    """A bucket prefix and the folder mirroring it, as of one `mirror` call."""

    url: str  # s3://bucket/prefix (no trailing slash); a single object's parent prefix
    root: Path  # the local folder, resolved
    source: Path  # what discovery reads: the folder, or the single object's file in it
    objects: Mapping[str, MirroredObject] = field(default_factory=dict)  # by key under the prefix
    failures: tuple[Failure, ...] = ()  # keys refused (not plain relative paths), by name
    downloaded: int = 0  # objects fetched by this call (the rest were current)
    downloaded_bytes: int = 0
    seconds: float = 0.0

    def uri(self, path: str | Path) -> str:
        """The object URI of a path under the mirror (the mirror root itself: the prefix)."""
        rel = Path(path).relative_to(self.root).as_posix()
        return self.url if rel == "." else f"{self.url}/{rel}"

    def object_of(self, path: Path, stamp: Stamp) -> ObjectId | None:
        """The object a mirror file holds, when the file is still as mirrored: what the hash
        memo keys on, so another host's mirror of the same objects finds the same hashes."""
        try:
            rel = Path(path).resolve().relative_to(self.root).as_posix()
        except ValueError:
            return None
        found = self.objects.get(rel)
        if found is None or found.stamp != stamp.text():
            return None
        return ObjectId(f"{self.url}/{rel}", found.size, found.etag)

    def to_remote(self, ref: SeriesRef) -> SeriesRef:
        """`ref` as discovered on the mirror, naming the bucket: its path, the paths in its meta
        and its stamps (`etag=<ETag> size=<n>`); BadInput when a file it was hashed from is not
        the mirrored object (changed in the mirror meanwhile)."""
        stamps = []
        for path, hashed in ref.stamps:
            rel = Path(path).relative_to(self.root).as_posix()
            found = self.objects.get(rel)
            uri = f"{self.url}/{rel}"
            if found is None or found.stamp != hashed:
                raise BadInput(
                    uri, "its mirror copy changed while it was hashed; re-run to mirror it again"
                )
            stamps.append((uri, remote_stamp(found.etag, found.size)))
        meta = _mapped(ref.meta, str(self.root), self.url)
        where = _member_bytes(Path(ref.path), ref.member) if ref.member else None
        if where is not None:
            meta[MEMBER_BYTES] = where
        return replace(ref, path=self.uri(ref.path), meta=meta, stamps=tuple(stamps))

    def remote_failure(self, failure: Failure) -> Failure:
        """A discovery failure naming the object, not the mirror file."""
        return replace(failure, path=_renamed(failure.path, str(self.root), self.url))


def mirror_root(home: Path, url: str) -> Path:
    """Where a bucket prefix (or object) is mirrored under home: `home/mirror/<bucket>/<prefix>`
    with the prefix %-quoted into one folder name (`a%2Fb`), so no mirror lies inside another's
    (the mirror of `s3://b/a` would otherwise hold the mirror of `s3://b/a/x`, or a file of the
    same name as it); the whole bucket is `%2F`."""
    bucket, prefix = parse_s3(url)
    for name in (bucket, prefix):
        problem = key_problem(name) if name else None
        if problem:
            raise BadInput(url, f"not a plain bucket and prefix: {problem}")
    if not bucket:
        raise BadInput(url, "no bucket named (s3://bucket/prefix)")
    name = quote(prefix, safe="") or "%2F"
    if len(name.encode()) > MAX_COMPONENT_BYTES - 20:  # room for the manifest's name beside it
        digest = hashlib.sha256(prefix.encode()).hexdigest()[:16]
        name = f"{name[: MAX_COMPONENT_BYTES - 60]}-{digest}"
    return Path(home) / "mirror" / bucket / name


def key_problem(key: str) -> str | None:
    """Why an object key cannot be a file under the mirror, or None for a plain relative path."""
    if printable(key) != key:
        return "key is not valid UTF-8"
    if "\x00" in key:
        return "key holds a NUL character"
    if "\\" in key:
        return "key holds a backslash (a path separator elsewhere)"
    if key.startswith("/"):
        return "absolute key"
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "key has an empty, '.' or '..' path component (would escape or alias the mirror)"
    if any(len(part.encode()) > MAX_COMPONENT_BYTES for part in parts):
        return f"a path component exceeds {MAX_COMPONENT_BYTES} bytes"
    return None


@contextmanager
def mirror_lock(root: Path) -> Iterator[None]:
    """Held while a mirror is written and discovered: two runs on one home take turns."""
    with file_lock(_manifest_path(root).with_suffix(".lock")):
        yield


def mirror(url: str, local_root: Path, retry_s: float = 120.0) -> Mirror:
    """Make `local_root` hold exactly the objects under `url` (call under `mirror_lock`); a URL
    naming one object (no object under it as a prefix) mirrors that object alone."""
    started = time.monotonic()
    bucket, prefix = parse_s3(url)
    url = f"s3://{bucket}/{prefix}".rstrip("/")
    root = Path(local_root)
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    store = _store(bucket, retry_s)
    listed, failures = _plain_objects(store, prefix, url)
    single = None if listed or failures or not prefix else store.info(prefix)
    if single is not None:  # the URL names one object (a video, an archive): mirrored alone
        url, _, name = url.rpartition("/")
        listed = {name: single}
    known = _read_manifest(root)
    current: dict[str, MirroredObject] = {}
    stale: list[tuple[str, ObjectInfo]] = []
    for rel, info in listed.items():
        was = known.get(rel)
        if (
            was is not None
            and (was.size, was.etag) == (info.size, info.etag)
            and _same_stamp(root / rel, was.stamp)
        ):
            current[rel] = was
        else:
            stale.append((rel, info))
    _remove_unlisted(root, set(listed))
    with ThreadPoolExecutor(max_workers=PARALLEL_DOWNLOADS) as pool:
        for rel, got in zip(
            [rel for rel, _ in stale],
            pool.map(lambda item: _mirror_one(store, item[0], root / item[0], item[1]), stale),
            strict=True,
        ):
            if isinstance(got, Failure):
                failures.append(got)
            elif got is not None:
                current[rel] = got
    _write_manifest(root, current)
    fetched = [current[rel] for rel, _ in stale if rel in current]
    return Mirror(
        url,
        root,
        root / next(iter(listed)) if single is not None else root,
        current,
        tuple(failures),
        len(fetched),
        sum(o.size for o in fetched),
        time.monotonic() - started,
    )


def fetch(ref: SeriesRef, scratch: Path, retry_s: float = 120.0) -> SeriesRef:
    """Download the objects `ref`'s stamps name into `scratch/<bucket>/<key>`, each only if it
    still has its stamped ETag, and return `ref` naming those copies (stamped as they are now).
    A member stored uncompressed or deflated in a zip (`MEMBER_BYTES` in meta) is fetched alone,
    by byte range (and inflated, bounded by its declared size and checked by its CRC), as a file
    of its own: its bytes are the ones its content hash covers.
    BadInput names the object that changed, vanished or cannot be named as a local path."""
    if not ref.stamps:
        raise BadInput(
            ref.location, "no object stamps (a series not made by discovery); not fetched"
        )
    scratch = Path(scratch).resolve()
    span = _member_span(ref)
    if span is not None:
        target = scratch / "member" / f"member{_suffix(ref.member or '')}"
        if span.inflated is None:
            _fetch_object(ref.stamps[0], target, retry_s, (span.offset, span.length))
        else:
            packed = target.with_name("packed")
            _fetch_object(ref.stamps[0], packed, retry_s, (span.offset, span.length))
            inflate(packed, target, *span.inflated, ref.location)
            packed.unlink()
        meta = {k: v for k, v in ref.meta.items() if k != MEMBER_BYTES}
        return replace(
            ref,
            path=str(target),
            member=None,
            meta=meta,
            stamps=((str(target), Stamp.of(target).text()),),
        )
    copies = []
    for uri, text in ref.stamps:
        target = _scratch_path(scratch, uri)
        _fetch_object((uri, text), target, retry_s)
        copies.append(target)
    return replace(
        ref,
        path=str(_scratch_path(scratch, ref.path)),
        meta=_mapped(ref.meta, "s3:/", str(scratch)),
        stamps=tuple((str(path), Stamp.of(path).text()) for path in copies),
    )


@contextmanager
def fetched(ref: SeriesRef, tmp_dir: Path, retry_s: float = 120.0) -> Iterator[SeriesRef]:
    """`fetch` into a folder of its own under `tmp_dir`, removed when the block ends: one
    series' objects at a time. A compressed member needs its whole archive: the last one
    fetched is kept for this thread's next member of it (one download, and one decompression
    pass for a .tar.gz, whose unpacker archives.py keeps per file). Errors raised in the block
    name the objects, not the copies."""
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    _sweep(tmp_dir)
    scratch = _new_folder(tmp_dir)
    try:
        if _whole_archive_member(ref):
            local, base = _archive_copy(ref, tmp_dir, retry_s)
        else:
            local, base = fetch(ref, scratch, retry_s), scratch
        try:
            yield local
        except BadInput as exc:
            path = (
                ref.location
                if exc.path in (local.path, local.location)
                else _renamed(exc.path, str(base), "s3:/")
            )
            reason = exc.reason.replace(local.location, ref.location)
            raise BadInput(path, reason.replace(str(base) + "/", "s3://")) from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class _ArchiveCopy:
    """The whole archive a thread fetched last, while the thread lives or until it needs
    another: at most one per decoder thread."""

    def __init__(self) -> None:
        self.key: tuple[str, str, str] | None = None  # (uri, stamp, tmp_dir)
        self.folder: Path | None = None
        self.path = Path()
        self.stamp = ""

    def release(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.key, self.folder = None, None

    def __del__(self) -> None:  # the thread ended: its thread-local copy goes with it
        self.release()


_threads = threading.local()


def _whole_archive_member(ref: SeriesRef) -> bool:
    """A member that needs its whole archive (a compressed tar's), the one it is stamped with."""
    return (
        ref.member is not None
        and len(ref.stamps) == 1
        and ref.stamps[0][0] == ref.path
        and _member_span(ref) is None
    )


def _archive_copy(ref: SeriesRef, tmp_dir: Path, retry_s: float) -> tuple[SeriesRef, Path]:
    """`ref` naming this thread's copy of its archive (fetched If-Match unless this thread
    holds that very version, untouched), and the folder of the copy."""
    held: _ArchiveCopy | None = getattr(_threads, "archive", None)
    if held is None:
        held = _threads.archive = _ArchiveCopy()
    key = (*ref.stamps[0], str(tmp_dir.resolve()))
    if held.key != key or not _same_stamp(held.path, held.stamp):
        held.release()
        folder = _new_folder(tmp_dir)
        target = _scratch_path(folder, ref.path)
        try:
            _fetch_object(ref.stamps[0], target, retry_s)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        held.key, held.folder, held.path = key, folder, target
        held.stamp = Stamp.of(target).text()
    assert held.folder is not None
    local = replace(ref, path=str(held.path), stamps=((str(held.path), held.stamp),))
    return local, held.folder


def _same_stamp(path: Path, stamp: str) -> bool:
    try:
        return Stamp.of(path).text() == stamp
    except OSError:
        return False


def _new_folder(tmp_dir: Path) -> Path:
    """A fetch folder named after this host and process, so a later run sweeps it if this
    process is killed first."""
    return Path(
        tempfile.mkdtemp(prefix=f"{_FETCH_PREFIX}{_HOST}-{os.getpid()}-", dir=tmp_dir)
    ).resolve()


class _Span(NamedTuple):
    """A member's bytes in the one archive its ref is stamped with (see _member_bytes)."""

    offset: int
    length: int
    inflated: tuple[int, int] | None  # deflated: (size, CRC-32) it must inflate to


def _member_span(ref: SeriesRef) -> _Span | None:
    where = ref.meta.get(MEMBER_BYTES)
    if (
        ref.member is None
        or len(ref.stamps) != 1
        or ref.stamps[0][0] != ref.path
        or not isinstance(where, list)
        or len(where) not in (2, 4)
        or not all(isinstance(n, int) for n in where)
    ):
        return None
    return _Span(where[0], where[1], (where[2], where[3]) if len(where) == 4 else None)


def _fetch_object(
    stamp: tuple[str, str], target: Path, retry_s: float, byte_range: tuple[int, int] | None = None
) -> None:
    """The object a stamp names (or `byte_range` of it: offset, length) to `target`, only while
    it has the stamped ETag and size; BadInput naming it otherwise."""
    uri, text = stamp
    stamped = parse_remote_stamp(text)
    if not is_remote(uri) or stamped is None:
        raise BadInput(uri, f"not an object stamp ({text!r}); not fetched")
    etag, size = stamped
    expected = size
    if byte_range is not None:
        offset, expected = byte_range
        if offset < 0 or expected <= 0 or offset + expected > size:
            raise BadInput(uri, f"member bytes {offset}+{expected} outside its {size} bytes")
    bucket, key = parse_s3(uri)
    try:
        _download(_store(bucket, retry_s), key, etag, target, uri, byte_range)
    except _Changed as exc:
        raise BadInput(
            uri,
            f"changed since discovery hashed it (its ETag is no longer {etag}); not decoded "
            "under the old content hash",
        ) from exc
    except _Gone as exc:
        raise BadInput(uri, "gone since discovery; not decoded") from exc
    got = target.stat().st_size
    if got != expected:
        raise BadInput(uri, f"{got} bytes fetched, {expected} stamped; not decoded")


def _suffix(name: str) -> str:
    """A member's suffix for its copy's name (decoders may look at it); nothing of its path."""
    suffix = PurePosixPath(name).suffix.lower()
    return suffix if suffix[1:].isalnum() else ""


def _member_bytes(archive: Path, member: str) -> list[int] | None:
    """Where a worker finds a member's bytes in its archive, so it fetches just those instead of
    the whole archive: [offset, length] stored uncompressed (a plain tar, a stored zip entry),
    [offset, compressed length, size, CRC-32] deflated in a zip. None: the whole archive (a
    compressed tar, a member refused)."""
    try:
        found = find_member(archive, member)
    except BadInput:
        return None
    if not found.size:
        return None
    if found.offset is not None:
        return [found.offset, found.size]
    span = deflated_span(archive, member)
    return None if span is None else [span.offset, span.length, found.size, span.crc]


def _plain_objects(
    store: S3Store, prefix: str, url: str
) -> tuple[dict[str, ObjectInfo], list[Failure]]:
    """{key under the prefix: object} of the keys that can be mirror paths, and a Failure for
    each key that cannot (named, with the reason): a key with `..`, absolute, empty components,
    a backslash or a NUL, or an object whose key is also a folder of other objects."""
    listed: dict[str, ObjectInfo] = {}
    failures: list[Failure] = []
    for info in store.list(prefix):
        rel = info.key[len(prefix) + 1 :] if prefix else info.key
        problem = key_problem(rel)
        if problem is None:
            listed[rel] = info
        else:
            failures.append(_key_failure(rel, url, problem))
    folders = {str(parent) for rel in listed for parent in PurePosixPath(rel).parents}
    for rel in sorted(folders & set(listed)):
        failures.append(_key_failure(rel, url, "an object named like a folder of other objects"))
        del listed[rel]
    return listed, failures


def _key_failure(rel: str, url: str, problem: str) -> Failure:
    return Failure(
        printable(rel), printable(f"{url}/{rel}"), "discover", f"{problem}; not mirrored"
    )


def _mirror_one(
    store: S3Store, rel: str, target: Path, info: ObjectInfo
) -> MirroredObject | Failure | None:
    """Download one object (again once when it changed since it was listed); None when it is
    gone meanwhile, a Failure when it keeps changing or cannot be written. A copy that could not
    be brought up to date is removed, never left to be discovered as the object."""
    uri = f"s3://{store.bucket}/{info.key}"
    for _attempt in range(2):
        try:
            _download(store, info.key, info.etag, target, uri)
        except _Changed:
            found = store.info(info.key)
            if found is None:
                break
            info = found
            continue
        except _Gone:
            break
        except OSError as exc:
            target.unlink(missing_ok=True)
            if exc.errno not in _UNNAMEABLE:
                raise  # a full or read-only disk stops the run: it is not this object's fault
            return Failure(printable(rel), uri, "discover", f"not mirrored: {exc}")
        os.utime(target, (info.modified, info.modified))
        return MirroredObject(info.size, info.etag, info.modified, Stamp.of(target).text())
    else:
        target.unlink(missing_ok=True)
        return Failure(
            printable(rel), uri, "discover", "changed twice while being mirrored; re-run"
        )
    target.unlink(missing_ok=True)
    return None


class _Changed(Exception):
    """The object no longer has the ETag asked for (If-Match failed)."""


class _Gone(Exception):
    """The object was deleted."""


def _download(
    store: S3Store,
    key: str,
    etag: str,
    target: Path,
    uri: str,
    byte_range: tuple[int, int] | None = None,
) -> None:
    """Write the object `key` (or `byte_range` of it: offset, length) to `target` atomically,
    only while it has `etag`: _Changed when it has another, _Gone when there is none."""
    ranged = {} if byte_range is None else {"Range": f"bytes={byte_range[0]}-{sum(byte_range) - 1}"}
    from botocore.exceptions import ClientError

    def write(out: IO[bytes]) -> None:
        def attempt() -> None:
            out.seek(0)
            out.truncate()
            reply = store.client.get_object(
                Bucket=store.bucket, Key=key, IfMatch=f'"{etag}"', **ranged
            )
            body = reply["Body"]
            for block in iter(lambda: body.read(BLOCK_BYTES), b""):
                out.write(block)

        try:
            store.call(f"fetching {uri}", attempt)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "412"):
                raise _Changed(uri) from exc
            if code in ("NoSuchKey", "404", "NotFound"):
                raise _Gone(uri) from exc
            raise

    write_atomic(target, write)


def _remove_unlisted(root: Path, keep: set[str]) -> None:
    """Delete every file under `root` that is no listed object (its object is gone), and the
    folders left empty: discovery must see the bucket, not what it once held."""
    for folder, dirs, files in os.walk(root, topdown=False):
        for name in files:
            path = Path(folder, name)
            if path.relative_to(root).as_posix() not in keep:
                path.unlink(missing_ok=True)
        for name in dirs:
            path = Path(folder, name)
            if path.is_symlink():
                path.unlink()
            else:
                with contextlib.suppress(OSError):  # it holds mirrored files
                    path.rmdir()


def _manifest_path(root: Path) -> Path:
    """Beside the mirror, not in it: discovery walks the mirror as it walks a disk."""
    root = Path(root)
    return root.with_name(f".{root.name or 'bucket'}.mirror.json")


def _read_manifest(root: Path) -> dict[str, MirroredObject]:
    try:
        data = json.loads(_manifest_path(root).read_text())
        return {rel: MirroredObject(**entry) for rel, entry in data["objects"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # none yet, or unreadable: every object is downloaded again


def _write_manifest(root: Path, objects: Mapping[str, MirroredObject]) -> None:
    body = json.dumps(
        {"objects": {rel: vars(o) for rel, o in sorted(objects.items())}}, indent=0
    ).encode()
    write_atomic(_manifest_path(root), lambda out: out.write(body))


def _scratch_path(scratch: Path, uri: str) -> Path:
    """`scratch/<bucket>/<key>`; BadInput for a bucket or key that is no plain relative path."""
    bucket, key = parse_s3(uri)
    for name in (bucket, key):
        problem = key_problem(name) if name else None
        if problem:
            raise BadInput(uri, f"{problem}; not fetched")
    if not bucket:
        raise BadInput(uri, "no bucket named; not fetched")
    return scratch / bucket / key if key else scratch / bucket


def _mapped(value: Any, old: str, new: str) -> Any:
    """`value` (JSON-like) with every string naming `old` or a path below it renamed to `new`."""
    if isinstance(value, str):
        return _renamed(value, old, new)
    if isinstance(value, list):
        return [_mapped(v, old, new) for v in value]
    if isinstance(value, tuple):
        return tuple(_mapped(v, old, new) for v in value)
    if isinstance(value, dict):
        return {k: _mapped(v, old, new) for k, v in value.items()}
    return value


def _renamed(text: str, old: str, new: str) -> str:
    if text == old:
        return new
    return new + text[len(old) :] if text.startswith(old.rstrip("/") + "/") else text


@functools.lru_cache(maxsize=8)
def _store(bucket: str, retry_s: float) -> S3Store:
    """One client per bucket per process (boto3 clients are thread-safe)."""
    return S3Store(bucket, "", retry_s=retry_s)


def _sweep(tmp_dir: Path) -> None:
    """Remove fetch folders of this host's processes that were killed before removing them."""
    for folder in tmp_dir.glob(f"{_FETCH_PREFIX}{_HOST}-*"):
        pid = folder.name[len(_FETCH_PREFIX) + len(_HOST) + 1 :].partition("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
