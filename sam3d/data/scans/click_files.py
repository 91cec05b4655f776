"""Clicks, boxes and scribbles for ``sam3d predict`` from a CSV or JSON file, mapped onto the network grid.

Each click names a scan, a position, the position's space and whether it is positive (inside the
object) or negative (outside it). A JSON file may also give each scan an ordered list of
``interactions``: clicks, boxes and scribbles, each one step replayed in order (what ``sam3d serve``
saves).

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

**Steps**: the clicks of a CSV file and of a ``"clicks"`` list are one step: the network sees them all
at once. A scan's ``"interactions"`` list holds one step per entry, replayed in order after those
clicks (as a user adds them in ``sam3d serve``)::

    {"scans": [{"scan": "case_001.nii.gz",
                "interactions": [
                    {"type": "box", "corners": [[-20, 35, -880], [-5, 52, -880]], "space": "world"},
                    {"type": "click", "position": [-12.5, 40.2, -870.1], "space": "world", "label": "negative"},
                    {"type": "scribble", "positions": [[100, 86, 30], [101, 86, 30], [102, 87, 30]],
                     "space": "voxel", "label": "positive"}]}]}

* ``click``: as in ``"clicks"``.
* ``box``: two opposite ``corners``, both inside the box; on the network grid the box spans their
  rounded voxels, lowest to highest per axis (a box drawn on one slice has one axis where both agree).
  A box marks the object: its ``label``, if given, must be positive.
* ``scribble``: the ``positions`` the stroke passes through, each rounded to its voxel on the network
  grid (repeats dropped); ``label`` positive (inside the object) or negative (outside).

Boxes and scribbles need a network trained with those prompts (``model.dense_prompts``).

**Objects**: a scan may hold several objects, each segmented on its own and written as one label value.
An entry names its object with ``"object": {"id": 2, "name": "cyst"}`` (or just ``"object": 2``); a CSV
row with an ``object`` column (the id) and optionally an ``object_name`` column. Ids are integers 1 to
255 (the object's value in the label map); names are 1 to 64 letters, digits, spaces, ``-``, ``_`` or
``.`` (they name files) and default to ``object <id>``. An entry without an object belongs to object 1,
so a file without objects is one object. Each object's steps are replayed in order, as above::

    {"scans": [{"scan": "case_001.nii.gz",
                "interactions": [
                    {"type": "click", "position": [101, 87, 30], "space": "voxel", "label": "positive",
                     "object": {"id": 1, "name": "tumour"}},
                    {"type": "click", "position": [60, 90, 31], "space": "voxel", "label": "positive",
                     "object": {"id": 2, "name": "cyst"}}]}]}
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from sam3d.data.errors import DatasetError, Problem
from sam3d.data.files import case_id
from sam3d.data.scans.loading import Scan
from sam3d.interaction import Interaction
from sam3d.objects import MAX_OBJECTS, check_object_id, check_object_name, default_object_name

__all__ = [
    "Box",
    "Click",
    "Entry",
    "ObjectEntries",
    "ObjectSteps",
    "Scribble",
    "Space",
    "clicks_to_network",
    "interactions_to_network",
    "match_clicks",
    "objects_of",
    "objects_to_network",
    "read_clicks",
    "steps_of",
]

Space = Literal["voxel", "world", "world_lps"]
Position = tuple[float, float, float]
_SPACES = ("voxel", "world", "world_lps")
_LABELS = {"positive": True, "pos": True, "1": True, "negative": False, "neg": False, "0": False}
_CSV_COLUMNS = ("scan", "x", "y", "z", "space", "label")
_TYPES = ("click", "box", "scribble")


def _coordinates(position: Position) -> str:
    return ", ".join(f"{c:g}" for c in position)


@dataclass(frozen=True)
class Click:
    """One click as written in a clicks file.

    Attributes:
        position: ``(x, y, z)`` in ``space``: voxel indices ``(i, j, k)`` or millimetres.
        space: ``"voxel"``, ``"world"`` (RAS+ mm) or ``"world_lps"`` (LPS+ mm).
        positive: True inside the object, False outside.
        where: Its place in the clicks file, for messages (e.g. ``clicks.csv line 3``).
        own_step: An ``interactions`` entry (one step of its own); else one step with the scan's other
            plain clicks.
        object_id: The object it belongs to (1 unless the file says).
        object_name: The object's name, if the file gives it.
    """

    position: Position
    space: Space
    positive: bool
    where: str = ""
    own_step: bool = False
    object_id: int = 1
    object_name: str | None = None

    def __str__(self) -> str:
        kind = "positive" if self.positive else "negative"
        return f"{kind} click ({_coordinates(self.position)}) in {self.space} space" + (
            f" ({self.where})" if self.where else ""
        )


@dataclass(frozen=True)
class Box:
    """One box of an ``interactions`` list: two opposite corners, both inside it (always positive)."""

    corners: tuple[Position, Position]
    space: Space
    where: str = ""
    object_id: int = 1
    object_name: str | None = None

    @property
    def positive(self) -> bool:
        """A box marks the object."""
        return True

    def __str__(self) -> str:
        corners = " to ".join(f"({_coordinates(c)})" for c in self.corners)
        return f"box {corners} in {self.space} space" + (f" ({self.where})" if self.where else "")


@dataclass(frozen=True)
class Scribble:
    """One scribble of an ``interactions`` list: the positions its stroke passes through."""

    positions: tuple[Position, ...]
    space: Space
    positive: bool
    where: str = ""
    object_id: int = 1
    object_name: str | None = None

    def __str__(self) -> str:
        kind = "positive" if self.positive else "negative"
        return f"{kind} scribble of {len(self.positions)} position(s) in {self.space} space" + (
            f" ({self.where})" if self.where else ""
        )


Entry = Click | Box | Scribble
E = TypeVar("E")


def _parse_position(position: Any, name: str = "position") -> Position:
    if isinstance(position, str) or not isinstance(position, Sequence) or len(position) != 3:
        raise ValueError(f"{name} must be three numbers, got {position!r}")
    try:
        x, y, z = (float(c) for c in position)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be three numbers, got {position!r}") from None
    if not all(math.isfinite(c) for c in (x, y, z)):
        raise ValueError(f"{name} must be finite, got {position!r}")
    return x, y, z


def _parse_space(space: Any) -> Space:
    key = str(space).strip().lower() if space is not None else ""
    if key not in _SPACES:
        raise ValueError(f"space must be one of {', '.join(_SPACES)}, got {key!r}")
    return key  # type: ignore[return-value]


def _parse_label(label: Any) -> bool:
    key = str(int(label) if isinstance(label, bool) else label).strip().lower() if label is not None else ""
    if key not in _LABELS:
        raise ValueError(f"label must be positive or negative (or 1/0), got {label!r}")
    return _LABELS[key]


def _parse_object(value: Any) -> tuple[int, str | None]:
    """An entry's ``object``: its id and name (None: not given); raise ValueError with a short reason."""
    if value is None:
        return 1, None
    if isinstance(value, dict):
        name = value.get("name")
        return check_object_id(value.get("id")), None if name is None else check_object_name(name)
    return check_object_id(value), None


