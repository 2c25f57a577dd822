"""Video archives (.tar, .tar.gz/.tgz, .zip), streamed member by member, never extracted wholesale.

A member stored uncompressed is handed to ffmpeg in place (a `subfile` URL on the
archive: no copy at all); a compressed one is copied, size-bounded, to a temp file.
Listing rejects what an archive must not smuggle in: absolute paths, `..`, links,
devices, and sizes or compression ratios beyond the limits (a zip or tar bomb is
reported, never expanded: a compressed tar's listing stops at the first header that
would take the archive past `max_ratio` times its own size, before that member's bytes
are decompressed).

Headers are bounded before they are read into memory: a tar's GNU long-name/long-link
and pax headers (`_BoundedTarInfo`), a zip's central directory (`_check_central_directory`);
every entry counts, directories too. Temp copies live in one folder per process,
`<tmp_dir>/members-<host>-<pid>-<random>`, removed once empty or at exit, and swept by the
next process on the host once its owner is gone. A compressed tar is decompressed once per
process however many of its members are asked for, in whatever order (`_TarUnpacker`); a zip's
central directory is read once per process (`_ZipReader`).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import socket
import stat
import struct
import tarfile
import tempfile
import threading
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Literal, NamedTuple

from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.failures import Failure
from lstmpipe.lib.sources.ffmpeg import subfile_url

SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")  # longest first: ".tar.gz" before ".tar"
BLOCK_BYTES = 1 << 20  # bytes per read when copying or hashing: fast, and never a memory concern
# What a broken archive raises.
READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError)
# Signature, then the file name and extra field lengths at offsets 26 and 28.
_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")
# A central directory entry: signature, then name, extra and comment lengths at offsets 28-32.
_ZIP_CENTRAL_HEADER = struct.Struct("<4s24xHHH12x")

# Bounds on what headers make a reader hold in memory (issue 16 item 4). Module constants, not
# ArchiveLimits: no honest archive comes near them, so there is nothing to configure.
# A member name longer than PATH_MAX could not be a file anywhere.
MAX_NAME_BYTES = 4096
# Folders a member is nested in: real trees of clips are a few deep.
MAX_DEPTH = 128
# One GNU long-name/long-link or pax header: a name of MAX_NAME_BYTES plus a few pax records
# (times, xattrs). tarfile reads the whole block into memory from the size in the header: a
# 130 KB .tar.gz declaring a 600 MiB long name cost +655 MiB before any other check.
MAX_EXTENDED_HEADER_BYTES = 64 << 10
# Extended headers in a row before one member: GNU tar writes at most a long name and a long link,
# pax one `x` (and an archive-wide `g`). tarfile reads each chain by recursion.
MAX_CHAINED_HEADERS = 8
# Member names kept by one listing (accepted and refused): 100,000 names of 160 bytes.
MAX_LISTED_NAME_BYTES = 16 << 20
# A zip's central directory, which zipfile reads whole and turns into one object per entry:
# 100,000 entries of 46 bytes plus a name of ~120.
MAX_CENTRAL_DIRECTORY_BYTES = 16 << 20


class HeaderBomb(tarfile.TarError):
    """A header that would make the reader allocate far beyond what any honest archive needs.

    A TarError but not a tarfile.HeaderError: tarfile turns those into a silent end of archive."""


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile's header parser, refusing an extended header larger than MAX_EXTENDED_HEADER_BYTES
    or a chain longer than MAX_CHAINED_HEADERS before reading it (CPython 3.11 `_proc_member`
    reads `self.size` bytes, then recurses for the next header)."""

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type not in _EXTENDED_TYPES:
            return super()._proc_member(tar)  # pyright: ignore[reportAttributeAccessIssue]
        if self.size > MAX_EXTENDED_HEADER_BYTES:
            raise HeaderBomb(
                f"{_EXTENDED_TYPES[self.type]} header of {self.size} bytes exceeds "
                f"{MAX_EXTENDED_HEADER_BYTES} (header bomb?)"
            )
        chained = getattr(tar, "_lstmpipe_chained", 0)
        if chained >= MAX_CHAINED_HEADERS:
            raise HeaderBomb(f"more than {MAX_CHAINED_HEADERS} extended headers in a row")
        tar._lstmpipe_chained = chained + 1  # pyright: ignore[reportAttributeAccessIssue]
        try:
            found = super()._proc_member(tar)  # pyright: ignore[reportAttributeAccessIssue]
        finally:
            tar._lstmpipe_chained = chained  # pyright: ignore[reportAttributeAccessIssue]
        _check_global_pax(tar.pax_headers)
        return found

    def _proc_sparse(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        """Old GNU sparse: its extension blocks are passed over, their map not kept (a sparse
        member is refused anyway, and a long chain of blocks is a map of millions of pairs)."""
        _, isextended, origsize = self._sparse_structs  # pyright: ignore[reportAttributeAccessIssue]
        del self._sparse_structs  # pyright: ignore[reportAttributeAccessIssue]
        while isextended:
            block = tar.fileobj.read(tarfile.BLOCKSIZE)
            if len(block) < tarfile.BLOCKSIZE:  # tarfile itself would raise IndexError
                raise tarfile.ReadError("sparse member header truncated")
            isextended = bool(block[504])
        self.sparse = []  # pyright: ignore[reportAttributeAccessIssue]
        self.offset_data = tar.fileobj.tell()
        tar.offset = self.offset_data + self._block(self.size)  # pyright: ignore[reportAttributeAccessIssue]
        self.size = origsize
        return self

    def _proc_gnusparse_10(
        self, next: tarfile.TarInfo, pax_headers: dict[str, str], tar: tarfile.TarFile
    ) -> None:
        """GNU sparse 1.0: its map (a count, then numbers read until that many are found: no
        bound) is not read; the member is refused as sparse."""
        next.sparse = []  # pyright: ignore[reportAttributeAccessIssue]


_EXTENDED_TYPES = {
    tarfile.GNUTYPE_LONGNAME: "GNU long-name",
    tarfile.GNUTYPE_LONGLINK: "GNU long-link",
    tarfile.XHDTYPE: "pax",
    tarfile.XGLTYPE: "pax global",
    tarfile.SOLARIS_XHDTYPE: "pax",
}


def _check_global_pax(records: Mapping[str, str]) -> None:
    """Global pax records accumulate over the archive (and every later header copies them)."""
    size = sum(len(key) + len(value) for key, value in records.items())
    if size > MAX_EXTENDED_HEADER_BYTES:
        raise HeaderBomb(
            f"global pax records of {size} bytes exceed {MAX_EXTENDED_HEADER_BYTES} (header bomb?)"
        )


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
    file name). Never raises for what the archive holds: a header bomb, or even a MemoryError,
    is the archive's failure, after the members listed before it.
    """
    prefix = series_prefix or archive.name
    members: list[Member] = []
    failures: list[Failure] = []
    seen: set[str] = set()
    total = names = 0
    try:
        budget = _expansion_budget(archive.stat().st_size, limits)
        for count, entry in enumerate(_entries(archive, limits, budget), start=1):
            names += len(entry.name)
            stop = _listing_problem(count, names, limits)
            if stop:
                failures.append(Failure(prefix, str(archive), "discover", stop))
                break
            if not entry.listed:
                continue
            name, size, problem = entry.name, entry.size, entry.problem
            if problem is None and name in seen:
                problem = "duplicate member name"
            if problem is None:
                # Once over the limit it stays over: every later member is refused too.
                total += size
                problem = _total_problem(total, limits, budget)
            if problem is None:
                seen.add(name)
                # An empty member gets a 0-byte copy (no offset), so probe says "empty file".
                members.append(Member(name, size, entry.offset if size else None))
            else:
                failures.append(
                    Failure(
                        printable(f"{prefix}/{name}"),
                        printable(f"{archive}!{name}"),
                        "discover",
                        problem,
                    )
                )
    except HeaderBomb as exc:
        reason = f"{exc}; the archive is not listed from there on"
        failures.append(Failure(prefix, str(archive), "discover", reason))
    except READ_ERRORS as exc:
        failures.append(Failure(prefix, str(archive), "discover", f"unreadable archive: {exc}"))
    except MemoryError:  # a bound missed: the archive fails, never the run
        failures.append(Failure(prefix, str(archive), "discover", "listing ran out of memory"))
    return members, failures


def _listing_problem(count: int, names: int, limits: ArchiveLimits) -> str | None:
    """Why listing stops here: what it keeps grows with the entries and their names."""
    if count > limits.max_members:
        return (
            f"more than max_members={limits.max_members} entries; "
            "the rest of the archive is not listed"
        )
    if names > MAX_LISTED_NAME_BYTES:
        return (
            f"member names add up to more than {MAX_LISTED_NAME_BYTES} bytes; "
            "the rest of the archive is not listed"
        )
    return None


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
def member_input(
    archive: Path, member: Member, tmp_dir: Path, limits: ArchiveLimits = ArchiveLimits()
) -> Iterator[str]:
    """An ffmpeg input for one member: a subfile URL when stored, else a temp copy (deleted) in
    this process's folder under `tmp_dir`. `limits`: those the member was found with."""
    if member.offset is not None:
        yield subfile_url(str(archive.resolve()), member.offset, member.size)
        return
    copy = _in_process_folder(Path(tmp_dir), lambda folder: _temp_file(folder, member.name))
    try:
        if _tar_mode(archive) == "r:":
            _copy_member(archive, member, copy)  # a plain tar seeks over members: no pass to save
        else:
            _reader(archive, Path(tmp_dir), limits).take(member, copy)
        yield str(copy)
    finally:
        copy.unlink(missing_ok=True)
        _tidy(Path(tmp_dir))


