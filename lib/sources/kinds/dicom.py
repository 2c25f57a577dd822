"""DICOM series (SPEC §2): pydicom headers group files into series; pixels become uint8 RGB frames.

Discovery reads headers only (`stop_before_pixels`): files are grouped by
SeriesInstanceUID across folders, a multi-frame file is a series of its own, and
what cannot become a series (unreadable header, no or truncated pixel data, mixed
image sizes) is a Failure naming the file. Counts from headers are bounded before anything
is made per item: data elements and sequence items (MAX_HEADER_ELEMENTS, counted before
pydicom parses them), NumberOfFrames (MAX_FRAMES, and what the pixel data can hold),
files per series (MAX_FRAMES). Decoding reads pixel data file by file
and frame by frame (memory bounded by the chunk), applies RescaleSlope/Intercept,
then one window for the whole series (the first file's WindowCenter/Width, else
robust percentiles of a sample of frames), so intensity changes over time survive.

series_id: `<folder of the first file>/<SeriesInstanceUID>`, or the file's path for a
multi-frame file; never patient data. label: the name of the folder above the
series' folder (`class/case01/*.dcm` -> `class`; `class/cine.dcm` -> `class`), None at the root.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import re
import struct
import zlib
from collections.abc import Generator, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut
from pydicom.pixels.utils import iter_pixels
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
)

from lstmpipe.lib.config import SamplingConfig
from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.failures import Failure
from lstmpipe.lib.series import FrameChunk, OpenSeries, SeriesRef
from lstmpipe.lib.sources.archives import ArchiveLimits
from lstmpipe.lib.sources.frames import (
    check_frame_count,
    check_frame_size,
    chunked,
    pick,
    robust_range,
    scale_to_uint8,
    to_rgb,
)
from lstmpipe.lib.sources.hashing import HashMemo, content_hash
from lstmpipe.lib.sources.kinds.base import Claim, SourceKind, all_present
from lstmpipe.lib.sources.kinds.recognise import looks_dicom

WINDOW_SAMPLE_FRAMES = 16  # frames read to choose a window when the files carry none
WINDOW_SAMPLE_VALUES = 1 << 20  # pixels kept from that sample for the percentiles (bounds memory)
PLUGINS_HINT = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"
# (Float/Double)PixelData
_PIXEL_TAGS = frozenset({(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)})
_UNDEFINED = 0xFFFFFFFF  # an undefined length: the value ends at a delimiter
_PREAMBLE_BYTES = 132  # preamble and "DICM"
_GROUP_LENGTH_BYTES = 12  # the (0002,0000) element, which gives the rest of the file meta's length
# Data elements and sequence items one file may hold (pydicom makes an object of each, about 700
# bytes for an empty item): 131072 cost at most ~90 MiB; an enhanced multi-frame file of 3000
# frames with 20 elements per frame holds 60000. Could become configuration.
MAX_HEADER_ELEMENTS = 1 << 17
# A deflated dataset (transfer syntax ...1.2.1.99) is inflated whole by pydicom when it reads the
# header: deflate expands up to 1032-fold, so a 1 MB file could ask for 1 GiB. Deflated DICOM is
# rare (structured reports, small images); 32 MiB inflated holds a 4096 x 4096 16-bit frame.
MAX_INFLATED_BYTES = 32 << 20
_ITEM_BYTES = 8  # an item's tag and length: every compressed frame has at least one fragment item
_LONG_VRS = frozenset({b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UT", b"UC", b"UR"})
_TIME = re.compile(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(\.\d+)?)?)?")
# first one present on every frame and increasing
_TIME_SOURCES = ("AcquisitionTime", "ContentTime", "TriggerTime")
# what pydicom turns into grey or RGB
_PHOTOMETRICS = frozenset(
    {
        "MONOCHROME1",
        "MONOCHROME2",
        "PALETTE COLOR",
        "RGB",
        "YBR_FULL",
        "YBR_FULL_422",
        "YBR_PARTIAL_420",
        "YBR_ICT",
        "YBR_RCT",
    }
)
# What pydicom raises for a broken header.
_HEADER_ERRORS = (InvalidDicomError, ValueError, EOFError, struct.error, KeyError, TypeError)
# What pydicom raises for broken pixel data: a truncated file, a bad fragment, a failing plugin.
_DECODE_ERRORS = (
    ValueError,
    AttributeError,
    RuntimeError,
    NotImplementedError,
    EOFError,
    OSError,
    InvalidDicomError,
    struct.error,
)


@dataclass(frozen=True)
class _Header:
    """What discovery keeps of one file's header: a few numbers and names, no patient data, and not
    the header itself (an archive may hold 100,000 files)."""

    rel: str  # posix path relative to the source base
    path: Path
    series_uid: str | None
    frames: int  # NumberOfFrames, 1 when absent
    shape: tuple[int | None, int | None, int]  # Rows, Columns, SamplesPerPixel
    instance: int | None  # InstanceNumber
    # keyword -> (day ordinal, seconds into the day)
    times: dict[str, tuple[int | None, float | None]]
    position: float | None  # along the slice normal
    frame_times: list[float] | None  # a multi-frame file's own frame times
    syntax: str  # TransferSyntaxUID
    pixel_problem: str | None  # why the pixel data cannot be used, found without reading it
    info: dict[str, Any]  # series metadata, read from the series' first file


# --- discovery ------------------------------------------------------------------------------------


def claim(base: Path, files: list[Path], memo: HashMemo | None = None) -> Claim:
    """DICOM files under `base`: one SeriesRef per series,
    one Failure per file or series that cannot be one."""
    headers: list[_Header] = []
    failures: list[Failure] = []
    claimed: set[Path] = set()
    for path in files:
        if not looks_dicom(path):
            continue
        claimed.add(path)
        rel = path.relative_to(base).as_posix()
        try:
            header = _read_header(path, rel)
        except BadInput as exc:
            failures.append(Failure(rel, str(path), "discover", exc.reason))
            continue
        if header is not None:
            headers.append(header)
    refs: list[SeriesRef] = []
    for members in _group(headers):
        try:
            refs.append(_series_ref(Path(base), members, memo))
        except BadInput as exc:
            failures.append(Failure(_series_id(members), exc.path, "discover", exc.reason))
    return Claim(refs, failures, frozenset(claimed))


def _read_header(path: Path, rel: str) -> _Header | None:
    """The header of one file; BadInput naming the file.

    None for a DICOMDIR, known from its file meta alone: an index, not an image. Its records are
    never parsed (a hostile one may hold millions) nor its ReferencedFileIDs followed (they might
    point outside the source): the files it lists are found by walking the source, like any other.
    """
    try:
        size = path.stat().st_size
        if size == 0:
            raise BadInput(str(path), f"{rel}: empty file")
        with path.open("rb") as stream:
            try:
                meta = read_file_meta_info(path)
                if meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage:
                    return None
                _check_elements(stream, meta, path, rel)
                stream.seek(0)
                ds = pydicom.dcmread(stream, stop_before_pixels=True)
            except _HEADER_ERRORS as exc:
                raise BadInput(
                    str(path), f"{rel}: not a readable DICOM file: {_one_line(exc)}"
                ) from exc
            frames = _frame_count(ds, path, rel)
            problem = _pixel_problem(stream, ds, size, frames)
    except OSError as exc:
        raise BadInput(str(path), f"{rel}: unreadable: {exc.strerror or exc}") from exc
    return _Header(
        rel=rel,
        path=path,
        series_uid=_text(ds.get("SeriesInstanceUID")),
        frames=frames,
        shape=(_int(ds.get("Rows")), _int(ds.get("Columns")), _int(ds.get("SamplesPerPixel")) or 1),
        instance=_int(ds.get("InstanceNumber")),
        times={keyword: _time_of(ds, keyword) for keyword in _TIME_SOURCES},
        position=_slice_position(ds),
        frame_times=_multiframe_times(ds, frames) if frames > 1 and not problem else None,
        syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
        pixel_problem=problem,
        info={
            "modality": _text(ds.get("Modality")),
            "description": _text(ds.get("SeriesDescription")),
            "photometric": _text(ds.get("PhotometricInterpretation")),
            "pixel_spacing": _floats(_attr(ds, "PixelSpacing", "PixelMeasuresSequence")),
            "orientation": _floats(
                _attr(ds, "ImageOrientationPatient", "PlaneOrientationSequence")
            ),
            "slice_thickness": _float(_attr(ds, "SliceThickness", "PixelMeasuresSequence")),
            "window": _window(ds),
            "study_uid": _text(ds.get("StudyInstanceUID")),
            "series_uid": _text(ds.get("SeriesInstanceUID")),
        },
    )


def _check_elements(stream: IO[bytes], meta: Dataset, path: Path, rel: str) -> None:
    """BadInput when the dataset holds more than MAX_HEADER_ELEMENTS elements and sequence items,
    counted without parsing them, since pydicom allocates an object for each (~700 bytes for an
    8-byte empty item: an 8 MB file of them cost 670 MiB). A deflated dataset is inflated here
    first, at most MAX_INFLATED_BYTES of it, and counted like any other."""
    syntax = UID(str(meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)))
    length = _int(meta.get("FileMetaInformationGroupLength"))
    if length is None:
        return
    stream.seek(_PREAMBLE_BYTES + _GROUP_LENGTH_BYTES + length)
    if syntax == DeflatedExplicitVRLittleEndian:
        dataset = _inflated(stream, path, rel)
        count = _count_elements(dataset, False, "<", MAX_HEADER_ELEMENTS)
    else:
        implicit = syntax.is_transfer_syntax and syntax.is_implicit_VR
        little = not syntax.is_transfer_syntax or syntax.is_little_endian
        count = _count_elements(stream, implicit, "<" if little else ">", MAX_HEADER_ELEMENTS)
    if count > MAX_HEADER_ELEMENTS:
        raise BadInput(
            str(path),
            f"{rel}: more than {MAX_HEADER_ELEMENTS} data elements and sequence items "
            "(a header bomb); refused unparsed",
        )


def _inflated(stream: IO[bytes], path: Path, rel: str) -> IO[bytes]:
    """The deflated dataset after the file meta, inflated in bounded steps; BadInput past
    MAX_INFLATED_BYTES (a deflate bomb), before pydicom would inflate all of it."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # DICOM deflates without a zlib header
    out = io.BytesIO()
    while chunk := stream.read(1 << 16):
        try:
            out.write(inflater.decompress(chunk, MAX_INFLATED_BYTES + 1 - out.tell()))
        except zlib.error as exc:
            raise BadInput(str(path), f"{rel}: deflated dataset is corrupt: {exc}") from exc
        if out.tell() > MAX_INFLATED_BYTES or inflater.unconsumed_tail:
            raise BadInput(
                str(path),
                f"{rel}: deflated dataset inflates past {MAX_INFLATED_BYTES} bytes "
                "(a deflate bomb, or an image too large to read here); refused unparsed",
            )
    out.seek(0)
    return out