def _parse_click(
    position: Any, space: Any, label: Any, where: str, own_step: bool = False, of: Any = None
) -> Click:
    """Validate one click's fields (``of``: its object); raise ValueError with a short reason."""
    return Click(
        _parse_position(position),
        _parse_space(space),
        _parse_label(label),
        where,
        own_step,
        *_parse_object(of),
    )


def _parse_interaction(item: Any, where: str) -> Entry:
    """Validate one ``interactions`` entry; raise ValueError saying what is expected."""
    if not isinstance(item, dict) or item.get("type") not in _TYPES:
        got = item.get("type") if isinstance(item, dict) else item
        raise ValueError(
            f'an interaction must be an object with "type" click, box or scribble, got {got!r}: '
            '{"type": "click", "position": [x, y, z], "space": ..., "label": ...}, '
            '{"type": "box", "corners": [[x, y, z], [x, y, z]], "space": ...} or '
            '{"type": "scribble", "positions": [[x, y, z], ...], "space": ..., "label": ...}'
        )
    if item["type"] == "click":
        return _parse_click(
            item.get("position"), item.get("space"), item.get("label"), where, True, item.get("object")
        )
    of = _parse_object(item.get("object"))
    if item["type"] == "box":
        corners = item.get("corners")
        if isinstance(corners, str) or not isinstance(corners, Sequence) or len(corners) != 2:
            raise ValueError(f'a box needs "corners": two positions [[x, y, z], [x, y, z]], got {corners!r}')
        if "label" in item and not _parse_label(item["label"]):
            raise ValueError("a box marks the object: its label must be positive (or left out)")
        lower, upper = (_parse_position(c, "each corner") for c in corners)
        return Box((lower, upper), _parse_space(item.get("space")), where, *of)
    positions = item.get("positions")
    if isinstance(positions, str) or not isinstance(positions, Sequence) or not positions:
        raise ValueError(f'a scribble needs "positions": a list of [x, y, z] positions, got {positions!r}')
    return Scribble(
        tuple(_parse_position(p, "each position") for p in positions),
        _parse_space(item.get("space")),
        _parse_label(item.get("label")),
        where,
        *of,
    )


