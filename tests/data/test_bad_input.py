"""Every kind of bad input gives one clear error (or warning) at set-up naming the case and file."""

import re

import numpy as np
import pytest
import torch

from sam3d.data import DatasetError, VolumeDataModule


def datamodule(root, tmp_path, **kwargs):
    defaults = {
        "dataset": "msd",
        "num_folds": 3,
        "patch_size": (16, 16, 16),
        "num_workers": 0,
        "samples_per_volume": 2,
        "queue_length": 4,
        "cache_dir": str(tmp_path / "cache"),
        "intensity_window": (-100.0, 200.0),
        "mean": 50.0,
        "std": 50.0,
    }
    return VolumeDataModule(root, **(defaults | kwargs))


def broken_dataset(tmp_path, v):
    """Six cases, five of them broken in different ways."""
    image, label = v.blob_case()
    root = v.write_msd(tmp_path / "broken", {f"case_{i}": v.blob_case() for i in range(6)})
    (root / "labelsTr" / "case_0.nii.gz").unlink()  # missing file
    (root / "imagesTr" / "case_1.nii.gz").write_bytes(b"not a nifti file")  # unreadable
    v.write_nifti(root / "labelsTr" / "case_2.nii.gz", label[:-2])  # shape mismatch
    v.write_nifti(root / "imagesTr" / "case_3.nii.gz", np.stack([image] * 3, -1))  # multi-channel
    nan_image = image.astype(np.float32)
    nan_image[0, 0, 0] = np.nan
    v.write_nifti(root / "imagesTr" / "case_4.nii.gz", nan_image)  # NaN voxels
    return root


def test_all_problem_cases_reported_at_once_at_setup(tmp_path, volumes):
    from sam3d.data.splits import save_splits

    root = broken_dataset(tmp_path, volumes)
    entries = [
        {"case_id": f"case_{i}", "image": f"imagesTr/case_{i}.nii.gz", "label": f"labelsTr/case_{i}.nii.gz"}
        for i in range(6)
    ]
    split = save_splits(
        tmp_path / "s.json", "msd", "t", [{"train": entries[:5], "val": entries[5:], "test": []}]
    )
    with pytest.raises(DatasetError) as error:
        datamodule(root, tmp_path, split_file=str(split)).prepare_data()
    message = str(error.value)
    assert message.startswith("5 cases cannot be used")
    for case_id, pattern in {
        "case_0": r"label file not found.*labelsTr/case_0\.nii\.gz",
        "case_1": r"image file is unreadable.*imagesTr/case_1\.nii\.gz",
        "case_2": r"image shape \(24, 24, 24\) differs from label shape \(22, 24, 24\)",
        "case_3": r"image has 3 channels",
        "case_4": r"image has 1 NaN/inf voxels.*imagesTr/case_4\.nii\.gz",
    }.items():
        assert re.search(f"{case_id}: {pattern}", message), case_id
    assert "case_5:" not in message


def test_check_dataset_lists_every_problem_case_and_exits_non_zero(tmp_path, volumes):
    from sam3d.cli import main

    root = broken_dataset(tmp_path, volumes)
    with pytest.raises(SystemExit) as exit_info:
        main(["check-dataset", str(root), "--target_label", "1", "--cache_dir", str(tmp_path / "cache")])
    message = str(exit_info.value.code)
    assert message.startswith("sam3d: error: 5 of 6 cases have problems")
    assert all(f"case_{i}:" in message for i in range(5))
    assert "case_5:" not in message


def test_problem_messages_for_geometry_2d_and_spacing(tmp_path, volumes):
    v = volumes
    image, label = v.blob_case()
    root = v.write_msd(tmp_path / "geo", {f"case_{i}": v.blob_case() for i in range(4)})
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    v.write_nifti(root / "labelsTr" / "case_0.nii.gz", label, shifted)
    v.write_nifti(root / "imagesTr" / "case_1.nii.gz", image[:, :, :1])
    v.write_nifti(root / "labelsTr" / "case_1.nii.gz", label[:, :, :1])
    v.write_nifti(root / "imagesTr" / "case_2.nii.gz", image, np.diag([1.0, 1.0, 250.0, 1.0]))
    v.write_nifti(root / "labelsTr" / "case_2.nii.gz", label, np.diag([1.0, 1.0, 250.0, 1.0]))
    from sam3d.data.catalog import discover
    from sam3d.data.training.cache import cache_cases

    _, problems = cache_cases(list(discover(root, "msd").cases.values()), tmp_path / "c", (1.0, 1.0, 1.0))
    text = "\n".join(map(str, problems))
    assert re.search(r"case_0: image and label geometry \(affine\) differ by up to 5.*labelsTr/case_0", text)
    assert re.search(r"case_1: image is not a 3D volume \(shape \(24, 24, 1\)\)", text)
    assert re.search(r"case_2: image has an absurd voxel spacing of 1x1x250 mm", text)
    assert "case_3" not in text
    from sam3d.data.tools import check_dataset

    with pytest.raises(DatasetError, match="3 of 4 cases have problems"):
        check_dataset(str(root), "msd", [1])


