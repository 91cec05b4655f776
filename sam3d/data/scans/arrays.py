"""Scans given as arrays (an image in memory with its geometry), preprocessed as :func:`load_scan` does files.

:func:`scan_from_array` is :func:`sam3d.data.scans.load_scan` for an array: the same
:func:`~sam3d.data.preprocessing.to_grid` and :class:`~sam3d.data.preprocessing.Normalize`, so a scan held in
memory and the same scan read from its file give the same network input. :func:`array_affine` turns the
geometry a caller gives (a spacing, or a full affine) into the affine TorchIO takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchio as tio

from sam3d.data.files import case_id
from sam3d.data.layout import to_network_layout
from sam3d.data.preprocessing import Normalize, Preprocessing, read_volume, to_grid
from sam3d.data.scans.loading import Scan
from sam3d.errors import Sam3dError

__all__ = ["ITK_ARRAY_AXES", "array_affine", "itk_array_affine", "read_image", "scan_from_array"]

# The voxel types passed to TorchIO as they are; others become float32.
_RESAMPLED = tuple(np.dtype(name) for name in ("uint8", "int16", "int32", "int64", "float32", "float64"))
_RESAMPLED_TORCH = (torch.uint8, torch.int16, torch.int32, torch.int64, torch.float32, torch.float64)
# (RAS+ axis, sign) of each axis of an array as SimpleITK and 3D Slicer give a scan with ITK's identity
# direction: the slices k run superior (+S), the rows j posterior (-A), the columns i to the patient's left (-R).
ITK_ARRAY_AXES = ((2, 1.0), (1, -1.0), (0, -1.0))


def array_affine(
    spacing: Sequence[float] | None = None, affine: Sequence[Sequence[float]] | np.ndarray | None = None
) -> np.ndarray:
    """The ``(4, 4)`` RAS+ affine of an array from its spacing or its affine.

    Args:
        spacing: Voxel size in mm along the array's three axes; alone, the array is taken in the order
            that 3D Slicer (``arrayFromVolume``) and SimpleITK (``GetArrayFromImage``) give and nnInteractive's
            clients send: ``(k, j, i)`` of an axial scan with ITK's identity direction (LPS), so the first
            axis runs superior, the second posterior, the third towards the patient's left
            (:data:`ITK_ARRAY_AXES`).
        affine: Voxel index to world RAS+ mm (as NiBabel's ``image.affine``); wins over ``spacing``,
            which must then agree with it.

    Raises:
        Sam3dError: If neither is given, or either is malformed, or they disagree.
    """
    if affine is not None:
        matrix = np.asarray(affine, dtype=float)
        if (
            matrix.shape != (4, 4)
            or not np.isfinite(matrix).all()
            or abs(np.linalg.det(matrix[:3, :3])) < 1e-9
        ):
            raise Sam3dError(
                f"the affine must be a 4x4 matrix of numbers with an invertible 3x3 part, got {affine!r}"
            )
        if spacing is not None and not np.allclose(
            np.linalg.norm(matrix[:3, :3], axis=0), _spacing(spacing), rtol=1e-4
        ):
            raise Sam3dError(
                f"the spacing {list(spacing)} differs from the affine's "
                f"{np.linalg.norm(matrix[:3, :3], axis=0).round(6).tolist()}; give one of them"
            )
        return matrix
    if spacing is None:
        raise Sam3dError(
            "the image needs its geometry: properties {'spacing': [sx, sy, sz]} (mm along the array's axes) "
            "or {'affine': 4x4 voxel-to-RAS+ mm matrix}"
        )
    return itk_array_affine(_spacing(spacing))


def itk_array_affine(spacing: Sequence[float] | np.ndarray) -> np.ndarray:
    """The RAS+ affine of a ``(k, j, i)`` array of an ITK image with identity direction and ``spacing`` (mm)."""
    affine = np.zeros((4, 4))
    for array_axis, (ras_axis, sign) in enumerate(ITK_ARRAY_AXES):
        affine[ras_axis, array_axis] = sign * float(spacing[array_axis])
    affine[3, 3] = 1.0
    return affine


def _spacing(spacing: Sequence[float]) -> np.ndarray:
    values = np.asarray(spacing, dtype=float) if _is_numbers(spacing) else np.zeros(0)
    if values.shape != (3,) or not np.isfinite(values).all() or (values <= 0).any():
        raise Sam3dError(f"the spacing must be three positive numbers (mm), got {spacing!r}")
    return values


def _is_numbers(values: object) -> bool:
    try:
        return np.asarray(values).dtype.kind in "iuf"
    except (TypeError, ValueError):
        return False


def scan_from_array(
    image: torch.Tensor | np.ndarray, affine: np.ndarray, preprocessing: Preprocessing, name: str = "image"
) -> Scan:
    """Preprocess a 3D array for the network exactly as :func:`sam3d.data.scans.load_scan` does a file.

    Args:
        image: ``(X, Y, Z)`` intensities (HU for CT), any real dtype; axes as ``affine`` says.
        affine: ``(4, 4)`` voxel index to world RAS+ mm (see :func:`array_affine`).
        preprocessing: The network's preprocessing.
        name: What the scan is called (its ``path``; nothing is read or written there).

    Returns:
        The scan: ``image`` normalised on the network grid, ``source_shape``/``source_affine`` the array's.

    Raises:
        Sam3dError: If the array is not 3D, not real numbers, empty, or has NaN/inf voxels.
    """
    array = image.detach().cpu() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim != 3 or 0 in array.shape:
        raise Sam3dError(f"the image must be a non-empty 3D array (x, y, z), got shape {tuple(array.shape)}")
    if isinstance(array, np.ndarray):
        if array.dtype.kind not in "iuf":
            raise Sam3dError(f"the image must hold real intensities (e.g. HU), got dtype {array.dtype}")
        if array.dtype not in _RESAMPLED:
            array = array.astype(np.float32)  # e.g. uint16, float16: what torch and SimpleITK both take
        data = torch.from_numpy(np.ascontiguousarray(array))
    else:
        if array.dtype == torch.bool or array.is_complex():
            raise Sam3dError(f"the image must hold real intensities (e.g. HU), got dtype {array.dtype}")
        data = array if array.dtype in _RESAMPLED_TORCH else array.float()
    if data.is_floating_point() and (bad := int((~torch.isfinite(data)).sum())):
        raise Sam3dError(f"the image has {bad} NaN/inf voxels; replace them (e.g. with -1024 HU)")
    source = tio.ScalarImage(tensor=data[None].contiguous(), affine=np.asarray(affine, dtype=float))
    grid = to_grid(source, preprocessing.spacing)
    normalised = Normalize(preprocessing.window, preprocessing.mean, preprocessing.std)(grid)
    return Scan(
        path=Path(name),
        image=to_network_layout(normalised.data[0]).contiguous(),
        spacing=preprocessing.spacing,
        affine=np.array(normalised.affine, dtype=float),
        source_shape=tuple(int(n) for n in data.shape),  # type: ignore[arg-type]
        source_affine=np.array(source.affine, dtype=float),
    )


def read_image(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A scan file or DICOM series as an array and its affine, for :meth:`sam3d.session.Sam3dInferenceSession.set_image`.

    Args:
        path: NIfTI, NRRD or MHA file, or a DICOM series (a folder, or ``FOLDER::SeriesInstanceUID``).

    Returns:
        The voxels ``(i, j, k)`` in the file's units (HU for CT) and the ``(4, 4)`` voxel-to-RAS+ mm affine,
        as NiBabel gives a NIfTI.

    Raises:
        DatasetError: If the file or series is missing, unreadable or not a single-channel 3D scan.
    """
    image = read_volume(path, "scan", case_id(path))
    return image.data[0].numpy(), np.array(image.affine, dtype=float)
