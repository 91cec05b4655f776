import os

import lightning as L
import pytest
import torch

from sam3d.data import VolumeDataModule
from sam3d.data.catalog import discover
from sam3d.data.splits import folds_from_catalog, save_splits
from sam3d.data.training import patches
from sam3d.data.training.augmentation import random_warp
from sam3d.data.training.queue import EpochSampler
from sam3d.errors import Sam3dError


def make(root, tmp_path, **kwargs):
    defaults = {
        "dataset": "msd",
        "num_folds": 3,
        "patch_size": (24, 32, 32),
        "batch_size": 2,
        "num_workers": 0,
        "samples_per_volume": 2,
        "queue_length": 3,
        "cache_dir": str(tmp_path / "cache"),
        "target_spacing": 1.5,
    }
    dm = VolumeDataModule(root, **(defaults | kwargs))
    dm.prepare_data()
    dm.setup("fit")
    return dm


def at(volume, points):
    p = points.long()
    return volume[p[:, 0], p[:, 1], p[:, 2]]


def check_batch(batch, patch, positive_clicks):
    image, label, points, labels = batch["image"], batch["label"], batch["points"], batch["point_labels"]
    b = len(batch["case_id"])
    assert image.shape == label.shape == (b, 1, *patch)
    assert image.dtype == label.dtype == torch.float32
    assert set(label.unique().tolist()) <= {0.0, 1.0}
    assert points.shape[:2] == labels.shape
    assert points.shape[2] == 3
    assert labels.dtype == torch.int64
    assert set(labels.unique().tolist()) <= {-1, 0, 1}
    for i in range(b):
        valid = labels[i] >= 0
        assert (points[i][valid] >= 0).all()
        assert (points[i][valid] < torch.tensor(patch)).all()
        if label[i].any():  # the first clicks come from the target and must land in it
            assert (at(label[i, 0], points[i][:positive_clicks]) == 1).all()


def test_training_and_validation_batches_follow_the_contract(tmp_path, synthetic_root):
    dm = make(synthetic_root, tmp_path)
    assert dm.patch_size == (24, 32, 32)
    assert dm.spacing == (1.5, 1.5, 1.5)
    assert dm.preprocessing.spacing == (1.5, 1.5, 1.5)
    assert dm.preprocessing.window[0] < dm.preprocessing.window[1]  # computed from the training cases
    assert dm.preprocessing.std > 0
    assert dm.preprocessing.target_labels == (1,)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == -(-len(dm.cases("train")) * 2 // 2)
    for batch in batches:
        check_batch(batch, (24, 32, 32), 10)
    per_case = {}
    for batch in batches:
        for case_id, image in zip(batch["case_id"], batch["image"], strict=True):
            per_case.setdefault(case_id, []).append(image)
    # Every case gives exactly samples_per_volume distinct patches, also when the queue splits a volume.
    assert sorted(per_case) == sorted(c.case_id for c in dm.cases("train"))
    assert all(len(v) == 2 and not torch.equal(v[0], v[1]) for v in per_case.values())
    assert 0.3 < sum(b["label"].flatten(1).amax(1).sum().item() for b in batches) / sum(
        len(b["case_id"]) for b in batches
    )
    val = next(iter(dm.val_dataloader()))
    check_batch(val, (24, 32, 32), 10)
    assert (val["label"].flatten(1).sum(1) > 0).all()
    assert (val["point_labels"] == 1).all()


def test_validation_patches_are_fixed_by_the_seed(tmp_path, synthetic_root):
    first = next(iter(make(synthetic_root, tmp_path).val_dataloader()))
    again = next(iter(make(synthetic_root, tmp_path).val_dataloader()))
    assert torch.equal(first["image"], again["image"])
    assert torch.equal(first["points"], again["points"])
    # Another seed with the same folds (a split file): the same cases, other patches and clicks.
    folds = folds_from_catalog(discover(synthetic_root, "msd"), synthetic_root, num_folds=3, seed=0)
    split_file = save_splits(tmp_path / "folds.json", "msd", "test", folds)
    fixed = next(iter(make(synthetic_root, tmp_path, split_file=str(split_file)).val_dataloader()))
    other = next(iter(make(synthetic_root, tmp_path, split_file=str(split_file), seed=5).val_dataloader()))
    assert fixed["case_id"] == first["case_id"] == other["case_id"]
    assert torch.equal(fixed["points"], first["points"])
    assert not torch.equal(first["points"], other["points"])


@pytest.mark.parametrize("in_plane", [False, True])
def test_labelled_clicks_and_in_plane_augmentation(tmp_path, synthetic_root, monkeypatch, in_plane):
    drawn = []

    def recording_warp(in_plane_only):
        drawn.append(in_plane_only)
        return random_warp(in_plane_only)

    monkeypatch.setattr(patches, "random_warp", recording_warp)
    dm = make(
        synthetic_root,
        tmp_path,
        click_mode="labelled",
        num_positive_clicks=3,
        num_context_clicks=4,
        in_plane_augmentation=in_plane,
        patch_size=(16, 32, 32),
    )
    for batch in dm.train_dataloader():
        for label, points, labels in zip(batch["label"], batch["points"], batch["point_labels"], strict=True):
            valid = labels >= 0
            assert (at(label[0], points[valid]) == labels[valid].float()).all()
    # Every training crop's zoom and rotation were drawn for the requested plane.
    assert len(drawn) == len(dm.cases("train")) * dm.samples_per_volume
    assert set(drawn) == {in_plane}


def test_cache_is_reused_and_keyed_by_spacing(tmp_path, synthetic_root):
    make(synthetic_root, tmp_path)
    entries = sorted((tmp_path / "cache").iterdir())
    stamps = [os.stat(e / "image.nii").st_mtime_ns for e in entries]
    make(synthetic_root, tmp_path)
    assert sorted((tmp_path / "cache").iterdir()) == entries
    assert [os.stat(e / "image.nii").st_mtime_ns for e in entries] == stamps
    make(synthetic_root, tmp_path, target_spacing=2.0)
    assert len(list((tmp_path / "cache").iterdir())) == 2 * len(entries)
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "cache").iterdir())


