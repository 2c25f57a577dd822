"""Video archives (.tar, .tar.gz/.tgz, .zip), streamed member by member, never extracted wholesale.

A member stored uncompressed is handed to ffmpeg in place (a `subfile` URL on the
archive: no copy at all); a compressed one is copied, size-bounded, to one temp
file at a time. Listing rejects what an archive must not smuggle in: absolute
paths, `..`, links, devices, and sizes or compression ratios beyond the limits
(a zip or tar bomb is reported, never expanded: a compressed tar's listing stops at
the first header that would take the archive past `max_ratio` times its own size,
before that member's bytes are decompressed).
"""

from __future__ import annotations

import functools
import stat
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Literal

from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.failures import Failure
from lstmpipe.lib.sources.ffmpeg import subfile_url

SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")  # longest first: ".tar.gz" before ".tar"
BLOCK_BYTES = 1 << 20  # bytes per read when copying or hashing: fast, and never a memory concern
# What a broken archive raises.
READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError)
# Signature, then the file name and extra field lengths at offsets 26 and 28.
_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds that keep a hostile or broken archive from filling a disk or a run."""

    max_member_bytes: int = 2 << 30  # one video beyond 2 GiB is more likely a bomb than a clip
    max_total_bytes: int = 1 << 40  # uncompressed bytes of all members of one archive (1 TiB)
    max_ratio: float = 100.0  # zip uncompressed/compressed; video barely compresses, zeros do 1000x
    # Ratios of members smaller than 1 MiB are not checked: tiny files compress oddly.
    ratio_min_bytes: int = 1 << 20
    # Entries (any type) listed per archive: bounds listing memory (tarfile keeps every header).
    # UCF101 is 13,320 clips.
    max_members: int = 100_000


@dataclass(frozen=True)
class Member:
    """One regular file inside an archive.

    name:   as stored in the archive (what lookups use).
    offset: where its raw bytes start in the archive file when stored uncompressed, else None.
    """

    name: str
    size: int
    offset: int | None = None

    @property
    def path(self) -> str:
        """The name without `./` segments: what a series id uses."""
        return PurePosixPath(self.name).as_posix()


def archive_suffix(name: str) -> str | None:
    """`.tar.gz` for `a.tar.gz`; None for a name that is no archive."""
    lower = name.lower()
    return next((s for s in SUFFIXES if lower.endswith(s)), None)


def strip_archive_suffix(name: str) -> str:
    """`2026-11-20.tar.gz` -> `2026-11-20`; other names unchanged."""
    suffix = archive_suffix(name)
    return name[: -len(suffix)] if suffix else name


def list_members(
    archive: Path, limits: ArchiveLimits = ArchiveLimits(), series_prefix: str | None = None
) -> tuple[list[Member], list[Failure]]:
    """The acceptable regular-file members, and a Failure for each rejected one (or the archive).

    Failures are named `<series_prefix>/<member>` as series ids are (default prefix: the archive's
    file name).
    """
    prefix = series_prefix or archive.name
    members: list[Member] = []
    failures: list[Failure] = []
    seen: set[str] = set()
    total = 0
    try:
        budget = _expansion_budget(archive.stat().st_size, limits)
        for count, (name, size, problem, offset) in enumerate(
            _entries(archive, limits, budget), start=1
        ):
            if count > limits.max_members:
                failures.append(
                    Failure(
                        prefix,
                        str(archive),
                        "discover",
                        f"more than max_members={limits.max_members} entries; "
                        "the rest of the archive is not listed",
                    )
                )
                break
            if problem is None and name in seen:
                problem = "duplicate member name"
            if problem is None:
                # Once over the limit it stays over: every later member is refused too.
                total += size
                problem = _total_problem(total, limits, budget)
            if problem is None:
                seen.add(name)
                # An empty member gets a 0-byte copy (no offset), so probe says "empty file".
                members.append(Member(name, size, offset if size else None))
            else:
                failures.append(
                    Failure(
                        printable(f"{prefix}/{name}"),
                        printable(f"{archive}!{name}"),
                        "discover",
                        problem,
                    )
                )
    except READ_ERRORS as exc:
        failures.append(Failure(prefix, str(archive), "discover", f"unreadable archive: {exc}"))
    return members, failures


def find_member(archive: Path, name: str, limits: ArchiveLimits = ArchiveLimits()) -> Member:
    """The member called `name`, re-checked against the limits (listings memoised per version)."""
    try:
        info = archive.stat()
    except OSError as exc:
        raise BadInput(f"{archive}!{name}", f"archive unreadable: {exc.strerror}") from exc
    found = _listing(archive, info.st_size, info.st_mtime_ns, limits).get(name)
    if found is None:
        raise BadInput(f"{archive}!{name}", "no such acceptable member in the archive")
    return found


@functools.lru_cache(maxsize=16)
def _listing(archive: Path, size: int, mtime_ns: int, limits: ArchiveLimits) -> dict[str, Member]:
    """size and mtime_ns are only the cache key: a changed archive is listed again."""
    return {m.name: m for m in list_members(archive, limits)[0]}


@contextmanager
def member_input(archive: Path, member: Member, tmp_dir: Path) -> Iterator[str]:
    """An ffmpeg input for one member: a subfile URL when stored, else a temp copy (deleted)."""
    if member.offset is not None:
        yield subfile_url(str(archive.resolve()), member.offset, member.size)
        return
    suffix = PurePosixPath(member.name).suffix
    Path(tmp_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        dir=tmp_dir, prefix="member-", suffix=suffix, delete=False
    ) as out:
        copy = Path(out.name)
    try:
        _copy_member(archive, member, copy)
        yield str(copy)
    finally:
        copy.unlink(missing_ok=True)


def _copy_member(archive: Path, member: Member, target: Path) -> None:
    """Write one member's bytes to `target`; a broken or changed archive is BadInput for it."""
    where = f"{archive}!{member.name}"
    try:
        with target.open("wb") as out:
            for _, stream in read_members(archive, [member]):
                _copy_bounded(stream, out, member, where)
                return
    except READ_ERRORS as exc:
        raise BadInput(where, f"cannot read member: {exc}") from exc
    raise BadInput(where, "member no longer in the archive")