def test_target_label_absent_everywhere_is_an_error_and_in_some_cases_a_warning(tmp_path, volumes):
    v = volumes
    root = v.write_msd(tmp_path / "lab", {f"case_{i}": v.blob_case() for i in range(6)})
    with pytest.raises(
        DatasetError, match=r"target label\(s\) \[2\] occur in no label map \(values present: \[0, 1\]\)"
    ):
        datamodule(root, tmp_path, target_label=2).prepare_data()
    _, label = v.blob_case()
    dm = datamodule(root, tmp_path, target_label=1)
    empty = dm.cases("train")[0].case_id
    v.write_nifti(root / "labelsTr" / f"{empty}.nii.gz", np.zeros_like(label))
    with pytest.warns(
        UserWarning, match=rf"(?s)have no target label \[1\].*{empty}: label has no target voxels"
    ):
        set_up_every_part(dm)


def set_up_every_part(dm):
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")


def test_fold_out_of_range_and_empty_split(tmp_path, blob_root):
    with pytest.raises(DatasetError, match=r"fold 7 is out of range: set data.fold to 0..2"):
        datamodule(blob_root, tmp_path, fold=7).prepare_data()
    from sam3d.data.splits import save_splits

    split = save_splits(tmp_path / "s.json", "msd", "t", [{"train": [], "val": [], "test": []}])
    with pytest.raises(DatasetError, match="empty training split"):
        datamodule(blob_root, tmp_path, split_file=str(split)).prepare_data()


def test_missing_root_and_bad_arguments(tmp_path):
    with pytest.raises(DatasetError, match="is not a folder"):
        datamodule(tmp_path / "nowhere", tmp_path).prepare_data()
    with pytest.raises(ValueError, match="patch_size"):
        datamodule(tmp_path, tmp_path, patch_size=(16, 16))
    with pytest.raises(ValueError, match="intensity_window"):
        datamodule(tmp_path, tmp_path, intensity_window=(10.0, -10.0))


def test_patch_larger_than_volume_is_padded_with_a_warning(tmp_path, blob_root):
    dm = datamodule(blob_root, tmp_path, patch_size=(32, 40, 32))  # volumes are 24^3
    with pytest.warns(
        UserWarning, match=r"smaller than the patch \(32, 40, 32\) and will be padded:\n  - case_"
    ):
        dm.prepare_data()
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    for batch in batches:
        assert batch["image"].shape[2:] == (32, 40, 32)
        for image, label, points in zip(batch["image"], batch["label"], batch["points"], strict=True):
            # A patch larger than the volume holds all of it: the lesion, a click on it, air padding.
            assert label.sum() > 0
            assert label[0][tuple(points[0].long())] == 1
            corners = image[0][[0, -1]][:, [0, -1]][:, :, [0, -1]]
            torch.testing.assert_close(corners, corners.flatten()[0].expand_as(corners))
            assert corners.flatten()[0] < image[0][label[0] > 0].min()
    assert sum(len(batch["image"]) for batch in batches) == len(dm.cases("train")) * dm.samples_per_volume
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape[2:] == (32, 40, 32)
    assert val["label"].sum() == 216


def test_a_full_disk_while_caching_names_the_cache_folder_and_keeps_finished_entries(
    tmp_path, blob_root, monkeypatch
):
    import errno

    import nibabel

    original_save, saved = nibabel.save, []

    def fills_the_disk(image, path):
        if len(saved) == 2:  # the first case's image and label fit on the disk
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        saved.append(path)
        original_save(image, path)

    monkeypatch.setattr(nibabel, "save", fills_the_disk)
    cache = tmp_path / "cache"
    with pytest.raises(
        DatasetError, match=rf"the disk holding the cache folder {re.escape(str(cache))} is full"
    ):
        datamodule(blob_root, tmp_path).prepare_data()
    entries = list(cache.iterdir())
    assert len(entries) == 1  # no half-written entry of the second case
    assert (entries[0] / "meta.json").is_file()
