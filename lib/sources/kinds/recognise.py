"""Which files a kind could claim, decided without its reader library: DICOM's pydicom and
NIfTI's nibabel (which imports pydicom) take 0.25 s to import, a tenth of a command with
nothing to compute, so discovery loads them only for a source holding such a file
(kinds/__init__.py)."""

from __future__ import annotations

from pathlib import Path

# claimed by name; other files only by the `DICM` magic
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})


def looks_dicom(path: Path) -> bool:
    """`.dcm`/`.dicom` by name; files with no suffix (or a
    numeric one, `1.2.840...123`) by `DICM` at byte 128."""
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix and not suffix[1:].isdigit():
        return False
    try:
        with path.open("rb") as stream:
            return stream.read(132)[128:] == b"DICM"
    except OSError:
        return False  # unreadable and not named .dcm: not ours to report


NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)
