"""Single scans for ``sam3d predict``/``sam3d test``, preprocessed for the network, and their labels.

:func:`load_scan` reads a NIfTI, NRRD or MHA file through TorchIO and preprocesses it exactly as the
cache does for training (canonical RAS+, resampled to the target spacing, integer-valued sources
rounded after resampling), then clips and z-scores it. :mod:`sam3d.data.scans.writing` maps results
back onto the file's grid.

"Source grid" means the file's array as TorchIO reads it: NiBabel's ``get_fdata()[i, j, k]`` for
NIfTI, SimpleITK's index ``(i, j, k)`` (``GetArrayFromImage(...)[k, j, i]``) for NRRD/MHA; its
affine maps ``(i, j, k)`` to RAS+ millimetres (TorchIO converts ITK's LPS).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torchio as tio

from sam3d.data.checks import check_file, same_affine
from sam3d.data.errors import DatasetError, Problem
from sam3d.data.files import case_id, reader_for
from sam3d.data.layout import to_network_layout
from sam3d.data.preprocessing import BinarizeLabel, Normalize

__all__ = ["Scan", "label_on_source_grid", "load_label", "load_scan"]

_INT16 = (-32768, 32767)


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
    """

    path: Path
    image: torch.Tensor
    spacing: tuple[float, float, float]
    affine: np.ndarray
    source_shape: tuple[int, int, int]
    source_affine: np.ndarray

    @property
    def case_id(self) -> str:
        """The file name without extension."""
        return case_id(self.path)

    @property
    def source_spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm of the file's grid, in its array order ``(i, j, k)`` (for metrics there)."""
        return tuple(float(s) for s in np.linalg.norm(self.source_affine[:3, :3], axis=0))  # type: ignore[return-value]


def _error(path: Path, problems: Sequence[Problem], kind: str = "scan") -> DatasetError:
    return DatasetError(f"{kind} {path} cannot be used:", problems)


def _read(path: Path, image_class: type[tio.Image], kind: str) -> tio.Image:
    """Check the header (missing, unreadable, not single-channel 3D, absurd spacing) and load the voxels."""
    path = Path(path).expanduser()
    _, problems = check_file(case_id(path), path, kind)
    if problems:
        raise _error(path, problems, kind)
    image = image_class(path, **reader_for(path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
    except Exception as error:  # noqa: BLE001 (truncated files raise from gzip, NiBabel or SimpleITK)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise _error(
            path, [Problem(case_id(path), f"{kind} voxels are unreadable ({reason})", path)], kind
        ) from None
    return image


def load_scan(
    path: str | Path,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    window: tuple[float, float],
    mean: float,
    std: float,
) -> Scan:
    """Read one scan and preprocess it for the network as the training cache does.

    Args:
        path: NIfTI, NRRD or MHA file of a single-channel 3D scan.
        spacing: Target voxel size in mm, network order ``(D, H, W)``.
        window: Intensity clipping window (e.g. HU).
        mean: Z-scoring mean after clipping.
        std: Z-scoring standard deviation after clipping.

    Returns:
        The preprocessed scan.

    Raises:
        DatasetError: If the file is missing or unreadable, is not a single-channel 3D volume, has an
            absurd spacing or NaN/inf voxels; the message names the file.
    """
    if len(spacing) != 3 or not all(float(s) > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive numbers (mm), got {spacing!r}")
    path = Path(path).expanduser()
    image = _read(path, tio.ScalarImage, "scan")
    data = image.data
    if data.is_floating_point():
        bad = int((~torch.isfinite(data)).sum())
        if bad:
            message = f"scan has {bad} NaN/inf voxels; replace them (e.g. with -1024 HU)"
            raise _error(path, [Problem(case_id(path), message, path)])
    source_shape = tuple(int(n) for n in data.shape[1:])
    source_affine = np.array(image.affine, dtype=float)
    integral = not data.is_floating_point() or torch.equal(data, data.round())
    xyz_spacing = tuple(float(s) for s in spacing)[::-1]
    canonical = tio.Compose([tio.ToCanonical(), tio.Resample(xyz_spacing)])(image)
    resampled = canonical.data
    # The cache stores integer-valued sources rounded (int16); do the same so test and predict see
    # the same inputs as training did.
    if integral and _INT16[0] <= float(resampled.min()) and float(resampled.max()) <= _INT16[1]:
        canonical.set_data(resampled.round())
    normalised = Normalize(window, mean, std)(canonical)
    return Scan(
        path=path,
        image=to_network_layout(normalised.data[0].float()).contiguous(),
        spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        affine=np.array(normalised.affine, dtype=float),
        source_shape=source_shape,  # type: ignore[arg-type]
        source_affine=source_affine,
    )


def _describe(shape: Sequence[int], affine: np.ndarray) -> str:
    spacing = "x".join(f"{s:.4g}" for s in np.linalg.norm(affine[:3, :3], axis=0))
    origin = ", ".join(f"{o:.4g}" for o in affine[:3, 3])
    axes = "".join(nib.aff2axcodes(affine))
    return f"shape {tuple(int(n) for n in shape)}, spacing {spacing} mm, origin ({origin}) mm, orientation {axes}"


def _read_label(path: Path, scan: Scan) -> tio.LabelMap:
    """Load a label file after checking that it is a label map on the scan's grid."""
    label = _read(path, tio.LabelMap, "label")
    data = label.data
    shape, affine = tuple(int(n) for n in data.shape[1:]), np.asarray(label.affine, dtype=float)
    if shape != scan.source_shape or not same_affine(affine, scan.source_affine):
        raise DatasetError(
            f"label {path} is not on the grid of scan {scan.path}; resample the label onto the scan "
            "or fix its header:",
            [
                Problem(
                    scan.case_id, f"scan:  {_describe(scan.source_shape, scan.source_affine)}", scan.path
                ),
                Problem(scan.case_id, f"label: {_describe(shape, affine)}", path),
            ],
        )
    if data.is_floating_point() and not torch.equal(data, data.round()):
        message = "label has non-integer values; is it an image, or a probability map?"
        raise _error(path, [Problem(scan.case_id, message, path)], "label")
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
    # The cache's steps, not one resampling straight onto the scan's grid: nearest-neighbour ties
    # would then break differently from the training labels.
    transform = tio.Compose(
        [tio.ToCanonical(), tio.Resample(scan.spacing[::-1]), BinarizeLabel(target_labels)]
    )
    label = transform(label)
    if tuple(label.data.shape[1:]) != tuple(scan.image.shape[::-1]) or not np.allclose(
        label.affine, scan.affine
    ):
        raise RuntimeError(f"label {label_path} was not resampled onto the grid of scan {scan.path}")
    return to_network_layout(label.data[0]).contiguous()
