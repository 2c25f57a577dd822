"""Video through ffmpeg: the last kind, every video file and video archive member (SPEC §2).

Discovery: each file with a video suffix or, whatever its suffix, a video container's magic
bytes (lstmpipe.lib.sources.sniff), and each video member of a tar or zip archive, is one
series named by its path under the root (`2026-11-20.tar/grow/clip_0003.mp4`), labelled by
its parent folder and partitioned by its top-level folder or archive. Archives are claimed
whole: their members are listed once, bounded by ArchiveLimits, and hashed in one pass.

Decoding: there is no ffprobe, so `probe` parses what `ffmpeg -i INPUT` prints. Every ffmpeg
input is opened with only the demuxers of lstmpipe.lib.sources.ffmpeg.DEMUXERS: a manifest or
playlist (DASH, HLS, ffconcat, SDP, ...) under a video name is refused, never followed to the
files it names.
Frames come from one ffmpeg process writing raw RGB to a pipe, read one chunk at a
time, so memory is bounded by the chunk, never by the video. Inputs are always
seekable (a path or a `subfile,,start,S,end,E,,:ARCHIVE` URL), never a pipe: an mp4
whose moov atom sits at the end needs to seek.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import threading
import time
from collections import deque
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, cast

import ffmpeg
import numpy as np

from lstmpipe.lib.config import SamplingConfig
from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.failures import Failure
from lstmpipe.lib.series import FrameChunk, OpenSeries, SeriesRef
from lstmpipe.lib.sources.archives import (
    READ_ERRORS,
    ArchiveLimits,
    Member,
    archive_suffix,
    find_member,
    list_members,
    member_input,
    strip_archive_suffix,
)
from lstmpipe.lib.sources.ffmpeg import ffmpeg_exe, input_args, input_options
from lstmpipe.lib.sources.frames import MAX_FRAMES, MAX_PIXELS, check_frame_size
from lstmpipe.lib.sources.hashing import HashMemo, content_hash, member_hashes
from lstmpipe.lib.sources.kinds.base import Claim, Ignored, SourceKind
from lstmpipe.lib.sources.sniff import read_head, video_container

_INVALID = "Invalid data found when processing input"

# File suffixes claimed as video by name (archive members are claimed by name only); a file with
# another suffix is claimed when its first bytes name a video container.
VIDEO_SUFFIXES = frozenset(
    {
        ".3g2",
        ".3gp",
        ".dv",
        ".m2ts",
        ".mts",
        ".mxf",
        ".ogv",
        ".vob",
        ".y4m",
        ".mp4",
        ".mkv",
        ".avi",
        ".mov",
        ".webm",
        ".m4v",
        ".mpg",
        ".mpeg",
        ".ts",
        ".flv",
        ".wmv",
        ".gif",
    }
)


def is_video(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in VIDEO_SUFFIXES


def claim(base: Path, files: list[Path], memo: HashMemo | None, limits: ArchiveLimits) -> Claim:
    """Each video file (by suffix, else by content) and each archive of `files` (the archive's
    video members are series). The rest is left to discovery, which lists it as ignored."""
    refs: list[SeriesRef] = []
    failures: list[Failure] = []
    claimed: list[Path] = []
    ignored: list[Ignored] = []
    for path in files:
        rel = path.relative_to(base).as_posix()
        if archive_suffix(path.name):
            found, refused, passed = _archive_refs(path, rel, memo, limits)
            ignored += passed
        elif is_video(path.name) or _sniffs_as_video(path):
            found, refused = _file_refs(path, rel, memo)
        else:
            continue
        refs += found
        failures += refused
        claimed.append(path)
    return Claim(refs, failures, frozenset(claimed), ignored)


@contextmanager
def open_series(
    ref: SeriesRef, sampling: SamplingConfig, tmp_dir: Path, limits: ArchiveLimits
) -> Iterator[OpenSeries]:
    """Probe once, then decode lazily from the same
    input (one temp copy for a compressed member)."""
    with _input(ref, tmp_dir, limits) as url:
        info = probe(url, ref.location, sampling.timeout_s)
        meta = {
            "source_kind": "video",
            "fps": info.fps,
            "width": info.width,
            "height": info.height,
            "duration_s": info.duration_s,
            "codec": info.codec,
            "rotation": info.rotation,
            "sampled_fps": output_fps(sampling, info, ref.location),
        }
        yield OpenSeries(meta, decode_video(url, ref.location, sampling, info))


def _file_refs(
    path: Path, rel: str, memo: HashMemo | None
) -> tuple[list[SeriesRef], list[Failure]]:
    try:
        digest, size = content_hash(path, memo=memo), path.stat().st_size
    except OSError as exc:
        return [], [Failure(rel, str(path), "discover", f"unreadable: {exc.strerror}")]
    return [_ref(rel, digest, path, None, size, _parent(rel))], []


def _sniffs_as_video(path: Path) -> bool:
    """A video container whatever the suffix (.bin, none); unreadable is discovery's to report."""
    try:
        return video_container(read_head(path)) is not None
    except OSError:
        return False