def _csv_object(row: dict[str, str | None]) -> dict[str, Any] | None:
    """A CSV row's optional ``object`` (id) and ``object_name`` columns, as a JSON entry's ``object``."""
    object_id, name = (row.get("object") or "").strip(), (row.get("object_name") or "").strip()
    if not object_id:
        if name:
            raise ValueError("object_name is given without an object id (the object column)")
        return None
    if not object_id.isdigit():
        raise ValueError(f"object must be an integer id from 1 to {MAX_OBJECTS}, got {object_id!r}")
    return {"id": int(object_id), "name": name or None}


def _read_csv(path: Path) -> tuple[dict[str, list[Entry]], list[str]]:
    clicks: dict[str, list[Entry]] = {}
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
                click = _parse_click(
                    [row["x"], row["y"], row["z"]], row["space"], row["label"], where, of=_csv_object(row)
                )
            except ValueError as error:
                errors.append(f"{where}: {error}")
                continue
            clicks.setdefault(scan, []).append(click)
    return clicks, errors


def _read_json(path: Path) -> tuple[dict[str, list[Entry]], list[str]]:
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"clicks file {path} is not valid JSON ({error})") from None
    if not isinstance(content, dict) or not isinstance(content.get("scans"), list):
        raise DatasetError(
            f'clicks file {path} must hold {{"scans": [{{"scan": ..., "clicks": [...]}}, ...]}} '
            '(or "interactions": [...] instead of "clicks")'
        )
    entries: dict[str, list[Entry]] = {}
    errors: list[str] = []
    for s, entry in enumerate(content["scans"]):
        where = f"{path.name} scans[{s}]"
        scan = entry.get("scan") if isinstance(entry, dict) else None
        lists = [entry.get(key) for key in ("clicks", "interactions")] if isinstance(entry, dict) else []
        if (
            not isinstance(scan, str)
            or not scan.strip()
            or not any(isinstance(items, list) for items in lists)
            or not all(items is None or isinstance(items, list) for items in lists)
        ):
            errors.append(f'{where}: needs "scan" (a string) and "clicks" or "interactions" (a list)')
            continue
        found = entries.setdefault(scan.strip(), [])
        for c, item in enumerate(entry.get("clicks") or []):
            item_where = f"{where}.clicks[{c}]"
            if not isinstance(item, dict):
                errors.append(
                    f'{item_where}: a click must be {{"position": [x, y, z], "space": ..., "label": ...}}'
                )
                continue
            try:
                found.append(
                    _parse_click(
                        item.get("position"),
                        item.get("space"),
                        item.get("label"),
                        item_where,
                        of=item.get("object"),
                    )
                )
            except ValueError as error:
                errors.append(f"{item_where}: {error}")
        for i, item in enumerate(entry.get("interactions") or []):
            item_where = f"{where}.interactions[{i}]"
            try:
                found.append(_parse_interaction(item, item_where))
            except ValueError as error:
                errors.append(f"{item_where}: {error}")
    return {scan: found for scan, found in entries.items() if found}, errors


