"""Cheap header checks of image/label pairs, run before anything is loaded in full."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torchio as tio

from sam3d.data.catalog import Case
from sam3d.data.errors import Problem

__all__ = ["SPACING_RANGE_MM", "Header", "check_headers", "read_header"]

# Voxel sizes outside this range (mm) are taken to be a broken header, not a real scan.
SPACING_RANGE_MM = (0.05, 20.0)
# Image and label grids may differ by this much (mm, and relative on the direction/zoom part).
_GEOMETRY_ATOL_MM = 1e-2
_GEOMETRY_RTOL = 1e-4


@dataclass(frozen=True)
class Header:
    """What a file's header says, without reading its voxels.

    Attributes:
        shape: ``(channels, X, Y, Z)`` as TorchIO reads it (a 2D image has ``Z == 1``).
        affine: Voxel-to-world (RAS) matrix, 4 x 4.
        spacing: Voxel size in mm along X, Y, Z.
    """

    shape: tuple[int, int, int, int]
    affine: np.ndarray
    spacing: tuple[float, float, float]


def read_header(path: Path) -> Header:
    """Read the shape and geometry of an image file through TorchIO (lazily: no voxel data).

    Args:
        path: A NIfTI, NRRD or MHA file.

    Returns:
        The header fields.

    Raises:
        Exception: Whatever the readers raise for a missing or unreadable file.
    """
    image = tio.ScalarImage(path)
    with warnings.catch_warnings():  # TorchIO warns before falling back to NiBabel; the caller reports
        warnings.simplefilter("ignore")
        shape = tuple(int(n) for n in image.shape)
    affine = np.asarray(image.affine, dtype=float)
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    return Header(shape, affine, spacing)  # type: ignore[arg-type]


def same_affine(first: np.ndarray, second: np.ndarray) -> bool:
    """Whether two voxel-to-world matrices describe the same grid (within header rounding)."""
    return bool(np.allclose(first, second, rtol=_GEOMETRY_RTOL, atol=_GEOMETRY_ATOL_MM))


def check_file(case_id: str, path: Path, kind: str) -> tuple[Header | None, list[Problem]]:
    """The header of an image or label file and its file-level problems (missing, unreadable, not 3D...)."""
    if not path.is_file():
        return None, [Problem(case_id, f"{kind} file not found (check data.root and the split file)", path)]
    try:
        header = read_header(path)
    except Exception as error:  # noqa: BLE001 (SimpleITK, NiBabel and gzip raise many types)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return None, [Problem(case_id, f"{kind} file is unreadable ({reason}); re-export it as NIfTI", path)]
    problems = []
    channels, *spatial = header.shape
    if channels != 1:
        problems.append(
            Problem(case_id, f"{kind} has {channels} channels; sam3d needs single-channel 3D volumes", path)
        )
    if min(spatial) < 2:
        problems.append(Problem(case_id, f"{kind} is not a 3D volume (shape {tuple(spatial)})", path))
    if not all(math.isfinite(s) and SPACING_RANGE_MM[0] <= s <= SPACING_RANGE_MM[1] for s in header.spacing):
        spacing = "x".join(f"{s:.4g}" for s in header.spacing)
        problems.append(
            Problem(
                case_id,
                f"{kind} has an absurd voxel spacing of {spacing} mm (expected {SPACING_RANGE_MM[0]} to "
                f"{SPACING_RANGE_MM[1]} mm); fix the file's header",
                path,
            )
        )
    return header, problems


def check_headers(case: Case) -> list[Problem]:
    """Every header-level problem of one case.

    Missing or unreadable files, non-3D or multi-channel images, absurd spacing, and image/label
    shape or geometry mismatch.

    Args:
        case: The case to check.

    Returns:
        The problems found, empty if the case looks usable.
    """
    image, problems = check_file(case.case_id, case.image, "image")
    label, label_problems = check_file(case.case_id, case.label, "label")
    problems += label_problems
    if image is None or label is None:
        return problems
    if image.shape[1:] != label.shape[1:]:
        problems.append(
            Problem(
                case.case_id,
                f"image shape {image.shape[1:]} differs from label shape {label.shape[1:]}",
                case.label,
            )
        )
    elif not same_affine(image.affine, label.affine):
        difference = float(np.abs(image.affine - label.affine).max())
        problems.append(
            Problem(
                case.case_id,
                f"image and label geometry (affine) differ by up to {difference:.3g}; "
                "resample the label onto the image grid or fix its header",
                case.label,
            )
        )
    return problems
