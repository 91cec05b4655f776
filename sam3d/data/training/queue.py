"""The training patch stream: a TorchIO Queue whose every epoch is a pure function of (seed, epoch, rank).

* Subject order: a ``DistributedSampler`` over subjects (one replica without DDP) seeded by (seed,
  epoch), so each rank draws its own part of the epoch's permutation.
* Patch centres, augmentations and clicks: each subject is loaded and transformed with torch's
  generator seeded by (seed, epoch, subject index), in whichever worker process loads it.
* The Queue's patch shuffles: a generator seeded by (seed, epoch, rank, fill).

Nothing depends on a generator's running state, on the number of workers or on what earlier epochs
drew, so an epoch draws the same patches whether or not the run was interrupted before it. The
loader is resumable as Lightning expects (``state_dict``/``load_state_dict``): it records the seed and
where training stands, and a run resumed from a checkpoint written mid-epoch replays (draws and
discards) the patches already trained on, then continues with the very patches the uninterrupted run
trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torchio as tio
from torch.utils.data import DistributedSampler, Sampler

__all__ = ["EpochQueue", "EpochSampler", "EpochSubjects", "PatchLoader", "stream_seed"]


def stream_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (NumPy's ``SeedSequence`` hashing)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> np.uint64(1))


class EpochSubjects(tio.SubjectsDataset):
    """Subjects whose loading and transform draw only from a generator seeded by (seed, epoch, index).

    Args:
        subjects: The subjects.
        transform: Their (random) transform.
        seed: The run's seed.
    """

    def __init__(self, subjects: Sequence[tio.Subject], transform: Callable, seed: int) -> None:
        super().__init__(list(subjects), transform=transform)
        self.seed, self.epoch = seed, 0

    def __getitem__(self, index: int) -> tio.Subject:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(stream_seed(self.seed, self.epoch, index))
            return super().__getitem__(index)


class EpochQueue(tio.Queue):
    """A :class:`torchio.Queue` whose epochs start afresh and shuffle patches with seeded generators.

    :meth:`start_epoch` empties the Queue and restarts its subject loader on the epoch's subjects, so
    no patch or subject carries over from one epoch to the next. This relies on TorchIO 1.x internals
    (``patches_list``, ``_incomplete_subject``, ``_subjects_iterable``, ``_shuffle_patches_list``);
    sam3d pins ``torchio<2``.

    Args:
        subjects: The training subjects.
        max_length: Patches the Queue holds.
        samples_per_volume: Patches drawn from each subject.
        sampler: Patch sampler.
        num_workers: Worker processes loading and transforming subjects.
        rank: This process's rank.
        world_size: Number of processes (each draws ``len(subjects) // world_size`` subjects an epoch).
    """

    def __init__(
        self,
        subjects: EpochSubjects,
        max_length: int,
        samples_per_volume: int,
        sampler: tio.data.sampler.PatchSampler,
        num_workers: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        subject_sampler: DistributedSampler[int] = DistributedSampler(
            subjects, num_replicas=world_size, rank=rank, shuffle=True, seed=subjects.seed, drop_last=True
        )
        super().__init__(
            subjects,
            max_length,
            samples_per_volume,
            sampler,
            subject_sampler=subject_sampler,
            num_workers=num_workers,
            shuffle_subjects=False,
            shuffle_patches=True,
            start_background=False,
        )
        self.seed, self.rank, self.epoch, self._fills = subjects.seed, rank, 0, 0
        # The Queue's own `subjects_dataset` and `subject_sampler`, with their types.
        self.epoch_subjects, self.epoch_sampler = subjects, subject_sampler

    def start_epoch(self, epoch: int) -> None:
        """Empty the Queue; the next patch comes from the first subject of ``epoch``."""
        self.epoch, self._fills = epoch, 0
        self.epoch_subjects.seed = self.epoch_sampler.seed = self.seed
        self.epoch_subjects.epoch = epoch
        self.epoch_sampler.set_epoch(epoch)
        self.patches_list = []
        self._incomplete_subject = None
        self._subjects_iterable = None  # rebuilt (with new workers) on the next fill

    def _shuffle_patches_list(self) -> None:
        generator = torch.Generator().manual_seed(stream_seed(self.seed, self.epoch, self.rank, self._fills))
        self._fills += 1
        order = torch.randperm(len(self.patches_list), generator=generator).tolist()
        self.patches_list = [self.patches_list[i] for i in order]


class EpochSampler(Sampler[int]):
    """Sampler of the outer loader: each iteration is one whole epoch of the Queue.

    Lightning calls :meth:`set_epoch` at every epoch start (also with ``use_distributed_sampler=False``).
    On a resumed run it creates the first iterator before that call, so the epoch to start with comes
    from :meth:`PatchLoader.load_state_dict`.

    Args:
        queue: The patch Queue.
    """

    def __init__(self, queue: EpochQueue) -> None:
        self.queue, self.epoch, self.skip = queue, 0, 0

    def __len__(self) -> int:
        return len(self.queue)

    def set_epoch(self, epoch: int) -> None:
        """Draw the patches of ``epoch`` on the next iteration."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        self.queue.start_epoch(self.epoch)
        skip, self.skip = min(self.skip, len(self.queue)), 0
        for _ in range(skip):  # patches trained on before the checkpoint: drawn again, not trained on
            self.queue[0]
        return iter(range(skip, len(self.queue)))


class PatchLoader(tio.SubjectsLoader):
    """Training batches from an :class:`EpochQueue`, resumable from any checkpoint.

    Args:
        queue: The patch Queue (the Queue has its own workers; this loader has none).
        batch_size: Patches per batch.
        collate_fn: Collates patches into a batch.
        progress: Returns whether the current epoch's training is done and how many of its batches
            were trained on (Lightning prefetches a batch, so the loader cannot count this itself).
    """

    def __init__(
        self,
        queue: EpochQueue,
        batch_size: int,
        collate_fn: Callable[[list[tio.Subject]], Any],
        progress: Callable[[], tuple[bool, int]],
    ) -> None:
        sampler = EpochSampler(queue)
        super().__init__(queue, batch_size=batch_size, num_workers=0, sampler=sampler, collate_fn=collate_fn)
        # The loader's own `dataset` and `sampler`, with their types.
        self.queue, self.epoch_sampler, self.progress = queue, sampler, progress
        self.patches_per_batch = batch_size

    def state_dict(self) -> dict[str, int]:
        """Where an uninterrupted run goes on from here: its seed, epoch and batches already trained on."""
        done, batches = self.progress()
        epoch = self.epoch_sampler.epoch
        return {
            "seed": self.queue.seed,
            "epoch": epoch + 1 if done else epoch,
            "batches": 0 if done else batches,
        }

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Continue from a checkpoint's :meth:`state_dict` on the next iteration."""
        self.queue.seed = state_dict["seed"]
        self.epoch_sampler.epoch = state_dict["epoch"]
        self.epoch_sampler.skip = state_dict["batches"] * self.patches_per_batch
