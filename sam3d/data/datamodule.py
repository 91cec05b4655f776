"""``VolumeDataModule``: cases, folds, cache, TorchIO Queue and loaders for promptable segmentation."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import lightning as L
import torch.distributed as dist
import torchio as tio
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from sam3d.data.cache import CachedCase, cache_cases, default_cache_dir
from sam3d.data.catalog import PRESETS, Case, DatasetName, discover, resolve_split_cases
from sam3d.data.clicks import ClickMode
from sam3d.data.errors import DatasetError, Problem, format_problems
from sam3d.data.patches import (
    PatchSettings,
    StackedPatchSampler,
    TrainingPatches,
    ValidationPatches,
    collate_patches,
)
from sam3d.data.prediction_cases import PredictionCases
from sam3d.data.splits import PARTS, SHIPPED_SPLITS, SplitFile, folds_from_catalog, load_splits
from sam3d.data.stats import intensity_statistics
from sam3d.data.test_cases import EvaluationCases
from sam3d.data.transforms import BinarizeLabel, Normalize
from sam3d.errors import Sam3dError

__all__ = ["VolumeDataModule"]

log = logging.getLogger(__name__)

Part = Literal["train", "val", "test"]


class _QueueEpochSampler(Sampler[int]):
    """Index sampler of the outer training loader that forwards ``set_epoch`` to the Queue's subject sampler.

    Lightning calls ``set_epoch`` on the training loader's sampler at every epoch start (also with
    ``use_distributed_sampler=False``), so the per-rank partition of subjects reshuffles each epoch
    without a callback.
    """

    def __init__(self, queue: tio.Queue, subject_sampler: DistributedSampler | None) -> None:
        self.queue, self.subject_sampler = queue, subject_sampler

    def __len__(self) -> int:
        return len(self.queue)

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.queue)))

    def set_epoch(self, epoch: int) -> None:
        """Select the subject partition of ``epoch`` (no effect without DDP)."""
        if self.subject_sampler is not None:
            self.subject_sampler.set_epoch(epoch)


def _triple(value: float | tuple[float, float, float], name: str) -> tuple[float, float, float]:
    triple = (value, value, value) if isinstance(value, int | float) else tuple(value)
    if len(triple) != 3 or not all(v > 0 for v in triple):
        raise Sam3dError(f"{name} must be a positive number or three positive numbers, got {value!r}")
    return tuple(float(v) for v in triple)  # type: ignore[return-value]


class VolumeDataModule(L.LightningDataModule):
    """CT volumes -> canonical 1 mm, windowed, z-scored patches with simulated clicks.

    Training batches come from a :class:`torchio.Queue` whose worker processes load cached volumes,
    draw crops 1.2x the patch (positive:negative centres 2:1), augment them as the reference does and
    simulate clicks. Validation uses one fixed positive-centred patch per case. Batches are dicts:
    ``image`` and ``label`` ``(B, 1, D, H, W)`` float32 (D axial), ``points`` ``(B, N, 3)`` float32
    ``(d, h, w)`` voxel coordinates in the patch, ``point_labels`` ``(B, N)`` int64 (1 positive,
    0 negative, -1 padding) and ``case_id``.

    DDP: the trainer must run with ``use_distributed_sampler: false``. When ``torch.distributed`` is
    initialised, each rank's Queue loads only its own subjects (a ``DistributedSampler`` over
    subjects), and the training loader's sampler forwards Lightning's per-epoch ``set_epoch`` call
    to it, so the partition reshuffles every epoch with no callback (:meth:`set_epoch` does the same
    by hand). Validation is split across ranks with a non-shuffling ``DistributedSampler``, which
    repeats a few cases when their number is not a multiple of the world size.

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
        target_spacing: Voxel size in mm after resampling, one number or ``(D, H, W)``.
        intensity_window: Clipping window; None for the dataset's default (computed from the
            training cases' foreground for ``msd``/``manifest``).
        mean: Z-scoring mean after clipping; None as for the window.
        std: Z-scoring standard deviation; None as for the window.
        target_label: Label value(s) forming the target; None for the dataset's default.
        cache_dir: Folder of resampled volumes; None for ``$SAM3D_CACHE_DIR`` or ``~/.cache/sam3d/volumes``.
        augment: Apply the reference's augmentations to training patches.
        in_plane_augmentation: Zoom/rotate in the axial plane only; None for the dataset's default
            (True for pancreas and colon).
        pos_neg_ratio: Relative frequency of positive and negative training patch centres.
        click_mode: ``"reference"`` (all clicks labelled 1, as the reference) or ``"labelled"``.
        num_positive_clicks: Clicks drawn from the target (training and validation).
        num_context_clicks: Training clicks drawn from the whole patch (reference) or background (labelled).
        seed: Seed of on-the-fly folds, validation patches and subject shuffling under DDP.
        predict_scans: ``predict`` only: scan files (NIfTI, NRRD, MHA) or folders of scans.
        predict_clicks: ``predict`` only: the CSV or JSON clicks file (see :mod:`sam3d.data.click_files`).
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
        target_spacing: float | tuple[float, float, float] = 1.0,
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
        if click_mode not in ("reference", "labelled"):
            raise Sam3dError(f"click_mode must be 'reference' or 'labelled', got {click_mode!r}")
        self.root = Path(root).expanduser() if root is not None else None
        self.dataset, self.fold = dataset, fold
        self.predict_scans, self.predict_clicks = predict_scans, predict_clicks
        self.split_file = split_file
        self.num_folds = num_folds
        self.patch_size = tuple(patch_size)
        self.spacing = _triple(target_spacing, "target_spacing")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.samples_per_volume, self.queue_length = samples_per_volume, queue_length
        preset = PRESETS.get(dataset)
        self.intensity_window = (
            tuple(intensity_window) if intensity_window else (preset.window if preset else None)
        )
        self.mean = mean if mean is not None else (preset.mean if preset else None)
        self.std = std if std is not None else (preset.std if preset else None)
        labels = [target_label] if isinstance(target_label, int) else target_label
        self.target_labels = tuple(labels) if labels else (preset.target_labels if preset else None)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.augment = augment
        self.in_plane_augmentation = (
            in_plane_augmentation
            if in_plane_augmentation is not None
            else bool(preset and preset.in_plane_only)
        )
        self.pos_neg_ratio = (float(pos_neg_ratio[0]), float(pos_neg_ratio[1]))
        self.click_mode: ClickMode = click_mode
        self.num_positive_clicks, self.num_context_clicks = num_positive_clicks, num_context_clicks
        self.seed = seed
        self.subject_sampler: DistributedSampler | None = None
        self._cases: dict[str, list[Case]] | None = None
        self._cached: dict[str, list[CachedCase]] = {}

    # ----------------------------------------------------------------------------- split and cache

    @property
    def _xyz_spacing(self) -> tuple[float, float, float]:
        return self.spacing[::-1]

    def _split(self) -> SplitFile | None:
        if self.split_file is not None:
            return load_splits(self.split_file)
        if self.dataset in PRESETS:
            return load_splits(SHIPPED_SPLITS / f"{self.dataset}.json")
        return None

    def cases(self, part: Part) -> list[Case]:
        """The cases of one part of the selected fold, with their files located (not yet checked)."""
        if self._cases is None:
            if self.root is None:
                raise DatasetError("data.root is not set: pass --data.root with the dataset folder")
            catalog = discover(self.root, self.dataset)
            if self.target_labels is None:
                self.target_labels = catalog.target_labels
            split = self._split()
            base = self.root.parent if self.root.is_file() else self.root
            if split is None:
                if not catalog.cases:
                    raise DatasetError(f"no cases found under {self.root} in the {self.dataset} layout")
                folds = folds_from_catalog(catalog, base, self.num_folds, seed=self.seed)
                if not 0 <= self.fold < len(folds):
                    raise DatasetError(
                        f"fold {self.fold} is out of range: set data.fold to 0..{len(folds) - 1}"
                    )
                fold = folds[self.fold]
            else:
                fold = split.fold(self.fold)
            self._cases = {name: resolve_split_cases(base, fold[name], catalog) for name in PARTS}
            if not self._cases["train"]:
                raise DatasetError(f"fold {self.fold} has an empty training split")
        return self._cases[part]

    def _cache(self, parts: tuple[Part, ...]) -> None:
        """Check and cache the cases of ``parts``, raising one error listing every problem case."""
        todo = [part for part in parts if part not in self._cached]
        if not todo:
            return
        if self.target_labels is None:
            self.cases("train")
        if self.target_labels is None:
            raise DatasetError(
                f"no target label for {self.root}: set data.target_label to the label value(s) to segment"
            )
        problems: list[Problem] = []
        for part in todo:
            cached, part_problems = cache_cases(self.cases(part), self.cache_dir, self._xyz_spacing)
            self._cached[part] = [cached[case.case_id] for case in self.cases(part) if case.case_id in cached]
            problems += part_problems
        if problems:
            raise DatasetError(
                f"{len({p.case_id for p in problems})} cases cannot be used; fix or remove them "
                "(`sam3d check-dataset` lists them all):",
                problems,
            )
        self._check_targets(todo)

    def _check_targets(self, parts: list[Part]) -> None:
        targets = set(self.target_labels or ())
        cases = [case for part in parts for case in self._cached[part]]
        lacking = [case for case in cases if not targets & case.label_values]
        if lacking and len(lacking) == len(cases):
            present = sorted(set().union(*(case.label_values for case in cases)))
            raise DatasetError(
                f"target label(s) {sorted(targets)} occur in no label map (values present: {present}); "
                "set data.target_label"
            )
        if lacking:
            problems = [Problem(c.case.case_id, "label has no target voxels", c.case.label) for c in lacking]
            warnings.warn(
                f"{len(lacking)} cases have no target label {sorted(targets)}; they give negative-only "
                f"training patches and a random validation patch:\n{format_problems(problems)}",
                stacklevel=3,
            )
        patch = self.patch_size[::-1]
        small = [c for c in cases if any(n < p for n, p in zip(c.meta["shape"], patch, strict=True))]
        if small:
            problems = [
                Problem(c.case.case_id, f"shape {tuple(c.meta['shape'])} at {self.spacing} mm", c.case.image)
                for c in small
            ]
            warnings.warn(
                f"{len(small)} volumes are smaller than the patch {self.patch_size} and will be padded:\n"
                f"{format_problems(problems)}",
                stacklevel=3,
            )

    def _resolve_intensity(self) -> None:
        if self.intensity_window is not None and self.mean is not None and self.std is not None:
            return
        self._cache(("train",))
        try:
            window, mean, std = intensity_statistics(
                [c.meta["foreground_sample"] for c in self._cached["train"]]
            )
        except ValueError:
            raise DatasetError(
                "cannot estimate the intensity window: no training label has foreground; set "
                "data.intensity_window, data.mean and data.std"
            ) from None
        self.intensity_window = self.intensity_window or window
        self.mean = self.mean if self.mean is not None else mean
        self.std = self.std if self.std is not None else std
        log.info(
            "intensity window %s, mean %s, std %s (from the training cases)",
            self.intensity_window,
            self.mean,
            self.std,
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
                raise DatasetError(
                    "sam3d predict needs --data.predict_scans (files or folders) and --data.predict_clicks"
                )
            return
        if stage == "test":
            if not self.cases("test"):
                raise DatasetError(f"fold {self.fold} has an empty test split")
            self._resolve_intensity()
            return
        self._cache(("train", "val"))
        self._resolve_intensity()
        distributed = dist.is_available() and dist.is_initialized()
        if stage in (None, "fit") and distributed and len(self._cached["train"]) < dist.get_world_size():
            raise DatasetError(
                f"{len(self._cached['train'])} training cases cannot be split over {dist.get_world_size()} ranks"
            )
        if not self._cached.get("val", True):
            warnings.warn(f"fold {self.fold} has no validation cases", stacklevel=2)

    # ----------------------------------------------------------------------------- loaders

    @property
    def patch_settings(self) -> PatchSettings:
        """The settings of the patch pipeline (after :meth:`setup`)."""
        if self.intensity_window is None or self.mean is None or self.std is None or not self.target_labels:
            raise RuntimeError("call setup() first: intensity statistics and target labels are not resolved")
        return PatchSettings(
            patch_size=self.patch_size[::-1],
            window=(float(self.intensity_window[0]), float(self.intensity_window[1])),
            mean=float(self.mean),
            std=float(self.std),
            target_labels=tuple(self.target_labels),
            pos_neg_ratio=self.pos_neg_ratio,
            click_mode=self.click_mode,
            num_positive_clicks=self.num_positive_clicks,
            num_context_clicks=self.num_context_clicks,
            augment=self.augment,
            in_plane_only=self.in_plane_augmentation,
        )

    def train_dataloader(self) -> DataLoader:
        """Patch batches from a TorchIO Queue (built here, after DDP initialisation)."""
        self._cache(("train",))
        transform = TrainingPatches(self.patch_settings, self.samples_per_volume)
        subjects = tio.SubjectsDataset(
            [case.subject() for case in self._cached["train"]], transform=transform
        )
        distributed = dist.is_available() and dist.is_initialized()
        self.subject_sampler = (
            DistributedSampler(subjects, shuffle=True, drop_last=True, seed=self.seed)
            if distributed
            else None
        )
        queue = tio.Queue(
            subjects,
            max_length=self.queue_length,
            samples_per_volume=self.samples_per_volume,
            sampler=StackedPatchSampler(self.patch_size[::-1]),
            subject_sampler=self.subject_sampler,
            num_workers=self.num_workers,
            shuffle_subjects=self.subject_sampler is None,
            shuffle_patches=True,
        )
        # The Queue has its own workers; the outer loader must have none.
        return tio.SubjectsLoader(
            queue,
            batch_size=self.batch_size,
            num_workers=0,
            sampler=_QueueEpochSampler(queue, self.subject_sampler),
            collate_fn=collate_patches,
        )

    def val_dataloader(self) -> DataLoader:
        """One fixed positive-centred patch per validation case."""
        self._cache(("val",))
        dataset = ValidationPatches(self._cached["val"], self.patch_settings, self.seed)
        distributed = dist.is_available() and dist.is_initialized()
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            sampler=DistributedSampler(dataset, shuffle=False) if distributed else None,
            collate_fn=collate_patches,
            persistent_workers=self.num_workers > 0,
        )

    def test_dataloader(self) -> DataLoader:
        """Whole test volumes, one :class:`EvaluationCase` (or :class:`SkippedCase`) per step."""
        settings = self.patch_settings
        dataset = EvaluationCases(
            self.cases("test"),
            self.spacing,
            settings.window,
            settings.mean,
            settings.std,
            settings.target_labels,
        )
        distributed = dist.is_available() and dist.is_initialized()
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=min(self.num_workers, 1),
            sampler=DistributedSampler(dataset, shuffle=False) if distributed else None,
        )

    def predict_dataloader(self) -> DataLoader:
        """New scans with their clicks, one :class:`PredictionCase` (or :class:`SkippedCase`) per step."""
        if self.intensity_window is None or self.mean is None or self.std is None:
            raise DatasetError(
                "the intensity window, mean and std are unknown: set data.intensity_window, data.mean and "
                "data.std to the values of training (the run's config.yaml or checkpoint records them)"
            )
        dataset = PredictionCases(
            self.predict_scans or [],
            self.predict_clicks or "",
            self.spacing,
            (float(self.intensity_window[0]), float(self.intensity_window[1])),
            float(self.mean),
            float(self.std),
        )
        if dataset.problems:
            warnings.warn(f"inputs skipped:\n{format_problems(dataset.problems)}", stacklevel=2)
        return DataLoader(dataset, batch_size=None, num_workers=min(self.num_workers, 1))

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle the per-rank subject partition for ``epoch`` (Lightning does this automatically)."""
        if self.subject_sampler is not None:
            self.subject_sampler.set_epoch(epoch)

    def test_subjects(self, part: Part = "test") -> tio.SubjectsDataset:
        """Whole preprocessed volumes for evaluation: canonical, resampled, clipped, z-scored, binary label.

        Each subject has ``image`` and ``label`` (RAS+, ``(1, X, Y, Z)``; convert with
        :func:`sam3d.data.layout.to_network_layout`), ``case_id``, and ``source_image`` /
        ``source_label`` (the original files, to map predictions back to the label's own grid).

        Args:
            part: Which part of the fold.

        Returns:
            A lazily loading dataset of subjects.
        """
        self._cache((part,))
        self._resolve_intensity()
        settings = self.patch_settings
        transform = tio.Compose(
            [BinarizeLabel(settings.target_labels), Normalize(settings.window, settings.mean, settings.std)]
        )
        return tio.SubjectsDataset([case.subject() for case in self._cached[part]], transform=transform)
