"""``VolumeDataModule``: cases, folds, cache, TorchIO Queue and loaders for promptable segmentation."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from sam3d.data.catalog import PRESETS, Case, DatasetName
from sam3d.data.checks import check_targets
from sam3d.data.clicks import ClickMode, checked_click_mode
from sam3d.data.errors import DatasetError, format_problems
from sam3d.data.folds import FoldCases, Part, fold_cases
from sam3d.data.preprocessing import Preprocessing, RequestedPreprocessing
from sam3d.data.scans.evaluation_cases import EvaluationCases
from sam3d.data.scans.prediction_cases import PredictionCases
from sam3d.data.stats import fill_statistics
from sam3d.data.training.cache import CachedCase, cache_usable, default_cache_dir
from sam3d.data.training.patches import (
    PatchSettings,
    StackedPatchSampler,
    TrainingPatches,
    ValidationPatches,
    collate_patches,
)
from sam3d.data.training.queue import EpochQueue, EpochSubjects, PatchLoader
from sam3d.errors import Sam3dError, Sam3dWarning

__all__ = ["PREDICT_NEEDS", "VolumeDataModule"]

# What ``sam3d predict`` needs of the data module (refused by the CLI before anything is built).
PREDICT_NEEDS = "sam3d predict needs --data.predict_scans (files or folders) and --data.predict_clicks"


def _rank_and_world_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _rank_share(dataset: Dataset) -> DistributedSampler | None:
    """Under DDP, each rank's share of an evaluation dataset (in order; a few cases repeat)."""
    return DistributedSampler(dataset, shuffle=False) if _rank_and_world_size()[1] > 1 else None


