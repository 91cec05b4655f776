"""Single scans for ``sam3d predict``/``sam3d test``: preprocessed for the network, and mapped back to the file's grid.

:func:`load_scan` reads a NIfTI, NRRD or MHA file through TorchIO and preprocesses it exactly as the
cache does for training (canonical RAS+, resampled to the target spacing, integer-valued sources
rounded after resampling), then clips and z-scores it. :func:`to_source_grid` resamples a network-
layout volume back onto the file's own voxel grid, so that :func:`write_like` can save it as a
NIfTI that overlays the input voxel for voxel, whatever the input's orientation, spacing or format.

"Source grid" means the file's array as TorchIO reads it: NiBabel's ``get_fdata()[i, j, k]`` for
NIfTI, SimpleITK's index ``(i, j, k)`` (``GetArrayFromImage(...)[k, j, i]``) for NRRD/MHA; its
affine maps ``(i, j, k)`` to RAS+ millimetres (TorchIO converts ITK's LPS).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
import torch
import torchio as tio

from sam3d.data.cache import read_nifti
from sam3d.data.checks import check_file, read_header, same_affine
from sam3d.data.errors import DatasetError, Problem
from sam3d.data.layout import from_network_layout, to_network_layout
from sam3d.data.transforms import BinarizeLabel, Normalize

__all__ = [
    "SCAN_SUFFIXES",
    "Scan",
    "label_on_source_grid",
    "load_label",
    "load_scan",
    "scan_id",
    "to_source_grid",
    "write_like",
]

SCAN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_INT16 = (-32768, 32767)


def scan_id(path: str | Path) -> str:
    """The file name without its image extension (``case_001.nii.gz`` -> ``case_001``)."""
    name = Path(path).name
    for suffix in SCAN_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


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
        return scan_id(self.path)

    @property
    def source_spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm of the file's grid, in its array order ``(i, j, k)`` (for metrics there)."""
        return tuple(float(s) for s in np.linalg.norm(self.source_affine[:3, :3], axis=0))  # type: ignore[return-value]


def _error(path: Path, problems: Sequence[Problem], kind: str = "scan") -> DatasetError:
    return DatasetError(f"{kind} {path} cannot be used:", problems)


def _read(path: Path, image_class: type[tio.Image], kind: str) -> tio.Image:
    """Check the header (missing, unreadable, not single-channel 3D, absurd spacing) and load the voxels."""
    path = Path(path).expanduser()
    _, problems = check_file(scan_id(path), path, kind)
    if problems:
        raise _error(path, problems, kind)
    reader = {"reader": read_nifti} if path.name.lower().endswith((".nii", ".nii.gz")) else {}
    image = image_class(path, **reader)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
    except Exception as error:  # noqa: BLE001 (truncated files raise from gzip, NiBabel or SimpleITK)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise _error(
            path, [Problem(scan_id(path), f"{kind} voxels are unreadable ({reason})", path)], kind
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
            raise _error(path, [Problem(scan_id(path), message, path)])
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


def to_source_grid(
    scan: Scan, volume: torch.Tensor, interpolation: Literal["nearest", "linear"] = "nearest"
) -> torch.Tensor:
    """Resample a network-layout volume on the scan's preprocessed grid onto the file's own grid.

    Args:
        scan: The scan ``volume`` was computed on.
        volume: ``(D, H, W)`` tensor on the grid of ``scan.image`` (a mask or a probability map).
        interpolation: ``"nearest"`` for masks (keeps the dtype), ``"linear"`` for probabilities
            and intensities (float32).

    Returns:
        ``scan.source_shape`` tensor in the file's array order ``(i, j, k)``.
    """
    if tuple(volume.shape) != tuple(scan.image.shape):
        raise ValueError(
            f"volume shape {tuple(volume.shape)} differs from the scan's preprocessed shape "
            f"{tuple(scan.image.shape)}"
        )
    if interpolation not in ("nearest", "linear"):
        raise ValueError(f"interpolation must be 'nearest' or 'linear', got {interpolation!r}")
    dtype = volume.dtype
    # SimpleITK resamples neither bool nor float16/bfloat16 tensors.
    data = from_network_layout(volume.detach().cpu())[None]
    data = (
        data.float()
        if dtype in (torch.bool, torch.float16, torch.bfloat16) or interpolation == "linear"
        else data
    )
    image = tio.ScalarImage(tensor=data.contiguous(), affine=scan.affine)
    resample = tio.Resample((scan.source_shape, scan.source_affine), image_interpolation=interpolation)
    result = resample(image).data[0]
    return result.to(dtype) if interpolation == "nearest" else result.float()


def _nifti_geometry(reference: Path) -> tuple[tuple[int, int, int], nib.Nifti1Header | None, np.ndarray]:
    """Spatial shape, NIfTI header (None for other formats) and RAS affine of a reference scan."""
    if reference.name.lower().endswith((".nii", ".nii.gz")):
        image = nib.load(str(reference))
        return tuple(int(n) for n in image.shape[:3]), image.header, np.asarray(image.affine)  # type: ignore[return-value]
    header = read_header(reference)
    return header.shape[1:], None, header.affine  # type: ignore[return-value]


def write_like(
    reference_path: str | Path,
    array: torch.Tensor | np.ndarray,
    output_path: str | Path,
    dtype: type | np.dtype = np.uint8,
) -> Path:
    """Write ``array`` as a NIfTI with exactly the reference scan's shape, affine and orientation.

    For a NIfTI reference its qform and sform (with their codes) are copied; for NRRD/MHA the
    written affine is TorchIO's RAS+ version of the file's LPS geometry (both codes "scanner").

    Args:
        reference_path: The input scan (NIfTI, NRRD or MHA).
        array: Values on the reference's grid, its array order ``(i, j, k)`` (see :func:`to_source_grid`).
        output_path: Where to write; must end in ``.nii`` or ``.nii.gz``. Folders are created.
        dtype: Stored data type (``np.uint8`` for masks, ``np.float32`` for probabilities).

    Returns:
        The written path.
    """
    reference, output = Path(reference_path).expanduser(), Path(output_path).expanduser()
    if not output.name.lower().endswith((".nii", ".nii.gz")):
        raise ValueError(f"output path {output} must end in .nii or .nii.gz")
    values = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    shape, header, affine = _nifti_geometry(reference)
    if values.shape != shape:
        raise ValueError(f"array shape {values.shape} differs from the shape {shape} of {reference}")
    image = nib.Nifti1Image(values.astype(dtype), affine)
    if header is not None:
        image.set_qform(header.get_qform(), code=int(header["qform_code"]))
        image.set_sform(header.get_sform(), code=int(header["sform_code"]))
    else:
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    output.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(output))
    return output


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
