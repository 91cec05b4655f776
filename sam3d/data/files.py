"""Scan files: the suffixes sam3d reads, the case id of a file, and the NIfTI reader."""

from __future__ import annotations

import hashlib
import os
from functools import cache
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from nibabel.filebasedimages import ImageFileError

from sam3d.data.errors import DatasetError

__all__ = [
    "SCAN_SUFFIXES",
    "case_id",
    "detached_data_file",
    "file_sha256",
    "is_nifti",
    "load_nifti",
    "read_nifti",
    "reader_for",
    "refuse_detached_data",
]

# Every image format sam3d reads (through TorchIO), longest first so ``.nii.gz`` wins over ``.gz``.
SCAN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def case_id(path: str | Path) -> str:
    """The file name without its image suffix (``imagesTr/case_001.nii.gz`` -> ``case_001``).

    Suffixes match in any case (``c.NRRD`` -> ``c``); a name without a known suffix is kept whole.
    """
    name = Path(path).name
    for suffix in SCAN_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_nifti(path: str | Path) -> bool:
    """Whether the file is a NIfTI file (``.nii`` or ``.nii.gz``, any case)."""
    return Path(path).name.lower().endswith((".nii", ".nii.gz"))


def load_nifti(path: str | Path) -> nib.Nifti1Image:
    """NiBabel's image of a NIfTI file (NIfTI-1 or NIfTI-2; its voxels are read when used).

    Raises:
        ImageFileError: If NiBabel reads the file as another format.
    """
    image = nib.load(str(path))
    if not isinstance(image, nib.Nifti1Image):  # a Nifti2Image is one too
        raise ImageFileError(f"{path} is not a NIfTI image: NiBabel reads it as {type(image).__name__}")
    return image


def read_nifti(path: str | Path) -> tuple[torch.Tensor, np.ndarray]:
    """TorchIO reader for NIfTI files through NiBabel, keeping the stored type.

    Used for cache entries (faster than SimpleITK) and NIfTI sources, because SimpleITK's NIfTI
    reader silently turns NaN voxels into 0 and the checks must see them.
    """
    image = load_nifti(path)
    array = np.asanyarray(image.dataobj)
    array = array.transpose(3, 0, 1, 2) if array.ndim == 4 else array[None]
    return torch.from_numpy(np.ascontiguousarray(array)), image.affine


def reader_for(path: str | Path) -> dict[str, object]:
    """Keyword arguments for a TorchIO image of ``path``: NiBabel for NIfTI, TorchIO's default otherwise."""
    return {"reader": read_nifti} if is_nifti(path) else {}


# The header keys that name where the voxels are: MetaImage's (.mha/.mhd) and NRRD's (.nrrd/.nhdr).
_METAIMAGE_DATA_KEY = "elementdatafile"
_NRRD_DATA_KEYS = ("data file", "datafile")
_HEADER_BYTES = 1 << 16


def detached_data_file(path: str | Path) -> str | None:
    """The separate data file a MetaImage or NRRD header names (None when its voxels are inside it).

    A header may name any file (``ElementDataFile = /etc/passwd``, ``data file: ../x.raw``), which a reader
    then opens: what a server must never do for a file someone uploaded. Other formats give None.
    """
    name = Path(path).name.lower()
    if not name.endswith((".mha", ".mhd", ".nrrd", ".nhdr")):
        return None
    with open(path, "rb") as stream:
        header = stream.read(_HEADER_BYTES).decode("latin-1")
    metaimage = name.endswith((".mha", ".mhd"))
    for line in header.splitlines():
        if not metaimage and not line.strip():
            break  # the end of a NRRD header: the voxels follow
        key, separator, value = line.partition("=" if metaimage else ":")
        key = key.strip().lower()
        if not separator:
            continue
        if metaimage and key == _METAIMAGE_DATA_KEY:
            return None if value.strip().upper() == "LOCAL" else value.strip()
        if not metaimage and key in _NRRD_DATA_KEYS:
            return value.strip()
    return "(none named)" if metaimage or name.endswith(".nhdr") else None


def refuse_detached_data(path: str | Path, name: str) -> None:
    """Refuse a scan (uploaded as ``name``) whose header points to a separate data file.

    Raises:
        DatasetError: If the header names a data file outside it.
    """
    data_file = detached_data_file(path)
    if data_file is not None:
        raise DatasetError(
            f"{name} keeps its voxels in a separate file ({data_file}), which an upload cannot bring: "
            "upload a single-file scan (.nii.gz, .nrrd or .mha with the data inside)"
        )


def file_sha256(path: str) -> str:
    """SHA-256 of a file, read in chunks (cached for the process while its size and modification time hold)."""
    status = os.stat(path)
    return _sha256(path, status.st_size, status.st_mtime_ns)


@cache
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()