def _archive_refs(
    archive: Path, rel: str, memo: HashMemo | None, limits: ArchiveLimits
) -> tuple[list[SeriesRef], list[Failure], list[Ignored]]:
    """One SeriesRef per acceptable video member, and every other member listed as ignored (only
    video suffixes are read inside archives); hashing reads the archive at most once."""
    members, failures = list_members(archive, limits, series_prefix=rel)
    videos = [m for m in members if is_video(m.path) and not _hidden(m.path)]
    ignored = [
        Ignored(
            f"{rel}/{m.path}",
            "hidden archive member (a name starting with a dot): not read"
            if _hidden(m.path)
            else "archive member without a video suffix: inside archives only videos are read",
        )
        for m in members
        if m not in videos
    ]
    try:
        hashes, unreadable = member_hashes(archive, videos, memo)
    except READ_ERRORS as exc:  # not even opened
        unread = Failure(rel, str(archive), "discover", f"unreadable archive: {exc}")
        return [], [*failures, unread], ignored
    # sorted like the folder walk
    videos = sorted(videos, key=lambda m: PurePosixPath(m.path).parts)
    refs = [
        _ref(f"{rel}/{m.path}", hashes[m.name], archive, m, m.size, _parent(m.path))
        for m in videos
        if m.name in hashes
    ]
    failures += [
        Failure(f"{rel}/{m.path}", f"{archive}!{m.name}", "discover", unreadable[m.name])
        for m in videos
        if m.name in unreadable
    ]
    return refs, failures, ignored


def _ref(
    series_id: str, digest: str, path: Path, member: Member | None, size: int, label: str | None
) -> SeriesRef:
    parts = PurePosixPath(series_id).parts
    return SeriesRef(
        series_id=series_id,
        content_hash=digest,
        kind="video",
        path=str(path.resolve()),
        member=member.name if member else None,
        label=label,
        partition=strip_archive_suffix(parts[0]) if len(parts) > 1 else None,
        meta={"source_kind": "video", "bytes": size},
    )


def _parent(path: str) -> str | None:
    """The folder holding a file (UCF101's `class/clip.mp4`);
    None at the root of the source or archive."""
    parts = PurePosixPath(path).parts
    return parts[-2] if len(parts) > 1 else None


def _hidden(member_path: str) -> bool:
    return any(part.startswith(".") for part in PurePosixPath(member_path).parts)


@contextmanager
def _input(ref: SeriesRef, tmp_dir: Path, limits: ArchiveLimits) -> Iterator[str]:
    """An ffmpeg input for the file or the archive member; seekable, never a pipe."""
    path = Path(ref.path).resolve()
    if ref.member is None:
        yield str(path)  # absolute: a relative `a:b.mp4` would read as protocol `a`
        return
    with member_input(path, find_member(path, ref.member, limits), tmp_dir) as url:
        yield url


