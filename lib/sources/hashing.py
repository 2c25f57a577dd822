"""Content hashes: what the feature cache is keyed on (SPEC §1, §3), and the stamps that tie them
to the bytes a decoder reads later.

blake2b-128 of a series' bytes, streamed in 1 MiB blocks: the same bytes give the same hash
whether they lie in a file or in an archive member. A file is hashed between two stamps
(device, inode, size, mtime, ctime); a change in between refuses the hash. `HashMemo` remembers
hashes by stamp, so re-running on an unchanged archive does not re-read every byte: `touch -d`
sets mtime back but moves ctime, which no user can set, and a rename-swap moves the inode. A
file mirrored from a bucket is remembered by its object (URI, size, ETag) instead, so every
host sharing the state database finds it (lib/sources/bucket.py).

Decoding re-reads a series' files after discovery. Discovery attaches the stamps its hashes were
taken at to each SeriesRef (`with_stamps`); extraction re-stats them before anything reaches the
cache (`verify_stamps`), so bytes swapped in between are refused, never stored under the old hash.
A series in a bucket carries object stamps (`etag=<ETag> size=<n>`) instead, checked as each
object is fetched for decoding.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import IO, NamedTuple, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.sources.archives import BLOCK_BYTES, READ_ERRORS, Member, read_members
from lstmpipe.lib.state.database import Database
from lstmpipe.lib.state.schema import Component, migrate
from lstmpipe.lib.state.store import is_remote

_FILE = ""  # the member column of a plain file's memo row
# Timestamps come from the kernel's coarse clock (one tick: 1-10 ms), so a second write within the
# tick of the first leaves the stamp as it was. A stamp whose ctime is this recent is only trusted
# once the tick is over and the bytes read again give the same hash (git's "racily clean").
# Filesystems with coarser timestamps (FAT, HFS+, ext3: 1-2 s) leave a window of their granularity.
RACY_NS = 20_000_000
_T = TypeVar("_T")
_REMOTE_STAMP = re.compile(r"etag=(\S+) size=(\d+)")


class Stamp(NamedTuple):
    """What the kernel says of a file: any write moves ctime, a rename-swap moves the inode."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: Path) -> Stamp:
        info = os.stat(path)
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)

    def text(self) -> str:
        """The stamp a SeriesRef carries. Without the device: a Ray worker on another node sees
        the same shared file under another device number (and inode and ctime still move)."""
        return (
            f"inode={self.ino} size={self.size} mtime_ns={self.mtime_ns} ctime_ns={self.ctime_ns}"
        )


def remote_stamp(etag: str, size: int) -> str:
    """The stamp a SeriesRef carries for an object in a bucket: its ETag moves with its bytes."""
    return f"etag={etag} size={size}"


def parse_remote_stamp(text: str) -> tuple[str, int] | None:
    """(ETag, size) of a `remote_stamp`, or None when `text` is not one."""
    found = _REMOTE_STAMP.fullmatch(text)
    return (found[1], int(found[2])) if found else None


# path -> the stamp its hash was taken at, in this process, until discovery hands it to a SeriesRef
_stamps: dict[str, Stamp] = {}
_stamps_lock = threading.Lock()


def hash_stream(stream: IO[bytes]) -> str:
    """Hex blake2b (16-byte digest) of everything left in `stream`."""
    digest = hashlib.blake2b(digest_size=16)
    for block in iter(lambda: stream.read(BLOCK_BYTES), b""):
        digest.update(block)
    return digest.hexdigest()


