"""Canonical, resampled volumes cached on disk so epochs after the first never resample again.

An entry is a folder ``<cache_dir>/<key>/`` holding ``image.nii`` (HU, int16 when the source is
integer-valued, else float32), ``label.nii`` (the source label values, uint8/int16; each value's mask
resampled linearly and kept above 0.5, as the authors resample training labels) and ``meta.json``,
which also records the two volumes' sizes and SHA-256: an entry whose files do not match them
(truncated, corrupt) is rebuilt, with a warning, never used. The key hashes the source paths, sizes and
modification times, the target spacing and the cache version, so editing a file or changing the spacing
makes a new entry. Entries are written to a temporary folder and renamed into place: a killed run never
leaves a half entry, and two processes caching the same case at once are harmless.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torchio as tio

from sam3d.data.catalog import Case
from sam3d.data.checks import check_headers
from sam3d.data.dicom import names_dicom_series, series_stamp
from sam3d.data.errors import DatasetError, Problem
from sam3d.data.files import file_sha256, read_nifti
from sam3d.data.preprocessing import read_volume, to_grid

__all__ = ["CACHE_VERSION", "CachedCase", "cache_case", "cache_cases", "cache_usable", "default_cache_dir"]

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: labels resampled linearly and thresholded at 0.5, as the authors train
# The volumes of an entry; meta.json records each one's size and SHA-256, checked whenever the entry is used.
ENTRY_FILES = ("image.nii", "label.nii")
# Foreground intensities kept per case, for window/statistics estimates without re-reading volumes.
_FOREGROUND_SAMPLE = 4096


def default_cache_dir() -> Path:
    """``$SAM3D_CACHE_DIR``, else ``$XDG_CACHE_HOME/sam3d/volumes`` (``~/.cache/sam3d/volumes``)."""
    if "SAM3D_CACHE_DIR" in os.environ:
        return Path(os.environ["SAM3D_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "sam3d" / "volumes"


@dataclass(frozen=True)
class CachedCase:
    """A case whose canonical, resampled volumes are on disk.

    Attributes:
        case: The source case.
        folder: The cache entry.
        meta: Shapes, spacings, label values and counts, a foreground intensity sample.
    """

    case: Case
    folder: Path
    meta: dict[str, Any]

    @property
    def label_values(self) -> set[int]:
        """Label values present in the label map."""
        return {int(value) for value in self.meta["label_voxels"]}

    def subject(self) -> tio.Subject:
        """A lazily loaded TorchIO subject with ``image``, ``label`` and the case's attributes."""
        return tio.Subject(
            image=tio.ScalarImage(self.folder / "image.nii", reader=read_nifti),
            label=tio.LabelMap(self.folder / "label.nii", reader=read_nifti),
            case_id=self.case.case_id,
            source_image=str(self.case.image),
            source_label=str(self.case.label),
        )


def _key(case: Case, spacing: tuple[float, float, float]) -> str:
    parts: list[object] = [CACHE_VERSION, [round(s, 6) for s in spacing]]
    for path in (case.image, case.label):
        if names_dicom_series(path):
            parts += series_stamp(path)
            continue
        stat = path.stat()
        parts += [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def _save_nifti(tensor: torch.Tensor, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(tensor[0].numpy(), affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))


def _preprocess(case: Case, spacing: tuple[float, float, float], folder: Path) -> dict[str, Any]:
    """Read, check, reorient and resample one case into ``folder`` (see :mod:`sam3d.data.preprocessing`)."""
    source = read_volume(case.image, "image", case.case_id)
    grid_spacing = spacing[::-1]  # network order (D, H, W)
    image_grid = to_grid(source, grid_spacing)
    label_grid = to_grid(read_volume(case.label, "label", case.case_id), grid_spacing, labels="linear")
    _save_nifti(image_grid.data, image_grid.affine, folder / "image.nii")
    image, label, affine = image_grid.data, label_grid.data, label_grid.affine
    _save_nifti(
        label.to(torch.uint8) if 0 <= label.min() and label.max() <= 255 else label,
        affine,
        folder / "label.nii",
    )
    source_shape, source_spacing = source.spatial_shape, source.spacing
    values, counts = torch.unique(label, return_counts=True)
    foreground = image[label > 0].float()
    generator = torch.Generator().manual_seed(zlib.crc32(case.case_id.encode()))
    if len(foreground) > _FOREGROUND_SAMPLE:
        foreground = foreground[torch.randperm(len(foreground), generator=generator)[:_FOREGROUND_SAMPLE]]
    return {
        "case_id": case.case_id,
        "source_image": str(case.image),
        "source_label": str(case.label),
        "source_shape": list(source_shape),
        "source_spacing": [float(s) for s in source_spacing],
        "shape": list(image.shape[1:]),
        "spacing": list(spacing),
        "label_voxels": {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)},
        "foreground_sample": [round(float(v), 2) for v in foreground],
    }


def _entry_exists(case: Case, cache_dir: Path, spacing: tuple[float, float, float]) -> bool:
    """Whether a case has an entry (:func:`cache_case` verifies it)."""
    try:
        return (cache_dir / _key(case, spacing) / "meta.json").exists()
    except OSError:  # a missing source file
        return False


