"""nnU-Net v2 as a method of `sam3d report`: `sam3d export-nnunet`, `sam3d score-masks`, and nnU-Net's own run."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cli_helpers import synthetic_cli_args

from sam3d.cli import main
from sam3d.data.folds import fold_cases
from sam3d.data.scans.writing import write_like

HAS_NNUNET = importlib.util.find_spec("nnunetv2") is not None
needs_nnunet = pytest.mark.skipif(
    not HAS_NNUNET, reason="nnunetv2 is not installed (pip install -e '.[nnunet]', or make install)"
)


def _export(root: Path, tmp_path: Path, *extra: str) -> Path:
    main(["export-nnunet", str(root), str(tmp_path / "raw"), "7", "--name", "Phantoms", *extra])
    return tmp_path / "raw" / "Dataset007_Phantoms"


def _error(args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    message = str(exit_info.value.code)
    assert message.startswith("sam3d: error: ")
    return message


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as stream:
        return list(csv.DictReader(stream))


def test_export_writes_the_fold_in_nnunets_raw_format(synthetic_root, tmp_path):
    folder = _export(synthetic_root, tmp_path, "--preprocessed", str(tmp_path / "pre"))
    parts = fold_cases(synthetic_root, "msd", 0, None, 5, 0).parts  # sam3d fit's fold 0 of these cases
    ids = {part: [case.case_id for case in cases] for part, cases in parts.items()}
    assert ids["test"]

    splits = [{"train": ids["train"], "val": ids["val"]}]  # nnU-Net's fold 0 is sam3d's fold
    assert json.loads((tmp_path / "pre" / folder.name / "splits_final.json").read_text()) == splits
    assert json.loads((folder / "splits_final.json").read_text()) == splits
    description = json.loads((folder / "dataset.json").read_text())
    assert description["channel_names"] == {"0": "CT"}
    assert description["labels"] == {"background": 0, "target": 1}
    assert description["numTraining"] == len(ids["train"]) + len(ids["val"])
    assert description["file_ending"] == ".nii.gz"

    trained = sorted(ids["train"] + ids["val"])
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in trained]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in trained]
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == [
        f"{c}_0000.nii.gz" for c in ids["test"]
    ]
    for case in parts["train"] + parts["val"]:
        image = folder / "imagesTr" / f"{case.case_id}_0000.nii.gz"
        assert image.read_bytes() == case.image.read_bytes()  # the scan as it is: its grid and values
        label, source = nib.load(folder / "labelsTr" / f"{case.case_id}.nii.gz"), nib.load(case.label)
        assert np.array_equal(label.affine, nib.load(image).affine)
        assert np.array_equal(np.asarray(label.dataobj), np.asarray(source.dataobj) == 1)
    for case in parts["test"]:  # test images only: nnU-Net never sees their labels
        assert (folder / "imagesTs" / f"{case.case_id}_0000.nii.gz").read_bytes() == case.image.read_bytes()
    record = json.loads((folder / "sam3d_fold.json").read_text())
    assert (record["fold"], record["target_labels"], record["test"]) == (0, [1], ids["test"])


def _two_label_copy(root: Path, destination: Path) -> Path:
    """The phantoms with a second label value: 2 on the lesion's upper half (by array index)."""
    shutil.copytree(root, destination)
    for path in sorted((destination / "labelsTr").glob("*.nii.gz")):
        image = nib.load(path)
        data = np.asarray(image.dataobj).astype(np.uint8)
        upper = np.zeros_like(data, dtype=bool)
        upper[..., data.shape[2] // 2 :] = True
        data[(data == 1) & upper] = 2
        nib.save(nib.Nifti1Image(data, image.affine, image.header), path)
    return destination


def test_export_writes_the_target_labels_as_label_one(synthetic_root, tmp_path):
    root = _two_label_copy(synthetic_root, tmp_path / "two")
    folder = _export(root, tmp_path, "--target_label", "2")
    checked = 0
    for label_file in sorted((folder / "labelsTr").iterdir()):
        source = np.asarray(nib.load(root / "labelsTr" / label_file.name).dataobj)
        exported = np.asarray(nib.load(label_file).dataobj)
        assert np.array_equal(exported, (source == 2).astype(np.uint8))
        checked += int((source == 2).any() and (source == 1).any())
    assert checked  # cases where label 1 existed and was left out
    assert json.loads((folder / "sam3d_fold.json").read_text())["target_labels"] == [2]


@needs_nnunet
def test_nnunets_dataset_checker_accepts_the_export(synthetic_root, tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    folder = _export(synthetic_root, tmp_path)
    verify_dataset_integrity(str(folder), num_processes=1)  # raises on any problem


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["0"], "dataset_id must be an integer in 1..999"),
        (["1000"], "dataset_id must be an integer in 1..999"),
        (["8", "--name", "my data"], "dataset name 'my data' is not usable by nnU-Net"),
        (["8", "--fold", "5"], "fold 5 is out of range"),
        (["7", "--name", "Other"], "already holds Dataset007_Phantoms with dataset id 7"),
        (["7", "--name", "Phantoms"], "Dataset007_Phantoms already exists and is not empty"),
    ],
)
def test_export_refuses_bad_inputs_with_messages(synthetic_root, tmp_path, args, message):
    existing = tmp_path / "raw" / "Dataset007_Phantoms"
    existing.mkdir(parents=True)
    (existing / "dataset.json").write_text("{}")
    assert message in _error(["export-nnunet", str(synthetic_root), str(tmp_path / "raw"), *args])