def read_members(archive: Path, members: list[Member]) -> Iterator[tuple[Member, IO[bytes]]]:
    """Each wanted member with a stream of its bytes, in archive order, in one pass.

    A stream is valid only until the next item: read it before asking for more.
    """
    wanted = {m.name: m for m in members}
    if archive_suffix(archive.name) == ".zip":
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if info.filename in wanted:
                    with zf.open(info) as stream:
                        yield wanted[info.filename], stream
        return
    with tarfile.open(archive, _tar_mode(archive)) as tf:
        for info in tf:
            if info.name in wanted:
                stream = tf.extractfile(info)
                if stream is None:  # listed as a regular file, but the archive changed since
                    raise tarfile.TarError(f"member {info.name} is no longer a regular file")
                yield wanted.pop(info.name), stream
                if not wanted:
                    return


def _copy_bounded(src: IO[bytes], dst: IO[bytes], member: Member, where: str) -> None:
    """Copy exactly member.size bytes; more or fewer means the archive lied about the member."""
    copied = 0
    for block in iter(lambda: src.read(BLOCK_BYTES), b""):
        copied += len(block)
        if copied > member.size:
            raise BadInput(where, f"member holds more than its declared {member.size} bytes")
        dst.write(block)
    if copied != member.size:
        raise BadInput(where, f"member truncated: {copied} of {member.size} bytes")


# name, size, why it is rejected (None = fine), raw offset
_Entry = tuple[str, int, str | None, int | None]


def _entries(archive: Path, limits: ArchiveLimits, budget: int) -> Iterator[_Entry]:
    """Every non-directory member with the reason it is unacceptable, if any.

    `budget`: the uncompressed bytes the archive may expand to (see _expansion_budget).
    """
    if archive_suffix(archive.name) == ".zip":
        yield from _zip_entries(archive, limits)
    else:
        yield from _tar_entries(archive, limits, budget)


def _expansion_budget(archive_bytes: int, limits: ArchiveLimits) -> int:
    """Uncompressed bytes an archive of `archive_bytes` may hold: video barely compresses, so more
    than max_ratio times its own size is a bomb (or overlapping zip members), whatever each member
    says."""
    return int(max(limits.ratio_min_bytes, limits.max_ratio * archive_bytes))


def _tar_mode(archive: Path) -> Literal["r:", "r:gz"]:
    """Compression from the name, never sniffed: offsets are only raw in a plain tar."""
    return "r:" if archive_suffix(archive.name) == ".tar" else "r:gz"


