"""Single scans for ``sam3d predict``/``sam3d test``, preprocessed for the network, and their labels.

:func:`load_scan` reads a NIfTI, NRRD or MHA file through TorchIO and preprocesses it exactly as the
cache does for training (:func:`sam3d.data.preprocessing.to_grid`), then clips and z-scores it;
:mod:`sam3d.data.scans.writing` maps results back onto the file's grid.

"Source grid" means the file's array as TorchIO reads it: NiBabel's ``get_fdata()[i, j, k]`` for
NIfTI, SimpleITK's index ``(i, j, k)`` (``GetArrayFromImage(...)[k, j, i]``) for NRRD/MHA; its
affine maps ``(i, j, k)`` to RAS+ millimetres (TorchIO converts ITK's LPS).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torchio as tio

from sam3d.data.checks import same_affine
from sam3d.data.errors import DatasetError, Problem
from sam3d.data.files import case_id
from sam3d.data.layout import to_network_layout
from sam3d.data.preprocessing import BinarizeLabel, Normalize, Preprocessing, read_volume, to_grid

__all__ = ["Scan", "describe_grid", "label_on_source_grid", "load_label", "load_scan"]


@dataclass  # not frozen: Lightning rebuilds dataclasses in step outputs
class Scan:
    """A scan preprocessed for the network, with what is needed to map results back to its file.

    Attributes:
        path: The source file.
        image: ``(D, H, W)`` float32, canonical, resampled, clipped and z-scored (network layout).
        spacing: Voxel size in mm of ``image``, ``(D, H, W)``.
        affine: Voxel-to-RAS matrix of the preprocessed grid in TorchIO order ``(X, Y, Z)``
            (i.e. ``image`` axes reversed).
        source_shape: Shape of the file's array ``(i, j, k)``.
        source_affine: The file's voxel-to-RAS matrix.
        intensities: ``(D, H, W)`` on the grid of ``image`` in the file's units (HU for CT), before
            clipping and z-scoring (int16 for integer scans, else float32); None unless asked for.
    """

    path: Path
    image: torch.Tensor
    spacing: tuple[float, float, float]
    affine: np.ndarray
    source_shape: tuple[int, int, int]
    source_affine: np.ndarray
    intensities: torch.Tensor | None = None

    @property
    def case_id(self) -> str:
        """The file name without extension."""
        return case_id(self.path)

    @property
    def source_spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm of the file's grid, in its array order ``(i, j, k)`` (for metrics there)."""
        return tuple(float(s) for s in np.linalg.norm(self.source_affine[:3, :3], axis=0))  # type: ignore[return-value]


def load_scan(path: str | Path, preprocessing: Preprocessing, keep_intensities: bool = False) -> Scan:
    """Read one scan and preprocess it for the network exactly as the training cache does, then normalise it.

    Args:
        path: NIfTI, NRRD or MHA file of a single-channel 3D scan.
        preprocessing: The network's preprocessing (spacing, window and statistics are used).
        keep_intensities: Also keep the resampled intensities before clipping (for display).

    Returns:
        The preprocessed scan.

    Raises:
        DatasetError: If the file is missing or unreadable, is not a single-channel 3D volume, has an
            absurd spacing or NaN/inf voxels; the message names the file.
    """
    path = Path(path).expanduser()
    source = read_volume(path, "scan", case_id(path))
    grid = to_grid(source, preprocessing.spacing)
    normalised = Normalize(preprocessing.window, preprocessing.mean, preprocessing.std)(grid)
    return Scan(
        path=path,
        image=to_network_layout(normalised.data[0]).contiguous(),
        spacing=preprocessing.spacing,
        affine=np.array(normalised.affine, dtype=float),
        source_shape=source.spatial_shape,
        source_affine=np.array(source.affine, dtype=float),
        intensities=to_network_layout(grid.data[0]).contiguous() if keep_intensities else None,
    )


def describe_grid(shape: Sequence[int], affine: np.ndarray) -> str:
    """A grid in words: shape, spacing, origin and orientation (axis codes)."""
    spacing = "x".join(f"{s:.4g}" for s in np.linalg.norm(affine[:3, :3], axis=0))
    origin = ", ".join(f"{o:.4g}" for o in affine[:3, 3])
    axes = "".join(nib.aff2axcodes(affine))
    return f"shape {tuple(int(n) for n in shape)}, spacing {spacing} mm, origin ({origin}) mm, orientation {axes}"


def _read_label(path: Path, scan: Scan) -> tio.LabelMap:
    """Load a label file after checking that it is a label map on the scan's grid."""
    label = read_volume(path, "label", scan.case_id)
    shape, affine = label.spatial_shape, np.asarray(label.affine, dtype=float)
    if shape != scan.source_shape or not same_affine(affine, scan.source_affine):
        raise DatasetError(
            f"label {path} is not on the grid of scan {scan.path}; resample the label onto the scan "
            "or fix its header:",
            [
                Problem(
                    scan.case_id, f"scan:  {describe_grid(scan.source_shape, scan.source_affine)}", scan.path
                ),
                Problem(scan.case_id, f"label: {describe_grid(shape, affine)}", path),
            ],
        )
    return label  # type: ignore[return-value]


def label_on_source_grid(
    label_path: str | Path, scan: Scan, target_labels: Sequence[int] = (1,)
) -> torch.Tensor:
    """The label file on its own grid, binarised, after checking that it is the scan's grid.

    Args:
        label_path: Label map file of the scan.
        scan: The scan it labels.
        target_labels: Label values forming the target.

    Returns:
        ``scan.source_shape`` bool tensor in the file's array order ``(i, j, k)``.

    Raises:
        DatasetError: If the label is missing, unreadable, not a single-channel 3D integer map, or
            its shape or geometry differs from the scan's (both files, shapes, spacings and origins
            are named).
    """
    label = _read_label(Path(label_path).expanduser(), scan)
    return BinarizeLabel(target_labels)(label).data[0].bool()


def load_label(label_path: str | Path, scan: Scan, target_labels: Sequence[int] = (1,)) -> torch.Tensor:
    """The label file preprocessed like the scan (nearest neighbour onto ``scan.image``'s grid), binarised.

    Args:
        label_path: Label map file of the scan.
        scan: The scan it labels.
        target_labels: Label values forming the target.

    Returns:
        ``(D, H, W)`` uint8 on the grid of ``scan.image`` (network layout), 1 for the target.

    Raises:
        DatasetError: As :func:`label_on_source_grid`.
    """
    label = _read_label(Path(label_path).expanduser(), scan)
    # The cache's path, not one resampling straight onto the scan's grid: nearest-neighbour ties
    # would then break differently from the training labels.
    on_grid = BinarizeLabel(target_labels)(to_grid(label, scan.spacing))
    if tuple(on_grid.data.shape[1:]) != tuple(scan.image.shape[::-1]) or not np.allclose(
        on_grid.affine, scan.affine
    ):
        raise RuntimeError(f"label {label_path} was not resampled onto the grid of scan {scan.path}")
    return to_network_layout(on_grid.data[0]).contiguous()
