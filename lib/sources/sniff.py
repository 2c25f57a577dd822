"""What a file holds, from its first bytes: a container ffmpeg decodes for lstmpipe, or why not.

Discovery offers the files no kind claimed by name to the video kind, which claims those whose
magic bytes name one of the containers in lstmpipe.lib.sources.ffmpeg.DEMUXERS (a .3g2, an .mts,
a clip with no suffix); ffmpeg then has the last word. Reading a few hundred bytes keeps a
folder of 10 000 text files fast: no ffmpeg runs for a file that sniffs as nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

# Enough for three MPEG-TS packets of 192 bytes (M2TS), the longest signature checked.
HEAD_BYTES = 1024

_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free")  # first box of an mp4/mov/3gp file
_ASF = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")
_MXF = bytes.fromhex("060e2b34020501010d010201")  # a partition pack key
_SYNC = 0x47  # MPEG-TS packet sync byte


def read_head(path: Path) -> bytes:
    """The first HEAD_BYTES of a regular file (OSError when it cannot be read)."""
    with open(path, "rb") as f:
        return f.read(HEAD_BYTES)


def _transport_stream(head: bytes, packet: int, offset: int) -> bool:
    """Sync bytes every `packet` bytes from `offset`: at least two, and all that the head holds."""
    syncs = range(offset, len(head), packet)
    return len(syncs) >= 2 and all(head[i] == _SYNC for i in syncs)


# (container, test on the head) in order; names as lstmpipe reports them.
_VIDEO: tuple[tuple[str, Callable[[bytes], bool]], ...] = (
    ("ISO BMFF (mp4/mov/3gp)", lambda h: h[4:8] in _ISO_BOXES),
    ("Matroska/WebM", lambda h: h.startswith(b"\x1a\x45\xdf\xa3")),
    ("AVI", lambda h: h.startswith(b"RIFF") and h[8:12] in (b"AVI ", b"AVIX")),
    ("MPEG-TS", lambda h: _transport_stream(h, 188, 0)),
    ("MPEG-TS (M2TS)", lambda h: _transport_stream(h, 192, 4)),
    ("MPEG-PS", lambda h: h.startswith(b"\x00\x00\x01\xba")),
    ("Ogg", lambda h: h.startswith(b"OggS")),
    ("MXF", lambda h: h.startswith(_MXF)),
    ("DV", lambda h: h.startswith(b"\x1f\x07\x00")),
    ("YUV4MPEG2", lambda h: h.startswith(b"YUV4MPEG2 ")),
    ("FLV", lambda h: h.startswith(b"FLV\x01")),
    ("ASF", lambda h: h.startswith(_ASF)),
    ("GIF", lambda h: h[:6] in (b"GIF87a", b"GIF89a")),
)

# Recognised, and not read by lstmpipe: said so by name rather than as unknown content.
_OTHER: tuple[tuple[str, Callable[[bytes], bool]], ...] = (
    ("PDF document", lambda h: h.startswith(b"%PDF")),
    ("zip container (not .zip: an office document?)", lambda h: h.startswith(b"PK\x03\x04")),
    ("gzip data (not .tar.gz)", lambda h: h.startswith(b"\x1f\x8b")),
    ("audio (MP3)", lambda h: h.startswith(b"ID3") or h[:2] in (b"\xff\xfb", b"\xff\xf3")),
    ("audio (FLAC)", lambda h: h.startswith(b"fLaC")),
    ("audio (WAV)", lambda h: h.startswith(b"RIFF") and h[8:12] == b"WAVE"),
)


def video_container(head: bytes) -> str | None:
    """The container the head's magic bytes name, when ffmpeg may decode it for lstmpipe."""
    return next((name for name, test in _VIDEO if test(head)), None)


def not_media(head: bytes) -> str:
    """Why a file that no kind claimed and no video signature matched is not read: its content."""
    if not head:
        return "empty file"
    named = next((name for name, test in _OTHER if test(head)), None)
    what = named or ("text" if _text(head) else "unknown content")
    return f"not a media file lstmpipe reads: {what}"


def _text(head: bytes) -> bool:
    """UTF-8 without NUL bytes (a character cut at the end of the head allowed)."""
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"
    return True
