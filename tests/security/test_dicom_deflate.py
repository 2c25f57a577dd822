"""A deflated DICOM dataset (transfer syntax 1.2.840.10008.1.2.1.99) is inflated by pydicom whole
while it reads the header: a small file of deflated zeros is a memory bomb at discovery. It is
inflated in bounded steps first (`lib/sources/kinds/dicom.py` `_inflated`)."""

from __future__ import annotations

import zlib
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian

from lstmpipe.lib.sources.discover import discover
from lstmpipe.lib.sources.kinds.dicom import MAX_INFLATED_BYTES
from tests.helpers import wheel_data
from tests.security.conftest import isolated

HONEST = "pydicom/data/test_files/image_dfl.dcm"


def deflate_bomb(honest: Path, out: Path, inflated_bytes: int) -> None:
    """The honest file's preamble and file meta, then a deflated dataset of `inflated_bytes` zeros
    (an OB element claiming them all, so the bytes are a valid start of a dataset)."""
    meta = read_file_meta_info(honest)
    assert meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    head_bytes = 132 + 12 + int(meta.FileMetaInformationGroupLength)
    head = honest.read_bytes()[:head_bytes]
    element = b"\x09\x00\x10\x00OB\x00\x00" + inflated_bytes.to_bytes(4, "little")
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = packer.compress(element)
    zeros = bytes(1 << 20)
    for _ in range(inflated_bytes >> 20):
        body += packer.compress(zeros)
    out.write_bytes(head + body + packer.flush())


def test_a_deflate_bomb_is_refused_unparsed_and_an_honest_deflated_file_is_read(
    tmp_path: Path,
) -> None:
    honest = wheel_data("pydicom", HONEST)
    source = tmp_path / "source" / "case"
    source.mkdir(parents=True)
    (source / "honest.dcm").write_bytes(honest.read_bytes())
    deflate_bomb(honest, source / "bomb.dcm", 256 << 20)
    assert (source / "bomb.dcm").stat().st_size < 1 << 20  # 256 MiB of zeros in 250 kB
    shown = isolated(f"""
        from pathlib import Path
        from lstmpipe.lib.sources.discover import discover
        import resource
        before = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) * 1024
        found = discover(Path({str(tmp_path / "source")!r}))
        result = {{"before": before, "refs": [r.series_id for r in found.refs],
                   "failures": [[f.series_id, f.reason] for f in found.failures]}}
    """)
    result = shown["result"]
    assert len(result["refs"]) == 1, result  # the honest file's series
    [(series_id, reason)] = result["failures"]
    assert series_id.endswith("bomb.dcm")
    assert f"deflated dataset inflates past {MAX_INFLATED_BYTES} bytes" in reason
    # inflating is bounded at 32 MiB (its buffer grows to twice that once); pydicom alone would
    # have asked for 256 MiB
    assert shown["self_bytes"] - result["before"] < 96 << 20, shown


def test_a_corrupt_deflated_dataset_is_a_reason_not_a_crash(tmp_path: Path) -> None:
    honest = wheel_data("pydicom", HONEST)
    source = tmp_path / "source"
    source.mkdir()
    meta = read_file_meta_info(honest)
    dataset_start = 132 + 12 + int(meta.FileMetaInformationGroupLength)
    data = bytearray(honest.read_bytes())
    data[dataset_start + 4 : dataset_start + 68] = b"\xff" * 64
    (source / "broken.dcm").write_bytes(bytes(data))
    found = discover(source)
    assert found.refs == []
    [failure] = found.failures
    assert failure.series_id == "broken.dcm" and "broken.dcm" in failure.reason