@dataclass(frozen=True)
class VideoInfo:
    """What `ffmpeg -i` says about the first video stream.

    width, height are the coded size; frames come out already turned by
    `rotation` (degrees counter-clockwise), since ffmpeg autorotates.
    """

    width: int
    height: int
    fps: float
    duration_s: float | None  # None when the container does not say (N/A)
    codec: str
    rotation: float = 0.0


def probe(input: str, name: str, timeout_s: float, max_pixels: int = MAX_PIXELS) -> VideoInfo:
    """Size, rate, duration, codec and rotation of the first video stream; BadInput when there is
    none, or when its frames would exceed `max_pixels` (refused before anything decodes them)."""
    if _is_empty(input):
        raise BadInput(name, "empty file")
    text = _ffmpeg_says(input, name, timeout_s)
    if _NOT_LISTED in text:
        raise BadInput(name, _not_listed(_ffmpeg_says(input, name, timeout_s, "debug")))
    info = _parse_probe(text, name)
    check_frame_size(name, info.height, info.width, max_pixels)  # before ffmpeg allocates one
    return info


def _ffmpeg_says(input: str, name: str, timeout_s: float, level: str = "info") -> str:
    """What `ffmpeg -i INPUT` prints about the input (restricted to DEMUXERS), the name hidden."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", level, *input_args(input)]
    try:  # argv, no shell: never parsed
        done = subprocess.run(cmd, capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise BadInput(name, f"probe timed out after {timeout_s:g}s") from exc
    # ffmpeg echoes the input name verbatim: a name holding a newline and `Stream #0:0: Video: ...`
    # would otherwise be parsed as a stream of the attacker's choosing. Replaced as bytes, so that
    # names that are not UTF-8 match too.
    return done.stderr.replace(os.fsencode(input), b"<input>").decode(errors="replace")


_NOT_LISTED = "Format not on whitelist"


def _not_listed(debug: str) -> str:
    """The refusal of a container outside ffmpeg.DEMUXERS, named from ffmpeg's debug log."""
    probed = re.search(r"Format (\S+) probed with", debug)
    what = f"container format {probed.group(1)}" if probed else "container format"
    return (
        f"{what} is not one lstmpipe decodes: manifests, playlists and sequences that name "
        "other files are refused, never followed"
    )


def _parse_probe(text: str, name: str) -> VideoInfo:
    """The VideoInfo in what `ffmpeg -i` printed, or BadInput with the most precise reason found."""
    if "Input #0" not in text:
        raise BadInput(name, _open_error(text))
    block = _first_video_block(text)
    if block is None:
        kinds = sorted(set(re.findall(r"Stream #\S+: (\w+):", text)))
        reason = (
            f"no video stream ({', '.join(k.lower() for k in kinds)} only)"
            if kinds
            else "no video stream"
        )
        raise BadInput(name, reason)
    head = block.splitlines()[0]
    size = re.search(r"[ ,](\d+)x(\d+)[ ,]", head)
    rate = re.search(r"([\d.]+)(k?) fps", head) or re.search(r"([\d.]+)(k?) tbr", head)
    codec = re.search(r"Video: (\w+)", head)
    if size is None or rate is None or codec is None:
        raise BadInput(name, f"unreadable video stream: {head.strip()}")
    duration = re.search(r"Duration: (\d+):(\d+):([\d.]+)", text)
    rotation = re.search(r"display ?matrix: rotation of (-?[\d.]+) degrees", block, re.IGNORECASE)
    return VideoInfo(
        width=int(size.group(1)),
        height=int(size.group(2)),
        fps=float(rate.group(1)) * (1000 if rate.group(2) else 1),
        duration_s=_seconds(duration) if duration else None,
        codec=codec.group(1),
        rotation=float(rotation.group(1)) if rotation else 0.0,
    )


