"""nnU-Net v2 files: one sam3d fold written as an nnU-Net raw dataset, and nnU-Net's masks read back.

:func:`export_fold` writes ``DatasetXXX_Name`` in nnU-Net v2's raw format from a sam3d dataset and fold:
the fold's training and validation cases as ``imagesTr/<case>_0000.nii.gz`` and ``labelsTr/<case>.nii.gz``
(the target label(s) as label 1, as sam3d trains on them), its test cases as ``imagesTs/`` (for
``nnUNetv2_predict``, never seen by nnU-Net's planning), ``dataset.json`` (channel ``CT``, so nnU-Net
normalises as it does CT) and ``splits_final.json`` with the fold's train and val ids as nnU-Net's fold 0.
Images keep their voxel grid (NIfTI files are copied), so nnU-Net's predictions lie on the labels' grid.

:func:`read_predicted_mask` reads one of nnU-Net's predicted masks for scoring, on its label's grid.
Nothing here imports nnU-Net: the files are plain NIfTI and JSON.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchio as tio

from sam3d.data.catalog import PRESETS, Case, DatasetName
from sam3d.data.checks import same_affine
from sam3d.data.errors import DatasetError, Problem
from sam3d.data.files import is_nifti
from sam3d.data.folds import fold_cases
from sam3d.data.preprocessing import BinarizeLabel, read_volume
from sam3d.data.scans.loading import describe_grid
from sam3d.data.scans.writing import write_like

__all__ = [
    "FILE_ENDING",
    "SPLITS_FILE",
    "ExportedFold",
    "LabelledMask",
    "dataset_folder_name",
    "export_fold",
    "read_predicted_mask",
    "target_labels_of",
]

FILE_ENDING = ".nii.gz"
SPLITS_FILE = "splits_final.json"  # nnU-Net reads it from nnUNet_preprocessed/DatasetXXX_Name/
RECORD_FILE = "sam3d_fold.json"  # what was exported, for people and for `sam3d score-masks`
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class ExportedFold:
    """What :func:`export_fold` wrote.

    Attributes:
        folder: The raw dataset folder ``DatasetXXX_Name``.
        train: Case ids of nnU-Net's fold 0 training part (sam3d's train).
        val: Case ids of its validation part (sam3d's val).
        test: Case ids written to ``imagesTs`` (sam3d's test).
        splits: The ``splits_final.json`` files written (the raw folder's, and the preprocessed one's if asked).
    """

    folder: Path
    train: list[str]
    val: list[str]
    test: list[str]
    splits: list[Path]


@dataclass(frozen=True)
class LabelledMask:
    """A predicted mask and its label, both binary on the label file's grid, array order ``(i, j, k)``."""

    prediction: torch.Tensor
    label: torch.Tensor
    spacing: tuple[float, float, float]


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """nnU-Net's folder name ``DatasetXXX_Name``, after checking the id and the name.

    Raises:
        DatasetError: For an id outside 1..999 or a name nnU-Net cannot parse.
    """
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise DatasetError(
            f"dataset_id must be an integer in 1..999 (nnU-Net's DatasetXXX), got {dataset_id!r}"
        )
    if not _NAME.fullmatch(name):
        raise DatasetError(
            f"dataset name {name!r} is not usable by nnU-Net: use letters, digits, '_' and '-', "
            "starting with a letter or digit"
        )
    return f"Dataset{dataset_id:03d}_{name}"


def target_labels_of(
    target_label: int | list[int] | None, dataset: DatasetName, declared: tuple[int, ...] | None, root: Path
) -> tuple[int, ...]:
    """The label values forming the target, resolved as the data module does: given, preset, declared."""
    labels = [target_label] if isinstance(target_label, int) else target_label
    if not labels:
        labels = list(PRESETS[dataset].target_labels) if dataset in PRESETS else list(declared or ())
    if not labels:
        raise DatasetError(f"no target label for {root}: set target_label to the label value(s) to segment")
    return tuple(int(value) for value in labels)


def _check_output(folder: Path, dataset_id: int) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise DatasetError(
            f"{folder} already exists and is not empty: remove it, or export under another dataset_id or name"
        )
    if folder.parent.is_dir():
        clashes = [p.name for p in folder.parent.glob(f"Dataset{dataset_id:03d}_*") if p.name != folder.name]
        if clashes:
            raise DatasetError(
                f"{folder.parent} already holds {', '.join(sorted(clashes))} with dataset id {dataset_id}: "
                "nnU-Net finds datasets by id, so choose another dataset_id"
            )


def _refuse_another_grid(case_id: str, message: str, volumes: dict[str, tuple[tio.Image, Path]]) -> None:
    """Raise ``message`` with each volume's grid (a :class:`Problem` naming its file) unless all share one grid.

    Raises:
        DatasetError: If the volumes' shapes or affines differ.
    """
    (first, _), *others = volumes.values()
    if all(
        image.spatial_shape == first.spatial_shape
        and same_affine(np.asarray(image.affine), np.asarray(first.affine))
        for image, _ in others
    ):
        return
    width = max(len(name) for name in volumes) + 1
    raise DatasetError(
        message,
        [
            Problem(
                case_id, f"{name + ':':<{width}} {describe_grid(image.spatial_shape, image.affine)}", path
            )
            for name, (image, path) in volumes.items()
        ],
    )


def _binary_label(case: Case, targets: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The case's label as a 0/1 uint8 array and its image's voxels, after checking they share one grid."""
    image = read_volume(case.image, "image", case.case_id)
    label = read_volume(case.label, "label", case.case_id)
    _refuse_another_grid(
        case.case_id,
        f"label {case.label} is not on the grid of image {case.image}; resample the label onto the image "
        "or fix its header:",
        {"image": (image, case.image), "label": (label, case.label)},
    )
    binary = BinarizeLabel(targets)(label).data[0].numpy().astype(np.uint8)
    return binary, image.data[0].numpy()


def _write_image(case: Case, voxels: np.ndarray, path: Path) -> None:
    """The case's image as a ``.nii.gz`` on its own grid: NIfTI files byte for byte (``.nii`` gzipped)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_nifti(case.image) and case.image.name.lower().endswith(".gz"):
        shutil.copyfile(case.image, path)
    elif is_nifti(case.image):
        with open(case.image, "rb") as source, gzip.open(path, "wb") as target:
            shutil.copyfileobj(source, target)
    else:  # NRRD, MHA or a DICOM series: its voxels with TorchIO's RAS+ geometry
        write_like(case.image, voxels, path, dtype=voxels.dtype)


def export_fold(
    root: Path,
    output: Path,
    dataset_id: int,
    name: str,
    dataset: DatasetName = "msd",
    fold: int = 0,
    split_file: str | None = None,
    num_folds: int = 5,
    seed: int = 0,
    target_label: int | list[int] | None = None,
    preprocessed: Path | None = None,
) -> ExportedFold:
    """Write one sam3d fold as nnU-Net v2 raw dataset ``output/DatasetXXX_Name`` (see the module's description).

    Args:
        root: The sam3d dataset folder (the manifest file for dataset=manifest).
        output: nnU-Net's raw folder (``nnUNet_raw``); the dataset folder is made in it.
        dataset_id: nnU-Net's dataset id, 1..999.
        name: Dataset name after the id.
        dataset: Layout of the sam3d dataset.
        fold: The sam3d fold (its split file's, or the seeded folds made on the fly as ``sam3d fit`` does).
        split_file: A ``sam3d-splits/1`` file; None as in ``--data.split_file``.
        num_folds: Folds made on the fly.
        seed: Seed of folds made on the fly (``--data.seed``).
        target_label: Label value(s) written as nnU-Net's label 1; None for the dataset's.
        preprocessed: nnU-Net's preprocessed folder (``nnUNet_preprocessed``): also place
            ``splits_final.json`` in its ``DatasetXXX_Name`` folder, where nnU-Net's training reads it.

    Returns:
        The folder and the case ids of each part.

    Raises:
        DatasetError: For a bad id or name, an existing non-empty output, a fold that does not exist, a
            missing target label, or unusable files (each named).
    """
    folder_name = dataset_folder_name(dataset_id, name)
    folder = output.expanduser() / folder_name
    _check_output(folder, dataset_id)
    split_target = preprocessed.expanduser() / folder_name / SPLITS_FILE if preprocessed else None
    if split_target is not None and split_target.exists():
        raise DatasetError(
            f"{split_target} already exists: remove it (nnU-Net would train on its folds instead)"
        )
    cases = fold_cases(root.expanduser(), dataset, fold, split_file, num_folds, seed)
    targets = target_labels_of(target_label, dataset, cases.declared_labels, root)
    parts = {part: cases.parts[part] for part in ("train", "val", "test")}
    if not parts["val"]:
        raise DatasetError(f"fold {fold} has no validation cases; nnU-Net's fold needs some")
    ids = [case.case_id for part in parts.values() for case in part]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"fold {fold} names a case more than once; nnU-Net needs unique case ids")
    for case in [*parts["train"], *parts["val"]]:
        label, voxels = _binary_label(case, targets)
        image_path = folder / "imagesTr" / f"{case.case_id}_0000{FILE_ENDING}"
        _write_image(case, voxels, image_path)
        write_like(image_path, label, folder / "labelsTr" / f"{case.case_id}{FILE_ENDING}")
    for case in parts["test"]:
        image = read_volume(case.image, "image", case.case_id)
        _write_image(case, image.data[0].numpy(), folder / "imagesTs" / f"{case.case_id}_0000{FILE_ENDING}")
    train, val = [c.case_id for c in parts["train"]], [c.case_id for c in parts["val"]]
    test = [c.case_id for c in parts["test"]]
    description = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "target": 1},
        "numTraining": len(train) + len(val),
        "file_ending": FILE_ENDING,
        "name": name,
        "description": f"sam3d fold {fold} of {root} ({dataset}); label 1 = label value(s) {list(targets)}",
    }
    (folder / "dataset.json").write_text(json.dumps(description, indent=2) + "\n")
    splits = json.dumps([{"train": train, "val": val}], indent=2) + "\n"
    written = [folder / SPLITS_FILE]
    if split_target is not None:
        split_target.parent.mkdir(parents=True, exist_ok=True)
        written.append(split_target)
    for path in written:
        path.write_text(splits)
    record = {
        "root": str(root),
        "dataset": dataset,
        "fold": fold,
        "split_file": split_file,
        "num_folds": num_folds,
        "seed": seed,
        "target_labels": list(targets),
        "train": train,
        "val": val,
        "test": test,
    }
    (folder / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return ExportedFold(folder, train, val, test, written)


def read_predicted_mask(prediction_path: Path, case: Case, targets: tuple[int, ...]) -> LabelledMask:
    """One of nnU-Net's predicted masks (label 1 = target) and the case's binarised label, on the label's grid.

    Raises:
        DatasetError: If a file is missing or unreadable, or the prediction is not on the label's grid.
    """
    label = read_volume(case.label, "label", case.case_id)
    if not prediction_path.is_file():
        raise DatasetError(
            f"no prediction {prediction_path} for test case {case.case_id}: predict every file of the "
            "export's imagesTs (nnUNetv2_predict -i .../imagesTs -o this folder)"
        )
    prediction = read_volume(prediction_path, "label", case.case_id)
    _refuse_another_grid(
        case.case_id,
        f"prediction {prediction_path} is not on the grid of label {case.label}; predict from the "
        "images that `sam3d export-nnunet` wrote for this dataset:",
        {"prediction": (prediction, prediction_path), "label": (label, case.label)},
    )
    spacing = tuple(float(s) for s in np.linalg.norm(np.asarray(label.affine)[:3, :3], axis=0))
    return LabelledMask(
        prediction=BinarizeLabel((1,))(prediction).data[0].bool(),
        label=BinarizeLabel(targets)(label).data[0].bool(),
        spacing=spacing,  # type: ignore[arg-type]
    )