def read_clicks(path: str | Path) -> dict[str, list[Entry]]:
    """Read a clicks file (format in the module docstring), checking every click, box and scribble.

    Args:
        path: A ``.csv`` or ``.json`` file.

    Returns:
        The entries of each scan, keyed by the scan as the file names it, in file order (a CSV file
        gives clicks only; :func:`steps_of` groups them into the steps replayed).

    Raises:
        DatasetError: If the file is missing, has an unknown extension, is malformed, holds no
            click, or any entry is invalid (all invalid entries are listed, each with its place).
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
    for entries in clicks.values():
        errors += objects_of(entries)[1]
    if errors:
        raise DatasetError(
            f"clicks file {path} has {len(errors)} invalid entries:",
            [Problem("clicks", error, path) for error in errors],
        )
    if not clicks:
        raise DatasetError(f"clicks file {path} holds no click")
    return clicks


@dataclass(frozen=True)
class ObjectEntries:
    """One object's entries of a scan, in file order: its id (label value), its name and its entries."""

    id: int
    name: str
    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class ObjectSteps:
    """One object's steps on the network grid: its id, its name and one tuple of interactions per step."""

    id: int
    name: str
    steps: tuple[tuple[Interaction, ...], ...]


def objects_of(entries: Sequence[Entry]) -> tuple[list[ObjectEntries], list[str]]:
    """A scan's entries by object, by id, and what is wrong (an object given two names), one line each."""
    grouped: dict[int, list[Entry]] = {}
    names: dict[int, str] = {}
    errors: list[str] = []
    for entry in entries:
        grouped.setdefault(entry.object_id, []).append(entry)
        if entry.object_name is None:
            continue
        name = names.setdefault(entry.object_id, entry.object_name)
        if name != entry.object_name:
            errors.append(
                f"{entry.where or entry}: object {entry.object_id} is named {entry.object_name!r} here and "
                f"{name!r} before: give each object one name"
            )
    objects = [
        ObjectEntries(key, names.get(key, default_object_name(key)), tuple(grouped[key]))
        for key in sorted(grouped)
    ]
    return objects, errors


def steps_of(entries: Sequence[Entry]) -> list[tuple[Entry, ...]]:
    """The steps a scan's entries are replayed in: its plain clicks as one step first, then one per interaction."""
    plain: tuple[Entry, ...] = tuple(e for e in entries if isinstance(e, Click) and not e.own_step)
    own: list[tuple[Entry, ...]] = [(e,) for e in entries if not (isinstance(e, Click) and not e.own_step)]
    return ([plain] if plain else []) + own


def match_clicks(
    clicks: dict[str, list[E]], scans: Sequence[str | Path], clicks_file: str | Path | None = None
) -> tuple[dict[Path, list[E]], list[Problem]]:
    """Assign the clicks (or any entries) of a clicks file to the input scans.

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
    matched: dict[Path, list[E]] = {}
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


class _Grid:
    """Maps positions of a scan's file onto its network grid."""

    def __init__(self, scan: Scan) -> None:
        self.scan = scan
        self.source_inverse = np.linalg.inv(scan.source_affine)
        self.network_inverse = np.linalg.inv(scan.affine)
        self.shape = np.array(scan.source_shape)
        self.grid = np.array(scan.image.shape[::-1])  # (X, Y, Z) of the preprocessed grid

    def voxel(self, position: Position, space: Space) -> tuple[np.ndarray, np.ndarray | None]:
        """``(d, h, w)`` on the network grid, or None with the file's voxel when outside the scan."""
        scan = self.scan
        point = np.array(position, dtype=float)
        if space == "voxel":
            world = scan.source_affine[:3, :3] @ point + scan.source_affine[:3, 3]
        else:
            world = point * ([-1.0, -1.0, 1.0] if space == "world_lps" else 1.0)
        voxel = self.source_inverse[:3, :3] @ world + self.source_inverse[:3, 3]
        if np.any(voxel < -0.5) or np.any(voxel > self.shape - 0.5):
            return voxel, None
        xyz = self.network_inverse[:3, :3] @ world + self.network_inverse[:3, 3]
        # Resampling may trim a fraction of a voxel at the borders of the field of view.
        xyz = np.clip(xyz, 0, self.grid - 1)
        return voxel, xyz[::-1].copy()

    def outside(self, what: str, voxel: np.ndarray) -> Problem:
        where = ", ".join(f"{v:.1f}" for v in voxel)
        return Problem(self.scan.case_id, f"{what} lies outside the scan (voxel {where})", self.scan.path)


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
    grid = _Grid(scan)
    points, labels, problems = [], [], []
    for click in clicks:
        voxel, point = grid.voxel(click.position, click.space)
        if point is None:
            problems.append(grid.outside(str(click), voxel))
            continue
        points.append(point)
        labels.append(int(click.positive))
    if problems:
        raise DatasetError(
            f"{len(problems)} click(s) lie outside scan {scan.path} ({_extent(scan)}):", problems
        )
    if not points:
        return torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)
    return torch.tensor(np.array(points), dtype=torch.float32), torch.tensor(labels, dtype=torch.long)


