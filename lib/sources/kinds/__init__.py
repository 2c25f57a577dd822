"""Source kinds (SPEC §2): each groups files into series and opens a series.

A kind is two functions, both given the archive limits and the `sources` section of the
configuration:
    claim(base, files, memo, limits, sources) -> Claim
        which of `files` (sorted, under the folder `base`) are its series; claimed files
        are not offered to later kinds
    open(ref, sampling, tmp_dir, limits, sources) -> context manager of OpenSeries
        metadata + lazy FrameChunks
Kinds are tried in the order of KINDS, most specific first; video comes last and takes
every video file and archive left. What no kind claims is ignored. After decoding
nothing knows the kind.
"""

from lstmpipe.lib.sources.kinds import cube, geotiff, images, video
from lstmpipe.lib.sources.kinds.base import SourceKind, loaded_when_needed
from lstmpipe.lib.sources.kinds.recognise import is_nifti, looks_dicom

# Order matters: earlier kinds claim their files first. The DICOM and NIfTI readers load only for
# a source holding a file that looks like theirs.
KINDS: tuple[SourceKind, ...] = (
    loaded_when_needed("dicom", "lstmpipe.lib.sources.kinds.dicom", looks_dicom),
    loaded_when_needed("nifti", "lstmpipe.lib.sources.kinds.nifti", is_nifti),
    geotiff.KIND,
    cube.KIND,
    images.KIND,
    video.KIND,
)