def content_hash(path: Path, member: Member | None = None, memo: HashMemo | None = None) -> str:
    """The hash of a file, or of one member of the archive at `path`; BadInput when the file
    changed while being hashed."""
    if member is not None:
        hashes, unreadable = member_hashes(path, [member], memo)
        if member.name in unreadable:
            raise BadInput(f"{path}!{member.name}", unreadable[member.name])
        return hashes[member.name]
    stamp = Stamp.of(path)
    known = memo.lookup(path, stamp, [_FILE]) if memo else {}
    if _FILE in known:
        _remember(path, stamp)
        return known[_FILE]

    def read() -> str:
        with Path(path).open("rb") as stream:
            return hash_stream(stream)

    digest, stamp = _stamped(path, read)
    if memo:
        memo.store(path, stamp, {_FILE: digest})
    return digest


def member_hashes(
    archive: Path, members: list[Member], memo: HashMemo | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """({member name: hash}, {member name: why it is unreadable}) for the given members, reading the
    archive once for those not memoised. A member that fails its CRC or ends early costs only
    itself; an archive whose stream breaks (a compressed tar) costs the members not yet read; an
    archive that changes while being read costs every member read."""
    stamp = Stamp.of(archive)
    hashes = memo.lookup(archive, stamp, [m.name for m in members]) if memo else {}
    missing = [m for m in members if m.name not in hashes]
    if not missing:
        _remember(archive, stamp)
        return hashes, {}
    try:
        (fresh, unreadable), stamp = _stamped(archive, lambda: _read_members(archive, missing))
    except BadInput as exc:
        return hashes, {m.name: exc.reason for m in missing}
    if memo and fresh:
        memo.store(archive, stamp, fresh)
    return {**hashes, **fresh}, unreadable


def _read_members(archive: Path, members: list[Member]) -> tuple[dict[str, str], dict[str, str]]:
    fresh: dict[str, str] = {}
    unreadable: dict[str, str] = {}
    try:
        for member, stream in read_members(archive, members):
            try:
                fresh[member.name] = hash_stream(stream)
            except READ_ERRORS as exc:
                unreadable[member.name] = f"unreadable member: {exc}"
    except READ_ERRORS as exc:
        unreadable |= {
            m.name: f"unreadable archive: {exc}"
            for m in members
            if m.name not in fresh and m.name not in unreadable
        }
    return fresh, unreadable


def _stamped(path: Path, read: Callable[[], _T]) -> tuple[_T, Stamp]:
    """(what `read` gave, the stamp it holds for): the file's stamp did not move while it was read.
    A stamp from the current clock tick is checked again once the tick is over, bytes and all."""
    before = Stamp.of(path)
    value = read()
    _check_unchanged(path, before)
    # capped: a server clock ahead of ours (NFS) must not make us wait for it
    wait_ns = min(RACY_NS, before.ctime_ns + RACY_NS - time.time_ns())
    if wait_ns > 0:
        time.sleep(wait_ns / 1e9)
        again = read()
        _check_unchanged(path, before)
        if again != value:
            raise BadInput(str(path), "changed while being hashed (same stamp, other bytes)")
    _remember(path, before)
    return value, before


def _check_unchanged(path: Path, before: Stamp) -> None:
    after = Stamp.of(path)
    if after != before:
        was, now = _differences(before.text(), after.text())
        raise BadInput(str(path), f"changed while being hashed (was {was}, now {now})")


def _remember(path: Path, stamp: Stamp) -> None:
    with _stamps_lock:
        _stamps[_key(path)] = stamp


def with_stamps(refs: list[SeriesRef]) -> list[SeriesRef]:
    """`refs`, each with the stamps of the files its hash covers, as this process hashed them:
    its file, or its archive for a member; the files a kind lists in meta (`files` under `root`,
    DICOM's); else every file hashed under its folder (image folders, GeoTIFF stacks, Zarr
    stores). Those stamps are handed over: forgotten here."""
    with _stamps_lock:
        keys = sorted(_stamps)
        stamped = [replace(r, stamps=_covered(r, keys)) for r in refs]
        for ref in stamped:
            for path, _ in ref.stamps:
                _stamps.pop(path, None)
    return stamped


def _covered(ref: SeriesRef, keys: list[str]) -> tuple[tuple[str, str], ...]:
    home = _key(Path(ref.path))
    if home in _stamps:
        paths = [home]
    elif "files" in ref.meta and "root" in ref.meta:
        paths = [_key(Path(ref.meta["root"], f)) for f in ref.meta["files"]]
    else:
        prefix = home.rstrip("/") + "/"
        start = bisect.bisect_left(keys, prefix)
        end = bisect.bisect_left(keys, prefix + "\U0010ffff")
        paths = keys[start:end]
    return tuple((p, _stamps[p].text()) for p in paths if p in _stamps)


def verify_stamps(ref: SeriesRef) -> None:
    """BadInput naming the first file of `ref` whose stamp moved since it was hashed: the bytes
    decoded may not be the bytes its content hash names, so its features must not be cached.
    A ref without stamps (made by hand, or not by discovery) cannot be checked and is refused.
    A series in a bucket carries object stamps (`etag=<ETag> size=<n>`, lib/sources/bucket.py):
    those were checked as its objects were fetched for decoding, each GET conditional on the
    stamped ETag, so nothing is left to check here."""
    if not ref.stamps:
        raise BadInput(
            ref.location,
            "no file stamps to show the decoded bytes are the hashed ones "
            "(a series not made by discovery); not cached",
        )
    for path, hashed in ref.stamps:
        if is_remote(ref.path) and is_remote(path) and parse_remote_stamp(hashed):
            continue  # decoding fetched each object only while it had this ETag (If-Match)
        try:
            now = Stamp.of(Path(path)).text()
        except OSError as exc:
            now = f"unreadable ({exc.strerror or exc})"
        if now != hashed:
            was, now = _differences(hashed, now)
            raise BadInput(
                path, f"changed while being read (hashed as {was}, now {now}); not cached"
            )


def _differences(was: str, now: str) -> tuple[str, str]:
    """The fields of two stamp texts that differ, each side: `ctime_ns=1` / `ctime_ns=2`."""
    old, new = was.split(), now.split()
    if len(old) != len(new):
        return was, now
    pairs = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
    return " ".join(a for a, _ in pairs), " ".join(b for _, b in pairs)


class ObjectId(NamedTuple):
    """An object in a bucket as the memo keys it: its ETag changes whenever its bytes do."""

    uri: str  # s3://bucket/key
    size: int
    etag: str


class ObjectNames(Protocol):
    """Says which object a local file holds (a mirror of a bucket), while it still does."""

    def object_of(self, path: Path, stamp: Stamp) -> ObjectId | None: ...


_META = sa.MetaData()
# A plain file's hashes by the file's stamp (the local SQLite memo's table, unchanged).
stamped = sa.Table(
    "stamped",
    _META,
    sa.Column("path", sa.Text, primary_key=True),
    sa.Column("member", sa.Text, primary_key=True),  # "" for the file itself
    sa.Column("dev", sa.BigInteger),
    sa.Column("ino", sa.BigInteger),
    sa.Column("size", sa.BigInteger),
    sa.Column("mtime_ns", sa.BigInteger),
    sa.Column("ctime_ns", sa.BigInteger),
    sa.Column("hash", sa.Text),
)
# An object's hashes by (key, size, ETag): any host's mirror of it finds them.
object_hashes = sa.Table(
    "object_hashes",
    _META,
    sa.Column("uri", sa.Text, primary_key=True),
    sa.Column("member", sa.Text, primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("etag", sa.Text, nullable=False),
    sa.Column("hash", sa.Text, nullable=False),
)
# version 0: the SQLite memo as it was (`stamped` only); 1 adds object_hashes (create_all does)
COMPONENT = Component("hash_memo", _META, version=1)


class HashMemo:
    """Content hashes remembered by what proves the bytes unchanged, not by the bytes.

    A local file: its whole stamp (device, inode, size, mtime, ctime); no rewrite keeps all
    five, ctime moves on every change and cannot be set. A file mirrored from a bucket (when
    `objects` names it): the object's (URI, size, ETag), so a driver on another host sharing
    the database does not hash unchanged objects again. One short transaction per call, on
    the state database (SQLite file or the team's PostgreSQL). A memo from before stamps
    (table `memo`, size + mtime only) is dropped, never trusted.
    """

    def __init__(self, db: Database | Path, objects: ObjectNames | None = None) -> None:
        """`db`: the state database, or a path for a SQLite memo file there."""
        self.db = db if isinstance(db, Database) else Database.sqlite(Path(db))
        self.objects = objects
        migrate(self.db, COMPONENT)
        if not self.db.is_postgres:
            _drop_unstamped(self.db)

    def naming(self, objects: ObjectNames) -> HashMemo:
        """This memo keying the files `objects` names by object (a bucket's mirror)."""
        memo = copy.copy(self)
        memo.objects = objects
        return memo

    def lookup(self, path: Path, stamp: Stamp, members: list[str]) -> dict[str, str]:
        """The memoised hashes of those `members` of `path` whose stamp still matches."""
        found = self.objects.object_of(path, stamp) if self.objects else None
        if found is not None:
            query = sa.select(object_hashes.c.member, object_hashes.c.hash).where(
                object_hashes.c.uri == found.uri,
                object_hashes.c.size == found.size,
                object_hashes.c.etag == found.etag,
            )
        else:
            query = sa.select(stamped.c.member, stamped.c.hash).where(
                stamped.c.path == _key(path),
                *(
                    column == value
                    for column, value in zip(_STAMP_COLUMNS, _signed(stamp), strict=True)
                ),
            )
        rows = self.db.read(lambda conn: conn.execute(query).all())
        wanted = set(members)
        return {member: digest for member, digest in rows if member in wanted}

    def store(self, path: Path, stamp: Stamp, hashes: dict[str, str]) -> None:
        """Remember `hashes` for `path` as it was at `stamp` (older rows of those members go)."""
        found = self.objects.object_of(path, stamp) if self.objects else None
        if found is not None:
            table = object_hashes
            rows = [
                {"uri": found.uri, "member": m, "size": found.size, "etag": found.etag, "hash": h}
                for m, h in hashes.items()
            ]
        else:
            table = stamped
            values = dict(zip([c.name for c in _STAMP_COLUMNS], _signed(stamp), strict=True))
            rows = [
                {"path": _key(path), "member": m, **values, "hash": h} for m, h in hashes.items()
            ]
        if rows:
            self.db.write(lambda conn: _upsert(self.db, table, rows, conn))


_STAMP_COLUMNS = (
    stamped.c.dev,
    stamped.c.ino,
    stamped.c.size,
    stamped.c.mtime_ns,
    stamped.c.ctime_ns,
)


def _signed(stamp: Stamp) -> tuple[int, ...]:
    """The stamp's fields as signed 64-bit integers (both databases' widest): a device or inode
    number of 2^63 or more wraps, identically on every lookup."""
    return tuple(v - (1 << 64) if v >= 1 << 63 else v for v in stamp)


def _upsert(db: Database, table: sa.Table, rows: list[dict[str, object]], conn: Connection) -> None:
    """Insert `rows`, replacing those with the same primary key (the newest hash wins)."""
    statement = db.insert(table)
    keys = [c.name for c in table.primary_key.columns]
    statement = statement.on_conflict_do_update(
        index_elements=keys,
        set_={c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys},
    )
    conn.execute(statement, rows)


def _drop_unstamped(db: Database) -> None:
    """The SQLite memo before stamps (`memo`: size and mtime only) is dropped, never read."""
    if db.read(lambda conn: sa.inspect(conn).has_table("memo")):
        db.write(lambda conn: conn.execute(sa.text("DROP TABLE IF EXISTS memo")))


def _key(path: Path) -> str:
    return str(Path(path).resolve())