def _count_elements(stream: IO[bytes], implicit: bool, endian: str, limit: int) -> int:
    """Elements and items from here to the end, stepping into sequences and over values, up to
    `limit` + 1; a malformed or cut-off element ends the count (pydicom then says what is wrong)."""
    count = 0
    while count <= limit:
        head = stream.read(8)
        if len(head) < 8:
            break
        count += 1
        group, element = struct.unpack(endian + "HH", head[:4])
        if group == 0xFFFE:
            continue  # an item or a delimiter: what follows is its content, or the next element
        if implicit:
            vr, length = (
                _implicit_vr((group << 16) | element),
                struct.unpack(endian + "I", head[4:])[0],
            )
        elif head[4:6] in _LONG_VRS:
            vr, more = head[4:6], stream.read(4)
            if len(more) < 4:
                break
            length = struct.unpack(endian + "I", more)[0]
        else:
            vr, length = head[4:6], struct.unpack(endian + "H", head[6:])[0]
        if vr == b"SQ" or (length == _UNDEFINED and vr == b"UN"):
            continue  # step into the sequence: its items and their elements are counted
        if length == _UNDEFINED:
            count += _skip_fragments(stream, endian)
        else:
            stream.seek(length, 1)
    return count


def _skip_fragments(stream: IO[bytes], endian: str) -> int:
    """Past an undefined-length value (encapsulated pixel data): its items, up to the sequence
    delimiter; how many there were."""
    items = 0
    while head := stream.read(8):
        if len(head) < 8 or head[:4] == _delimiter(endian):
            break
        items += 1
        stream.seek(struct.unpack(endian + "I", head[4:])[0], 1)
    return items


