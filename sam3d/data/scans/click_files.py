"""Clicks for ``sam3d predict`` from a CSV or JSON file, mapped onto the preprocessed network grid.

Each click names a scan, a position, the position's space and whether it is positive (inside the
object) or negative (outside it).

**Scan**: the scan's path (absolute, or relative to the clicks file's folder), its file name
(``case_001.nii.gz``) or its case id (the file name without extension, ``case_001``).

**Spaces**:

* ``voxel``: the file's own array indices ``(i, j, k)``, 0-based, as NiBabel shows them for NIfTI
  (``nib.load(path).get_fdata()[i, j, k]``) and as SimpleITK/ITK index them for NRRD/MHA
  (``image.GetPixel(i, j, k)``, i.e. ``GetArrayFromImage(image)[k, j, i]``). Fractions are allowed;
  positions must lie within the volume, ``-0.5 <= i <= shape[0] - 0.5`` and so on.
* ``world``: millimetres in the scan's physical space in the NIfTI/NiBabel RAS+ convention (+x
  towards the patient's **R**ight, +y **A**nterior, +z **S**uperior), exactly
  ``affine @ [i, j, k, 1]`` with ``affine = nib.load(path).affine``; for NRRD/MHA, the ITK
  physical point with x and y negated (what 3D Slicer displays as RAS).
* ``world_lps``: millimetres in the DICOM/ITK LPS+ convention (+x Left, +y Posterior, +z Superior),
  as SimpleITK's ``TransformIndexToPhysicalPoint`` gives them: the RAS+ point with x and y negated.

**Labels**: ``positive``/``negative`` (also ``pos``/``neg``, ``1``/``0``, any case).

CSV (header row required; other columns are ignored)::

    scan,x,y,z,space,label
    case_001.nii.gz,101,87,30,voxel,positive
    case_001,-12.5,40.2,-870.1,world,negative

JSON::

    {"scans": [{"scan": "case_001.nii.gz",
                "clicks": [{"position": [101, 87, 30], "space": "voxel", "label": "positive"},
                           {"position": [-12.5, 40.2, -870.1], "space": "world", "label": 0}]}]}
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from sam3d.data.errors import DatasetError, Problem
from sam3d.data.files import case_id
from sam3d.data.scans.loading import Scan

__all__ = ["Click", "Space", "clicks_to_network", "match_clicks", "read_clicks"]

Space = Literal["voxel", "world", "world_lps"]
_SPACES = ("voxel", "world", "world_lps")
_LABELS = {"positive": True, "pos": True, "1": True, "negative": False, "neg": False, "0": False}
_CSV_COLUMNS = ("scan", "x", "y", "z", "space", "label")


@dataclass(frozen=True)
class Click:
    """One click as written in a clicks file.

    Attributes:
        position: ``(x, y, z)`` in ``space``: voxel indices ``(i, j, k)`` or millimetres.
        space: ``"voxel"``, ``"world"`` (RAS+ mm) or ``"world_lps"`` (LPS+ mm).
        positive: True inside the object, False outside.
        where: Its place in the clicks file, for messages (e.g. ``clicks.csv line 3``).
    """

    position: tuple[float, float, float]
    space: Space
    positive: bool
    where: str = ""

    def __str__(self) -> str:
        coordinates = ", ".join(f"{c:g}" for c in self.position)
        kind = "positive" if self.positive else "negative"
        return f"{kind} click ({coordinates}) in {self.space} space" + (
            f" ({self.where})" if self.where else ""
        )


def _parse_click(position: Any, space: Any, label: Any, where: str) -> Click:
    """Validate one click's fields; raise ValueError with a short reason."""
    if isinstance(position, str) or not isinstance(position, Sequence) or len(position) != 3:
        raise ValueError(f"position must be three numbers, got {position!r}")
    try:
        coordinates = tuple(float(c) for c in position)
    except (TypeError, ValueError):
        raise ValueError(f"position must be three numbers, got {position!r}") from None
    if not all(math.isfinite(c) for c in coordinates):
        raise ValueError(f"position must be finite, got {position!r}")
    space = str(space).strip().lower() if space is not None else ""
    if space not in _SPACES:
        raise ValueError(f"space must be one of {', '.join(_SPACES)}, got {space!r}")
    key = str(int(label) if isinstance(label, bool) else label).strip().lower() if label is not None else ""
    if key not in _LABELS:
        raise ValueError(f"label must be positive or negative (or 1/0), got {label!r}")
    return Click(coordinates, space, _LABELS[key], where)  # type: ignore[arg-type]