def test_export_refuses_to_replace_a_split_file_nnunet_would_use(synthetic_root, tmp_path):
    existing = tmp_path / "pre" / "Dataset009_Phantoms" / "splits_final.json"
    existing.parent.mkdir(parents=True)
    existing.write_text("[]")
    args = [str(synthetic_root), str(tmp_path / "raw"), "9", "--name", "Phantoms", "--preprocessed"]
    assert "splits_final.json already exists" in _error(["export-nnunet", *args, str(tmp_path / "pre")])
    assert existing.read_text() == "[]"


def _predictions(folder: Path, tmp_path: Path, keep: float = 1.0) -> Path:
    """Masks of the export's test cases on their images' grids: the true lesion, its first ``keep`` slices."""
    predictions = tmp_path / "predictions"
    for case in json.loads((folder / "sam3d_fold.json").read_text())["test"]:
        label = np.asarray(nib.load(Path(_root_of(folder)) / "labelsTr" / f"{case}.nii.gz").dataobj) == 1
        kept = np.zeros_like(label)
        slices = np.flatnonzero(label.any(axis=(0, 1)))
        end = slices[0] + max(1, round(keep * len(slices)))
        kept[..., :end] = label[..., :end]
        write_like(folder / "imagesTs" / f"{case}_0000.nii.gz", kept, predictions / f"{case}.nii.gz")
    return predictions


def _root_of(folder: Path) -> str:
    return json.loads((folder / "sam3d_fold.json").read_text())["root"]


def test_score_masks_scores_predicted_masks_as_a_test_run_that_report_pools(synthetic_root, tmp_path):
    folder = _export(synthetic_root, tmp_path)
    predictions = _predictions(folder, tmp_path, keep=0.5)
    run = tmp_path / "runs" / "nnunet"
    main(["score-masks", str(predictions), str(folder), "--output", str(run), "--seconds_per_case", "2.5"])

    rows = _read_csv(run / "cases.csv")
    test = json.loads((folder / "sam3d_fold.json").read_text())["test"]
    assert [row["case"] for row in rows] == test
    for row in rows:
        label = np.asarray(nib.load(synthetic_root / "labelsTr" / f"{row['case']}.nii.gz").dataobj) == 1
        predicted = np.asarray(nib.load(predictions / f"{row['case']}.nii.gz").dataobj) == 1
        overlap = 2 * (label & predicted).sum() / (label.sum() + predicted.sum())
        assert float(row["dice"]) == pytest.approx(overlap)
        assert 0 < float(row["dice"]) < 1
        assert float(row["hd95"]) > 0
        assert (row["clicks"], row["seconds"]) == ("0", "2.5")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "nnunet"
    assert summary["clicks"] == 0
    assert summary["final"]["dice"]["mean"] == pytest.approx(np.mean([float(r["dice"]) for r in rows]))

    main(["report", str(tmp_path / "runs"), "--output", str(tmp_path / "report")])
    (record,) = _read_csv(tmp_path / "report" / "comparison.csv")
    assert record["method"] == "nnunet"
    assert float(record["dice_mean"]) == summary["final"]["dice"]["mean"]
    assert float(record["seconds_per_case_mean"]) == 2.5


def test_score_masks_of_the_true_masks_is_perfect(synthetic_root, tmp_path):
    folder = _export(synthetic_root, tmp_path)
    run = tmp_path / "run"
    main(["score-masks", str(_predictions(folder, tmp_path)), str(folder), "--output", str(run)])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final"]["dice"]["min"] == 1.0
    assert summary["final"]["hd95"]["max"] == 0.0
    assert summary["seconds_per_case"] is None  # not measured: the report says n/a


def test_score_masks_refuses_bad_predictions_with_messages(synthetic_root, tmp_path):
    folder = _export(synthetic_root, tmp_path)
    predictions = _predictions(folder, tmp_path)
    first = min(predictions.glob("*.nii.gz"))
    args = ["score-masks", str(predictions), str(folder), "--output", str(tmp_path / "run")]

    image = nib.load(first)
    shifted = image.affine.copy()
    shifted[:3, 3] += 10.0
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), shifted), first)
    assert "is not on the grid of label" in _error(args)

    first.unlink()
    assert f"no prediction {first}" in _error(args)

    shutil.copyfile(min(predictions.glob("*.nii.gz")), predictions / "stranger.nii.gz")
    assert "not test cases of the export: stranger" in _error(args)

    assert "is not a folder written by `sam3d export-nnunet`" in _error(
        ["score-masks", str(predictions), str(tmp_path), "--output", str(tmp_path / "run")]
    )
    assert "predictions folder" in _error(["score-masks", str(tmp_path / "none"), str(folder)])
    assert not (tmp_path / "run").exists()