def output_fps(sampling: SamplingConfig, info: VideoInfo, name: str) -> float:
    """Frames per second handed out: num_frames over the duration, else fps, else the video's."""
    if sampling.num_frames is not None:
        if not info.duration_s:
            raise BadInput(
                name,
                f"duration unknown: cannot spread {sampling.num_frames} frames uniformly; use fps",
            )
        return sampling.num_frames / info.duration_s
    return sampling.fps if sampling.fps is not None else info.fps


def decode_video(
    input: str,
    name: str,
    sampling: SamplingConfig,
    info: VideoInfo | None = None,
    max_frames: int = MAX_FRAMES,
) -> Generator[FrameChunk, None, None]:
    """Chunks of (N, size, size, 3) uint8 RGB frames with t in seconds; BadInput beyond `max_frames`
    (refused before decoding when the duration says so, else stopped once that many came out).

    Sampled (fps or num_frames): an fps filter makes the output constant-rate, so
    t = index / rate is exact, and frames are chosen by timestamp, variable frame rate
    or not. Every frame (fps None): frames pass through untouched and t is each frame's
    own presentation time, read from ffmpeg's showinfo filter, so a variable frame rate
    keeps its real timing. `info` saves a probe when the caller already has one. ffmpeg
    is killed and reaped when the consumer stops early, when it stalls for `timeout_s`,
    or on error.
    """
    info = info or probe(input, name, sampling.timeout_s)
    every_frame = sampling.fps is None and sampling.num_frames is None
    rate = None if every_frame else output_fps(sampling, info, name)
    expected = _expected_frames(sampling, info, rate)
    if expected is not None and expected > max_frames:
        why = (
            "num_frames"
            if sampling.num_frames is not None
            else f"{info.duration_s:g} s at {rate or info.fps:g} fps"
        )
        raise BadInput(
            name,
            f"would yield about {expected} frames ({why}), beyond the limit of {max_frames} per "
            "series (a timestamp gap, or a video too long to sample this densely); use num_frames",
        )
    frame_bytes = sampling.size * sampling.size * 3
    proc = subprocess.Popen(
        decode_command(input, sampling.size, rate, sampling.num_frames),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )
    # Both pipes were asked for, unbuffered (bufsize=0): Popen made them raw FileIO objects.
    stdout = cast(io.FileIO, proc.stdout)
    stderr = _StderrTail(cast(io.FileIO, proc.stderr))
    watchdog = _Watchdog(proc, sampling.timeout_s)
    try:
        start = 0
        while len(frames := _read_frames(stdout, sampling.chunk_frames, frame_bytes, watchdog)):
            # No usable duration said so beforehand.
            if start + len(frames) // frame_bytes > max_frames:
                raise BadInput(
                    name,
                    f"more than {max_frames} frames decoded, the limit per series "
                    "(a timestamp gap, or a video too long to sample this densely); use num_frames",
                )
            frames = frames.reshape(-1, sampling.size, sampling.size, 3)
            t = (
                stderr.take_times(len(frames), sampling.timeout_s)
                if rate is None  # every frame, at its own presentation time
                else np.arange(start, start + len(frames)) / rate
            )
            yield FrameChunk(frames=frames, t=t, start=start)
            start += len(frames)
        _check_exit(proc, stderr, watchdog, name, start, sampling.timeout_s)
    finally:
        watchdog.stop()
        proc.kill()
        proc.wait()
        stderr.join()
        stdout.close()


def _expected_frames(sampling: SamplingConfig, info: VideoInfo, rate: float | None) -> int | None:
    """Frames decoding will hand out, from the container's duration; None when it does not say."""
    if sampling.num_frames is not None:
        return sampling.num_frames
    if not info.duration_s:
        return None
    return int(info.duration_s * (rate if rate is not None else info.fps))


