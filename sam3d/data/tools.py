"""Dataset utilities behind the ``sam3d`` sub-commands (plain typed functions; see :data:`UTILITIES`)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from sam3d.data.catalog import PRESETS, DatasetName, discover
from sam3d.data.errors import DatasetError, Problem
from sam3d.data.lits117 import ASSUMED_SPACING_MM, Lits117Target, write_lits117
from sam3d.data.nnunet import SPLITS_FILE, export_fold
from sam3d.data.splits import folds_from_catalog, save_splits
from sam3d.data.stats import intensity_statistics
from sam3d.data.synthetic import make_synthetic_dataset
from sam3d.data.training.cache import cache_cases

__all__ = [
    "UTILITIES",
    "check_dataset",
    "dataset_stats",
    "export_nnunet",
    "make_lits117",
    "make_splits",
    "make_synthetic",
]


def make_splits(
    root: str,
    output: str,
    dataset: DatasetName = "msd",
    num_folds: int = 5,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> str:
    """Make seeded k-fold train/val/test splits of a dataset and write them as a sam3d split file.

    Args:
        root: Dataset folder (the manifest file for dataset=manifest).
        output: Split file to write (JSON).
        dataset: Layout of the dataset.
        num_folds: Number of folds; every case is in the test part of exactly one.
        val_fraction: Share of each fold's non-test cases used for validation (at least one).
        seed: Shuffling seed.

    Returns:
        The path written.
    """
    catalog = discover(root, dataset)
    if not catalog.cases:
        raise DatasetError(f"no cases found under {root} in the {dataset} layout")
    base = Path(root).parent if Path(root).is_file() else Path(root)
    folds = folds_from_catalog(catalog, base.expanduser(), num_folds, val_fraction, seed)
    path = save_splits(output, dataset, f"sam3d make-splits (seed {seed}, {num_folds} folds)", folds)
    sizes = ", ".join(f"{len(f['train'])}/{len(f['val'])}/{len(f['test'])}" for f in folds)
    print(f"wrote {num_folds} folds of {len(catalog.cases)} cases (train/val/test: {sizes}) to {path}")
    return str(path)


def _cached(
    root: str, dataset: DatasetName, spacing: float, cache_dir: str | None
) -> tuple[dict, list[Problem], int]:
    catalog = discover(root, dataset)
    if not catalog.cases:
        raise DatasetError(f"no cases found under {root} in the {dataset} layout")
    cases = list(catalog.cases.values())
    if cache_dir is None:
        with tempfile.TemporaryDirectory(prefix="sam3d-check-") as folder:
            cached, problems = cache_cases(cases, Path(folder), (spacing,) * 3)
    else:
        cached, problems = cache_cases(cases, Path(cache_dir).expanduser(), (spacing,) * 3)
    return cached, problems, len(cases)


def check_dataset(
    root: str,
    dataset: DatasetName = "msd",
    target_label: int | list[int] | None = None,
    spacing: float = 1.0,
    cache_dir: str | None = None,
) -> int:
    """Check every case of a dataset before training and list all problem cases (exit status 1 if any).

    Reads every header and every voxel: missing or unreadable files, non-3D or multi-channel images,
    image/label shape or geometry mismatch, absurd spacing, NaN/inf voxels, labels without the target.

    Args:
        root: Dataset folder (the manifest file for dataset=manifest).
        dataset: Layout of the dataset.
        target_label: Label value(s) to segment, e.g. 2 or [1, 2]; default: the dataset's.
        spacing: Resampling voxel size in mm used for the check (and the cache, if kept).
        cache_dir: Keep the resampled volumes in this cache folder (else a temporary one is used).

    Returns:
        The number of cases, all usable.

    Raises:
        DatasetError: Listing every problem case.
    """
    cached, problems, total = _cached(root, dataset, spacing, cache_dir)
    labels = [target_label] if isinstance(target_label, int) else target_label
    targets = set(labels or (PRESETS[dataset].target_labels if dataset in PRESETS else ()))
    if not targets:
        targets = set(discover(root, dataset).target_labels or ())
    for case in cached.values():
        if targets and not targets & case.label_values:
            values = sorted(case.label_values)
            problems.append(
                Problem(
                    case.case.case_id,
                    f"label has no target {sorted(targets)} (values {values})",
                    case.case.label,
                )
            )
    if problems:
        bad = len({problem.case_id for problem in problems})
        raise DatasetError(f"{bad} of {total} cases have problems; fix or remove them:", problems)
    print(f"all {total} cases are usable")
    return total


def dataset_stats(
    root: str,
    dataset: DatasetName = "msd",
    spacing: float = 1.0,
    cache_dir: str | None = None,
) -> dict[str, object]:
    """Compute a dataset's intensity window (foreground 0.5/99.5 percentiles), mean and std.

    The foreground is every labelled (non-zero) voxel, after resampling to ``spacing``. Prints the
    values as data-module settings.

    Args:
        root: Dataset folder (the manifest file for dataset=manifest).
        dataset: Layout of the dataset.
        spacing: Resampling voxel size in mm.
        cache_dir: Keep the resampled volumes in this cache folder (else a temporary one is used).

    Returns:
        ``{"intensity_window": [low, high], "mean": ..., "std": ..., "num_cases": ...}``.
    """
    cached, problems, _ = _cached(root, dataset, spacing, cache_dir)
    if problems:
        raise DatasetError("cannot compute statistics; these cases are unusable:", problems)
    window, mean, std = intensity_statistics([case.meta["foreground_sample"] for case in cached.values()])
    print(f"intensity_window: [{window[0]}, {window[1]}]\nmean: {mean}\nstd: {std}")
    return {"intensity_window": list(window), "mean": mean, "std": std, "num_cases": len(cached)}


def make_synthetic(root: str, num_cases: int = 8, seed: int = 0) -> str:
    """Write a seeded synthetic CT dataset (phantoms with small low-contrast lesions) in the MSD layout.

    Args:
        root: Output folder.
        num_cases: Number of cases.
        seed: Seed; the same seed writes the same files.

    Returns:
        The dataset folder.
    """
    path = make_synthetic_dataset(root, num_cases, seed)
    print(f"wrote {num_cases} synthetic cases to {path} (use dataset: msd, target label 1)")
    return str(path)


def make_lits117(root: str, target: Lits117Target = "tumour", spacing: float = ASSUMED_SPACING_MM) -> str:
    """Write the held-out LiTS case 117 (a 128^3 crop from PyPI's liver-ct-segmentation-package) in the MSD layout.

    Needs ``pip install --no-deps liver-ct-segmentation-package==1.6.0`` (only its data files are read).
    The files store no spacing: 1 mm isotropic is assumed (the authors' LiTS resampling, so the crop's
    grid is used as it is); the crop's place in the original scan is unknown. Also writes
    ``split.json``: fold 0 of the authors' LiTS split with volume-117 as its only test case, for
    ``sam3d test --data.split_file ROOT/split.json``.

    Args:
        root: Output folder.
        target: ``tumour`` (LiTS label 2) or ``liver`` (labels 1 and 2), written as label 1.
        spacing: Isotropic voxel size in mm to assume.

    Returns:
        The dataset folder.
    """
    path = write_lits117(root, target, spacing)
    print(
        f"wrote LiTS volume-117 ({target}, assumed {spacing} mm voxels) to {path}; test it with "
        f"--data.root {path} --data.dataset msd --data.target_label 1 --data.split_file {path / 'split.json'}"
    )
    return str(path)


def export_nnunet(
    root: str,
    output: str,
    dataset_id: int,
    name: str = "Sam3d",
    dataset: DatasetName = "msd",
    fold: int = 0,
    split_file: str | None = None,
    num_folds: int = 5,
    seed: int = 0,
    target_label: int | list[int] | None = None,
    preprocessed: str | None = None,
) -> str:
    """Write one sam3d fold as an nnU-Net v2 raw dataset, to compare nnU-Net itself in ``sam3d report``.

    Writes ``OUTPUT/DatasetXXX_NAME``: the fold's train and val cases in ``imagesTr``/``labelsTr`` (the
    target label(s) as label 1), its test cases in ``imagesTs``, ``dataset.json`` (channel CT) and
    ``splits_final.json`` (train/val as nnU-Net's fold 0), then prints the nnU-Net commands to run.
    The fold options are ``sam3d fit``'s ``--data.*`` ones, so nnU-Net gets the same cases.

    Args:
        root: The dataset folder (the manifest file for dataset=manifest).
        output: nnU-Net's raw folder (``$nnUNet_raw``).
        dataset_id: nnU-Net's dataset id, 1..999.
        name: Dataset name after the id.
        dataset: Layout of the dataset.
        fold: The fold.
        split_file: A sam3d split file; default: the authors' folds of the named datasets, else seeded folds.
        num_folds: Folds made on the fly.
        seed: Seed of folds made on the fly.
        target_label: Label value(s) to segment; default: the dataset's.
        preprocessed: nnU-Net's preprocessed folder (``$nnUNet_preprocessed``): also place
            ``splits_final.json`` there (else copy it there yourself before training).

    Returns:
        The dataset folder written.
    """
    exported = export_fold(
        Path(root).expanduser().resolve(),
        Path(output),
        dataset_id,
        name,
        dataset,
        fold,
        str(Path(split_file).expanduser().resolve()) if split_file else None,  # recorded for score-masks
        num_folds,
        seed,
        target_label,
        Path(preprocessed) if preprocessed else None,
    )
    folder, nnunet_fold = exported.folder, exported.folder.name
    place = (
        ""
        if preprocessed
        else f"cp {folder / SPLITS_FILE} $nnUNet_preprocessed/{nnunet_fold}/   # before training\n"
    )
    print(
        f"wrote {nnunet_fold}: {len(exported.train)} train, {len(exported.val)} val (nnU-Net fold 0) and "
        f"{len(exported.test)} test cases to {folder}\nnext (add -device cpu on a machine without a GPU):\n"
        f"nnUNetv2_plan_and_preprocess -d {dataset_id} -c 3d_fullres --verify_dataset_integrity\n{place}"
        f"nnUNetv2_train {dataset_id} 3d_fullres 0\n"
        f"nnUNetv2_predict -i {folder / 'imagesTs'} -o PREDICTIONS -d {dataset_id} -c 3d_fullres -f 0\n"
        f"sam3d score-masks PREDICTIONS {folder} --output runs/nnunet-fold{fold}"
    )
    return str(folder)


UTILITIES: dict[str, Callable[..., object]] = {
    "make-splits": make_splits,
    "dataset-stats": dataset_stats,
    "check-dataset": check_dataset,
    "make-synthetic": make_synthetic,
    "make-lits117": make_lits117,
    "export-nnunet": export_nnunet,
}
