"""Cheap header checks of image/label pairs, run before anything is loaded in full."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torchio as tio

from sam3d.data.catalog import Case
from sam3d.data.dicom import DicomSeriesError, names_dicom_series, read_series_header
from sam3d.data.errors import DatasetError, Problem, format_problems
from sam3d.errors import Sam3dWarning

if TYPE_CHECKING:
    from sam3d.data.training.cache import CachedCase

__all__ = [
    "SPACING_RANGE_MM",
    "Header",
    "check_file",
    "check_headers",
    "check_targets",
    "read_header",
    "same_affine",
]

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
        path: A NIfTI, NRRD or MHA file, or a DICOM series (:mod:`sam3d.data.dicom`).

    Returns:
        The header fields.

    Raises:
        Exception: Whatever the readers raise for a missing or unreadable file
            (:class:`~sam3d.data.dicom.DicomSeriesError` for a DICOM series).
    """
    if names_dicom_series(path):
        series = read_series_header(path)
        return Header((1, *series.shape), series.affine, series.spacing)
    image = tio.ScalarImage(path)
    with warnings.catch_warnings():  # TorchIO warns before falling back to NiBabel; the caller reports
        warnings.simplefilter("ignore")
        channels, x, y, z = (int(n) for n in image.shape)
    affine = np.asarray(image.affine, dtype=float)
    sx, sy, sz = (float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    return Header((channels, x, y, z), affine, (sx, sy, sz))


def same_affine(first: np.ndarray, second: np.ndarray) -> bool:
    """Whether two voxel-to-world matrices describe the same grid (within header rounding)."""
    return bool(np.allclose(first, second, rtol=_GEOMETRY_RTOL, atol=_GEOMETRY_ATOL_MM))


def check_file(case_id: str, path: Path, kind: str) -> tuple[Header | None, list[Problem]]:
    """The header of an image or label file and its file-level problems (missing, unreadable, not 3D...)."""
    if names_dicom_series(path):
        if kind == "label":
            message = "label is a folder, not a file: labels are read from NIfTI, NRRD or MHA files"
            return None, [Problem(case_id, message, path)]
        try:
            header = read_header(path)
        except DicomSeriesError as error:
            return None, [Problem(case_id, f"{kind} DICOM series: {error.reason}", path)]
    elif not path.is_file():
        return None, [Problem(case_id, f"{kind} file not found (check data.root and the split file)", path)]
    else:
        try:
            header = read_header(path)
        except Exception as error:  # noqa: BLE001 (SimpleITK, NiBabel and gzip raise many types)
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            return None, [
                Problem(case_id, f"{kind} file is unreadable ({reason}); re-export it as NIfTI", path)
            ]
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


def check_targets(
    cases: Sequence[CachedCase],
    target_labels: Sequence[int],
    patch_size: Sequence[int],
    spacing: Sequence[float],
) -> None:
    """Refuse cached cases none of which holds the target; warn about those without it or smaller than a patch.

    Args:
        cases: Cached cases (of every part in use).
        target_labels: Label values forming the target.
        patch_size: Patch size ``(D, H, W)``.
        spacing: Voxel size of the cached volumes in mm, ``(D, H, W)``.

    Raises:
        DatasetError: If no label map holds a target value.
    """
    targets = set(target_labels)
    lacking = [case for case in cases if not targets & case.label_values]
    if lacking and len(lacking) == len(cases):
        present = sorted(set().union(*(case.label_values for case in cases)))
        raise DatasetError(
            f"target label(s) {sorted(targets)} occur in no label map (values present: {present}); "
            "set data.target_label"
        )
    if lacking:
        problems = [Problem(c.case.case_id, "label has no target voxels", c.case.label) for c in lacking]
        warnings.warn(
            f"{len(lacking)} cases have no target label {sorted(targets)}; they give negative-only "
            f"training patches and a random validation patch:\n{format_problems(problems)}",
            Sam3dWarning,
            stacklevel=4,
        )
    patch = tuple(patch_size)[::-1]
    small = [c for c in cases if any(n < p for n, p in zip(c.meta["shape"], patch, strict=True))]
    if small:
        problems = [
            Problem(c.case.case_id, f"shape {tuple(c.meta['shape'])} at {tuple(spacing)} mm", c.case.image)
            for c in small
        ]
        warnings.warn(
            f"{len(small)} volumes are smaller than the patch {tuple(patch_size)} and will be padded:\n"
            f"{format_problems(problems)}",
            Sam3dWarning,
            stacklevel=4,
        )