def _delimiter(endian: str) -> bytes:
    return struct.pack(endian + "HH", 0xFFFE, 0xE0DD)


def _implicit_vr(tag: int) -> bytes:
    """The dictionary VR of a tag (implicit VR files carry none); UN for private or unknown tags."""
    try:
        return dictionary_VR(tag).encode()
    except KeyError:
        return b"UN"


def _frame_count(ds: Dataset, path: Path, rel: str) -> int:
    """NumberOfFrames (1 when absent), refused over MAX_FRAMES before anything is made per frame."""
    frames = _int(ds.get("NumberOfFrames")) or 1
    try:
        check_frame_count(str(path), frames)
    except BadInput as exc:
        raise BadInput(exc.path, f"{rel}: NumberOfFrames {exc.reason}") from None
    return frames


def _pixel_problem(stream: IO[bytes], ds: Dataset, size: int, frames: int) -> str | None:
    """Why the pixel data is missing or cut short, read from the element header `dcmread` stopped
    at; else None.

    `stop_before_pixels` leaves the stream on the pixel data element (or at the end when
    there is none), so its declared length can be checked against the file size
    without reading the pixels.
    """
    sop = ds.get("SOPClassUID")
    kind = f" (SOP class {UID(str(sop)).name})" if sop else ""
    if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        # the stream is inflated in memory: positions mean nothing; the decoder will tell
        return None
    start = stream.tell()
    head = stream.read(12)
    if not head:
        return f"no pixel data{kind}"
    implicit, little = ds.original_encoding
    endian = "<" if little else ">"
    if len(head) < 8:
        return "pixel data element cut off"
    if struct.unpack(endian + "HH", head[:4]) not in _PIXEL_TAGS:
        return None  # not where pydicom usually stops: leave it to the decoder
    if implicit:
        length, header_bytes = struct.unpack(endian + "I", head[4:8])[0], 8
    elif head[4:6] in _LONG_VRS:
        if len(head) < 12:
            return "pixel data element cut off"
        length, header_bytes = struct.unpack(endian + "I", head[8:12])[0], 12
    else:
        length, header_bytes = struct.unpack(endian + "H", head[6:8])[0], 8
    held = size - start - header_bytes
    if length == 0xFFFFFFFF:
        # encapsulated (compressed) fragments, which the decoder checks; each frame needs one
        if held < _ITEM_BYTES * frames:
            return (
                f"pixel data of {held} bytes cannot hold {frames} compressed frames "
                f"(at least {_ITEM_BYTES} bytes each)"
            )
        return None
    if length == 0:
        return "pixel data is empty"
    if held < length:
        return f"pixel data truncated: the file holds {held} of its {length} bytes"
    needed = _image_bytes(ds, frames)
    if needed and length < needed:
        grid = f"{_int(ds.get('Rows'))}x{_int(ds.get('Columns'))}"
        grid += f" x {frames} frames" if frames > 1 else ""
        return f"pixel data holds {length} bytes; {grid} needs {needed}"
    return None