class VolumeDataModule(L.LightningDataModule):
    """CT volumes -> canonical 1 mm, windowed, z-scored patches with simulated clicks.

    Training batches come from a :class:`torchio.Queue` whose worker processes load cached volumes,
    draw crops 1.2x the patch (positive:negative centres 2:1), augment them as the reference does and
    simulate clicks. Validation uses one fixed positive-centred patch per case. Batches are dicts:
    ``image`` and ``label`` ``(B, 1, D, H, W)`` float32 (D axial), ``points`` ``(B, N, 3)`` float32
    ``(d, h, w)`` voxel coordinates in the patch, ``point_labels`` ``(B, N)`` int64 (1 positive,
    0 negative, -1 padding) and ``case_id``.

    Every training epoch is a pure function of (seed, epoch, rank): subject order, patch centres,
    augmentations and clicks (:mod:`sam3d.data.training.queue`). The seed is the run's
    (``seed_everything``) and is saved with the loader's position in every checkpoint, so a run
    resumed from any checkpoint (``--ckpt_path last``) trains on exactly the patches of an
    uninterrupted one.

    DDP: the trainer must run with ``use_distributed_sampler: false``. When ``torch.distributed`` is
    initialised, each rank's Queue loads only its own part of the epoch's subject permutation, which
    changes every epoch (Lightning's ``set_epoch`` call). Validation is split across ranks with a
    non-shuffling ``DistributedSampler``, which repeats a few cases when their number is not a
    multiple of the world size.

    Preprocessing (:attr:`preprocessing`: spacing, window, statistics, target labels) is resolved once
    and saved in every checkpoint (:meth:`state_dict`); with ``--ckpt_path`` the checkpoint's applies
    and the preprocessing arguments below may be left null (a value that contradicts it is refused).

    Tuples are in network order ``(D, H, W)``, i.e. (superior-inferior, anterior-posterior, left-right).

    Args:
        root: Dataset folder, or the manifest file for ``dataset="manifest"`` (not needed by ``predict``).
        dataset: Layout and defaults: ``kits``, ``pancreas``, ``lits``, ``colon`` (reference presets,
            folds and layouts), ``msd`` (any Medical Segmentation Decathlon layout) or ``manifest``.
        fold: Fold of the split file to use.
        split_file: Split file in the ``sam3d-splits/1`` format. Default: the authors' folds shipped
            in ``configs/splits`` for the four named datasets, else seeded folds made on the fly.
        num_folds: Number of folds made on the fly (when there is no split file).
        patch_size: Training/validation patch size ``(D, H, W)``.
        batch_size: Patches per batch.
        num_workers: Worker processes loading and augmenting volumes (Queue) and validation patches.
        samples_per_volume: Patches drawn from each loaded volume.
        queue_length: Patches the Queue holds.
        target_spacing: Voxel size in mm after resampling, one number or ``(D, H, W)``; None for 1 mm.
        intensity_window: Clipping window; None for the dataset's default (computed from the
            training cases' foreground for ``msd``/``manifest``).
        mean: Z-scoring mean after clipping; None as for the window.
        std: Z-scoring standard deviation; None as for the window.
        target_label: Label value(s) forming the target; None for the dataset's default (or the one its
            ``dataset.json``/manifest declares).
        cache_dir: Folder of resampled volumes; None for ``$SAM3D_CACHE_DIR`` or ``~/.cache/sam3d/volumes``.
        augment: Apply the reference's augmentations to training patches.
        in_plane_augmentation: Zoom/rotate in the axial plane only; None for the dataset's default
            (True for pancreas and colon).
        pos_neg_ratio: Relative frequency of positive and negative training patch centres.
        click_mode: ``"reference"`` (all clicks labelled 1, as the reference), ``"labelled"`` or
            ``"interactive"`` (first clicks here; the model adds simulated corrections, see
            :class:`sam3d.module.VolumetricSamModule`). The one click-mode setting: the CLI links it to
            the promptable model's ``click_mode``; trainers without clicks refuse ``interactive``.
        num_positive_clicks: Clicks drawn from the target (training and validation).
        num_context_clicks: Training clicks drawn from the whole patch (reference) or background (labelled;
            interactive: only in patches without target).
        seed: Seed of on-the-fly folds and validation patches (and of training patches when the run
            sets no seed with ``seed_everything``).
        predict_scans: ``predict`` only: scan files (NIfTI, NRRD, MHA) or folders of scans.
        predict_clicks: ``predict`` only: the clicks file. CSV: a header row naming the columns scan, x, y,
            z, space, label, and optionally object (an id, 1 to 255) and object_name; scan is a path,
            file name or case id, space voxel (file indices), world (RAS+ mm) or world_lps (LPS+ mm),
            label positive or negative. JSON: ``{"scans": [{"scan": ..., "clicks": [{"position": [x, y,
            z], "space": ..., "label": ...}]}]}``, where a scan's ``"interactions"`` list may also hold
            boxes and scribbles (docs/evaluation.md; :mod:`sam3d.data.scans.click_files`).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        dataset: DatasetName = "msd",
        fold: int = 0,
        split_file: str | None = None,
        num_folds: int = 5,
        patch_size: tuple[int, int, int] = (128, 128, 128),
        batch_size: int = 1,
        num_workers: int = 2,
        samples_per_volume: int = 4,
        queue_length: int = 16,
        target_spacing: float | tuple[float, float, float] | None = None,
        intensity_window: tuple[float, float] | None = None,
        mean: float | None = None,
        std: float | None = None,
        target_label: int | list[int] | None = None,
        cache_dir: str | None = None,
        augment: bool = True,
        in_plane_augmentation: bool | None = None,
        pos_neg_ratio: tuple[float, float] = (2.0, 1.0),
        click_mode: ClickMode = "reference",
        num_positive_clicks: int = 10,
        num_context_clicks: int = 20,
        seed: int = 0,
        predict_scans: list[str] | None = None,
        predict_clicks: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if dataset not in ("kits", "pancreas", "lits", "colon", "msd", "manifest"):
            raise Sam3dError(f"dataset must be kits, pancreas, lits, colon, msd or manifest, got {dataset!r}")
        if len(patch_size) != 3 or not all(isinstance(n, int) and n >= 8 for n in patch_size):
            raise Sam3dError(f"patch_size must be three integers >= 8, got {patch_size!r}")
        for name, value, low in [
            ("fold", fold, 0),
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
            ("samples_per_volume", samples_per_volume, 1),
            ("queue_length", queue_length, 1),
            ("num_positive_clicks", num_positive_clicks, 0),
            ("num_context_clicks", num_context_clicks, 0),
        ]:
            if not isinstance(value, int) or value < low:
                raise Sam3dError(f"{name} must be an integer >= {low}, got {value!r}")
        if intensity_window is not None and not intensity_window[0] < intensity_window[1]:
            raise Sam3dError(
                f"intensity_window must be (low, high) with low < high, got {intensity_window!r}"
            )
        if std is not None and std <= 0:
            raise Sam3dError(f"std must be positive, got {std}")
        if len(pos_neg_ratio) != 2 or min(pos_neg_ratio) < 0 or sum(pos_neg_ratio) <= 0:
            raise Sam3dError(
                f"pos_neg_ratio must be two non-negative numbers, not both 0, got {pos_neg_ratio!r}"
            )
        self.root = Path(root).expanduser() if root is not None else None
        self.dataset, self.fold = dataset, fold
        self.predict_scans, self.predict_clicks = predict_scans, predict_clicks
        self.split_file = split_file
        self.num_folds = num_folds
        depth, height, width = patch_size
        self.patch_size = (depth, height, width)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.samples_per_volume, self.queue_length = samples_per_volume, queue_length
        self.requested = RequestedPreprocessing.from_arguments(
            target_spacing, intensity_window, mean, std, target_label
        )
        preset = PRESETS.get(dataset)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.augment = augment
        self.in_plane_augmentation = (
            in_plane_augmentation
            if in_plane_augmentation is not None
            else bool(preset and preset.in_plane_only)
        )
        self.pos_neg_ratio = (float(pos_neg_ratio[0]), float(pos_neg_ratio[1]))
        self.click_mode: ClickMode = checked_click_mode(click_mode)
        self.num_positive_clicks, self.num_context_clicks = num_positive_clicks, num_context_clicks
        self.seed = seed
        self._fold: FoldCases | None = None
        self._cached: dict[str, list[CachedCase]] = {}
        self._preprocessing: Preprocessing | None = None

    # ----------------------------------------------------------------------------- preprocessing

    def _setting(self, field: str) -> Any:
        """A preprocessing value known without statistics: the checkpoint's, the config's or the preset's."""
        if self._preprocessing is not None:
            return getattr(self._preprocessing, field)
        value = getattr(self.requested, field)
        return getattr(PRESETS.get(self.dataset), field, None) if value is None else value

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm after resampling, ``(D, H, W)`` (1 mm unless configured or checkpointed)."""
        return self._setting("spacing") or (1.0, 1.0, 1.0)

    @property
    def target_labels(self) -> tuple[int, ...]:
        """Label values forming the target: configured, the dataset's, or declared by its layout."""
        labels = self._setting("target_labels")
        if labels is None and self.root is not None:
            self.cases("train")
            labels = self._fold.declared_labels if self._fold is not None else None
        if not labels:
            raise DatasetError(
                f"no target label for {self.root}: set data.target_label to the label value(s) to segment"
            )
        return tuple(labels)

    @property
    def preprocessing(self) -> Preprocessing:
        """The run's preprocessing, resolved once.

        A checkpoint's (see :meth:`load_state_dict`), else the config's values, the dataset preset's, and
        statistics of the training cases for what is still missing.
        """
        if self._preprocessing is None:
            window, mean, std = (self._setting(field) for field in ("window", "mean", "std"))
            if window is None or mean is None or std is None:
                if self.root is None:
                    raise DatasetError(
                        "the intensity window, mean and std are unknown: pass the trained checkpoint with "
                        "--ckpt_path (it records them), or set data.intensity_window, data.mean and data.std"
                    )
                self._cache(("train",))
                samples = [case.meta["foreground_sample"] for case in self._cached["train"]]
                window, mean, std = fill_statistics(window, mean, std, samples)
            self._preprocessing = Preprocessing(self.spacing, window, mean, std, self.target_labels)
        return self._preprocessing

    def state_dict(self) -> dict[str, Any]:
        """What every checkpoint holds of the data module: the preprocessing the network is trained for."""
        return {"preprocessing": self._preprocessing.as_dict()} if self._preprocessing is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Adopt a checkpoint's preprocessing; config values that contradict it are refused, naming both.

        Raises:
            DatasetError: If the config sets a preprocessing value that differs from the checkpoint's.
        """
        if "preprocessing" not in state_dict:
            return
        stored = Preprocessing.from_dict(state_dict["preprocessing"])
        if contradictions := self.requested.contradictions(stored):
            raise DatasetError(
                "the config contradicts the preprocessing the checkpoint's network was trained with; remove "
                "these settings (the checkpoint's apply) or train anew:",
                contradictions,
            )
        if self._preprocessing is not None and self._preprocessing.spacing != stored.spacing:
            self._cached.clear()  # cached at another spacing
        self._preprocessing = stored

    def preprocessing_arguments(self) -> dict[str, Any]:
        """The resolved preprocessing as this module's arguments (for the run's saved config); empty before."""
        return (
            RequestedPreprocessing.arguments(self._preprocessing) if self._preprocessing is not None else {}
        )

    # ----------------------------------------------------------------------------- split and cache

    def cases(self, part: Part) -> list[Case]:
        """The cases of one part of the selected fold, with their files located (not yet checked)."""
        if self._fold is None:
            if self.root is None:
                raise DatasetError("data.root is not set: pass --data.root with the dataset folder")
            self._fold = fold_cases(
                self.root, self.dataset, self.fold, self.split_file, self.num_folds, self.seed
            )
        return self._fold.parts[part]

    def _cache(self, parts: tuple[Part, ...]) -> None:
        """Check and cache the cases of ``parts``, raising one error listing every problem case."""
        todo = [part for part in parts if part not in self._cached]
        if not todo:
            return
        targets = self.target_labels
        cases = [case for part in todo for case in self.cases(part)]
        cached = iter(cache_usable(cases, self.cache_dir, self.spacing[::-1]))
        for part in todo:
            self._cached[part] = [next(cached) for _ in self.cases(part)]
        check_targets(
            [case for part in todo for case in self._cached[part]], targets, self.patch_size, self.spacing
        )

    def prepare_data(self) -> None:
        """Check and cache the training and validation volumes (once per node, before DDP set-up)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.state.fn in ("fit", "validate"):
            self._cache(("train", "val"))

    def setup(self, stage: str | None = None) -> None:
        """Check and cache the volumes the stage needs (cache hits only when ``prepare_data`` ran).

        Testing reads whole test volumes one at a time instead (see :meth:`test_dataloader`), so a bad
        test case is reported and skipped while the others are evaluated.
        """
        if stage == "predict":
            if not self.predict_scans or not self.predict_clicks:
                raise DatasetError(PREDICT_NEEDS)
            return
        if stage == "test":
            if not self.cases("test"):
                raise DatasetError(f"fold {self.fold} has an empty test split")
            return  # resolved by the test loader, after Lightning restored a checkpoint's preprocessing
        self._cache(("train", "val"))
        self.preprocessing  # noqa: B018 (resolved now, so the run's config and checkpoints record it)
        world_size = _rank_and_world_size()[1]
        if stage in (None, "fit") and len(self._cached["train"]) < world_size:
            raise DatasetError(
                f"{len(self._cached['train'])} training cases cannot be split over {world_size} ranks"
            )
        if not self._cached.get("val", True):
            warnings.warn(
                f"fold {self.fold} has no validation cases: validation will never run, so no best checkpoint "
                "(best-*.ckpt) is written and `--ckpt_path best` will find none; give the split validation "
                "cases (data.split_file or data.num_folds) or use `--ckpt_path last`",
                Sam3dWarning,
                stacklevel=2,
            )

    # ----------------------------------------------------------------------------- loaders

    @property
    def patch_settings(self) -> PatchSettings:
        """The settings of the patch pipeline."""
        return PatchSettings(
            patch_size=self.patch_size[::-1],
            preprocessing=self.preprocessing,
            pos_neg_ratio=self.pos_neg_ratio,
            click_mode=self.click_mode,
            num_positive_clicks=self.num_positive_clicks,
            num_context_clicks=self.num_context_clicks,
            augment=self.augment,
            in_plane_only=self.in_plane_augmentation,
        )

    def train_dataloader(self) -> DataLoader:
        """Patch batches from a TorchIO Queue, built here (after DDP initialisation)."""
        self._cache(("train",))
        transform = TrainingPatches(self.patch_settings, self.samples_per_volume)
        subjects = EpochSubjects(
            [case.subject() for case in self._cached["train"]], transform, self._stream_seed()
        )
        rank, world_size = _rank_and_world_size()
        queue = EpochQueue(
            subjects,
            max_length=self.queue_length,
            samples_per_volume=self.samples_per_volume,
            sampler=StackedPatchSampler(self.patch_size[::-1]),
            num_workers=self.num_workers,
            rank=rank,
            world_size=world_size,
        )
        return PatchLoader(queue, self.batch_size, collate_patches, self._training_progress)

    def _stream_seed(self) -> int:
        """Seed of the training stream: the run's (``seed_everything``), else ``seed``."""
        return int(os.environ.get("PL_GLOBAL_SEED", self.seed))

    def _training_progress(self) -> tuple[bool, int]:
        """Whether this epoch's training is done, and the batches of it trained on (Lightning's counters)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return False, 0
        progress = trainer.fit_loop.epoch_loop.batch_progress
        return progress.is_last_batch, progress.current.processed

    def val_dataloader(self) -> DataLoader:
        """One fixed positive-centred patch per validation case."""
        self._cache(("val",))
        dataset = ValidationPatches(self._cached["val"], self.patch_settings, self.seed)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            sampler=_rank_share(dataset),
            collate_fn=collate_patches,
            persistent_workers=self.num_workers > 0,
        )

    def test_dataloader(self) -> DataLoader:
        """Whole test volumes, one :class:`EvaluationCase` (or :class:`SkippedCase`) per step."""
        dataset = EvaluationCases(self.cases("test"), self.preprocessing)
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=min(self.num_workers, 1),
            sampler=_rank_share(dataset),
        )

    def predict_dataloader(self) -> DataLoader:
        """New scans with their clicks, one :class:`PredictionCase` (or :class:`SkippedCase`) per step."""
        dataset = PredictionCases(self.predict_scans or [], self.predict_clicks or "", self.preprocessing)
        if dataset.problems:
            warnings.warn(f"inputs skipped:\n{format_problems(dataset.problems)}", Sam3dWarning, stacklevel=2)
        return DataLoader(dataset, batch_size=None, num_workers=min(self.num_workers, 1))
