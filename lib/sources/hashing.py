"""Content hashes: what the feature cache is keyed on (SPEC §1, §3).

blake2b-128 of a series' bytes, streamed in 1 MiB blocks: the same bytes give the
same hash whether they lie in a file or in an archive member. `HashMemo` remembers
hashes by (path, member, size, mtime_ns), so re-running on an unchanged archive
does not re-read every byte.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import IO

from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.sources.archives import BLOCK_BYTES, READ_ERRORS, Member, read_members

_FILE = ""  # the member column of a plain file's memo row


def hash_stream(stream: IO[bytes]) -> str:
    """Hex blake2b (16-byte digest) of everything left in `stream`."""
    digest = hashlib.blake2b(digest_size=16)
    for block in iter(lambda: stream.read(BLOCK_BYTES), b""):
        digest.update(block)
    return digest.hexdigest()


def content_hash(path: Path, member: Member | None = None, memo: HashMemo | None = None) -> str:
    """The hash of a file, or of one member of the archive at `path`."""
    if member is not None:
        hashes, unreadable = member_hashes(path, [member], memo)
        if member.name in unreadable:
            raise BadInput(f"{path}!{member.name}", unreadable[member.name])
        return hashes[member.name]
    info = path.stat()  # taken before reading: a file changed while hashed is re-read next time
    known = memo.lookup(path, info, [_FILE]) if memo else {}
    if _FILE in known:
        return known[_FILE]
    with path.open("rb") as stream:
        digest = hash_stream(stream)
    if memo:
        memo.store(path, info, {_FILE: digest})
    return digest


def member_hashes(
    archive: Path, members: list[Member], memo: HashMemo | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """({member name: hash}, {member name: why it is unreadable}) for the given members, reading the
    archive once for those not memoised. A member that fails its CRC or ends early costs only
    itself; an archive whose stream breaks (a compressed tar) costs the members not yet read."""
    info = archive.stat()
    hashes = memo.lookup(archive, info, [m.name for m in members]) if memo else {}
    missing = [m for m in members if m.name not in hashes]
    fresh: dict[str, str] = {}
    unreadable: dict[str, str] = {}
    try:
        for member, stream in read_members(archive, missing):
            try:
                fresh[member.name] = hash_stream(stream)
            except READ_ERRORS as exc:
                unreadable[member.name] = f"unreadable member: {exc}"
    except READ_ERRORS as exc:
        unreadable |= {
            m.name: f"unreadable archive: {exc}"
            for m in missing
            if m.name not in fresh and m.name not in unreadable
        }
    if memo and fresh:
        memo.store(archive, info, fresh)
    return {**hashes, **fresh}, unreadable


class HashMemo:
    """A SQLite memo of content hashes keyed on the file's stat, not its bytes.

    A file rewritten with the same size and mtime keeps its old hash: the price of
    not re-reading archives. Safe across processes: WAL, one short transaction per
    call, a connection per call (so the memo pickles to Ray workers).
    """

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS memo (path TEXT, member TEXT, size INTEGER,"
                " mtime_ns INTEGER, hash TEXT, PRIMARY KEY (path, member))"
            )

    def lookup(self, path: Path, info: os.stat_result, members: list[str]) -> dict[str, str]:
        """The memoised hashes of those `members` of `path` whose stat still matches."""
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT member, hash FROM memo WHERE path = ? AND size = ? AND mtime_ns = ?",
                (_key(path), info.st_size, info.st_mtime_ns),
            ).fetchall()
        wanted = set(members)
        return {member: digest for member, digest in rows if member in wanted}

    def store(self, path: Path, info: os.stat_result, hashes: dict[str, str]) -> None:
        """Remember `hashes` for `path` as it was at `info` (older rows of those members go)."""
        rows = [
            (_key(path), member, info.st_size, info.st_mtime_ns, digest)
            for member, digest in hashes.items()
        ]
        with closing(self._connect()) as db, db:
            db.executemany("INSERT OR REPLACE INTO memo VALUES (?, ?, ?, ?, ?)", rows)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.db_path, timeout=30)


def _key(path: Path) -> str:
    return str(Path(path).resolve())
