"""Counts and sizes read from headers are bounded before anything is allocated per item (issue 16,
items 4 and 5): a 580-byte DICOM declaring 4 000 000 frames, DICOMs declaring 2^20 frames their
pixel data cannot hold (native and compressed), one with 200 000 per-frame group items, a DICOMDIR
of 200 000 records pointing outside its folder, a 0.4 MB PNG of 10000 x 10000 pixels, an APNG
declaring 5 000 000 frames, a NIfTI-2 of 4 000 000 time points, and EPS files (one named .png)
that Pillow would hand to Ghostscript.

One fresh interpreter discovers a source holding all of them beside honest series: each hostile file
is refused at discovery by name with its reason, the honest series go on, the outside file is never
opened, the EPS plugin is never tried, and the peak RSS rises less than RISE_BOUND over the same
interpreter's peak after discovering the honest series alone (before the fixes: +155 MiB for the
4 000 000-frame DICOM)."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MediaStorageDirectoryStorage,
)

from lstmpipe.lib.sources.frames import MAX_FRAMES
from lstmpipe.lib.sources.kinds.dicom import MAX_HEADER_ELEMENTS
from tests.helpers import wheel_data
from tests.security.conftest import isolated

# Measured: +2.4 MiB (Python 3.11, pydicom 3.0, Pillow 13, 2 cores); the bound leaves room for
# allocator noise and is far below what these inputs cost unbounded: +155 MiB (4 000 000-frame
# DICOM), +133 MiB (DICOMDIR records or per-frame items parsed), +1 GiB (the PNG decoded to RGB).
RISE_BOUND = 24 << 20
BOMB = "(a header bomb, or a series too long to decode here); refused unread"
RECORDS = 200_000  # empty DICOMDIR records or per-frame items: 1.6 MB, +133 MiB once parsed

RUN = """
    import sys
    from pathlib import Path
    from PIL import EpsImagePlugin
    tmp = Path({tmp!r})
    opened_outside, eps_tried = [], []
    sys.addaudithook(lambda event, args: event == "open" and "outside" in str(args[0])
                     and opened_outside.append(str(args[0])))
    real_open = EpsImagePlugin.EpsImageFile._open
    def watched(self):
        eps_tried.append(self.fp.name if hasattr(self.fp, "name") else "?")
        return real_open(self)
    EpsImagePlugin.EpsImageFile._open = watched

    from lstmpipe.lib.config import SamplingConfig
    from lstmpipe.lib.errors import BadInput
    from lstmpipe.lib.sources.decode import decode
    from lstmpipe.lib.sources.discover import discover

    def hwm():
        return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024

    sampling = SamplingConfig(fps=None, size=32, chunk_frames=8)
    honest = discover(tmp / "honest")  # every reader imported and used once: the baseline
    [sum(len(c) for c in decode(r, sampling, tmp / "work")) for r in honest.refs]
    baseline = hwm()
    found = discover(tmp / "source")
    after_discovery = hwm()
    # a frame swapped for the 10000^2 PNG after discovery: refused again when decoded
    frames = next(r for r in found.refs if r.series_id == "frames")
    (tmp / "bomb.png").replace(tmp / "source" / "frames" / "f1.png")
    try:
        decoded = sum(len(c) for c in decode(frames, sampling, tmp / "work"))
    except BadInput as exc:
        decoded = str(exc)
    rise = hwm() - baseline
    # controls: the two watches do see a plain open of the outside file and Pillow trying EPS
    controls = len(opened_outside), len(eps_tried)
    open(tmp / "outside" / "secret.dcm", "rb").close()
    from PIL import Image
    Image.open(tmp / "source" / "eps" / "f0.png").close()
    result = {{
        "controls": [len(opened_outside) - controls[0], len(eps_tried) - controls[1]],
        "refs": sorted(r.series_id for r in found.refs),
        "failures": {{f.series_id: [f.path, f.stage, f.reason] for f in found.failures}},
        "decoded": decoded,
        "opened_outside": opened_outside[: controls[0]],
        "eps_tried": eps_tried[: controls[1]],
        "rise_discovery": after_discovery - baseline,
        "rise": rise,
    }}
