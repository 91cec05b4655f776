"""Results on a scan's preprocessed grid, mapped back onto the file's own grid and written beside it.

:func:`to_source_grid` resamples a network-layout volume back onto the file's own voxel grid, so
that :func:`write_like` can save it as a NIfTI that overlays the input voxel for voxel, whatever
the input's orientation, spacing or format. :func:`write_prediction` does both for a predicted
probability: the mask (and optionally the probability map) that ``sam3d predict`` and the Save of
``sam3d serve`` write. :func:`write_objects` writes several objects of one scan: their label map and
each object's mask, from :func:`objects_on_source_grid`. Every file is written atomically
(:func:`write_atomically`): a reader never sees half a file, and a symlink at the path is replaced, never
written through.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
import torch
import torchio as tio

from sam3d.data.checks import read_header
from sam3d.data.files import is_nifti, load_nifti
from sam3d.data.layout import from_network_layout
from sam3d.data.scans.loading import Scan
from sam3d.objects import LabelMap

__all__ = [
    "ObjectProbability",
    "SourceObjects",
    "WrittenObjects",
    "WrittenPrediction",
    "object_file_stem",
    "objects_on_source_grid",
    "to_source_grid",
    "write_atomically",
    "write_like",
    "write_objects",
    "write_prediction",
]


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """Let ``write`` write a new file in ``path``'s folder, then move it onto ``path`` in one step.

    The new file is created exclusively (never an existing file or symlink) and :func:`os.replace` puts it
    in place of whatever ``path`` was, a symlink included, so nothing is ever written through a link and a
    failed write leaves the previous file as it was. The folder is created if missing.

    Returns:
        ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # The suffix keeps the file type (nibabel compresses ".nii.gz"); the leading dot hides it meanwhile.
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}{suffix}")
    # O_EXCL: a new file, never one (or a link) already there; the umask applies as to any written file.
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())  # on disk before the rename: a crash leaves the old file or the new
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)
    return path


