"""The cases of one fold: a split file (the authors' folds for the named datasets) or seeded new folds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sam3d.data.catalog import PRESETS, Case, DatasetName, discover, resolve_split_cases
from sam3d.data.errors import DatasetError
from sam3d.data.splits import PARTS, SHIPPED_SPLITS, SplitFile, folds_from_catalog, load_splits

__all__ = ["FoldCases", "Part", "fold_cases"]

Part = Literal["train", "val", "test"]


@dataclass(frozen=True)
class FoldCases:
    """The cases of each part of a fold, with their files located (not yet checked).

    Attributes:
        parts: ``train``, ``val`` and ``test`` cases.
        declared_labels: Target label values the dataset's layout declares (manifest, or an MSD
            ``dataset.json`` with one foreground label), else None.
    """

    parts: dict[str, list[Case]]
    declared_labels: tuple[int, ...] | None


def _split(dataset: DatasetName, split_file: str | None) -> SplitFile | None:
    if split_file is not None:
        return load_splits(split_file)
    if dataset in PRESETS:
        return load_splits(SHIPPED_SPLITS / f"{dataset}.json")
    return None


def fold_cases(
    root: Path, dataset: DatasetName, fold: int, split_file: str | None, num_folds: int, seed: int
) -> FoldCases:
    """Locate the cases of fold ``fold`` under ``root``.

    Args:
        root: Dataset folder, or the manifest file for ``dataset="manifest"``.
        dataset: Layout and defaults (see :func:`sam3d.data.catalog.discover`).
        fold: Fold index.
        split_file: A ``sam3d-splits/1`` file; None for the authors' folds of the named datasets, else
            seeded folds made from the cases found.
        num_folds: Number of folds made on the fly.
        seed: Seed of folds made on the fly.

    Returns:
        The cases of each part.

    Raises:
        DatasetError: If no case is found, the fold is out of range or its training part is empty.
    """
    catalog = discover(root, dataset)
    split = _split(dataset, split_file)
    base = root.parent if root.is_file() else root
    if split is None:
        if not catalog.cases:
            raise DatasetError(f"no cases found under {root} in the {dataset} layout")
        folds = folds_from_catalog(catalog, base, num_folds, seed=seed)
        if not 0 <= fold < len(folds):
            raise DatasetError(f"fold {fold} is out of range: set data.fold to 0..{len(folds) - 1}")
        entries = folds[fold]
    else:
        entries = split.fold(fold)
    parts = {name: resolve_split_cases(base, entries[name], catalog) for name in PARTS}
    if not parts["train"]:
        raise DatasetError(f"fold {fold} has an empty training split")
    return FoldCases(parts, catalog.target_labels)