def _tar_entries(archive: Path, limits: ArchiveLimits, budget: int) -> Iterator[_Entry]:
    """Headers are checked before the member's data is passed over: in a .tar.gz passing over means
    decompressing, so a bomb member ends the listing there (refused members too: they are skipped
    the same way)."""
    plain = _tar_mode(archive) == "r:"
    with tarfile.open(archive, _tar_mode(archive)) as tf:
        for info in tf:
            if info.offset_data + info.size > budget:
                yield (
                    info.name,
                    info.size,
                    (
                        f"archive would expand past max_ratio={limits.max_ratio:g} times its own "
                        f"size at this member of {info.size} bytes (decompression bomb?); it and "
                        "the rest of the archive are refused"
                    ),
                    None,
                )
                return
            if info.isdir():
                continue
            problem = (
                _name_problem(info.name)
                or _tar_type_problem(info)
                or _size_problem(info.size, limits)
            )
            yield info.name, info.size, problem, info.offset_data if plain else None


def _tar_type_problem(info: tarfile.TarInfo) -> str | None:
    if info.issym() or info.islnk():
        return (
            f"link member rejected ({'symlink' if info.issym() else 'hardlink'} to {info.linkname})"
        )
    if info.ischr() or info.isblk() or info.isfifo():
        return "device or fifo member rejected"
    if info.issparse():
        return "sparse member rejected"
    return None if info.isreg() else "not a regular file"


def _zip_entries(archive: Path, limits: ArchiveLimits) -> Iterator[_Entry]:
    with zipfile.ZipFile(archive) as zf, archive.open("rb") as raw:
        for info in zf.infolist():
            if info.is_dir():
                continue
            problem = (
                _name_problem(info.filename)
                or _zip_type_problem(info)
                or _size_problem(info.file_size, limits)
                or _ratio_problem(info, limits)
            )
            stored = problem is None and info.compress_type == zipfile.ZIP_STORED
            yield (
                info.filename,
                info.file_size,
                problem,
                _zip_data_offset(raw, info) if stored else None,
            )


def _zip_type_problem(info: zipfile.ZipInfo) -> str | None:
    mode = info.external_attr >> 16  # unix mode, where the zip was made on unix
    if stat.S_ISLNK(mode):
        return "link member rejected (symlink)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return "device or fifo member rejected"
    if info.flag_bits & 0x1:
        return "encrypted member rejected"
    return None


def _ratio_problem(info: zipfile.ZipInfo, limits: ArchiveLimits) -> str | None:
    if info.file_size <= limits.ratio_min_bytes:
        return None
    ratio = info.file_size / max(info.compress_size, 1)
    if ratio > limits.max_ratio:
        return f"compression ratio {ratio:.0f} exceeds max_ratio={limits.max_ratio:g} (zip bomb?)"
    return None


def _zip_data_offset(raw: IO[bytes], info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start: after its local header, whose name and extra lengths
    may differ from the central directory's."""
    raw.seek(info.header_offset)
    signature, name_len, extra_len = _ZIP_LOCAL_HEADER.unpack(raw.read(_ZIP_LOCAL_HEADER.size))
    if signature != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"bad local header for {info.filename}")
    return info.header_offset + _ZIP_LOCAL_HEADER.size + name_len + extra_len


def printable(name: str) -> str:
    """`name` with bytes that are not UTF-8 spelt `\\xNN`:
    ids and tables (Arrow, SQLite, JSON) need valid UTF-8."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _name_problem(name: str) -> str | None:
    if printable(name) != name:  # tarfile hands undecodable bytes over as surrogates
        return f"member name is not valid UTF-8: {printable(name)} (rename it)"
    path = PurePosixPath(name)
    if path.is_absolute():
        return f"absolute path rejected: {name}"
    if ".." in path.parts:
        return f"path escaping the archive rejected: {name}"
    return None


def _size_problem(size: int, limits: ArchiveLimits) -> str | None:
    if size > limits.max_member_bytes:
        return f"member of {size} bytes exceeds max_member_bytes={limits.max_member_bytes}"
    return None


def _total_problem(total: int, limits: ArchiveLimits, budget: int) -> str | None:
    if total > limits.max_total_bytes:
        return f"archive total exceeds max_total_bytes={limits.max_total_bytes}"
    if total > budget:  # zip members that overlap, or many small ratios adding up
        return (
            f"archive total exceeds max_ratio={limits.max_ratio:g} times its own size "
            "(decompression bomb?)"
        )
    return None