def _interaction(entry: Entry, grid: _Grid, problems: list[Problem]) -> Interaction | None:
    """One entry on the network grid (None, with its problems added, when a position is outside the scan)."""
    if isinstance(entry, Click):
        positions: Sequence[Position] = (entry.position,)
    elif isinstance(entry, Box):
        positions = entry.corners
    else:
        positions = entry.positions
    voxels = []
    for n, position in enumerate(positions):
        voxel, point = grid.voxel(position, entry.space)
        if point is None:
            what = (
                str(entry)
                if isinstance(entry, Click)
                else f"{entry}: position {n} ({_coordinates(position)})"
            )
            problems.append(grid.outside(what, voxel))
        voxels.append(point)
    if any(v is None for v in voxels):
        return None
    points = torch.tensor(np.array(voxels), dtype=torch.float32)
    if isinstance(entry, Click):
        return Interaction.click(points[0], entry.positive)
    if isinstance(entry, Box):
        return Interaction.box(*points.round())
    rounded = points.round()
    _, first = np.unique(rounded.numpy(), axis=0, return_index=True)
    return Interaction.scribble(rounded[np.sort(first)], entry.positive)


def interactions_to_network(entries: Sequence[Entry], scan: Scan) -> tuple[tuple[Interaction, ...], ...]:
    """Map the entries of a scan with one object onto its network grid, as the steps :func:`steps_of` groups them into.

    Clicks map as :func:`clicks_to_network` maps them; a box's corners map the same way, then it spans
    their rounded voxels, lowest to highest per axis; a scribble's positions are rounded to voxels,
    repeats dropped.

    Raises:
        DatasetError: If any position lies outside the scan (the message names the scan, every such
            entry with its place in the file, and the scan's extent), or the entries hold several objects.
    """
    objects = objects_to_network(entries, scan)
    if len(objects) > 1:
        ids = ", ".join(str(o.id) for o in objects)
        raise DatasetError(
            f"the entries for scan {scan.path} hold several objects ({ids}): map them with objects_to_network"
        )
    return objects[0].steps if objects else ()


def objects_to_network(entries: Sequence[Entry], scan: Scan) -> tuple[ObjectSteps, ...]:
    """Map a scan's entries onto its network grid, object by object (by id), as :func:`interactions_to_network`.

    Raises:
        DatasetError: If any position lies outside the scan (every such entry named), or an object has two
            names.
    """
    grouped, errors = objects_of(entries)
    if errors:
        raise DatasetError(
            f"the clicks file names its objects inconsistently for scan {scan.path}:",
            [Problem(scan.case_id, error, scan.path) for error in errors],
        )
    grid = _Grid(scan)
    problems: list[Problem] = []
    objects = []
    for each in grouped:
        steps = []
        for step in steps_of(each.entries):
            mapped = [_interaction(entry, grid, problems) for entry in step]
            steps.append(tuple(i for i in mapped if i is not None))
        objects.append(ObjectSteps(each.id, each.name, tuple(steps)))
    if problems:
        raise DatasetError(
            f"{len(problems)} position(s) of the clicks file lie outside scan {scan.path} ({_extent(scan)}):",
            problems,
        )
    return tuple(objects)
