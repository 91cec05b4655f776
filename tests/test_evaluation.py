"""`sam3d test` and `sam3d predict` end to end: reports, determinism, bad cases, output geometry."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from cli_helpers import SYNTHETIC_CONFIG, predict_options, synthetic_cli_args
from scipy.integrate import trapezoid
from test_interaction import BoxAndScribbleNet

from sam3d.cli import main
from sam3d.cvpr25 import challenge_box, challenge_correction_click, step_scores
from sam3d.data import VolumeDataModule
from sam3d.data.scans.evaluation_cases import EvaluationCase
from sam3d.data.synthetic import make_synthetic_dataset
from sam3d.evaluation import EvaluationSettings, evaluate_cvpr25_case
from sam3d.reporting import click_auc, summary

CONFIG = SYNTHETIC_CONFIG
_args = synthetic_cli_args


def _test(root, workdir, checkpoint, *extra):
    main(_args("test", root, workdir, "--ckpt_path", str(checkpoint), *extra))
    folder = next(workdir.glob("runs/**/test"))
    with open(folder / "cases.csv") as stream:
        rows = list(csv.DictReader(stream))
    return rows, json.loads((folder / "summary.json").read_text()), folder


def _predict(*options: str) -> None:
    main(["predict", "--config", str(CONFIG), *options, "--trainer.logger", "false"])


def test_report_with_refinement_and_repeats_is_reproducible(synthetic_root, trained, tmp_path):
    _, checkpoint = trained
    extra = ("--evaluation.refinement_clicks", "2", "--evaluation.repeats", "2", "--evaluation.seed", "7")
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    rows, summary, folder = _test(synthetic_root, first_dir, checkpoint, *extra)
    again, _, _ = _test(synthetic_root, second_dir, checkpoint, *extra)
    test_cases = {
        case.case_id for case in VolumeDataModule(root=synthetic_root, target_label=1).cases("test")
    }
    assert {row["case"] for row in rows} == test_cases
    assert sorted({int(row["clicks"]) for row in rows}) == [1, 2, 3]
    assert len(rows) == len(test_cases) * 2 * 3
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in again]
    assert set(summary["by_clicks"]) == {"1", "2", "3"}
    for metric in ("dice", "nsd"):
        curves = {}
        for row in rows:  # rows come ordered by case, repeat and clicks
            curves.setdefault((row["case"], row["repeat"]), []).append(float(row[metric]))
        areas = [trapezoid(curve) for curve in curves.values()]
        assert summary["click_auc"][metric]["mean"] == pytest.approx(np.mean(areas))
        assert summary["click_auc"][metric]["count"] == len(test_cases) * 2
    assert summary["click_auc"]["steps"] == 3
    assert summary["across_repeats"]["dice"]["repeats"] == 2
    assert summary["settings"]["seed"] == 7
    assert len(list(folder.glob("best_*.png"))) == 1
    assert len(list(folder.glob("worst_*.png"))) == 1


def test_case_without_label_or_with_another_grid_is_skipped(trained, tmp_path):
    _, checkpoint = trained
    root = make_synthetic_dataset(tmp_path / "data", num_cases=9, seed=1)
    test_cases = VolumeDataModule(root=root, target_label=1, num_folds=3).cases("test")
    assert len(test_cases) >= 3
    first, second = sorted(case.case_id for case in test_cases)[:2]
    (root / "labelsTr" / f"{first}.nii.gz").unlink()
    label = nib.load(root / "labelsTr" / f"{second}.nii.gz")
    shifted = label.affine.copy()
    shifted[:3, 3] += 7.0
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj), shifted), root / "labelsTr" / f"{second}.nii.gz")
    with pytest.warns(UserWarning, match=f"test case {first} skipped"):
        rows, summary, _ = _test(root, tmp_path / "work", checkpoint, "--data.num_folds", "3")
    assert set(summary["skipped"]) == {first, second}
    assert "no label file" in summary["skipped"][first]
    assert "origin" in summary["skipped"][second]
    assert rows
    assert {row["case"] for row in rows}.isdisjoint({first, second})


def test_checkpoint_of_another_network_size(synthetic_root, trained, tmp_path, capsys):
    _, checkpoint = trained
    with pytest.raises(SystemExit) as exit_info:
        main(
            _args(
                "test", synthetic_root, tmp_path, "--ckpt_path", str(checkpoint), "--model.variant", "vit_b"
            )
        )
    assert "holds a tiny network but the config asks for vit_b" in str(exit_info.value.code)


def _write_clicks(path: Path, rows: list[tuple]) -> Path:
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["scan", "x", "y", "z", "space", "label"])
        writer.writerows(rows)
    return path


def test_predict_writes_masks_in_each_scans_own_geometry(shared_ct_root, trained, tmp_path, capsys):
    _, checkpoint = trained
    scans = sorted((shared_ct_root / "imagesTr").glob("*.nii.gz"))[:2]
    rows = []
    for scan in scans:
        label = np.asarray(nib.load(shared_ct_root / "labelsTr" / scan.name).dataobj)
        i, j, k = np.argwhere(label > 0)[len(np.argwhere(label > 0)) // 2]
        rows.append((scan.name, i, j, k, "voxel", "positive"))
    rows.append(("missing_scan.nii.gz", 1, 1, 1, "voxel", "positive"))
    rows.append((scans[1].name, 10_000, 1, 1, "voxel", "negative"))  # outside the second scan
    clicks = _write_clicks(tmp_path / "clicks.csv", rows)
    output = tmp_path / "masks"
    with pytest.warns(UserWarning, match="missing_scan"):
        _predict(*predict_options(checkpoint, scans, clicks, output, probabilities=True))
    printed = capsys.readouterr().out
    assert f"{scans[1].name.removesuffix('.nii.gz')}: skipped" in printed
    assert "outside" in printed
    source = nib.load(scans[0])
    mask = nib.load(output / scans[0].name.replace(".nii.gz", "_mask.nii.gz"))
    assert mask.shape == source.shape
    np.testing.assert_allclose(mask.affine, source.affine)
    assert nib.aff2axcodes(mask.affine) == nib.aff2axcodes(source.affine)
    probability = nib.load(output / scans[0].name.replace(".nii.gz", "_probability.nii.gz"))
    assert probability.shape == source.shape
    assert np.isfinite(np.asarray(probability.dataobj)).all()
    assert not (output / scans[1].name.replace(".nii.gz", "_mask.nii.gz")).exists()


def test_predict_masks_use_the_one_threshold_and_keep_their_config(synthetic_root, trained, tmp_path):
    _, checkpoint = trained
    scan = min((synthetic_root / "imagesTr").glob("*.nii.gz"))
    label = np.asarray(nib.load(synthetic_root / "labelsTr" / scan.name).dataobj)
    i, j, k = np.argwhere(label > 0)[len(np.argwhere(label > 0)) // 2]
    clicks = _write_clicks(tmp_path / "clicks.csv", [(scan.name, i, j, k, "voxel", "positive")])
    output = tmp_path / "masks"
    options = predict_options(checkpoint, [scan], clicks, output, probabilities=True)
    _predict(*options, "--evaluation.threshold", "0.3")
    case = scan.name.removesuffix(".nii.gz")
    probability = np.asarray(nib.load(output / f"{case}_probability.nii.gz").dataobj)
    mask = np.asarray(nib.load(output / f"{case}_mask.nii.gz").dataobj)
    assert ((probability > 0.3) != (probability > 0.5)).any()  # the threshold makes a difference here
    np.testing.assert_array_equal(mask, probability > 0.3)
    assert (output / "config.yaml").is_file()  # what made the masks, beside them


def test_predict_replays_interactions_and_skips_boxes_the_network_does_not_take(
    synthetic_root, trained, tmp_path, capsys
):
    _, checkpoint = trained
    scans = sorted((synthetic_root / "imagesTr").glob("*.nii.gz"))[:2]
    entries = []
    for scan in scans:
        label = np.asarray(nib.load(synthetic_root / "labelsTr" / scan.name).dataobj)
        i, j, k = (float(c) for c in np.argwhere(label > 0)[len(np.argwhere(label > 0)) // 2])
        click = {"type": "click", "position": [i, j, k], "space": "voxel", "label": "positive"}
        entries.append({"scan": scan.name, "interactions": [click, {**click, "position": [i, j, k + 1]}]})
    box = {"type": "box", "corners": [[i, j, k], [i + 2, j + 2, k]], "space": "voxel"}
    entries[1]["interactions"].append(box)
    clicks = tmp_path / "interactions.json"
    clicks.write_text(json.dumps({"scans": entries}))
    output = tmp_path / "masks"
    _predict(*predict_options(checkpoint, scans, clicks, output))
    printed = capsys.readouterr().out
    first, second = (scan.name.removesuffix(".nii.gz") for scan in scans)
    assert f"{first}: 2 click(s)" in printed
    assert (output / f"{first}_mask.nii.gz").is_file()
    skipped = next(line for line in printed.splitlines() if line.startswith(f"{second}: skipped"))
    assert str(clicks) in skipped
    assert str(scans[1]) in skipped
    assert "takes no box prompts" in skipped
    assert "model.dense_prompts" in skipped
    assert not (output / f"{second}_mask.nii.gz").exists()


def test_predict_writes_a_label_map_and_one_mask_per_object_of_a_csv(
    synthetic_root, trained, tmp_path, capsys
):
    _, checkpoint = trained
    scan = min((synthetic_root / "imagesTr").glob("*.nii.gz"))
    label = np.asarray(nib.load(synthetic_root / "labelsTr" / scan.name).dataobj)
    inside = np.argwhere(label > 0)
    (i, j, k), (a, b, c) = inside[len(inside) // 2], inside[0]
    clicks = tmp_path / "clicks.csv"
    clicks.write_text(
        "scan,x,y,z,space,label,object,object_name\n"
        f"{scan.name},{i},{j},{k},voxel,positive,,\n"
        f"{scan.name},{a},{b},{c},voxel,positive,2,edge\n"
    )
    output = tmp_path / "masks"
    _predict(*predict_options(checkpoint, [scan], clicks, output, probabilities=True))
    case = scan.name.removesuffix(".nii.gz")
    assert f"{case}: 2 click(s), 2 objects (object 1 " in capsys.readouterr().out
    assert not (output / f"{case}_mask.nii.gz").exists()
    source = nib.load(scan)
    labels = nib.load(output / f"{case}_labels.nii.gz")
    assert labels.shape == source.shape
    np.testing.assert_allclose(labels.affine, source.affine)
    stems = {1: f"{case}_object-1_object-1", 2: f"{case}_object-2_edge"}
    probability = {
        key: torch.from_numpy(nib.load(output / f"{stem}_probability.nii.gz").get_fdata())
        for key, stem in stems.items()
    }
    for key, stem in stems.items():
        mask = np.asarray(nib.load(output / f"{stem}.nii.gz").dataobj)
        np.testing.assert_array_equal(mask, probability[key].numpy() > 0.5)
    # each voxel to the more probable object above the threshold, as written on the scan's grid
    best = torch.where(probability[2] > probability[1], 2, 1)
    expected = torch.where(torch.maximum(probability[1], probability[2]) > 0.5, best, 0)
    np.testing.assert_array_equal(np.asarray(labels.dataobj), expected.numpy())


def test_predict_needs_scans_and_clicks(trained, tmp_path, capsys):
    _, checkpoint = trained
    with pytest.raises(SystemExit) as exit_info:
        _predict("--ckpt_path", str(checkpoint))
    assert "--data.predict_scans" in str(exit_info.value.code)


def test_aggregate_folds_reports_mean_and_std_across_folds(tmp_path, capsys):
    from sam3d.reporting import summary

    paths = []
    for fold, dice in enumerate((0.6, 0.8)):
        rows = [
            {
                "case": f"c{i}",
                "repeat": 0,
                "clicks": 1,
                "dice": dice,
                "nsd": 0.9,
                "hd95": 4.0 + fold,
                "seconds": 1.0,
            }
            for i in range(3)
        ]
        path = tmp_path / f"fold{fold}.json"
        path.write_text(json.dumps(summary(rows, EvaluationSettings())))
        paths.append(str(path))
    main(
        [
            "aggregate-folds",
            json.dumps([str(tmp_path / "fold*.json")]),
            "--output",
            str(tmp_path / "table.md"),
        ]
    )
    table = (tmp_path / "table.md").read_text()
    assert "| 1 | 2 | 70.00 +- 14.14 | 90.00 +- 0.00 | 4.50 +- 0.71 |" in table
    with pytest.raises(SystemExit, match="does not exist"):
        main(["aggregate-folds", json.dumps([str(tmp_path / "nope.json")])])


def test_click_auc_is_the_challenges_trapezoid_over_the_click_sequence():
    dice = {1: 0.2, 2: 0.5, 3: 0.7, 4: 0.8, 5: 0.9}
    rows = [
        {
            "case": "a",
            "repeat": 0,
            "clicks": clicks,
            "dice": value,
            "nsd": value / 2,
            "hd95": 1.0,
            "seconds": 0.1,
        }
        for clicks, value in reversed(dice.items())
    ]
    # Perfect after two clicks: no correction click is added, the last scores stand for the rest.
    rows += [
        {"case": "b", "repeat": 0, "clicks": clicks, "dice": value, "nsd": value, "hd95": 0.0, "seconds": 0.1}
        for clicks, value in ((1, 0.5), (2, 1.0))
    ]
    areas = click_auc(rows, steps=5)
    assert areas["dice"] == pytest.approx([trapezoid(list(dice.values())), trapezoid([0.5, 1, 1, 1, 1])])
    assert areas["nsd"][0] == pytest.approx(trapezoid([v / 2 for v in dice.values()]))
    settings = EvaluationSettings(refinement_clicks=4)
    assert summary(rows, settings)["click_auc"]["dice"]["mean"] == pytest.approx(np.mean(areas["dice"]))
    assert summary(rows[:1], EvaluationSettings())["click_auc"] is None  # a single prediction has no curve


def test_sam3d_test_runs_the_cvpr25_protocol(synthetic_root, trained, tmp_path):
    _, checkpoint = trained
    rows, result, _ = _test(synthetic_root, tmp_path, checkpoint, "--evaluation.protocol", "cvpr25")
    cases = sorted({row["case"] for row in rows})
    assert cases
    assert len(rows) == 6 * len(cases)  # the box step and five correction steps per case
    expected = {"dsc_auc": [], "nsd_auc": [], "dsc_final": []}
    for case in cases:
        steps = sorted((r for r in rows if r["case"] == case), key=lambda r: int(r["clicks"]))
        assert [int(r["clicks"]) for r in steps] == list(range(6))
        dice, nsd = [float(r["dice"]) for r in steps], [float(r["nsd"]) for r in steps]
        assert all(n == 0 for d, n in zip(dice, nsd, strict=True) if d <= 0.2)  # the challenge's gate
        expected["dsc_auc"].append(trapezoid(dice[1:]))
        expected["nsd_auc"].append(trapezoid(nsd[1:]))
        expected["dsc_final"].append(dice[-1])
    for name, values in expected.items():
        assert result["cvpr25"][name]["mean"] == pytest.approx(np.mean(values))
    assert result["click_auc"] is None
    assert result["settings"]["protocol"] == "cvpr25"


def test_cvpr25_cases_get_the_challenges_box_clicks_and_previous_mask():
    net = BoxAndScribbleNet((16, 16, 16))
    d, h, w = torch.meshgrid(*(torch.arange(24),) * 3, indexing="ij")
    label = (d - 12) ** 2 + (h - 11) ** 2 + (w - 12) ** 2 <= 25
    case = EvaluationCase(
        "ball", torch.zeros(24, 24, 24), label, (1.0, 1.0, 1.0), lambda p: p, label, (1.0, 1.0, 1.0)
    )
    rows, prediction, _ = evaluate_cvpr25_case(net, case, EvaluationSettings(protocol="cvpr25"))
    box = challenge_box(label)
    assert box.bounds == (7, 6, 7, 17, 16, 17)
    start = torch.tensor([4, 3, 4])  # the crop centred on the box
    assert (
        net.calls[0]["boxes"][0, 0].tolist()
        == (torch.tensor(box.bounds).reshape(2, 3) - start).flatten().tolist()
    )
    boxed = torch.zeros_like(label)
    boxed[box.d_min : box.d_max + 1, box.h_min : box.h_max + 1, box.w_min : box.w_max + 1] = True
    assert torch.equal(prediction, boxed)  # this network segments its box, whatever the clicks say
    click = challenge_correction_click(label, boxed)
    assert not click.positive
    last = net.calls[-1]
    assert last["points"][0].tolist() == [list(map(float, torch.tensor(click.point) - start))] * 5
    assert last["labels"].tolist() == [[0] * 5]
    torch.testing.assert_close(last["previous_mask"][0, 0], boxed[4:20, 3:19, 4:20].float())
    dice, nsd = step_scores(boxed, label, (1.0, 1.0, 1.0))
    assert [(r["clicks"], r["dice"], r["nsd"]) for r in rows] == [(step, dice, nsd) for step in range(6)]
    clicks_only = BoxAndScribbleNet((16, 16, 16), prompts=())
    evaluate_cvpr25_case(clicks_only, case, EvaluationSettings(protocol="cvpr25"))
    # The box's centre on its middle slice, (12, 11, 12), is the first click; each step adds one more.
    assert [len(call["points"][0]) for call in clicks_only.calls] == [1, 2, 3, 4, 5, 6]
    assert clicks_only.calls[0]["points"][0, 0].tolist() == [8.0, 8.0, 8.0]