def decode_command(input: str, size: int, rate: float | None, max_frames: int | None) -> list[str]:
    """input → fps (or showinfo) → cover size×size → center crop → raw RGB on stdout.

    Audio, subtitles and data streams are dropped.

    rate None passes every frame through (no duplicates, no drops) and logs each one's
    pts_time at info level; ffmpeg's own messages keep their level as a prefix.
    max_frames stops ffmpeg itself: the fps filter may round one frame over num_frames.
    """
    stream = ffmpeg.input(input, **input_options()).video
    stream = stream.filter("showinfo") if rate is None else stream.filter("fps", fps=repr(rate))
    stream = stream.filter("scale", size, size, force_original_aspect_ratio="increase").filter(
        "crop", size, size
    )
    options: dict[str, int | str] = {"frames:v": max_frames} if max_frames is not None else {}
    if rate is None:
        options["fps_mode"] = "passthrough"
    out = stream.output(
        "pipe:", format="rawvideo", pix_fmt="rgb24", an=None, sn=None, dn=None, **options
    )
    level = "level+info" if rate is None else "error"
    return out.global_args("-nostdin", "-hide_banner", "-nostats", "-loglevel", level).compile(
        cmd=ffmpeg_exe()
    )


def _read_frames(
    pipe: io.RawIOBase, count: int, frame_bytes: int, watchdog: _Watchdog
) -> np.ndarray:
    """Up to `count` whole frames as flat uint8; fewer only at the end of the stream."""
    buf = bytearray(count * frame_bytes)
    view = memoryview(buf)
    got = 0
    while got < len(buf):
        watchdog.waiting(True)
        n = pipe.readinto(view[got:])
        watchdog.waiting(False)
        if not n:
            break
        got += n
    view.release()
    return np.frombuffer(buf, dtype=np.uint8, count=got - got % frame_bytes)


def _check_exit(
    proc: subprocess.Popen,
    stderr: _StderrTail,
    watchdog: _Watchdog,
    name: str,
    frames: int,
    timeout_s: float,
) -> None:
    """BadInput for a stalled, failed or empty decode, once the consumer has read everything."""
    code = proc.wait()
    stderr.join()
    if watchdog.fired:
        raise BadInput(name, f"decoder timed out after {timeout_s:g}s")
    if code != 0 and stderr.said(_NOT_LISTED):  # the input changed since its probe
        raise BadInput(name, _not_listed(""))
    if code != 0:
        raise BadInput(name, f"ffmpeg failed: {stderr.last_line() or f'exit code {code}'}")
    if frames == 0:
        raise BadInput(name, "no frames decoded")


_PTS_TIME = re.compile(r"pts_time:\s*(-?[0-9.]+)")
_LEVEL = re.compile(r"\[(?:panic|fatal|error|warning|info|verbose|debug|trace)\]\s*")


class _StderrTail:
    """Drains ffmpeg's stderr in a thread, keeping the tail: a chatty decoder never blocks on it."""

    def __init__(self, pipe: IO[bytes], keep: int = 64) -> None:
        self._tail: deque[str] = deque(maxlen=keep)  # the last messages that are not showinfo's
        self._times: deque[float] = deque()  # showinfo pts_time values not yet taken
        self._arrived = threading.Condition()
        self._ended = False
        self._thread = threading.Thread(
            target=self._drain, args=(pipe,), daemon=True, name="ffmpeg-stderr"
        )
        self._thread.start()

    def _drain(self, pipe: IO[bytes]) -> None:
        try:
            for raw in pipe:
                line = raw.decode(errors="replace").strip()
                match = _PTS_TIME.search(line) if "showinfo" in line else None
                if match:
                    with self._arrived:
                        self._times.append(float(match.group(1)))
                        self._arrived.notify_all()
                elif line:
                    self._tail.append(line)
        finally:
            pipe.close()
            with self._arrived:
                self._ended = True
                self._arrived.notify_all()

    def take_times(self, count: int, timeout_s: float) -> np.ndarray:
        """The next `count` frames' times: showinfo logs a frame before it reaches the pipe."""
        with self._arrived:
            self._arrived.wait_for(
                lambda: len(self._times) >= count or self._ended, timeout=timeout_s
            )
            return np.array(
                [self._times.popleft() for _ in range(min(count, len(self._times)))],
                dtype=np.float64,
            )

    def join(self) -> None:
        self._thread.join()

    def said(self, text: str) -> bool:
        """Whether one of the kept messages holds `text`."""
        return any(text in line for line in self._tail)

    def last_line(self) -> str:
        lines = [
            line for line in self._tail if line != "Conversion failed!" and "[info]" not in line
        ]
        return _strip_context(_LEVEL.sub("", lines[-1])) if lines else ""


