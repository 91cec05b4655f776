"""The preprocessing travels with the network: computed once, saved in checkpoints and the run's config, reused."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from cli_helpers import predict_options, synthetic_cli_args

from sam3d.cli import main
from sam3d.data import VolumeDataModule

NULL_STATISTICS = ("--data.intensity_window", "null", "--data.mean", "null", "--data.std", "null")


@pytest.fixture(scope="module")
def fitted(synthetic_root, tmp_path_factory):
    """A one-epoch fit whose window and statistics are computed on the training cases."""
    workdir = tmp_path_factory.mktemp("null-statistics")
    main(synthetic_cli_args("fit", synthetic_root, workdir, *NULL_STATISTICS))
    checkpoint = next(workdir.glob("runs/**/checkpoints/best-*.ckpt"))
    return workdir, checkpoint, torch.load(checkpoint, weights_only=True)


def test_checkpoints_and_the_saved_config_record_the_preprocessing_that_ran(fitted):
    workdir, checkpoint, saved = fitted
    recorded = saved[VolumeDataModule.__qualname__]["preprocessing"]
    assert recorded["window"] != [-100.0, 200.0]  # not the config's values: computed on the training cases
    assert recorded["spacing"] == [1.0, 1.0, 1.0]
    assert recorded["target_labels"] == [1]
    last = torch.load(checkpoint.with_name("last.ckpt"), weights_only=True)
    assert last[VolumeDataModule.__qualname__]["preprocessing"] == recorded
    config = yaml.safe_load(next(workdir.glob("runs/**/config.yaml")).read_text())["data"]
    assert config["intensity_window"] == recorded["window"]
    assert (config["mean"], config["std"]) == (recorded["mean"], recorded["std"])
    assert config["target_label"] == [1]
    assert config["target_spacing"] == [1.0, 1.0, 1.0]


def _clicks_file(root, path):
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["scan", "x", "y", "z", "space", "label"])
        for scan in sorted((root / "imagesTr").glob("*.nii.gz"))[:2]:
            target = np.argwhere(np.asarray(nib.load(root / "labelsTr" / scan.name).dataobj) > 0)
            writer.writerow([scan.name, *target[len(target) // 2], "voxel", "positive"])
    return path


def _predict(root, workdir, checkpoint, clicks, *extra):
    output = workdir / "masks"
    scans = sorted((root / "imagesTr").glob("*.nii.gz"))[:2]
    options = predict_options(checkpoint, scans, clicks, output, probabilities=True)
    main(synthetic_cli_args("predict", root, workdir, *options, *extra))
    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(output.glob("*.nii.gz"))}


def test_predict_from_the_checkpoint_alone_equals_predict_with_the_statistics_typed_in(
    synthetic_root, fitted, tmp_path, capsys
):
    _, checkpoint, saved = fitted
    recorded = saved[VolumeDataModule.__qualname__]["preprocessing"]
    clicks = _clicks_file(synthetic_root, tmp_path / "clicks.csv")
    from_checkpoint = _predict(synthetic_root, tmp_path / "a", checkpoint, clicks, *NULL_STATISTICS)
    typed = (
        "--data.intensity_window",
        json.dumps(recorded["window"]),
        "--data.mean",
        str(recorded["mean"]),
        "--data.std",
        str(recorded["std"]),
    )
    typed_in = _predict(synthetic_root, tmp_path / "b", checkpoint, clicks, *typed)
    assert len(from_checkpoint) == 4  # a mask and a probability map per scan
    assert from_checkpoint.keys() == typed_in.keys()
    for name, array in from_checkpoint.items():
        np.testing.assert_array_equal(array, typed_in[name], err_msg=name)
    assert any(array.any() for name, array in from_checkpoint.items() if "probability" in name)

    wrong_mean = ("--data.mean", str(recorded["mean"] + 1.0))
    with pytest.raises(SystemExit) as error:
        _predict(synthetic_root, tmp_path / "c", checkpoint, clicks, *wrong_mean)
    message = str(error.value.code)
    assert "data.mean" in message
    assert f"the config says {recorded['mean'] + 1.0}, the checkpoint says {recorded['mean']}" in message


def test_test_from_the_checkpoint_alone_computes_no_statistics(synthetic_root, fitted, tmp_path):
    _, checkpoint, _ = fitted
    main(
        synthetic_cli_args("test", synthetic_root, tmp_path, "--ckpt_path", str(checkpoint), *NULL_STATISTICS)
    )
    assert next(tmp_path.glob("runs/**/test/summary.json")).is_file()
    # Test cases are read directly; only computing statistics would have cached the training cases.
    assert not (tmp_path / "cache").exists()


def test_a_patch_size_the_checkpoint_was_not_trained_for_is_refused(synthetic_root, fitted, tmp_path):
    _, checkpoint, _ = fitted
    args = synthetic_cli_args("test", synthetic_root, tmp_path, "--ckpt_path", str(checkpoint))
    with pytest.raises(SystemExit) as error:
        main([*args, "--data.patch_size", "[96, 96, 96]"])
    assert "holds a network for (64, 64, 64) crops but data.patch_size is (96, 96, 96)" in str(
        error.value.code
    )