"""


def dicom(path: Path, frames: int, uid: str, compressed: bool = False) -> Path:
    """An 8 x 8 8-bit DICOM with one frame's pixel data whose header declares `frames` frames."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")
    meta.MediaStorageSOPInstanceUID = UID(uid + ".1")
    meta.TransferSyntaxUID = JPEGBaseline8Bit if compressed else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SeriesInstanceUID = uid
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 8, 8, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"]) if compressed else bytes(64)
    if compressed:
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def dicomdir(path: Path, referenced: list[str], records: int) -> Path:
    """A DICOMDIR whose first records reference `referenced` (backslash-separated file IDs), then
    `records` empty ones, in an undefined-length sequence (which pydicom would parse whole)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    meta.MediaStorageSOPInstanceUID = UID("1.2.3.99")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.FileSetID = "HOSTILE"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    items = b""
    for file_id in referenced:
        value = file_id.encode() + b" " * (len(file_id) % 2)
        element = struct.pack("<HH2sH", 0x0004, 0x1500, b"CS", len(value)) + value
        items += struct.pack("<HHI", 0xFFFE, 0xE000, len(element)) + element
    items += struct.pack("<HHI", 0xFFFE, 0xE000, 0) * records
    sequence = struct.pack("<HH2sHI", 0x0004, 0x1220, b"SQ", 0, 0xFFFFFFFF) + items
    with path.open("ab") as out:
        out.write(sequence + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    return path


def per_frame_groups(path: Path, items: int) -> Path:
    """An honest 1-frame DICOM with a PerFrameFunctionalGroupsSequence of `items` empty items
    spliced in before its pixel data: 8 bytes each on disk, ~700 once pydicom parses them."""
    data = dicom(path, 1, "1.2.3.5").read_bytes()
    at = data.rfind(b"\xe0\x7f\x10\x00")
    sequence = struct.pack("<HH2sHI", 0x5200, 0x9230, b"SQ", 0, 0xFFFFFFFF)
    sequence += struct.pack("<HHI", 0xFFFE, 0xE000, 0) * items
    sequence += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    path.write_bytes(data[:at] + sequence + data[at:])
    return path


def zeros_png(path: Path, width: int, height: int) -> Path:
    """A greyscale PNG of zeros (`height` a multiple of 100), compressed fast 100 rows at a time:
    10000^2 is 0.4 MB on disk (97 kB at zlib level 9, slower to make), 100 MB decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    packer = zlib.compressobj(1)
    rows = bytes(width + 1) * 100  # each row: filter byte 0, then the pixels
    data = b"".join(packer.compress(rows) for _ in range(height // 100)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )
    return path


def apng(path: Path, declared: int) -> Path:
    """A two-frame APNG whose acTL chunk declares `declared` frames."""
    frames = [Image.new("RGB", (8, 8), (i * 90, 0, 0)) for i in range(2)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    data = bytearray(path.read_bytes())
    at = data.index(b"acTL")
    data[at + 4 : at + 8] = struct.pack(">I", declared)
    data[at + 12 : at + 16] = struct.pack(">I", zlib.crc32(bytes(data[at : at + 12])))
    path.write_bytes(bytes(data))
    return path


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\n%%EOF\n"


def honest_series(root: Path) -> None:
    """A DICOM series and an image folder that must survive their hostile neighbours."""
    ct = root / "ct"
    ct.mkdir(parents=True)
    shutil.copy(wheel_data("pydicom", "pydicom/data/test_files") / "CT_small.dcm", ct / "a.dcm")
    frames = root / "frames"
    frames.mkdir()
    for i in range(2):
        Image.new("RGB", (16, 16), (i * 80, 40, 0)).save(frames / f"f{i}.png")


@pytest.fixture(scope="module")
def shown(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("counts")
    honest_series(tmp / "honest")
    source = tmp / "source"
    honest_series(source)
    dicom(source / "cine" / "bomb.dcm", 4_000_000, "1.2.3.1")
    dicom(source / "cine" / "short.dcm", MAX_FRAMES, "1.2.3.2")
    dicom(source / "cine" / "jpeg.dcm", MAX_FRAMES, "1.2.3.3", compressed=True)
    per_frame_groups(source / "enhanced" / "groups.dcm", RECORDS)
    dicom(tmp / "outside" / "secret.dcm", 1, "1.2.3.4")
    dicomdir(source / "disc" / "DICOMDIR", ["..\\..\\outside\\secret.dcm", str(tmp)], RECORDS)
    (source / "big").mkdir()
    zeros_png(source / "big" / "f0.png", 10000, 10000)
    Image.new("L", (16, 16)).save(source / "big" / "f1.png")
    shutil.copy(source / "big" / "f0.png", tmp / "bomb.png")
    (source / "anim").mkdir()
    apng(source / "anim" / "f0.png", 5_000_000)
    Image.new("L", (16, 16)).save(source / "anim" / "f1.png")
    (source / "eps").mkdir()
    (source / "eps" / "f0.png").write_bytes(EPS)
    Image.new("L", (16, 16)).save(source / "eps" / "f1.png")
    (source / "eps" / "figure.eps").write_bytes(EPS)
    nib.save(
        # NIfTI-1 dimensions are 16-bit: only NIfTI-2 can declare more than MAX_FRAMES
        nib.Nifti2Image(np.zeros((1, 1, 1, 4_000_000), np.uint8), np.eye(4)),
        source / "fmri.nii",
    )
    return isolated(RUN.format(tmp=str(tmp)))


def test_hostile_headers_cost_no_memory_and_honest_series_go_on(shown: dict) -> None:
    assert {"ct/1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322", "frames"} <= set(
        shown["result"]["refs"]
    ), shown["result"]
    assert shown["result"]["rise"] < RISE_BOUND, shown


def test_dicom_frame_counts_are_refused_at_discovery(shown: dict) -> None:
    failures = shown["result"]["failures"]
    path, stage, reason = failures["cine/bomb.dcm"]
    assert path.endswith("cine/bomb.dcm") and stage == "discover"
    assert reason == (
        "cine/bomb.dcm: NumberOfFrames declares 4000000 frames, "
        f"over the limit of {MAX_FRAMES} per series {BOMB}"
    )
    assert failures["cine/short.dcm"][2] == (
        f"cine/short.dcm: pixel data holds 64 bytes; 8x8 x {MAX_FRAMES} frames "
        f"needs {64 * MAX_FRAMES}"
    )
    assert failures["enhanced/groups.dcm"][1:] == [
        "discover",
        f"enhanced/groups.dcm: more than {MAX_HEADER_ELEMENTS} data elements and sequence items "
        "(a header bomb); refused unparsed",
    ]
    _, stage, reason = failures["cine/jpeg.dcm"]
    assert stage == "discover" and reason.startswith("cine/jpeg.dcm: pixel data of ")
    assert reason.endswith(f"cannot hold {MAX_FRAMES} compressed frames (at least 8 bytes each)")


def test_a_dicomdir_is_never_parsed_nor_followed_outside(shown: dict) -> None:
    result = shown["result"]
    assert result["opened_outside"] == [] and result["controls"][0] == 1
    assert not [s for s in [*result["refs"], *result["failures"]] if "disc" in s or "secret" in s]


def test_image_headers_are_checked_before_decoding(shown: dict) -> None:
    failures = shown["result"]["failures"]
    path, stage, reason = failures["big"]
    assert path.endswith("big/f0.png") and stage == "discover"
    assert reason == (
        "f0.png: frames of 10000x10000 pixels exceed the limit of 67108864 pixels "
        "(a decompression bomb, or a frame too large to decode here); refused unread"
    )
    path, stage, reason = failures["anim"]
    assert path.endswith("anim/f0.png")
    assert (
        reason
        == f"f0.png: declares 5000000 frames, over the limit of {MAX_FRAMES} per series {BOMB}"
    )
    # swapped in after discovery: refused again at decode, by name
    assert shown["result"]["decoded"].endswith(
        "frames/f1.png: f1.png: frames of 10000x10000 pixels exceed the limit of 67108864 pixels "
        "(a decompression bomb, or a frame too large to decode here); refused unread"
    )


def test_eps_never_reaches_pillows_eps_plugin(shown: dict) -> None:
    result = shown["result"]
    assert result["eps_tried"] == [] and result["controls"][1] == 1
    path, stage, reason = result["failures"]["eps"]
    assert path.endswith("eps/f0.png") and reason.startswith(
        "unreadable image f0.png: cannot identify"
    )


def test_a_nifti_time_dimension_is_capped(shown: dict) -> None:
    path, stage, reason = shown["result"]["failures"]["fmri.nii"]
    assert stage == "discover"
    assert reason == f"declares 4000000 frames, over the limit of {MAX_FRAMES} per series {BOMB}"
