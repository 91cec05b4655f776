"""Under DDP every rank's Queue loads only its own subjects, and the partition changes every epoch."""

import json
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from sam3d.data import VolumeDataModule
from sam3d.data.splits import save_splits


def _rank(rank: int, world: int, root: str, split: str, out: str, workers: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world)
    try:
        dm = VolumeDataModule(
            root,
            dataset="msd",
            split_file=split,
            patch_size=(16, 16, 16),
            num_workers=workers,
            samples_per_volume=2,
            queue_length=4,
            cache_dir=f"{out}/cache",
            seed=3,
            intensity_window=(-100.0, 200.0),
            mean=50.0,
            std=50.0,
        )
        if rank == 0:
            dm.prepare_data()
        dist.barrier()
        dm.setup("fit")
        loader = dm.train_dataloader()
        seen = []
        for epoch in range(3):
            loader.sampler.set_epoch(epoch)  # what Lightning does at each epoch start
            seen.append(sorted({case for batch in loader for case in batch["case_id"]}))
        Path(out, f"rank{rank}.json").write_text(json.dumps(seen))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_each_rank_loads_its_own_subjects_and_the_partition_reshuffles(tmp_path, volumes, workers):
    root = volumes.write_msd(tmp_path / "blobs", {f"case_{i}": volumes.blob_case() for i in range(8)})
    entries = [
        {"case_id": f"case_{i}", "image": f"imagesTr/case_{i}.nii.gz", "label": f"labelsTr/case_{i}.nii.gz"}
        for i in range(8)
    ]
    split = save_splits(tmp_path / "split.json", "msd", "t", [{"train": entries, "val": [], "test": []}])
    mp.spawn(_rank, args=(2, str(root), str(split), str(tmp_path), workers), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    everything = sorted(e["case_id"] for e in entries)
    for epoch in range(3):
        first, second = set(ranks[0][epoch]), set(ranks[1][epoch])
        assert len(first) == len(second) == 4
        assert not first & second
        assert sorted(first | second) == everything
    assert len({tuple(ranks[0][epoch]) for epoch in range(3)}) > 1  # the partition changes with the epoch