def _temp_file(folder: Path, name: str) -> Path:
    """A new empty file in `folder`, named at random (never after the member)."""
    suffix = PurePosixPath(name).suffix
    with tempfile.NamedTemporaryFile(
        dir=folder, prefix="member-", suffix=suffix, delete=False
    ) as f:
        return Path(f.name)


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


def read_members(
    archive: Path, members: list[Member], limits: ArchiveLimits = ArchiveLimits()
) -> Iterator[tuple[Member, IO[bytes]]]:
    """Each wanted member with a stream of its bytes, in archive order, in one pass.

    A stream is valid only until the next item: read it before asking for more.
    """
    wanted = {m.name: m for m in members}
    if archive_suffix(archive.name) == ".zip":
        with _open_zip(archive, limits) as zf:
            for info in zf.infolist():
                if info.filename in wanted:
                    with zf.open(info) as stream:
                        yield wanted[info.filename], stream
        return
    with _open_tar(archive) as tar:
        for info in _headers(tar):
            if info.name in wanted:
                yield wanted.pop(info.name), _member_stream(tar, info)
                if not wanted:
                    return


def _member_stream(tar: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    stream = tar.extractfile(info) if info.isreg() else None
    if stream is None:  # listed as a regular file, but the archive changed since
        raise tarfile.TarError(f"member {info.name} is no longer a regular file")
    return stream


# Temp copies: one folder per process and tmp_dir, named for its owner so that the folders of a
# process killed before it could clean up are swept by the next one (issue 16 item 9c).
_FOLDER_PREFIX = "members-"
_HOST = socket.gethostname()  # a shared tmp_dir may hold the folders of other hosts' processes
# Archives a process keeps open (and compressed tars' unpacked members): decoder threads work
# through one or two at a time; one evicted is closed and its unpacked members removed.
OPEN_ARCHIVES = 4


class _Reader:
    """Copies members of one archive kept open: a zip's central directory is read once per
    process, a compressed tar decompressed once (see _TarUnpacker)."""

    def take(self, member: Member, target: Path) -> None: ...

    def close(self) -> None: ...


class _ZipReader(_Reader):
    def __init__(self, archive: Path, limits: ArchiveLimits) -> None:
        self.archive, self.limits = archive, limits
        self.lock = threading.Lock()
        self.zip: zipfile.ZipFile | None = None
        self.first: dict[str, zipfile.ZipInfo] = {}  # the entry listed (and hashed) per name

    def take(self, member: Member, target: Path) -> None:
        where = f"{self.archive}!{member.name}"
        with self.lock:
            try:
                info = self._open().get(member.name)
                if info is None:
                    raise BadInput(where, "member no longer in the archive")
                assert self.zip is not None
                with self.zip.open(info) as stream, target.open("wb") as out:
                    _copy_bounded(stream, out, member, where)
            except (HeaderBomb, *READ_ERRORS) as exc:
                raise BadInput(where, f"cannot read member: {exc}") from exc

    def _open(self) -> dict[str, zipfile.ZipInfo]:
        if self.zip is None:
            self.zip = _open_zip(self.archive, self.limits)
            for info in self.zip.infolist():
                self.first.setdefault(info.filename, info)
        return self.first

    def close(self) -> None:
        with self.lock:
            if self.zip is not None:
                self.zip.close()
            self.zip, self.first = None, {}


class _TarUnpacker(_Reader):
    """A compressed tar, decompressed once however its members are asked for (issue 16 item 8).

    A request streams on to its member; each accepted member passed over on the way that is like
    those asked for (same suffix, not hidden) is copied to a spill folder for its own request, so
    members asked for in any order cost one pass, and each of their bytes is written to disk once
    (bounded by the listing's ArchiveLimits). A member asked for a second time, or one of a suffix
    not asked for before, starts a new pass. A stream that breaks fails every member not yet
    copied, without reading the archive again.
    """

    def __init__(self, archive: Path, accepted: Mapping[str, Member], tmp_dir: Path) -> None:
        self.archive, self.accepted, self.tmp_dir = archive, accepted, tmp_dir
        self.lock = threading.Lock()
        self.suffixes: set[str] = set()
        self.spill: Path | None = None
        self.spilled: dict[str, Path] = {}
        self.refused: dict[str, str] = {}  # member: why its copy failed while passed over
        self.passed: set[str] = set()  # names reached in this pass
        self.tar: tarfile.TarFile | None = None
        self.headers: Iterator[tarfile.TarInfo] = iter(())
        self.broken: str | None = None
        self.passes = 0

    def take(self, member: Member, target: Path) -> None:
        where = f"{self.archive}!{member.name}"
        with self.lock:
            if member.name in self.spilled:
                self.spilled.pop(member.name).replace(target)
                self._drop_empty_spill()
                return
            if member.name in self.refused:
                raise BadInput(where, self.refused.pop(member.name))
            if self.broken is not None:
                raise BadInput(where, f"cannot read member: {self.broken}")
            self.suffixes.add(_suffix(member.name))
            try:
                if self.tar is None or member.name in self.passed:
                    self._restart()
                self._stream_to(member, target, where)
            except (HeaderBomb, *READ_ERRORS) as exc:
                self._close_stream()
                self.broken = str(exc)
                raise BadInput(where, f"cannot read member: {exc}") from exc

    def _restart(self) -> None:
        self._close_stream()
        self.tar = _open_tar(self.archive)
        self.headers = _headers(self.tar)
        self.passed = set()
        self.passes += 1

    def _stream_to(self, member: Member, target: Path, where: str) -> None:
        assert self.tar is not None
        for info in self.headers:
            if info.name in self.passed:  # a later duplicate: the listing refused it
                continue
            self.passed.add(info.name)
            if info.name == member.name:
                with target.open("wb") as out:
                    _copy_bounded(_member_stream(self.tar, info), out, member, where)
                return
            other = self.accepted.get(info.name)
            if other is not None and other.name not in self.spilled and self._like(other.name):
                self._spill(info, other)
        raise BadInput(where, "member no longer in the archive")

    def _like(self, name: str) -> bool:
        """Likely to be asked for: non-video members and hidden files never are."""
        hidden = any(part.startswith(".") for part in PurePosixPath(name).parts)
        return not hidden and _suffix(name) in self.suffixes

    def _spill(self, info: tarfile.TarInfo, member: Member) -> None:
        assert self.tar is not None
        if self.spill is None:
            self.spill = _in_process_folder(
                self.tmp_dir, lambda folder: Path(tempfile.mkdtemp(dir=folder, prefix="unpacked-"))
            )
        path = self.spill / f"{len(self.passed)}{_suffix(member.name)}"
        where = f"{self.archive}!{member.name}"
        try:
            with path.open("wb") as out:
                _copy_bounded(_member_stream(self.tar, info), out, member, where)
        except BadInput as exc:  # this member lied about its size: it alone fails
            path.unlink(missing_ok=True)
            self.refused[member.name] = exc.reason
            return
        self.spilled[member.name] = path

    def _drop_empty_spill(self) -> None:
        if self.spill is not None and not self.spilled:
            shutil.rmtree(self.spill, ignore_errors=True)
            self.spill = None

    def _close_stream(self) -> None:
        if self.tar is not None:
            self.tar.close()
        self.tar, self.headers = None, iter(())

    def close(self) -> None:
        with self.lock:
            self._close_stream()
            self.spilled.clear()
            self._drop_empty_spill()
        _tidy(self.tmp_dir)


def _suffix(name: str) -> str:
    return PurePosixPath(name).suffix.lower()


class _Process:
    """This process's temp folders (one per tmp_dir) and open archives."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.folders: dict[Path, Path] = {}  # tmp_dir: this process's folder in it
        self.swept: set[Path] = set()
        self.readers: OrderedDict[tuple, _Reader] = OrderedDict()


_process = _Process()


def _forked() -> None:
    """A forked child owns nothing of its parent's (and must never remove its folders)."""
    global _process
    _process = _Process()


os.register_at_fork(after_in_child=_forked)


@atexit.register
def _remove_folders() -> None:
    if _process.pid == os.getpid():
        for folder in _process.folders.values():
            shutil.rmtree(folder, ignore_errors=True)


def _in_process_folder(tmp_dir: Path, make: Callable[[Path], Path]) -> Path:
    """`make(folder)` in this process's folder under `tmp_dir`, `members-<host>-<pid>-<random>`,
    made if need be (the first time after sweeping the folders of this host's processes that are
    gone). Under the lock that _tidy removes an empty folder with."""
    key = tmp_dir.resolve()
    with _process.lock:
        folder = _process.folders.get(key)
        if folder is None or not folder.is_dir():
            key.mkdir(parents=True, exist_ok=True)
            if key not in _process.swept:
                sweep_orphans(key)
                _process.swept.add(key)
            prefix = f"{_FOLDER_PREFIX}{_HOST}-{os.getpid()}-"
            folder = _process.folders[key] = Path(tempfile.mkdtemp(dir=key, prefix=prefix))
        return make(folder)


def _tidy(tmp_dir: Path) -> None:
    """Remove this process's folder under `tmp_dir` once it is empty: nothing of it outlives the
    copies and spilled members it holds."""
    with _process.lock:
        folder = _process.folders.get(tmp_dir.resolve())
        if folder is not None:
            with contextlib.suppress(OSError):  # not empty, or gone
                folder.rmdir()


def sweep_orphans(tmp_dir: Path) -> list[Path]:
    """Remove the temp folders under `tmp_dir` of this host's processes that no longer run (killed
    before they could remove them); never a live process's. The folders removed."""
    removed = []
    for folder in Path(tmp_dir).glob(f"{_FOLDER_PREFIX}*"):
        host, _, pid = folder.name[len(_FOLDER_PREFIX) :].rpartition("-")[0].rpartition("-")
        if host == _HOST and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def _reader(archive: Path, tmp_dir: Path, limits: ArchiveLimits) -> _Reader:
    """The open reader of this archive version in this process; the least recently used beyond
    OPEN_ARCHIVES is closed."""
    try:
        info = archive.stat()
    except OSError as exc:
        raise BadInput(str(archive), f"archive unreadable: {exc.strerror}") from exc
    key = (str(archive.resolve()), info.st_size, info.st_mtime_ns, tmp_dir.resolve(), limits)
    with _process.lock:
        reader = _process.readers.get(key)
    if reader is None:  # made outside the lock: a tar's listing (if not cached) takes a pass
        reader = _new_reader(archive, info, tmp_dir, limits)
    evicted: list[_Reader] = []
    with _process.lock:
        reader = _process.readers.setdefault(key, reader)
        _process.readers.move_to_end(key)
        while len(_process.readers) > OPEN_ARCHIVES:
            evicted.append(_process.readers.popitem(last=False)[1])
    for old in evicted:
        old.close()
    return reader


def _new_reader(
    archive: Path, info: os.stat_result, tmp_dir: Path, limits: ArchiveLimits
) -> _Reader:
    if archive_suffix(archive.name) == ".zip":
        return _ZipReader(archive, limits)
    accepted = _listing(archive, info.st_size, info.st_mtime_ns, limits)
    return _TarUnpacker(archive, accepted, tmp_dir)


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


class _Entry(NamedTuple):
    name: str
    size: int
    problem: str | None  # why it is refused; None: accepted
    offset: int | None  # where a stored member's raw bytes start
    listed: bool = True  # False: a directory, counted against max_members but no member


def _entries(archive: Path, limits: ArchiveLimits, budget: int) -> Iterator[_Entry]:
    """Every entry with the reason it is unacceptable, if any.

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


def _open_tar(archive: Path) -> tarfile.TarFile:
    return tarfile.open(archive, _tar_mode(archive), tarinfo=_BoundedTarInfo)


def _headers(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Each header in turn, none kept (tarfile keeps every header it has read)."""
    while (info := tar.next()) is not None:
        tar.members.clear()  # pyright: ignore[reportAttributeAccessIssue]
        yield info


def _tar_entries(archive: Path, limits: ArchiveLimits, budget: int) -> Iterator[_Entry]:
    """Headers are checked before the member's data is passed over: in a .tar.gz passing over means
    decompressing, so a bomb member ends the listing there (refused members too: they are skipped
    the same way)."""
    plain = _tar_mode(archive) == "r:"
    with _open_tar(archive) as tar:
        for info in _headers(tar):
            if info.offset_data + info.size > budget:
                yield _Entry(
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
                yield _Entry(info.name, 0, None, None, listed=False)
                continue
            problem = (
                _name_problem(info.name)
                or _tar_type_problem(info)
                or _size_problem(info.size, limits)
            )
            yield _Entry(info.name, info.size, problem, info.offset_data if plain else None)


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


def _open_zip(archive: Path, limits: ArchiveLimits) -> zipfile.ZipFile:
    """A ZipFile, once its central directory is known to be of a bounded size."""
    with archive.open("rb") as raw:
        _check_central_directory(raw, limits)
    return zipfile.ZipFile(archive)


def _check_central_directory(raw: IO[bytes], limits: ArchiveLimits) -> None:
    """zipfile reads the central directory whole (its size as the end record says) and makes an
    object per entry: its size and entries are counted here first, from the raw bytes. What is
    not a zip is left for zipfile to report."""
    end = zipfile._EndRecData(raw)  # pyright: ignore[reportAttributeAccessIssue]
    if not end:
        return
    size, location = end[zipfile._ECD_SIZE], end[zipfile._ECD_LOCATION]  # pyright: ignore[reportAttributeAccessIssue]
    if size > MAX_CENTRAL_DIRECTORY_BYTES:
        raise HeaderBomb(
            f"zip central directory of {size} bytes exceeds {MAX_CENTRAL_DIRECTORY_BYTES} "
            "(header bomb?)"
        )
    if end[0] == b"PK\x06\x06":  # zip64: its end record (56 bytes) and locator (20) come first
        location -= 56 + 20
    raw.seek(max(0, location - size))
    for entries in range(1, limits.max_members + 2):
        header = raw.read(_ZIP_CENTRAL_HEADER.size)
        if len(header) < _ZIP_CENTRAL_HEADER.size:
            return
        signature, *lengths = _ZIP_CENTRAL_HEADER.unpack(header)
        if signature != b"PK\x01\x02":
            return
        if entries > limits.max_members:
            raise HeaderBomb(
                f"zip central directory holds more than max_members={limits.max_members} entries"
            )
        raw.seek(sum(lengths), os.SEEK_CUR)


def _zip_entries(archive: Path, limits: ArchiveLimits) -> Iterator[_Entry]:
    with _open_zip(archive, limits) as zf, archive.open("rb") as raw:
        for info in zf.infolist():
            if info.is_dir():
                yield _Entry(info.filename, 0, None, None, listed=False)
                continue
            problem = (
                _name_problem(info.filename)
                or _zip_type_problem(info)
                or _size_problem(info.file_size, limits)
                or _ratio_problem(info, limits)
            )
            stored = problem is None and info.compress_type == zipfile.ZIP_STORED
            yield _Entry(
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


class DeflatedSpan(NamedTuple):
    """Where a deflated zip member's compressed bytes lie, and what they must inflate to."""

    offset: int
    length: int  # compressed bytes
    crc: int  # CRC-32 of the member's bytes


def deflated_span(archive: Path, name: str) -> DeflatedSpan | None:
    """The span of zip member `name` when it is deflated (None for anything else): a reader
    holding the archive's bytes elsewhere fetches and inflates just those (lib/sources/bucket.py).
    Call for members find_member accepted."""
    if archive_suffix(archive.name) != ".zip":
        return None
    info = archive.stat()
    return _deflated_spans(archive, info.st_size, info.st_mtime_ns).get(name)


@functools.lru_cache(maxsize=16)
def _deflated_spans(archive: Path, size: int, mtime_ns: int) -> dict[str, DeflatedSpan]:
    """size and mtime_ns are only the cache key, as for _listing."""
    with _open_zip(archive, ArchiveLimits()) as zf, archive.open("rb") as raw:
        return {
            info.filename: DeflatedSpan(_zip_data_offset(raw, info), info.compress_size, info.CRC)
            for info in zf.infolist()
            if info.compress_type == zipfile.ZIP_DEFLATED and not info.is_dir()
        }


def inflate(packed: Path, target: Path, size: int, crc: int, where: str) -> None:
    """`packed` (raw deflate) inflated into `target`: never more than the member's declared
    `size` (a bomb stops at size + 1 bytes), and refused unless exactly `size` bytes of CRC
    `crc` come out."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    written, check = 0, 0
    with packed.open("rb") as src, target.open("wb") as dst:
        for block in iter(lambda: src.read(BLOCK_BYTES), b""):
            while block and not inflater.eof:
                out = inflater.decompress(block, size + 1 - written)
                block = inflater.unconsumed_tail
                written += len(out)
                if written > size:
                    raise BadInput(where, f"member inflates past its declared {size} bytes")
                check = zlib.crc32(out, check)
                dst.write(out)
    if written != size or check != crc:
        raise BadInput(
            where, f"member corrupt: {written} of {size} bytes inflated, CRC {check:08x}"
        )


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
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return f"member name of {len(name)} characters exceeds {MAX_NAME_BYTES} bytes"
    path = PurePosixPath(name)
    if len(path.parts) > MAX_DEPTH:
        return f"member nested {len(path.parts) - 1} folders deep exceeds {MAX_DEPTH}"
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