def _image_bytes(ds: Dataset, frames: int) -> int | None:
    """Bytes of native pixel data the header describes;
    None when compressed or not a whole number of bytes."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    bits = _int(ds.get("BitsAllocated"))
    if syntax is None or UID(str(syntax)).is_compressed or not bits or bits % 8:
        return None
    rows, cols, samples = (
        _int(ds.get("Rows")),
        _int(ds.get("Columns")),
        _int(ds.get("SamplesPerPixel")) or 1,
    )
    return rows * cols * samples * frames * bits // 8 if rows and cols else None


def _group(headers: list[_Header]) -> list[list[_Header]]:
    """Files of one SeriesInstanceUID together (across
    folders); a multi-frame file, or one with no UID, alone."""
    groups: dict[str, list[_Header]] = {}
    for header in headers:  # in walk order: the first file of a group names its folder
        key = (
            header.series_uid if header.frames == 1 and header.series_uid else f"file:{header.rel}"
        )
        groups.setdefault(key, []).append(header)
    return list(groups.values())


def _alone(members: list[_Header]) -> bool:
    """A series that is one file by nature (multi-frame,
    or no SeriesInstanceUID): named by its path."""
    return len(members) == 1 and (members[0].frames > 1 or not members[0].series_uid)


def _series_id(members: list[_Header]) -> str:
    first = members[0]
    if _alone(members) or first.series_uid is None:
        return first.rel
    folder = PurePosixPath(first.rel).parent
    return (
        first.series_uid
        if folder == PurePosixPath(".")
        else f"{folder.as_posix()}/{first.series_uid}"
    )


def _series_ref(base: Path, members: list[_Header], memo: HashMemo | None) -> SeriesRef:
    """The SeriesRef of one group of files, or BadInput naming the file that spoils it."""
    series_id = _series_id(members)
    check_frame_count(str(members[0].path), len(members))  # one frame per file
    broken = [m for m in members if m.pixel_problem]
    if broken:
        first = broken[0]
        more = (
            f" (and {len(broken) - 1} more of its {len(members)} files)" if len(broken) > 1 else ""
        )
        raise BadInput(str(first.path), f"{first.rel}: {first.pixel_problem}{more}")
    shapes = sorted({m.shape for m in members}, key=str)
    if len(shapes) > 1:
        examples = ", ".join(f"{m.rel} {_shape_text(m.shape)}" for m in _one_per_shape(members))
        raise BadInput(str(members[0].path), f"series mixes image sizes: {examples}")
    rows, cols = shapes[0][:2]
    if rows is None or cols is None:
        raise BadInput(str(members[0].path), f"{members[0].rel}: no Rows/Columns in the header")
    # compressed data says nothing of it
    check_frame_size(str(members[0].path), rows, cols)
    _check_geometry(members)
    ordered, order = _order(members)
    times = _frame_times(ordered)
    digest = hashlib.blake2b(digest_size=16)
    for file_hash in sorted(_file_hash(m, memo) for m in ordered):
        digest.update(file_hash.encode())
    # where the series lives: its file, or the folder of its first file
    home = PurePosixPath(members[0].rel)
    home = home if _alone(members) else home.parent
    parts = PurePosixPath(series_id).parts
    rows, cols, samples = shapes[0]
    return SeriesRef(
        series_id=series_id,
        content_hash=digest.hexdigest(),
        kind="dicom",
        path=str((base / home).resolve()),
        label=home.parts[-2] if len(home.parts) > 1 else None,
        partition=parts[0] if len(parts) > 1 else None,
        meta={
            "source_kind": "dicom",
            **{k: ordered[0].info[k] for k in ("modality", "description", "photometric")},
            "rows": rows,
            "cols": cols,
            "samples_per_pixel": samples,
            **{k: ordered[0].info[k] for k in ("pixel_spacing", "slice_thickness", "window")},
            "instances": len(ordered),
            "frames": len(times),
            "order": order,
            "transfer_syntaxes": sorted({m.syntax for m in ordered}),
            **{k: ordered[0].info[k] for k in ("study_uid", "series_uid")},
            "root": str(base.resolve()),
            "files": [m.rel for m in ordered],  # in frame order, relative to root
            "t": times,  # seconds from the first frame, one per frame
        },
    )


def _check_geometry(members: list[_Header]) -> None:
    """BadInput when the files of a series differ in pixel spacing or image orientation.

    Such a series is not one sequence of the same view: a multi-plane localizer holds axial,
    sagittal and coronal images, a projection series rotates its view frame by frame.
    Values are compared to 3 decimals (spacing in mm, orientation as direction cosines).
    """
    for key, what in (("pixel_spacing", "pixel spacings"), ("orientation", "image orientations")):
        seen: dict[tuple[float, ...] | None, _Header] = {}
        for member in members:
            value = member.info[key]
            # + 0.0: no -0.0
            seen.setdefault(tuple(round(v, 3) + 0.0 for v in value) if value else None, member)
        if len(seen) > 1:
            examples = ", ".join(
                f"{m.rel} {list(v) if v else '(none)'}" for v, m in list(seen.items())[:3]
            )
            raise BadInput(
                str(members[0].path),
                f"series mixes {len(seen)} {what}, so it is not one sequence "
                f"of one view (a multi-plane localizer, a rotating projection?): {examples}",
            )


def _file_hash(header: _Header, memo: HashMemo | None) -> str:
    try:
        return content_hash(header.path, memo=memo)
    except OSError as exc:
        raise BadInput(
            str(header.path), f"{header.rel}: unreadable: {exc.strerror or exc}"
        ) from exc


def _shape_text(shape: tuple[int | None, int | None, int]) -> str:
    rows, cols, samples = shape
    return f"{rows}x{cols}" + (f"x{samples}" if samples != 1 else "")


def _one_per_shape(members: list[_Header]) -> list[_Header]:
    seen: dict[tuple[int | None, int | None, int], _Header] = {}
    for member in members:
        seen.setdefault(member.shape, member)
    return list(seen.values())[:3]


def _order(members: list[_Header]) -> tuple[list[_Header], str]:
    """Frame order: InstanceNumber, else acquisition/content
    time, else position along the slice normal, else name."""
    by_name = sorted(members, key=lambda m: PurePosixPath(m.rel).parts)
    if len(members) == 1:
        return by_name, "file"
    for source, keys in (
        ("InstanceNumber", all_present([m.instance for m in by_name])),
        (_TIME_SOURCES[0], _times(by_name, _TIME_SOURCES[0])),
        (_TIME_SOURCES[1], _times(by_name, _TIME_SOURCES[1])),
        ("ImagePositionPatient", all_present([m.position for m in by_name])),
    ):
        if keys is not None:
            ordered = sorted(zip(keys, by_name, strict=True), key=lambda p: p[0])
            return [m for _, m in ordered], source
    return by_name, "file name"


def _frame_times(ordered: list[_Header]) -> list[float]:
    """Seconds from the first frame: from the files'
    times where they increase, else the frame index."""
    if ordered[0].frame_times is not None:
        return ordered[0].frame_times
    for keyword in _TIME_SOURCES:
        times = _times(ordered, keyword)
        if times is not None and all(b > a for a, b in zip(times, times[1:], strict=False)):
            return [t - times[0] for t in times]
    return [float(i) for i in range(len(ordered))]


def _multiframe_times(ds: Dataset, count: int) -> list[float]:
    """FrameTimeVector (ms between frames) or FrameTime (ms per frame), else the frame index."""
    vector = _floats(ds.get("FrameTimeVector"))
    if vector and len(vector) == count:
        times = np.cumsum(vector) / 1000.0
        if np.all(np.diff(times) > 0):
            return (times - times[0]).tolist()
    frame_ms = _float(ds.get("FrameTime"))
    if frame_ms and frame_ms > 0:
        return [i * frame_ms / 1000.0 for i in range(count)]
    return [float(i) for i in range(count)]


def _times(members: list[_Header], keyword: str) -> list[float] | None:
    """Each file's `keyword` time in seconds (from its date
    when all files have one); None unless all have it."""
    clock = all_present([m.times[keyword][1] for m in members])
    if clock is None:
        return None
    days = all_present([m.times[keyword][0] for m in members])
    if days is None:
        return clock
    return [d * 86400.0 + c for d, c in zip(days, clock, strict=True)]


def _time_of(ds: Dataset, keyword: str) -> tuple[int | None, float | None]:
    """(day ordinal or None, seconds) of AcquisitionTime/ContentTime
    (with its date), or TriggerTime (ms)."""
    if keyword == "TriggerTime":
        trigger = _float(ds.get("TriggerTime"))
        return None, None if trigger is None else trigger / 1000.0
    return _day(ds.get(keyword.replace("Time", "Date"))), _clock_seconds(ds.get(keyword))


def _clock_seconds(value: Any) -> float | None:
    """DICOM TM (`HHMMSS.FFFFFF`, or the old `HH:MM:SS`) -> seconds after midnight."""
    match = _TIME.fullmatch(str(value or "").strip())
    if not match:
        return None
    hours, minutes, seconds, fraction = match.groups()
    return int(hours) * 3600 + int(minutes or 0) * 60 + int(seconds or 0) + float(fraction or 0)


def _day(value: Any) -> int | None:
    text = str(value or "").strip()
    try:
        return (
            dt.date(int(text[:4]), int(text[4:6]), int(text[6:8])).toordinal()
            if len(text) == 8
            else None
        )
    except ValueError:
        return None


def _slice_position(ds: Dataset) -> float | None:
    """ImagePositionPatient projected on the slice normal (the cross product of
    ImageOrientationPatient's rows)."""
    position = _floats(ds.get("ImagePositionPatient"))
    orientation = _floats(ds.get("ImageOrientationPatient"))
    if not position or not orientation or len(position) != 3 or len(orientation) != 6:
        return None
    return float(np.dot(position, np.cross(orientation[:3], orientation[3:])))


def _window(ds: Dataset) -> list[float] | None:
    """[center, width] from the file (first of several), or None."""
    center = _first(_attr(ds, "WindowCenter", "FrameVOILUTSequence"))
    width = _first(_attr(ds, "WindowWidth", "FrameVOILUTSequence"))
    return [center, width] if center is not None and width is not None and width > 0 else None


def _attr(ds: Dataset, keyword: str, macro: str) -> Any:
    """`keyword` at the top level, else in the enhanced
    multi-frame functional groups (shared, then frame 1)."""
    if keyword in ds:
        return ds.get(keyword)
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        items = ds.get(groups) or []
        inner = items[0].get(macro) if items else None
        if inner and keyword in inner[0]:
            return inner[0].get(keyword)
    return None


# --- decoding -------------------------------------------------------------------------------------


@contextmanager
def open_series(
    ref: SeriesRef,
    sampling: SamplingConfig,
    tmp_dir: Path,
    limits: ArchiveLimits = ArchiveLimits(),
    *,
    window: tuple[float, float] | None = None,
) -> Iterator[OpenSeries]:
    """The series' metadata now, its frames lazily: one file at a time, one frame at a time.

    `window` (center, width) overrides the files' own window for every grey series.
    """
    missing = sorted(
        {"root", "files", "t", "transfer_syntaxes", "photometric", "samples_per_pixel"}
        - ref.meta.keys()
    )
    if missing:
        raise BadInput(
            ref.location,
            f"not a DICOM series ref (metadata lacks {', '.join(missing)}); discover it again",
        )
    for syntax in ref.meta["transfer_syntaxes"]:
        _check_decodable(ref, syntax)
    photometric, samples = ref.meta["photometric"], ref.meta["samples_per_pixel"]
    if photometric not in _PHOTOMETRICS or samples not in (1, 3):
        raise BadInput(
            ref.location,
            f"unsupported PhotometricInterpretation {photometric} with {samples} samples"
            f" per pixel; supported: {', '.join(sorted(_PHOTOMETRICS))}",
        )
    meta = {k: v for k, v in ref.meta.items() if k not in ("files", "t", "root")}
    if window is not None:
        ref = replace(ref, meta={**ref.meta, "window": list(window)})
        meta["window"] = list(window)
    yield OpenSeries(meta, _chunks(ref, sampling))


def _check_decodable(ref: SeriesRef, syntax: str) -> None:
    """BadInput naming the transfer syntax and the
    missing plugin when pydicom cannot decode it here."""
    uid = UID(syntax)
    if not syntax or not uid.is_transfer_syntax:
        raise BadInput(ref.location, f"unknown transfer syntax {syntax or '(none)'}")
    if not uid.is_compressed:
        return
    try:
        decoder = get_decoder(uid)
    except NotImplementedError as exc:
        raise BadInput(
            ref.location,
            f"compressed transfer syntax {uid.name} ({uid}) has no pixel decoder"
            f" in pydicom {pydicom.__version__}",
        ) from exc
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies)
        raise BadInput(
            ref.location,
            f"compressed transfer syntax {uid.name} ({uid}) needs a decoder plugin"
            f" ({needs}): {PLUGINS_HINT}",
        )