def _read_csv(path: Path) -> tuple[dict[str, list[Click]], list[str]]:
    clicks: dict[str, list[Click]] = {}
    errors: list[str] = []
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        columns = [c.strip().lower() for c in reader.fieldnames or []]
        missing = [c for c in _CSV_COLUMNS if c not in columns]
        if missing:
            raise DatasetError(
                f"clicks file {path} lacks the column(s) {', '.join(missing)}; the header must name "
                f"{', '.join(_CSV_COLUMNS)}"
            )
        reader.fieldnames = columns
        for row in reader:
            where = f"{path.name} line {reader.line_num}"
            if not any((value or "").strip() for value in row.values()):
                continue  # blank line
            scan = (row["scan"] or "").strip()
            try:
                if not scan:
                    raise ValueError("scan is empty")
                click = _parse_click([row["x"], row["y"], row["z"]], row["space"], row["label"], where)
            except ValueError as error:
                errors.append(f"{where}: {error}")
                continue
            clicks.setdefault(scan, []).append(click)
    return clicks, errors


def _read_json(path: Path) -> tuple[dict[str, list[Click]], list[str]]:
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"clicks file {path} is not valid JSON ({error})") from None
    if not isinstance(content, dict) or not isinstance(content.get("scans"), list):
        raise DatasetError(
            f'clicks file {path} must hold {{"scans": [{{"scan": ..., "clicks": [...]}}, ...]}}'
        )
    clicks: dict[str, list[Click]] = {}
    errors: list[str] = []
    for s, entry in enumerate(content["scans"]):
        where = f"{path.name} scans[{s}]"
        scan = entry.get("scan") if isinstance(entry, dict) else None
        if not isinstance(scan, str) or not scan.strip() or not isinstance(entry.get("clicks"), list):
            errors.append(f'{where}: needs "scan" (a string) and "clicks" (a list)')
            continue
        for c, item in enumerate(entry["clicks"]):
            item_where = f"{where}.clicks[{c}]"
            if not isinstance(item, dict):
                errors.append(
                    f'{item_where}: a click must be {{"position": [x, y, z], "space": ..., "label": ...}}'
                )
                continue
            try:
                click = _parse_click(item.get("position"), item.get("space"), item.get("label"), item_where)
            except ValueError as error:
                errors.append(f"{item_where}: {error}")
                continue
            clicks.setdefault(scan.strip(), []).append(click)
    return clicks, errors