def _sync_folder(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk, where the platform allows it."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # not every filesystem syncs folders
    finally:
        os.close(descriptor)


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


def _nifti_geometry(reference: Path) -> tuple[tuple[int, ...], nib.Nifti1Header | None, np.ndarray]:
    """Spatial shape, NIfTI header (None for other formats) and RAS affine of a reference scan."""
    if is_nifti(reference):
        image = load_nifti(reference)
        return tuple(int(n) for n in image.shape[:3]), image.header, np.asarray(image.affine)
    header = read_header(reference)
    return header.shape[1:], None, header.affine


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
        output_path: Where to write; must end in ``.nii`` or ``.nii.gz``. Folders are created; the file is
            replaced atomically (:func:`write_atomically`).
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
    return write_atomically(output, lambda temporary: nib.save(image, str(temporary)))


@dataclass(frozen=True)
class WrittenPrediction:
    """The files :func:`write_prediction` wrote and the mask's volume.

    Args:
        mask: The mask file, ``<case>_mask.nii.gz``.
        volume_ml: The mask's volume on the file's own grid, in mL.
        probability: The probability map file, ``<case>_probability.nii.gz``, when it was written.
    """

    mask: Path
    volume_ml: float
    probability: Path | None = None


def write_prediction(
    scan: Scan,
    probability: torch.Tensor,
    threshold: float,
    output_dir: str | Path,
    probabilities: bool = False,
    stem: str | None = None,
) -> WrittenPrediction:
    """Write the mask ``probability > threshold`` on ``scan``'s own grid into ``output_dir``.

    The probability is resampled onto the file's grid first (linearly), then thresholded, so the
    mask's edge follows the probability rather than the coarser network voxels.

    Args:
        scan: The scan the probability was computed on.
        probability: ``(D, H, W)`` foreground probability on the grid of ``scan.image``.
        threshold: Probability level of the mask.
        output_dir: Folder of ``<case>_mask.nii.gz`` (and ``<case>_probability.nii.gz``); created if missing.
        probabilities: Also write the probability map (float32).
        stem: The files' names before ``_mask``, ``_probability`` (default: the case id).

    Returns:
        The written files and the mask's volume in mL.
    """
    folder, stem = Path(output_dir), stem or scan.case_id
    on_source = to_source_grid(scan, probability, interpolation="linear")
    mask = (on_source > threshold).numpy().astype(np.uint8)
    mask_path = write_like(scan.path, mask, folder / f"{stem}_mask.nii.gz")
    probability_path = None
    if probabilities:
        probability_path = write_like(
            scan.path,
            on_source.numpy().astype(np.float32),
            folder / f"{stem}_probability.nii.gz",
            dtype=np.float32,
        )
    volume_ml = float(mask.sum() * float(np.prod(scan.source_spacing)) / 1000)
    return WrittenPrediction(mask_path, volume_ml, probability_path)


@dataclass(frozen=True)
class ObjectProbability:
    """One object of a scan: its id (its label value), its name and its probability on the network grid."""

    id: int
    name: str
    probability: torch.Tensor


@dataclass(frozen=True)
class SourceObjects:
    """Several objects of a scan on the file's own grid (array order ``(i, j, k)``).

    Args:
        labels: uint8 label map: 0 background, else the id of the most probable object above the threshold
            (:class:`sam3d.objects.LabelMap`).
        masks: Each object's own mask (its probability above the threshold; overlaps kept), by id.
        probabilities: Each object's probability (float32), by id, when asked for.
    """

    labels: torch.Tensor
    masks: dict[int, torch.Tensor]
    probabilities: dict[int, torch.Tensor]


def objects_on_source_grid(
    scan: Scan, objects: Sequence[ObjectProbability], threshold: float, keep_probabilities: bool = False
) -> SourceObjects:
    """The objects' label map and masks on ``scan``'s own grid, each probability resampled linearly first.

    Args:
        scan: The scan the probabilities were computed on.
        objects: At least one object, each with its ``(D, H, W)`` probability on the grid of ``scan.image``.
        threshold: Probability level of the masks.
        keep_probabilities: Also keep each object's probability on the file's grid (one volume per object).
    """
    if not objects:
        raise ValueError("no object to map onto the scan's grid")
    builder = LabelMap(threshold)
    masks, probabilities = {}, {}
    for each in sorted(objects, key=lambda o: o.id):
        on_source = to_source_grid(scan, each.probability, interpolation="linear")
        builder.add(each.id, on_source)
        masks[each.id] = on_source > threshold
        if keep_probabilities:
            probabilities[each.id] = on_source
    assert builder.labels is not None
    return SourceObjects(builder.labels, masks, probabilities)


def object_file_stem(case: str, object_id: int, name: str) -> str:
    """``<case>_object-<id>_<name>``, spaces of the name as ``-`` (names hold no path characters)."""
    return f"{case}_object-{object_id}_{name.replace(' ', '-')}"


@dataclass(frozen=True)
class WrittenObjects:
    """The files :func:`write_objects` wrote and the objects' volumes.

    Args:
        labels: The label map, ``<case>_labels.nii.gz``.
        masks: Each object's mask, ``<case>_object-<id>_<name>.nii.gz``, by id.
        volumes_ml: Each object's volume in the label map on the file's own grid, in mL, by id.
        probabilities: Each object's probability map, ``<case>_object-<id>_<name>_probability.nii.gz``.
    """

    labels: Path
    masks: dict[int, Path]
    volumes_ml: dict[int, float]
    probabilities: dict[int, Path]


def write_objects(
    scan: Scan,
    objects: Sequence[ObjectProbability],
    threshold: float,
    output_dir: str | Path,
    probabilities: bool = False,
    stem: str | None = None,
) -> WrittenObjects:
    """Write several objects of ``scan`` on its own grid: one label map and one mask per object.

    The label map gives each voxel to the most probable object above ``threshold`` (its id; 0 none); each
    object's mask is its own probability above ``threshold``, so masks may overlap where the label map
    chose. One object is :func:`write_prediction`'s job (``<case>_mask.nii.gz``).

    Args:
        scan: The scan the probabilities were computed on.
        objects: The objects, each with its probability on the grid of ``scan.image``.
        threshold: Probability level of the masks.
        output_dir: Folder of the files; created if missing.
        probabilities: Also write each object's probability map (float32).
        stem: The files' names' case part (default: the case id).
    """
    folder, stem = Path(output_dir), stem or scan.case_id
    source = objects_on_source_grid(scan, objects, threshold, probabilities)
    labels = write_like(scan.path, source.labels, folder / f"{stem}_labels.nii.gz")
    voxel_ml = float(np.prod(scan.source_spacing)) / 1000
    masks, volumes, probability_paths = {}, {}, {}
    for each in objects:
        own = object_file_stem(stem, each.id, each.name)
        masks[each.id] = write_like(scan.path, source.masks[each.id], folder / f"{own}.nii.gz")
        volumes[each.id] = float((source.labels == each.id).sum()) * voxel_ml
        if probabilities:
            probability_paths[each.id] = write_like(
                scan.path, source.probabilities[each.id], folder / f"{own}_probability.nii.gz", np.float32
            )
    return WrittenObjects(labels, masks, volumes, probability_paths)