class _Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, tuple(batch["case_id"])))
        return (self.weight * batch["image"].mean()).sum()

    def validation_step(self, batch, batch_idx):
        assert batch["image"].ndim == 5

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_runs_and_calls_set_epoch_on_the_queue_sampler(tmp_path, synthetic_root, monkeypatch):
    epochs = []
    monkeypatch.setattr(EpochSampler, "set_epoch", lambda self, epoch: epochs.append(epoch))
    dm = make(
        synthetic_root,
        tmp_path,
        patch_size=(16, 16, 16),
        batch_size=1,
        samples_per_volume=1,
        queue_length=2,
        target_spacing=2.0,
    )
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    model = _Recorder()
    trainer.fit(model, datamodule=dm)
    assert epochs[:2] == [0, 1]
    assert {epoch for epoch, _ in model.seen} == {0, 1}


def test_real_ct_patches_and_clicks_land_in_the_tumour(tmp_path, shared_ct_root):
    dm = make(
        shared_ct_root,
        tmp_path,
        dataset="msd",
        num_folds=4,
        patch_size=(32, 64, 64),
        target_spacing=1.0,
        samples_per_volume=2,
        queue_length=4,
        intensity_window=(-160.0, 240.0),
        mean=40.0,
        std=60.0,
    )
    assert dm.target_labels == (1,)
    positives = 0
    for batch in dm.train_dataloader():
        check_batch(batch, (32, 64, 64), 10)
        positives += int(batch["label"].flatten(1).amax(1).sum())
    assert positives >= 1
    val = next(iter(dm.val_dataloader()))
    check_batch(val, (32, 64, 64), 10)
    assert val["label"].sum() > 100
    assert (at(val["label"][0, 0], val["points"][0]) == 1).all()
    # The tumour keeps its physical size through reorientation and resampling (to within 5%).
    for case in dm._cached["train"]:
        source = case.meta["source_spacing"]
        resampled = case.meta["label_voxels"]["1"]
        import nibabel as nib

        original = (nib.load(case.case.label).get_fdata() == 1).sum() * source[0] * source[1] * source[2]
        assert abs(resampled - original) / original < 0.05, case.case.case_id


def test_the_data_module_refuses_an_unknown_click_mode(synthetic_root):
    with pytest.raises(Sam3dError, match="unknown click mode 'boxes': click_mode must be one of reference"):
        VolumeDataModule(synthetic_root, click_mode="boxes")  # type: ignore[arg-type]