class _Watchdog:
    """Kills ffmpeg when a read has waited `timeout_s` without a byte.

    Only time spent waiting on ffmpeg counts: a slow consumer between chunks
    (ffmpeg blocked on a full stdout pipe) never trips it.
    """

    def __init__(self, proc: subprocess.Popen, timeout_s: float) -> None:
        self.fired = False
        self._proc = proc
        self._timeout_s = timeout_s
        self._since: float | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="ffmpeg-watchdog")
        self._thread.start()

    def waiting(self, waiting: bool) -> None:
        self._since = time.monotonic() if waiting else None

    def _watch(self) -> None:
        while not self._done.wait(min(self._timeout_s / 10, 0.5)):
            since = self._since
            if since is not None and time.monotonic() - since > self._timeout_s:
                self.fired = True
                self._proc.kill()
                return

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _is_empty(input: str) -> bool:
    """A zero-byte file: say so, rather than ffmpeg's 'Invalid data'."""
    try:
        return os.path.isfile(input) and os.path.getsize(input) == 0  # a fifo also reports size 0
    except OSError:
        return False  # ffmpeg will name the problem (no such file, permission denied)


def _first_video_block(text: str) -> str | None:
    """The first non-cover-art `Stream #..: Video:` line and the indented lines under it."""
    for match in re.finditer(
        r"^ *Stream #\S+: Video:.*(?:\n(?! *Stream #)[ \t].*)*", text, re.MULTILINE
    ):
        if "(attached pic)" not in match.group(0).splitlines()[0]:
            return match.group(0)
    return None


def _open_error(text: str) -> str:
    """A precise reason from ffmpeg's complaint about opening the input."""
    lines = [_strip_context(line.strip()) for line in text.splitlines() if line.strip()]
    details = [
        line
        for line in lines
        if not line.startswith("Error opening input") and "misdetection" not in line
    ]
    final = (
        lines[-1].removeprefix("Error opening input files: ") if lines else "ffmpeg printed nothing"
    )
    if final == _INVALID:
        extra = [d for d in details if d != _INVALID]
        return f"not a media file: {_INVALID}" + (f" ({'; '.join(extra)})" if extra else "")
    too_large = next(
        (d for d in details if re.fullmatch(r"Picture size \d+x\d+ is invalid", d)), None
    )
    if (
        too_large
    ):  # ffmpeg's own size check; its final line then blames the device ("resource busy")
        return f"cannot open: declared frame size too large ({too_large})"
    return f"cannot open: {final}"


def _strip_context(line: str) -> str:
    """`[in#0 @ 0x55..] moov atom not found` -> `moov atom not found`."""
    return re.sub(r"^\[[^\]]*@ 0x[0-9a-f]+\] ", "", line)


def _seconds(hms: re.Match[str]) -> float:
    """`Duration: 01:02:03.45` matched as (hours, minutes, seconds) -> seconds."""
    return int(hms.group(1)) * 3600 + int(hms.group(2)) * 60 + float(hms.group(3))


KIND = SourceKind(
    "video",
    lambda base, files, memo, limits, sources: claim(base, files, memo, limits),
    lambda ref, sampling, tmp_dir, limits, sources: open_series(ref, sampling, tmp_dir, limits),
)
