"""Image frames and NIfTI volumes whose headers declare gigapixels (SPEC §6: sizes are bounded): a
PNG in an image-folder series patched to 60000 x 60000, and a 3 kB NIfTI claiming 30000^4 voxels.
The frame-size check (on every image header) and the NIfTI size check refuse them at discovery by
file name, in bounded memory, without decoding a frame of them."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from tests.security.conftest import isolated

RUN = """
    from pathlib import Path
    from lstmpipe.lib.config import SamplingConfig
    from lstmpipe.lib.sources.decode import decode
    from lstmpipe.lib.errors import BadInput
    from lstmpipe.lib.sources.discover import discover
    found = discover(Path({source!r}))
    decoded = []
    for ref in found.refs:
        try:
            decoded.append(sum(len(c) for c in decode(ref, SamplingConfig(size=32), Path({tmp!r}))))
        except BadInput as exc:
            decoded.append(str(exc))
    failures = [[f.series_id, f.stage, f.reason] for f in found.failures]
    result = {{"decoded": decoded, "failures": failures}}
"""


def test_an_image_frame_declaring_60000_squared_is_refused_at_discovery_by_name(
    tmp_path: Path,
) -> None:
    series = tmp_path / "source" / "seq"
    series.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (32, 32), (i * 50, 0, 0)).save(series / f"f{i:03d}.png")
    frame = series / "f001.png"
    data = bytearray(frame.read_bytes())
    data[16:24] = struct.pack(">II", 60000, 60000)  # IHDR width, height
    # a valid chunk CRC: only the size lies
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    frame.write_bytes(bytes(data))
    shown = isolated(RUN.format(source=str(tmp_path / "source"), tmp=str(tmp_path / "tmp")))
    assert shown["result"]["decoded"] == []
    [(series_id, stage, reason)] = shown["result"]["failures"]
    assert (series_id, stage) == ("seq", "discover")
    # Pillow's own bomb check (over twice its MAX_IMAGE_PIXELS) speaks first, in Image.open
    assert reason.startswith(
        "unreadable image f001.png: Image size (3600000000 pixels) exceeds limit of"
    )
    assert shown["self_bytes"] < 400 << 20, shown


def test_a_nifti_declaring_30000_to_the_fourth_is_refused_at_discovery(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 5), np.int16), np.eye(4)), source / "huge.nii")
    data = bytearray((source / "huge.nii").read_bytes())
    data[40:56] = struct.pack("<8h", 4, 30000, 30000, 30000, 30000, 1, 1, 1)  # dim[0..7]
    (source / "huge.nii").write_bytes(bytes(data))
    shown = isolated(RUN.format(source=str(source), tmp=str(tmp_path / "tmp")))
    assert shown["result"]["decoded"] == []
    [(series_id, stage, reason)] = shown["result"]["failures"]
    assert (series_id, stage) == ("huge.nii", "discover") and reason.startswith("truncated: ")
    assert shown["self_bytes"] < 400 << 20, shown


def gzip_nifti(path: Path, shape: tuple[int, ...], data_bytes: int) -> Path:
    """A .nii.gz whose header declares `shape` (int16) and whose gzip stream inflates to
    `data_bytes` of zeros after the header: written block by block, so the test never holds the
    inflated bytes."""
    header = nib.Nifti1Image(np.zeros((2, 2, 2, 2), np.int16), np.eye(4))
    header.header.set_data_shape(shape)
    # 348-byte header, 4 extension bytes: data at 352
    raw = bytearray(header.header.binaryblock) + b"\0" * 4
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
    with path.open("wb") as out:
        out.write(packer.compress(bytes(raw)))
        block = b"\0" * (1 << 24)
        for _ in range(data_bytes >> 24):
            out.write(packer.compress(block))
        out.write(packer.flush())
    return path


def test_a_nifti_gz_declaring_more_than_gzip_can_hold_is_refused_at_discovery(
    tmp_path: Path,
) -> None:
    """A 60 kB .nii.gz declaring 512^3 x 400 int16 voxels
    (100 GiB): deflate inflates at most 1032-fold."""
    source = tmp_path / "source"
    source.mkdir()
    gzip_nifti(source / "bomb.nii.gz", (512, 512, 512, 400), 64 << 20)
    shown = isolated(RUN.format(source=str(source), tmp=str(tmp_path / "tmp")))
    assert shown["result"]["decoded"] == []
    [(series_id, stage, reason)] = shown["result"]["failures"]
    assert (series_id, stage) == ("bomb.nii.gz", "discover") and "decompression bomb" in reason
    assert shown["self_bytes"] < 400 << 20, shown


@pytest.mark.slow  # inflates 512 MiB: 11 s on 2 cores
def test_a_nifti_gz_inflating_to_512_mib_decodes_in_one_volume_of_memory(tmp_path: Path) -> None:
    """Within deflate's ratio (a 0.5 MB file of zeros inflating to 512 MiB, 256^3 x 16 int16 voxels)
    the series is decoded: streamed one volume at a time through the MIP view, never held whole."""
    source = tmp_path / "source"
    source.mkdir()
    gzip_nifti(source / "zeros.nii.gz", (256, 256, 256, 16), 512 << 20)
    assert (source / "zeros.nii.gz").stat().st_size < 1 << 20
    run = RUN.replace(
        "Path({tmp!r})))", "Path({tmp!r}), sources=SourcesConfig(nifti_view='mip')))"
    ).replace("import SamplingConfig", "import SamplingConfig, SourcesConfig")
    shown = isolated(run.format(source=str(source), tmp=str(tmp_path / "tmp")), timeout_s=120)
    assert shown["result"] == {"decoded": [16], "failures": []}, shown
    # the inflated data is 512 MiB; a volume is 32 MiB. The reader process decodes it (children).
    assert shown["self_bytes"] < 400 << 20 and shown["children_bytes"] < 400 << 20, shown
