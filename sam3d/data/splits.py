"""K-fold split files in sam3d's JSON format, the shipped reference folds, and seeded new folds.

Format ``sam3d-splits/1``::

    {"format": "sam3d-splits/1", "dataset": "kits", "source": "where the folds come from",
     "folds": [{"train": [{"case_id": "case_00013", "image": "case_00013/imaging.nii.gz",
                           "label": "case_00013/aggregated_MAJ_seg.nii.gz"}, ...],
                "val": [...], "test": [...]}, ...]}

Paths are relative to the dataset root (the manifest's folder for manifests).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from sam3d.data.catalog import Catalog
from sam3d.data.errors import DatasetError, Problem
from sam3d.shipped import shipped_file

__all__ = [
    "FORMAT",
    "PARTS",
    "SHIPPED_SPLITS",
    "SplitFile",
    "convert_reference_splits",
    "folds_from_catalog",
    "load_splits",
    "make_kfold",
    "save_splits",
    "split_entry",
]

FORMAT = "sam3d-splits/1"
PARTS = ("train", "val", "test")
SHIPPED_SPLITS = shipped_file("splits")  # the authors' folds, in the package

Entry = dict[str, str]
Fold = dict[str, list[Entry]]


@dataclass(frozen=True)
class SplitFile:
    """A parsed split file.

    Attributes:
        dataset: Dataset name recorded in the file.
        source: Provenance of the folds.
        folds: Per fold, the ``train``/``val``/``test`` entries.
        path: The file it was read from.
    """

    dataset: str
    source: str
    folds: list[Fold]
    path: Path

    def fold(self, index: int) -> Fold:
        """The entries of fold ``index``, checked to be in range and to have training cases."""
        if not 0 <= index < len(self.folds):
            raise DatasetError(
                f"fold {index} is out of range: {self.path} has {len(self.folds)} folds, "
                f"set data.fold to 0..{len(self.folds) - 1}"
            )
        fold = self.folds[index]
        if not fold["train"]:
            raise DatasetError(f"fold {index} of {self.path} has an empty training split")
        return fold


def load_splits(path: str | Path) -> SplitFile:
    """Read and validate a ``sam3d-splits/1`` file.

    Args:
        path: The JSON file.

    Returns:
        The parsed folds.

    Raises:
        DatasetError: If the file is missing, malformed, or a case appears twice in one fold.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"split file {path} not found (make one with `sam3d make-splits`)")
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"split file {path} is not readable JSON: {error}") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise DatasetError(f"split file {path} is not in the {FORMAT!r} format (see sam3d/data/splits.py)")
    folds = content.get("folds")
    if not isinstance(folds, list) or not folds:
        raise DatasetError(f"split file {path} has no folds")
    problems = []
    for index, fold in enumerate(folds):
        if not isinstance(fold, dict) or any(not isinstance(fold.get(part), list) for part in PARTS):
            raise DatasetError(f"split file {path}: fold {index} needs 'train', 'val' and 'test' lists")
        seen: dict[str, str] = {}
        for part in PARTS:
            for entry in fold[part]:
                if not isinstance(entry, dict) or not all(
                    entry.get(key) for key in ("case_id", "image", "label")
                ):
                    raise DatasetError(
                        f"split file {path}: fold {index} {part} entry {entry!r} is incomplete"
                    )
                if entry["case_id"] in seen:
                    problems.append(
                        Problem(
                            entry["case_id"], f"fold {index}: in both {seen[entry['case_id']]} and {part}"
                        )
                    )
                seen[entry["case_id"]] = part
    if problems:
        raise DatasetError(f"split file {path} puts cases in more than one part of a fold:", problems)
    return SplitFile(str(content.get("dataset", "")), str(content.get("source", "")), folds, path)


