"""Dataset presets and discovery of (image, label) cases in the supported on-disk layouts.

Layouts: KiTS21 (``case_XXXXX/imaging.nii.gz`` + ``aggregated_MAJ_seg.nii.gz``), the Medical
Segmentation Decathlon (``imagesTr/``, ``labelsTr/``, ``dataset.json``), LiTS (``volume-N.nii`` +
``segmentation-N.nii``, in any sub-folder), the 3DSAM-adapter authors' preprocessed layouts (the
relative paths stored in the shipped split files) and a manifest (JSON or CSV) for any other data.

An image may also be a DICOM series (:mod:`sam3d.data.dicom`): a case folder of DICOM files in
``imagesTr/`` (its label ``labelsTr/<folder>.nii.gz``), or a folder or ``FOLDER::SeriesInstanceUID``
named by a manifest or ``dataset.json``. Labels are NIfTI, NRRD or MHA files.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sam3d.data.dicom import holds_dicom
from sam3d.data.errors import DatasetError, Problem
from sam3d.data.files import SCAN_SUFFIXES, case_id

__all__ = [
    "PRESETS",
    "Case",
    "Catalog",
    "DatasetName",
    "DatasetPreset",
    "discover",
    "is_scan",
    "resolve_split_cases",
]

DatasetName = Literal["kits", "pancreas", "lits", "colon", "msd", "manifest"]


@dataclass(frozen=True)
class DatasetPreset:
    """Defaults of a named dataset, as the reference code sets them.

    Attributes:
        target_labels: Label values that form the target (binarised to 1).
        window: Intensity clipping window in HU.
        mean: Mean used for z-scoring, after clipping.
        std: Standard deviation used for z-scoring.
        in_plane_only: Restrict zoom and rotation augmentations to the axial plane.
    """

    target_labels: tuple[int, ...]
    window: tuple[float, float]
    mean: float
    std: float
    in_plane_only: bool


PRESETS: dict[str, DatasetPreset] = {
    "kits": DatasetPreset((2,), (-54.0, 247.0), 59.53867, 55.457336, False),
    "pancreas": DatasetPreset((2,), (-39.0, 204.0), 68.45214, 63.422806, True),
    "lits": DatasetPreset((2,), (-48.0, 163.0), 60.057533, 40.198017, False),
    "colon": DatasetPreset((1,), (-57.0, 175.0), 65.175035, 32.651197, True),
}


@dataclass(frozen=True)
class Case:
    """One scan and its label map.

    Attributes:
        case_id: Unique identifier within the dataset.
        image: Path of the image file.
        label: Path of the label file.
    """

    case_id: str
    image: Path
    label: Path


@dataclass(frozen=True)
class Catalog:
    """The cases found under a dataset root.

    Attributes:
        cases: Cases by id, in a stable order.
        target_labels: Target label values the layout itself declares (manifest, or an MSD
            ``dataset.json`` with a single foreground label), else None.
    """

    cases: dict[str, Case]
    target_labels: tuple[int, ...] | None = None


def is_scan(path: Path) -> bool:
    """Whether ``path`` is a scan: an image file (by suffix), or a folder holding a DICOM series; not hidden."""
    if path.name.startswith("."):
        return False
    return (path.is_file() and path.name.lower().endswith(SCAN_SUFFIXES)) or holds_dicom(path)


def _msd_label(root: Path, image: Path) -> Path:
    """``labelsTr/<name>`` of an image file; ``labelsTr/<folder>.nii.gz`` (or .nrrd, ...) of a DICOM folder."""
    if image.is_file():
        return root / "labelsTr" / image.name
    return _first_existing(*(root / "labelsTr" / f"{image.name}{suffix}" for suffix in SCAN_SUFFIXES))


def _first_existing(*paths: Path) -> Path:
    return next((path for path in paths if path.exists()), paths[0])


def _discover_kits(root: Path) -> dict[str, Case]:
    cases = {}
    for folder in sorted(root.glob("case_*")):
        if (folder / "imaging.nii.gz").exists():
            label = _first_existing(folder / "aggregated_MAJ_seg.nii.gz", folder / "segmentation.nii.gz")
            cases[folder.name] = Case(folder.name, folder / "imaging.nii.gz", label)
    return cases


def _read_json(path: Path, what: str) -> Any:
    """A JSON file's content, or a :class:`DatasetError` naming the file."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{what} {path} is not readable JSON ({error}); fix or re-export it") from None


def _msd_listing(root: Path) -> dict[str, Any]:
    listing = root / "dataset.json"
    content = _read_json(listing, "MSD listing")
    if not isinstance(content, dict) or not isinstance(content.get("training", []), list):
        raise DatasetError(
            f'MSD listing {listing} must hold {{"training": [{{"image": ..., "label": ...}}]}}'
        )
    return content


