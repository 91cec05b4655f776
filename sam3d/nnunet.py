"""``sam3d score-masks``: another tool's predicted masks (nnU-Net v2's) scored as a sam3d test run.

``sam3d export-nnunet`` (:func:`sam3d.data.tools.export_nnunet`) writes a sam3d fold as an nnU-Net raw
dataset; nnU-Net plans, trains and predicts its test images; :func:`score_masks` then scores the predicted
masks against the fold's test labels with sam3d's own metrics on the label's grid, as ``sam3d test`` does,
and writes ``cases.csv`` and ``summary.json`` like it, so that ``sam3d report`` puts the method beside the
others. nnU-Net itself is not needed here.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from sam3d.data.errors import DatasetError
from sam3d.data.files import case_id
from sam3d.data.folds import fold_cases
from sam3d.data.nnunet import FILE_ENDING, RECORD_FILE, read_predicted_mask
from sam3d.errors import Sam3dError
from sam3d.evaluation import EvaluationSettings
from sam3d.metrics import DEFAULT_TOLERANCE_MM, case_metrics
from sam3d.reporting import METRICS, summary

__all__ = ["read_export_record", "score_masks"]


def read_export_record(export: Path) -> dict[str, Any]:
    """The fold that ``sam3d export-nnunet`` wrote into ``export`` (its ``sam3d_fold.json``)."""
    path = export.expanduser() / RECORD_FILE
    if not path.is_file():
        raise Sam3dError(
            f"{export} is not a folder written by `sam3d export-nnunet` (no {RECORD_FILE}); pass that folder "
            "(nnUNet_raw/DatasetXXX_Name)"
        )
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise Sam3dError(f"{path} is unreadable ({error}); export the fold again") from None
    keys = ("root", "dataset", "fold", "num_folds", "seed", "target_labels", "test")
    if not isinstance(record, dict) or (missing := [key for key in keys if key not in record]):
        raise Sam3dError(f"{path} lacks {missing or list(keys)}; export the fold again")
    return record


def score_masks(
    predictions: str,
    export: str,
    output: str | None = None,
    method: str = "nnunet",
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    seconds_per_case: float | None = None,
) -> str:
    """Score predicted masks of a fold's test cases with sam3d's metrics, written as a ``sam3d test`` run.

    Example (after ``sam3d export-nnunet`` and nnU-Net's training and ``nnUNetv2_predict``):
    ``sam3d score-masks nnunet_predictions raw/Dataset501_Phantoms --output runs/nnunet-fold0``,
    then ``sam3d report runs``.

    Every test case of the exported fold needs ``<case>.nii.gz`` in ``predictions`` (label 1 = target, on
    the image's grid). As for the methods without clicks, a case whose label has no target voxel is skipped.

    Args:
        predictions: Folder of the predicted masks.
        export: The dataset folder ``sam3d export-nnunet`` wrote (it records the sam3d dataset and fold).
        output: Folder of ``summary.json`` and ``cases.csv`` (a test run ``sam3d report`` reads); default
            ``runs/<method>-fold<fold>``.
        method: The method's name in the report.
        tolerance_mm: NSD tolerance in mm.
        seconds_per_case: The tool's inference seconds per case, if measured (else the report says n/a).

    Returns:
        The written ``summary.json``.
    """
    if not method.strip():
        raise Sam3dError("method must be a non-empty name for the report")
    if seconds_per_case is not None and not (math.isfinite(seconds_per_case) and seconds_per_case >= 0):
        raise Sam3dError(f"seconds_per_case must be a non-negative number of seconds, got {seconds_per_case}")
    folder = Path(predictions).expanduser()
    if not folder.is_dir():
        raise Sam3dError(
            f"predictions folder {folder} does not exist; pass the folder nnUNetv2_predict wrote"
        )
    record = read_export_record(Path(export))
    cases = fold_cases(
        Path(record["root"]),
        record["dataset"],
        int(record["fold"]),
        record.get("split_file"),
        int(record["num_folds"]),
        int(record["seed"]),
    ).parts["test"]
    if [case.case_id for case in cases] != list(record["test"]):
        raise DatasetError(
            f"the test cases of fold {record['fold']} of {record['root']} are no longer the ones {export} "
            "exported; export the fold again"
        )
    unknown = sorted(
        case_id(path) for path in folder.glob(f"*{FILE_ENDING}") if case_id(path) not in record["test"]
    )
    if unknown:
        raise DatasetError(
            f"{folder} holds masks of cases that are not test cases of the export: {', '.join(unknown[:5])}"
            f"{' ...' if len(unknown) > 5 else ''}; score the predictions of its imagesTs only"
        )
    targets = tuple(int(value) for value in record["target_labels"])
    settings = EvaluationSettings(tolerance_mm=tolerance_mm)
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for case in cases:
        masks = read_predicted_mask(folder / f"{case.case_id}{FILE_ENDING}", case, targets)
        if not masks.label.any():
            skipped[case.case_id] = "no target voxel in the label: skipped, as by every method"
            continue
        metrics = case_metrics(masks.prediction, masks.label, masks.spacing, tolerance_mm)
        rows.append({"case": case.case_id, "repeat": 0, "clicks": 0, **metrics, "seconds": seconds_per_case})
    if not rows:
        raise DatasetError(f"none of the {len(cases)} test cases of {export} has a target voxel to score")
    # summary() sums the rows' seconds; the recorded value (None when not measured) replaces its result
    timed = [{**row, "seconds": row["seconds"] or 0.0} for row in rows]
    result = {
        "method": method,
        "predictions": str(folder),
        **summary(timed, settings),
        "seconds_per_case": seconds_per_case,
        "skipped": skipped,
    }
    run = Path(output if output is not None else f"runs/{method}-fold{record['fold']}").expanduser()
    try:
        run.mkdir(parents=True, exist_ok=True)
        with open(run / "cases.csv", "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=["case", "repeat", "clicks", *METRICS, "seconds"])
            writer.writeheader()
            writer.writerows(rows)
        path = run / "summary.json"
        path.write_text(json.dumps(result, indent=2, allow_nan=False, default=str) + "\n")
    except OSError as error:
        raise Sam3dError(f"cannot write the scores into {run}: {error}") from None
    dice = result["final"]["dice"]["mean"]
    print(f"{method}: {len(rows)} test cases scored, mean Dice {dice:.4f} -> {path}")
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    return str(path)
