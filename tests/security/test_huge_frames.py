"""Videos declaring enormous frames (SPEC §6: sizes are bounded). A 100000x100000 header is refused
by ffmpeg and reported as such; one ffmpeg would accept (16000x16000, 1 GB a frame through the
scaler) is refused by lib.sources.kinds.video at probe time, before any frame is decoded; an MJPEG
whose frame headers were patched to 40000x40000 fails cleanly; two frames a million seconds apart
(which an fps filter would expand into millions of frames) are refused by their duration, or stopped
at the frame limit when none is declared. Each is a recorded failure naming the file, in bounded
time and memory."""

from __future__ import annotations

import struct
import subprocess
import time
from pathlib import Path

import pytest

from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.sources.ffmpeg import ffmpeg_exe
from lstmpipe.lib.sources.frames import MAX_FRAMES, MAX_PIXELS
from lstmpipe.lib.sources.kinds.video import VideoInfo, decode_video, probe
from tests.helpers import ffmpeg_children
from tests.security.conftest import SMALL, isolated
from tests.security.pipeline import reasons, run


def y4m(path: Path, width: int, height: int) -> Path:
    """A YUV4MPEG2 stream header declaring width x height, then one (short) frame: 1 KB on disk."""
    path.write_bytes(
        f"YUV4MPEG2 W{width} H{height} F25:1 Ip A1:1 C420jpeg\nFRAME\n".encode() + bytes(1000)
    )
    return path


def patched_mjpeg(path: Path, side: int) -> Path:
    """A real 64x48 MJPEG AVI whose every JPEG start-of-frame claims side x side."""
    subprocess.run(
        [
            ffmpeg_exe(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x48:rate=5:duration=1",
            "-c:v",
            "mjpeg",
            str(path),
        ],
        check=True,
        timeout=60,
    )
    data = bytearray(path.read_bytes())
    at = data.find(b"\xff\xc0")  # SOF0: marker, length (2), precision (1), height (2), width (2)
    while at != -1:
        data[at + 5 : at + 9] = struct.pack(">HH", side, side)
        at = data.find(b"\xff\xc0", at + 2)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "side, reason",
    [
        (100_000, "declared frame size too large (Picture size 100000x100000 is invalid)"),
        (16_000, f"frames of 16000x16000 pixels exceed the limit of {MAX_PIXELS} pixels"),
    ],
)
def test_probe_refuses_huge_declared_frames_naming_the_file(
    tmp_path: Path, side: int, reason: str
) -> None:
    path = y4m(tmp_path / "huge.y4m", side, side)
    with pytest.raises(BadInput) as caught:
        probe(str(path), path.name, timeout_s=20)
    assert caught.value.path == "huge.y4m" and reason in caught.value.reason


def test_huge_videos_in_a_run_are_recorded_and_the_rest_goes_on(
    tmp_path: Path, home: Path, clip: Path, system_tmp: Path
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    y4m(source / "claims_100000.avi", 100_000, 100_000)  # ffmpeg sniffs the content, not the suffix
    y4m(source / "claims_16000.mkv", 16_000, 16_000)
    patched_mjpeg(source / "mjpeg_40000.avi", 40_000)
    (source / "fine.mp4").write_bytes(clip.read_bytes())
    outcome = run(source, home)
    assert list(outcome.features) == ["fine.mp4"]
    refused = reasons(outcome)
    assert set(refused) == {"claims_100000.avi", "claims_16000.mkv", "mjpeg_40000.avi"}
    assert "declared frame size too large" in refused["claims_100000.avi"]
    assert "exceed the limit" in refused["claims_16000.mkv"]
    # the container says 64x48; the decoder rejects the patched frames
    assert refused["mjpeg_40000.avi"]
    assert all(
        path.endswith(sid)
        for sid, path in zip(
            outcome.failures["series_id"].to_pylist(),
            outcome.failures["path"].to_pylist(),
            strict=False,
        )
    )


def test_decoding_a_huge_declared_video_stays_small(tmp_path: Path) -> None:
    """The whole decode path in a fresh interpreter: refused before ffmpeg allocates a frame."""
    path = y4m(tmp_path / "claims_16000.y4m", 16_000, 16_000)
    shown = isolated(f"""
        import time
        from pathlib import Path
        from lstmpipe.lib.config import SamplingConfig
        from lstmpipe.lib.sources.decode import decode
        from lstmpipe.lib.errors import BadInput
        from lstmpipe.lib.series import SeriesRef
        ref = SeriesRef("claims_16000.y4m", "x", "video", {str(path)!r})
        began = time.monotonic()
        try:
            list(decode(ref, SamplingConfig(**{SMALL.__dict__!r}), Path({str(tmp_path / "tmp")!r})))
            result = "decoded"
        except BadInput as exc:
            result = {{"reason": exc.reason, "seconds": time.monotonic() - began}}
    """)
    assert "exceed the limit" in shown["result"]["reason"] and shown["result"]["seconds"] < 10
    assert shown["self_bytes"] < 400 << 20 and shown["children_bytes"] < 600 << 20, shown


def timestamp_gap(path: Path) -> Path:
    """2 real H.264 frames 1,000,000 s apart: 3 kB that an
    fps filter would expand into 4 million frames."""
    subprocess.run(
        [
            ffmpeg_exe(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x64:rate=1:duration=2",
            "-vf",
            "setpts=N*1000000/TB",
            "-fps_mode",
            "passthrough",
            "-c:v",
            "libx264",
            str(path),
        ],
        check=True,
        timeout=60,
    )
    return path


def test_a_timestamp_gap_is_refused_before_decoding(
    tmp_path: Path, home: Path, clip: Path, system_tmp: Path
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    timestamp_gap(source / "gap.mkv")
    (source / "fine.mp4").write_bytes(clip.read_bytes())
    began = time.monotonic()
    outcome = run(source, home)
    assert time.monotonic() - began < 30  # decoding it would run for hours
    assert list(outcome.features) == ["fine.mp4"]
    reason = reasons(outcome)["gap.mkv"]
    assert "would yield about 4000004 frames" in reason and f"limit of {MAX_FRAMES}" in reason


def test_a_stream_without_duration_is_stopped_at_the_frame_limit(tmp_path: Path) -> None:
    """When the container gives no duration to check first, decoding stops once past the limit."""
    path = timestamp_gap(tmp_path / "gap.mkv")
    info = probe(str(path), path.name, timeout_s=20)
    unknown = VideoInfo(info.width, info.height, info.fps, None, info.codec)
    began = time.monotonic()
    with pytest.raises(BadInput, match="more than 100 frames decoded") as caught:
        for _ in decode_video(str(path), path.name, SMALL, unknown, max_frames=100):
            pass
    assert caught.value.path == "gap.mkv" and time.monotonic() - began < 10
    assert ffmpeg_children() == []
