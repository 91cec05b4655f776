"""Training epochs are pure functions of (seed, epoch, rank): what exact resume rests on."""

import pytest
import torch

from sam3d.data import VolumeDataModule


def loader(root, tmp_path, workers=0):
    dm = VolumeDataModule(
        root,
        dataset="msd",
        num_folds=3,
        patch_size=(16, 16, 16),
        batch_size=2,
        num_workers=workers,
        samples_per_volume=3,
        queue_length=4,  # not a multiple of samples_per_volume: volumes are split across Queue fills
        cache_dir=str(tmp_path / "cache"),
        target_spacing=2.0,
        target_label=1,
        intensity_window=(-100.0, 200.0),
        mean=50.0,
        std=50.0,
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm.train_dataloader()


def epoch(patch_loader, number):
    patch_loader.sampler.set_epoch(number)  # what Lightning does at each epoch start
    return list(patch_loader)


def assert_same(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert a["case_id"] == b["case_id"]
        for key in ("image", "label", "points", "point_labels"):
            assert torch.equal(a[key], b[key]), key


@pytest.fixture(autouse=True)
def _run_seed(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # what seed_everything(0) sets


def test_an_epoch_draws_the_same_patches_whatever_came_before_and_however_many_workers(
    synthetic_root, tmp_path, monkeypatch
):
    uninterrupted = loader(synthetic_root, tmp_path)
    epochs = [epoch(uninterrupted, number) for number in range(3)]
    assert_same(epoch(loader(synthetic_root, tmp_path), 2), epochs[2])  # a fresh process at epoch 2
    assert_same(epoch(loader(synthetic_root, tmp_path, workers=1), 2), epochs[2])
    torch.rand(5)  # the global random stream plays no part
    assert_same(epoch(uninterrupted, 1), epochs[1])
    assert not torch.equal(epochs[1][0]["image"], epochs[2][0]["image"])
    monkeypatch.setenv("PL_GLOBAL_SEED", "1")
    assert not torch.equal(epoch(loader(synthetic_root, tmp_path), 2)[0]["image"], epochs[2][0]["image"])


def test_a_loader_resumed_mid_epoch_continues_with_the_batches_of_the_uninterrupted_run(
    synthetic_root, tmp_path
):
    uninterrupted = loader(synthetic_root, tmp_path)
    reference = epoch(uninterrupted, 1)
    assert len(reference) == 5
    uninterrupted.progress = lambda: (False, 2)  # two batches of epoch 1 trained on
    state = uninterrupted.state_dict()
    assert state == {"seed": 0, "epoch": 1, "batches": 2}
    resumed = loader(synthetic_root, tmp_path)
    resumed.load_state_dict(state)
    assert_same(list(resumed), reference[2:])  # first iteration: before Lightning calls set_epoch
    uninterrupted.progress = lambda: (True, 5)
    assert uninterrupted.state_dict() == {"seed": 0, "epoch": 2, "batches": 0}