def _nnunet(command: str, *args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [str(Path(sys.executable).parent / command), *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


# nnU-Net's own trainer for one epoch of two iterations on the CPU, through its Python API (the
# nnUNetv2_train command has no option for the iterations; its shortest trainer runs 250).
TRAIN = """
import sys, torch
from nnunetv2.run.run_training import get_trainer_from_args
trainer = get_trainer_from_args(sys.argv[1], "3d_fullres", 0, "nnUNetTrainer_1epoch", device=torch.device("cpu"))
trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 2, 1
trainer.run_training()
"""


@needs_nnunet
@pytest.mark.slow
def test_nnunet_trains_and_predicts_the_export_and_report_shows_it_beside_the_sam(
    synthetic_root, trained, tmp_path
):
    nnunet = {name: tmp_path / f"nnUNet_{name}" for name in ("raw", "preprocessed", "results")}
    env = {**os.environ, **{f"nnUNet_{name}": str(path) for name, path in nnunet.items()}}
    env["nnUNet_def_n_proc"] = "1"
    main(["export-nnunet", str(synthetic_root), str(nnunet["raw"]), "501", "--name", "Phantoms"])
    folder = nnunet["raw"] / "Dataset501_Phantoms"
    plan = ("-d", "501", "-c", "3d_fullres", "--verify_dataset_integrity", "-np", "1", "-npfp", "1")
    assert "verify_dataset_integrity Done" in _nnunet("nnUNetv2_plan_and_preprocess", *plan, env=env)
    shutil.copyfile(folder / "splits_final.json", nnunet["preprocessed"] / folder.name / "splits_final.json")
    train_env = {**env, "nnUNet_n_proc_DA": "0"}  # augmentation in-process (planning needs it >= 1)
    done = subprocess.run(
        [sys.executable, "-c", TRAIN, "501"], check=False, env=train_env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    fold = json.loads((folder / "splits_final.json").read_text())[0]
    assert (
        f"This split has {len(fold['train'])} training and {len(fold['val'])} validation cases" in done.stdout
    )
    predictions = tmp_path / "predictions"
    predict = ("-i", str(folder / "imagesTs"), "-o", str(predictions), "-d", "501", "-c", "3d_fullres")
    predict_options = ("-f", "0", "-tr", "nnUNetTrainer_1epoch", "-device", "cpu", "--disable_tta")
    _nnunet("nnUNetv2_predict", *predict, *predict_options, "-npp", "1", "-nps", "1", env=env)
    main(["score-masks", str(predictions), str(folder), "--output", str(tmp_path / "runs" / "nnunet")])

    _, checkpoint = trained  # the tiny SAM, tested on the same fold 0 of the same phantoms
    workdir = tmp_path / "sam"
    main(synthetic_cli_args("test", synthetic_root, workdir, "--ckpt_path", str(checkpoint)))
    sam_run = next(workdir.glob("runs/**/test"))
    main(["report", json.dumps([str(tmp_path / "runs"), str(sam_run)]), "--output", str(tmp_path / "report")])

    records = {row["method"]: row for row in _read_csv(tmp_path / "report" / "comparison.csv")}
    assert set(records) == {"nnunet", "sam-spatial-unfrozen"}
    nnunet_cases = _read_csv(tmp_path / "runs" / "nnunet" / "cases.csv")
    sam_cases = {row["case"] for row in _read_csv(sam_run / "cases.csv")}
    assert {row["case"] for row in nnunet_cases} == sam_cases  # scored on the same test cases
    dice = [float(row["dice"]) for row in nnunet_cases]
    assert all(0.0 <= value <= 1.0 for value in dice)
    assert float(records["nnunet"]["dice_mean"]) == pytest.approx(np.mean(dice))


def test_export_writes_other_scan_formats_as_nifti_on_their_grid(synthetic_root, tmp_path):
    import torchio as tio

    root = tmp_path / "nrrd"
    shutil.copytree(synthetic_root, root)
    description = json.loads((root / "dataset.json").read_text())
    for entry in description["training"]:
        source = root / entry["image"]
        tio.ScalarImage(source).save(source.with_name(source.name.replace(".nii.gz", ".nrrd")))
        source.unlink()
        entry["image"] = entry["image"].replace(".nii.gz", ".nrrd")
    (root / "dataset.json").write_text(json.dumps(description))
    folder = _export(root, tmp_path)
    for image in sorted((folder / "imagesTr").iterdir()):
        case = image.name.removesuffix("_0000.nii.gz")
        original = nib.load(synthetic_root / "imagesTr" / f"{case}.nii.gz")
        exported = nib.load(image)
        assert np.array_equal(np.asarray(exported.dataobj), np.asarray(original.dataobj))
        assert np.allclose(exported.affine, original.affine, atol=1e-4)
        assert np.array_equal(nib.load(folder / "labelsTr" / f"{case}.nii.gz").affine, exported.affine)