def _discover_msd(root: Path) -> dict[str, Case]:
    cases = {}
    listing = root / "dataset.json"
    if listing.exists():
        entries = _msd_listing(root).get("training", [])
        if not all(isinstance(entry, dict) and "image" in entry and "label" in entry for entry in entries):
            raise DatasetError(f'MSD listing {listing}: every "training" entry needs "image" and "label"')
        pairs = [(root / entry["image"], root / entry["label"]) for entry in entries]
    else:
        images = [path for path in sorted((root / "imagesTr").glob("*")) if is_scan(path)]
        pairs = [(image, _msd_label(root, image)) for image in images]
    for image, label in pairs:
        name = case_id(image)
        cases[name] = Case(name, image.resolve(), label.resolve())
    # The authors' preprocessed pancreas/LiTS layout: Training/<case>/{image,segmentation}.nii.gz.
    for folder in sorted((root / "Training").glob("*")):
        if (folder / "image.nii.gz").exists():
            cases.setdefault(
                folder.name, Case(folder.name, folder / "image.nii.gz", folder / "segmentation.nii.gz")
            )
    return cases


def _discover_lits(root: Path) -> dict[str, Case]:
    cases = {}
    for image in sorted(root.rglob("volume-*.nii*"), key=lambda p: str(p)):
        match = re.fullmatch(r"volume-(\d+)\.nii(\.gz)?", image.name)
        if match:
            label = _first_existing(
                *(image.with_name(f"segmentation-{match[1]}{ext}") for ext in (".nii", ".nii.gz"))
            )
            cases[f"volume-{match[1]}"] = Case(f"volume-{match[1]}", image, label)
    return cases | _discover_msd(root)


def _parse_labels(value: object, where: str) -> tuple[int, ...]:
    items = value if isinstance(value, list) else str(value).replace(";", " ").replace(",", " ").split()
    try:
        return tuple(int(item) for item in items)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: target_label must be integers, got {value!r}") from None


def _discover_manifest(path: Path) -> Catalog:
    if not path.is_file():
        raise DatasetError(
            f"manifest {path} not found: with dataset='manifest', root must be a JSON or CSV file listing "
            "image and label paths"
        )
    base = path.parent
    target: tuple[int, ...] | None = None
    if path.suffix.lower() == ".json":
        content = _read_json(path, "manifest")
        rows = content.get("cases", []) if isinstance(content, dict) else content
        if not isinstance(rows, list):
            raise DatasetError(f'manifest {path} must list cases: [{{"image": ..., "label": ...}}, ...]')
        if isinstance(content, dict) and "target_label" in content:
            target = _parse_labels(content["target_label"], str(path))
    elif path.suffix.lower() == ".csv":
        try:
            with path.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
        except (UnicodeDecodeError, csv.Error) as error:
            raise DatasetError(f"manifest {path} is not a readable CSV file ({error})") from None
        values = {(row.get("target_label") or "").strip() for row in rows} - {""}
        if len(values) > 1:
            raise DatasetError(
                f"{path}: the target_label column must hold one value for all rows, got {values}"
            )
        if values:
            target = _parse_labels(values.pop(), str(path))
    else:
        raise DatasetError(f"manifest {path} must end in .json or .csv")
    cases: dict[str, Case] = {}
    problems = []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not row.get("image") or not row.get("label"):
            problems.append(Problem(f"row {number}", "needs non-empty 'image' and 'label' entries", path))
            continue
        name = str(row.get("case_id") or case_id(row["image"]))
        if name in cases:
            problems.append(Problem(name, "duplicate case id", path))
        cases[name] = Case(name, (base / row["image"]).resolve(), (base / row["label"]).resolve())
    if problems:
        raise DatasetError(f"manifest {path} has invalid rows:", problems)
    return Catalog(cases, target)


def _msd_target(root: Path) -> tuple[int, ...] | None:
    if not (root / "dataset.json").exists():
        return None
    keys = _msd_listing(root).get("labels", {})
    labels = {int(key) for key in keys if str(key).strip().isdigit()} - {0}
    return tuple(labels) if len(labels) == 1 else None


def discover(root: str | Path, dataset: DatasetName) -> Catalog:
    """Find every case under ``root`` in the native layout of ``dataset``.

    Args:
        root: Dataset folder (or, for ``"manifest"``, the manifest file).
        dataset: Which layout to read.

    Returns:
        The cases found (possibly none) and any target label the layout declares.
    """
    root = Path(root).expanduser()
    if dataset == "manifest":
        return _discover_manifest(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a folder: set data.root to the {dataset} data folder")
    if dataset == "kits":
        return Catalog(_discover_kits(root))
    if dataset == "lits":
        return Catalog(_discover_lits(root))
    if dataset in ("pancreas", "colon", "msd"):
        return Catalog(_discover_msd(root), _msd_target(root) if dataset == "msd" else None)
    raise DatasetError(
        f"unknown dataset {dataset!r}; choose one of kits, pancreas, lits, colon, msd, manifest"
    )


def resolve_split_cases(root: str | Path, entries: list[dict[str, str]], catalog: Catalog) -> list[Case]:
    """Map split entries to files: the entry's relative paths if the image exists, else the native layout.

    Missing files are not an error here; the set-up checks report them with every other problem.

    Args:
        root: Dataset root the entries' paths are relative to.
        entries: Split entries with ``case_id``, ``image`` and ``label``.
        catalog: Cases found in the native layout, used when the relative paths are absent.

    Returns:
        The resolved cases.
    """
    root = Path(root).expanduser()
    cases = []
    for entry in entries:
        image = root / entry["image"]
        if image.exists() or entry["case_id"] not in catalog.cases:
            cases.append(Case(entry["case_id"], image, root / entry["label"]))
        else:
            cases.append(catalog.cases[entry["case_id"]])
    return cases