def cache_case(case: Case, cache_dir: Path, spacing: tuple[float, float, float]) -> CachedCase:
    """Return the cache entry of a case, creating it if needed (or rebuilding it, with a warning, if damaged).

    Args:
        case: The source case.
        cache_dir: Cache root folder.
        spacing: Target voxel size in mm along X, Y, Z (RAS).

    Returns:
        The cached case.

    Raises:
        ValueError: If the case's content is unusable (NaN/inf voxels, non-integer labels); the
            message says what and what to do.
    """
    folder = cache_dir / _key(case, spacing)
    meta, damage = _read_entry(folder)
    if meta is not None:
        return CachedCase(case, folder, meta)
    if damage:
        warnings.warn(
            f"cache entry {folder} of case {case.case_id} is damaged ({damage}); rebuilding it", stacklevel=2
        )
        _remove_entry(folder)
    start = time.perf_counter()
    temporary = cache_dir / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
    temporary.mkdir(parents=True)
    try:
        meta = _preprocess(case, spacing, temporary)
        meta["seconds"] = round(time.perf_counter() - start, 3)
        meta["files"] = {name: _file_record(temporary / name) for name in ENTRY_FILES}
        (temporary / "meta.json").write_text(json.dumps(meta))
        try:
            temporary.rename(folder)
        except OSError:  # another process cached this case first
            if not (folder / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    log.info("cached %s in %.1f s -> %s", case.case_id, meta["seconds"], folder)
    return CachedCase(case, folder, json.loads((folder / "meta.json").read_text()))


def _file_record(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of a file of an entry, as ``meta.json`` records them."""
    return {"size": path.stat().st_size, "sha256": file_sha256(str(path))}


def _read_entry(folder: Path) -> tuple[dict[str, Any] | None, str]:
    """An entry's meta when every file has the size and hash recorded for it, else None and what is wrong.

    What is wrong is empty when there is no entry at all.
    """
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except FileNotFoundError:
        return None, ""
    except (OSError, ValueError) as error:  # a truncated meta.json is not JSON
        return None, f"meta.json is unreadable: {error}"
    files = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(files, dict):
        return None, "meta.json records no file sizes and hashes (an entry of an older sam3d)"
    for name in ENTRY_FILES:
        recorded = files.get(name) or {}
        try:
            size = (folder / name).stat().st_size
        except OSError:
            return None, f"{name} is missing"
        if size != recorded.get("size"):
            return None, f"{name} holds {size} bytes, {recorded.get('size')} were written"
        if _file_record(folder / name)["sha256"] != recorded.get("sha256"):
            return None, f"{name} is not the file that was written (another SHA-256)"
    return meta, ""


def _remove_entry(folder: Path) -> None:
    """Move a damaged entry out of the way (one rename, as another process may be reading it) and delete it."""
    doomed = folder.with_name(f".damaged-{folder.name}-{uuid.uuid4().hex[:8]}")
    try:
        folder.rename(doomed)
    except FileNotFoundError:  # another process removed it first
        return
    shutil.rmtree(doomed, ignore_errors=True)


def cache_cases(
    cases: list[Case], cache_dir: Path, spacing: tuple[float, float, float]
) -> tuple[dict[str, CachedCase], list[Problem]]:
    """Check and cache every case, collecting the problems of all unusable ones instead of stopping at the first.

    Args:
        cases: The cases to cache.
        cache_dir: Cache root folder.
        spacing: Target voxel size in mm.

    Returns:
        The cached cases by id, and one problem per case that could not be cached.
    """
    cached, problems = {}, []
    for case in cases:
        # A complete entry means the unchanged files passed every check before: skip re-reading headers.
        header_problems = [] if _entry_exists(case, cache_dir, spacing) else check_headers(case)
        if header_problems:
            problems += header_problems
            continue
        try:
            cached[case.case_id] = cache_case(case, cache_dir, spacing)
        except DatasetError as error:  # the file's problems, each naming the file
            problems += [Problem(case.case_id, p.message, p.path) for p in error.problems]
        except OSError as error:
            if error.errno == errno.ENOSPC:
                raise DatasetError(
                    f"the disk holding the cache folder {cache_dir} is full ({error.strerror}); free space "
                    "there or set data.cache_dir to a folder on another disk, then run again"
                ) from None
            problems.append(_problem(case, error))
        except Exception as error:  # noqa: BLE001 (truncated or corrupt files raise EOFError, zlib.error, ...)
            problems.append(_problem(case, error))
    return cached, problems


def _problem(case: Case, error: Exception) -> Problem:
    """The first line of an error's message (its type if it has none), naming the file."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return Problem(case.case_id, reason, getattr(error, "path", case.image))


def cache_usable(cases: list[Case], cache_dir: Path, spacing: tuple[float, float, float]) -> list[CachedCase]:
    """Check and cache every case, or raise one error listing every case that cannot be used.

    Args:
        cases: The cases to cache.
        cache_dir: Cache root folder.
        spacing: Target voxel size in mm along X, Y, Z (RAS).

    Returns:
        The cached cases, in the order of ``cases``.

    Raises:
        DatasetError: If any case cannot be used; it lists all of them.
    """
    cached, problems = cache_cases(cases, cache_dir, spacing)
    if problems:
        raise DatasetError(
            f"{len({p.case_id for p in problems})} cases cannot be used; fix or remove them "
            "(`sam3d check-dataset` lists them all):",
            problems,
        )
    return [cached[case.case_id] for case in cases]
