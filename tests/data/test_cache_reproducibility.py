"""Filling the cache must not change what a run does afterwards."""

from __future__ import annotations

import torch

from sam3d.data import VolumeDataModule


def test_filling_the_cache_leaves_the_global_random_stream_alone(synthetic_root, tmp_path):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    datamodule = VolumeDataModule(root=synthetic_root, target_label=1, cache_dir=str(tmp_path / "cache"))
    datamodule.prepare_data()
    assert any((tmp_path / "cache").iterdir())  # the cache was filled by this call
    torch.testing.assert_close(torch.rand(3), expected)