def read_clicks(path: str | Path) -> dict[str, list[Click]]:
    """Read a clicks file (format in the module docstring), checking every click.

    Args:
        path: A ``.csv`` or ``.json`` file.

    Returns:
        The clicks of each scan, keyed by the scan as the file names it, in file order.

    Raises:
        DatasetError: If the file is missing, has an unknown extension, is malformed, holds no
            click, or any click is invalid (all invalid clicks are listed).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"clicks file {path} not found")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise DatasetError(f"clicks file {path} must be a .csv or .json file (see `sam3d predict --help`)")
    try:
        clicks, errors = _read_csv(path) if suffix == ".csv" else _read_json(path)
    except UnicodeDecodeError:
        raise DatasetError(f"clicks file {path} is not a text file") from None
    except csv.Error as error:
        raise DatasetError(f"clicks file {path} is not a readable CSV file ({error})") from None
    if errors:
        raise DatasetError(
            f"clicks file {path} has {len(errors)} invalid entries:",
            [Problem("clicks", error, path) for error in errors],
        )
    if not clicks:
        raise DatasetError(f"clicks file {path} holds no click")
    return clicks


def match_clicks(
    clicks: dict[str, list[Click]], scans: Sequence[str | Path], clicks_file: str | Path | None = None
) -> tuple[dict[Path, list[Click]], list[Problem]]:
    """Assign the clicks of a clicks file to the input scans.

    A key matches a scan by path (relative keys are taken from the clicks file's folder, then from
    the working directory), file name or case id.

    Args:
        clicks: What :func:`read_clicks` returned.
        scans: The input scan files.
        clicks_file: The clicks file, to resolve relative paths.

    Returns:
        The clicks of each scan that has some, and one problem per key naming no input scan or
        several (the caller reports them and goes on with the other scans).
    """
    files = [Path(scan).expanduser() for scan in scans]
    resolved = [file.resolve() for file in files]
    bases = [Path(clicks_file).expanduser().resolve().parent] if clicks_file is not None else []
    bases.append(Path.cwd())
    matched: dict[Path, list[Click]] = {}
    problems: list[Problem] = []
    for key, key_clicks in clicks.items():
        paths = {(base / key).resolve() for base in bases}
        found = [
            file
            for file, absolute in zip(files, resolved, strict=True)
            if absolute in paths or key in (file.name, case_id(file))
        ]
        where = f" [{Path(clicks_file)}]" if clicks_file is not None else ""
        if not found:
            exists = any(path.is_file() for path in paths)
            reason = (
                "is not among the input scans"
                if exists
                else "does not exist (no input scan has that path, file name or case id)"
            )
            problems.append(
                Problem(
                    key, f"the clicks file names scan {key!r}, which {reason}; its clicks are skipped{where}"
                )
            )
        elif len(found) > 1:
            names = ", ".join(str(scan) for scan in found)
            problems.append(
                Problem(
                    key,
                    f"scan {key!r} in the clicks file matches several inputs ({names}); use its path{where}",
                )
            )
        else:
            matched.setdefault(found[0], []).extend(key_clicks)
    return matched, problems


def _extent(scan: Scan) -> str:
    shape = scan.source_shape
    corners = np.array(
        [[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)]
    )
    world = corners @ scan.source_affine[:3, :3].T + scan.source_affine[:3, 3]
    low, high = world.min(0), world.max(0)
    ranges = ", ".join(f"{a:.1f}..{b:.1f}" for a, b in zip(low, high, strict=True))
    return f"voxels 0..{shape[0] - 1}, 0..{shape[1] - 1}, 0..{shape[2] - 1}; world RAS+ mm {ranges}"


def clicks_to_network(clicks: Sequence[Click], scan: Scan) -> tuple[torch.Tensor, torch.Tensor]:
    """Map clicks given on a scan's file onto its preprocessed network-layout grid.

    Args:
        clicks: The scan's clicks.
        scan: The preprocessed scan.

    Returns:
        ``points`` ``(N, 3)`` float32 ``(d, h, w)`` voxel coordinates in ``scan.image`` and
        ``labels`` ``(N,)`` int64 (1 positive, 0 negative).

    Raises:
        DatasetError: If any click lies outside the scan; the message names the scan, every such
            click with its coordinates, and the scan's extent.
    """
    points, labels, problems = [], [], []
    source_inverse = np.linalg.inv(scan.source_affine)
    network_inverse = np.linalg.inv(scan.affine)
    shape = np.array(scan.source_shape)
    grid = np.array(scan.image.shape[::-1])  # (X, Y, Z) of the preprocessed grid
    for click in clicks:
        position = np.array(click.position, dtype=float)
        if click.space == "voxel":
            world = scan.source_affine[:3, :3] @ position + scan.source_affine[:3, 3]
        else:
            world = position * ([-1.0, -1.0, 1.0] if click.space == "world_lps" else 1.0)
        voxel = source_inverse[:3, :3] @ world + source_inverse[:3, 3]
        if np.any(voxel < -0.5) or np.any(voxel > shape - 0.5):
            where = ", ".join(f"{v:.1f}" for v in voxel)
            problems.append(
                Problem(scan.case_id, f"{click} lies outside the scan (voxel {where})", scan.path)
            )
            continue
        xyz = network_inverse[:3, :3] @ world + network_inverse[:3, 3]
        # Resampling may trim a fraction of a voxel at the borders of the field of view.
        xyz = np.clip(xyz, 0, grid - 1)
        points.append(xyz[::-1].copy())
        labels.append(int(click.positive))
    if problems:
        raise DatasetError(
            f"{len(problems)} click(s) lie outside scan {scan.path} ({_extent(scan)}):", problems
        )
    if not points:
        return torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)
    return torch.tensor(np.array(points), dtype=torch.float32), torch.tensor(labels, dtype=torch.long)