def save_splits(path: str | Path, dataset: str, source: str, folds: list[Fold]) -> Path:
    """Write folds as a ``sam3d-splits/1`` file, one case per line, atomically.

    Args:
        path: Destination JSON file (parents are created).
        dataset: Dataset name to record.
        source: Provenance to record.
        folds: Per fold, the ``train``/``val``/``test`` entries.

    Returns:
        The written path.
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["{", f'"format": "{FORMAT}",', f'"dataset": {json.dumps(dataset)},']
    lines += [f'"source": {json.dumps(source)},', '"folds": [']
    for index, fold in enumerate(folds):
        lines.append("{")
        for part in PARTS:
            entries = ",\n".join(f"  {json.dumps(entry)}" for entry in fold[part])
            lines.append(f'"{part}": [\n{entries}\n]' + ("," if part != "test" else ""))
        lines.append("}" + ("," if index < len(folds) - 1 else ""))
    lines += ["]", "}"]
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text("\n".join(lines) + "\n")
    os.replace(temporary, path)
    return path


def make_kfold(
    case_ids: list[str], num_folds: int = 5, val_fraction: float = 0.1, seed: int = 0
) -> list[dict[str, list[str]]]:
    """Seeded k-fold: each case is tested in exactly one fold; validation is drawn from the rest.

    Args:
        case_ids: All case ids.
        num_folds: Number of folds (at most the number of cases).
        val_fraction: Share of the non-test cases used for validation (at least one case).
        seed: Shuffling seed.

    Returns:
        Per fold, the case ids of ``train``, ``val`` and ``test``.
    """
    if num_folds < 2:
        raise DatasetError(f"num_folds must be at least 2, got {num_folds}")
    if len(case_ids) < max(3, num_folds):
        raise DatasetError(
            f"{len(case_ids)} cases cannot make {num_folds} folds with train, val and test parts: "
            f"need at least {max(3, num_folds)} cases"
        )
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction}")
    shuffled = sorted(case_ids)
    random.Random(seed).shuffle(shuffled)
    folds = []
    for index in range(num_folds):
        test = shuffled[index::num_folds]
        rest = [case for case in shuffled if case not in set(test)]
        num_val = min(len(rest) - 1, max(1, round(val_fraction * len(rest))))
        folds.append({"train": sorted(rest[num_val:]), "val": sorted(rest[:num_val]), "test": sorted(test)})
    return folds


def folds_from_catalog(
    catalog: Catalog, base: Path, num_folds: int = 5, val_fraction: float = 0.1, seed: int = 0
) -> list[Fold]:
    """Seeded folds of a catalog's cases as split entries with paths relative to ``base``."""
    folds = make_kfold(list(catalog.cases), num_folds, val_fraction, seed)
    return [
        {part: [split_entry(catalog, case, base) for case in fold[part]] for part in PARTS} for fold in folds
    ]


def split_entry(catalog: Catalog, case_id: str, base: Path) -> Entry:
    """The split-file entry of one of a catalog's cases, its paths relative to ``base``."""
    case = catalog.cases[case_id]
    return {
        "case_id": case_id,
        "image": Path(os.path.relpath(case.image, base)).as_posix(),
        "label": Path(os.path.relpath(case.label, base)).as_posix(),
    }


def convert_reference_splits(source: str | Path, destination: str | Path) -> Path:
    """Convert one of the authors' split files (``{"folds": [{"train": {id: [img, lbl]}}]}``) to ours.

    Args:
        source: The reference JSON (``dataset``, ``source``, ``folds`` of id -> relative paths).
        destination: Where to write the ``sam3d-splits/1`` file.

    Returns:
        The written path.
    """
    content = json.loads(Path(source).read_text())
    folds = [
        {
            part: [
                {"case_id": case, "image": paths[0], "label": paths[1]} for case, paths in fold[part].items()
            ]
            for part in PARTS
        }
        for fold in content["folds"]
    ]
    origin = f"3DSAM-adapter authors' folds: {content.get('source', source)}"
    return save_splits(destination, content["dataset"], origin, folds)