def _chunks(ref: SeriesRef, sampling: SamplingConfig) -> Generator[FrameChunk, None, None]:
    times = ref.meta["t"]
    wanted = [int(i) for i in pick(len(times), sampling)]
    low, high = _series_range(ref, sampling, wanted)
    frames = (
        (_to_rgb8(image, ds, low, high), times[index]) for index, image, ds in _read(ref, wanted)
    )
    yield from chunked(frames, sampling)


def _series_range(
    ref: SeriesRef, sampling: SamplingConfig, wanted: list[int]
) -> tuple[float, float]:
    """The value range mapped to 0..255: the file's window,
    else percentiles of up to 16 of the wanted frames."""
    if ref.meta["samples_per_pixel"] != 1 or ref.meta["photometric"] == "PALETTE COLOR":
        return 0.0, 0.0  # colour keeps its own values
    if ref.meta["window"]:
        center, width = ref.meta["window"]
        # DICOM PS3.3 C.11.2.1.2 (linear)
        return center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    spread = sampling.model_copy(update={"num_frames": WINDOW_SAMPLE_FRAMES})
    sample = [wanted[i] for i in pick(len(wanted), spread)]
    step = max(1, ref.meta["rows"] * ref.meta["cols"] * len(sample) // WINDOW_SAMPLE_VALUES)
    return robust_range(
        np.concatenate(
            [_rescaled(image, ds).ravel()[::step] for _, image, ds in _read(ref, sample)]
        )
    )


def _read(ref: SeriesRef, wanted: list[int]) -> Iterator[tuple[int, np.ndarray, Dataset]]:
    """(frame index, raw pixels, that file's header) for the
    wanted frames, in order, one file open at a time."""
    root, files = Path(ref.meta["root"]), ref.meta["files"]
    # one multi-frame file: the wanted frames of it; else one frame from each wanted file
    plan = [(files[0], wanted)] if len(files) == 1 else [(files[i], [0]) for i in wanted]
    position = 0
    for rel, indices in plan:
        header = Dataset()
        # a generator (typed as an iterator): closing it closes the file
        frames = cast(
            Generator[np.ndarray, None, None],
            iter_pixels(root / rel, ds_out=header, indices=indices),
        )
        with closing(frames) as pixels:
            while True:
                try:
                    image = next(pixels)
                except StopIteration:
                    break
                except _DECODE_ERRORS as exc:
                    raise BadInput(
                        ref.location, f"{rel}: cannot decode pixel data: {_one_line(exc)}"
                    ) from exc
                yield wanted[position], image, header
                position += 1


def _rescaled(image: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values -> modality values (Hounsfield units
    for CT): RescaleSlope * value + RescaleIntercept."""
    slope = _float(_attr(ds, "RescaleSlope", "PixelValueTransformationSequence"))
    intercept = _float(_attr(ds, "RescaleIntercept", "PixelValueTransformationSequence"))
    values = image.astype(np.float32)
    if slope is not None and slope != 1.0:
        values *= slope
    if intercept:
        values += intercept
    return values


def _to_rgb8(image: np.ndarray, ds: Dataset, low: float, high: float) -> np.ndarray:
    """One decoded frame -> (H, W, 3) uint8: grey windowed
    (MONOCHROME1 inverted), colour kept as colour."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric == "PALETTE COLOR":
        image = apply_color_lut(image, ds)
    if image.ndim == 3:  # RGB; YBR was converted to RGB by pydicom (iter_pixels' as_rgb)
        if image.dtype != np.uint8:
            bits = (
                16
                if photometric == "PALETTE COLOR"
                else _int(ds.get("BitsStored")) or 8 * image.dtype.itemsize
            )
            image = scale_to_uint8(image, 0, 2**bits - 1)
        return to_rgb(image)
    grey = scale_to_uint8(_rescaled(image, ds), low, high)
    return to_rgb(255 - grey if photometric == "MONOCHROME1" else grey)


# --- small value helpers --------------------------------------------------------------------------


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        number = float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return number if number is None or np.isfinite(number) else None


def _first(value: Any) -> float | None:
    if isinstance(value, (list, tuple, MultiValue)):
        return _float(value[0]) if len(value) else None
    return _float(value)


def _floats(value: Any) -> list[float] | None:
    if value in (None, ""):
        return None
    items = value if isinstance(value, (list, tuple, MultiValue)) else [value]
    return all_present([_float(v) for v in items])


def _text(value: Any) -> str | None:
    return None if value is None else (str(value).strip() or None)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


KIND = SourceKind(
    "dicom",
    lambda base, files, memo, limits, sources: claim(base, files, memo),
    lambda ref, sampling, tmp_dir, limits, sources: open_series(
        ref, sampling, tmp_dir, limits, window=sources.dicom_window
    ),
)
