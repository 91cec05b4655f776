"""Training and validation patches with clicks, and their collation into network batches.

Training work runs in the Queue's worker processes: :class:`TrainingPatches` is the subjects
dataset's transform. Per volume it binarises the label, crops to the body, draws
``samples_per_volume`` crops 1.2x the patch as the reference does (centres from target and background
voxels 2:1, each crop kept inside the volume: :mod:`sam3d.data.training.crops`), zooms/rotates each
from a region around it large enough that the crop holds no padding, shifts its intensities, crops
the patch at random, flips and rotates it and simulates its clicks. It returns the patches stacked
along the channel axis; :class:`StackedPatchSampler` then hands them to the Queue one by one, so the
Queue's own process only slices tensors. Costly spatial transforms thus touch crop-sized arrays,
never whole volumes.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchio as tio
from torch.utils.data import Dataset
from torchio.data.sampler import PatchSampler

from sam3d.data.clicks import ClickMode, pad_clicks, training_clicks
from sam3d.data.layout import to_network_layout
from sam3d.data.preprocessing import Normalize, Preprocessing
from sam3d.data.training.augmentation import (
    RandomIntensityShift,
    fit_warp,
    orientation_augmentation,
    random_warp,
    warp_region,
)
from sam3d.data.training.cache import CachedCase
from sam3d.data.training.crops import crop_starts, region_start, region_window

__all__ = [
    "PatchSettings",
    "StackedPatchSampler",
    "TrainingPatches",
    "ValidationPatches",
    "collate_patches",
    "prepare_volume",
]

# Crop this much larger than the patch, then take the patch from it at random, as the reference does.
CROP_MARGIN = 1.2
# The reference shifts intensities by up to 20 HU with probability 0.5.
INTENSITY_SHIFT_HU = 20.0


@dataclass(frozen=True)
class PatchSettings:
    """Everything the patch pipeline needs (picklable, for worker processes).

    Attributes:
        patch_size: Patch size along X, Y, Z (TorchIO order).
        preprocessing: Window, statistics and target labels (the cache holds the volumes at its spacing).
        pos_neg_ratio: Relative frequency of positive and negative patch centres.
        click_mode: ``"reference"`` or ``"labelled"`` clicks.
        num_positive_clicks: Clicks drawn from the target.
        num_context_clicks: Clicks drawn from the patch (reference) or background (labelled).
        augment: Apply the reference's augmentations.
        in_plane_only: Zoom and rotate in the axial plane (the reference's pancreas and colon variant).
    """

    patch_size: tuple[int, int, int]
    preprocessing: Preprocessing
    pos_neg_ratio: tuple[float, float] = (2.0, 1.0)
    click_mode: ClickMode = "reference"
    num_positive_clicks: int = 10
    num_context_clicks: int = 20
    augment: bool = True
    in_plane_only: bool = False


def _shifted_affine(affine: np.ndarray, offset: Sequence[int]) -> np.ndarray:
    shifted = affine.copy()
    shifted[:3, 3] += affine[:3, :3] @ np.asarray(offset, dtype=float)
    return shifted


def prepare_volume(
    subject: tio.Subject,
    target_labels: Sequence[int],
    background: float,
    min_shape: Sequence[int],
    crop_body: bool = True,
) -> tio.Subject:
    """Binarise the label, crop to the body (and target), pad to at least ``min_shape``.

    Args:
        subject: Cached subject with raw ``image`` and ``label``.
        target_labels: Label values forming the target.
        background: Intensities at or below this (the window's low end) are outside the body; padding
            uses it.
        min_shape: Smallest spatial shape to return (X, Y, Z); smaller volumes are padded evenly.
        crop_body: Crop to the bounding box of body and target voxels.

    Returns:
        A new subject (image in its stored dtype, uint8 label) with the case's attributes.
    """
    source = subject.get_scalar_image("image")
    image, affine, labels = source.data, source.affine, subject.get_label_map("label").data
    label = torch.isin(labels, torch.tensor(list(target_labels), dtype=labels.dtype))
    start = [0, 0, 0]
    if crop_body:
        keep = (image[0] > background) | label[0]
        if keep.any():
            bounds = []
            for axis in range(3):
                present = torch.nonzero(keep.any(dim=tuple(a for a in range(3) if a != axis)))[:, 0]
                bounds.append((int(present[0]), int(present[-1]) + 1))
            start = [low for low, _ in bounds]
            image = image[
                :, bounds[0][0] : bounds[0][1], bounds[1][0] : bounds[1][1], bounds[2][0] : bounds[2][1]
            ]
            label = label[
                :, bounds[0][0] : bounds[0][1], bounds[1][0] : bounds[1][1], bounds[2][0] : bounds[2][1]
            ]
    missing = [max(0, int(size) - n) for size, n in zip(min_shape, image.shape[1:], strict=True)]
    if any(missing):
        before = [m // 2 for m in missing]
        padding = [p for axis in (2, 1, 0) for p in (before[axis], missing[axis] - before[axis])]
        image = torch.nn.functional.pad(image.float(), padding, value=float(background))
        label = torch.nn.functional.pad(label, padding, value=False)
        start = [s - b for s, b in zip(start, before, strict=True)]
    attributes = {key: value for key, value in subject.items() if not isinstance(value, tio.Image)}
    return tio.Subject(
        image=tio.ScalarImage(tensor=image.contiguous(), affine=_shifted_affine(affine, start)),
        label=tio.LabelMap(tensor=label.to(torch.uint8).contiguous(), affine=_shifted_affine(affine, start)),
        **attributes,
    )


def _clicks(label: torch.Tensor, settings: PatchSettings, num_positive: int, num_context: int) -> tuple:
    generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
    mask = to_network_layout(label[0])
    return training_clicks(mask, num_positive, num_context, settings.click_mode, generator)


class TrainingPatches:
    """Subject transform turning one cached volume into ``num_patches`` augmented patches with clicks.

    Randomness comes from torch's global generator, which :class:`sam3d.data.training.queue.EpochSubjects`
    seeds per (seed, epoch, subject).

    Args:
        settings: Patch settings.
        num_patches: Patches per volume (the Queue's ``samples_per_volume``).
    """

    def __init__(self, settings: PatchSettings, num_patches: int) -> None:
        self.settings, self.num_patches = settings, num_patches
        margin = CROP_MARGIN if settings.augment else 1.0
        # Of the patch's parity, so that a patch within the crop sits on the crop's voxel lattice.
        self.crop_size = tuple(
            c + (c - n) % 2 for c, n in ((math.ceil(margin * n), n) for n in settings.patch_size)
        )
        preprocessing = settings.preprocessing
        self.normalize = Normalize(preprocessing.window, preprocessing.mean, preprocessing.std, copy=False)
        self.shift = RandomIntensityShift(INTENSITY_SHIFT_HU / preprocessing.std, p=0.5, copy=False)
        self.orientation = orientation_augmentation(settings.patch_size)

    def _normalized(self, image: torch.Tensor) -> torch.Tensor:
        return self.normalize(tio.Subject(image=tio.ScalarImage(tensor=image))).get_scalar_image("image").data

    def patch(self, volume: tio.Subject, start: Sequence[int]) -> tio.Subject:
        """The normalised patch of the crop at ``start``; when augmenting, the augmented patch within it.

        The zoom and rotation act about the crop's centre and read a region concentric with the crop
        (shifted inside the volume when needed, and weakened when the volume cannot hold it), so the
        crop holds no padding from them. Only the patch, placed at random in the crop, is computed.
        """
        image, label = volume.get_scalar_image("image").data, volume.get_label_map("label").data
        shape, settings = image.shape[1:], self.settings
        if not settings.augment:
            window = region_window(start, self.crop_size)
            return tio.Subject(
                image=tio.ScalarImage(tensor=self._normalized(image[window].contiguous())),
                label=tio.LabelMap(tensor=label[window].contiguous()),
            )
        warp = fit_warp(random_warp(settings.in_plane_only), self.crop_size, shape)
        footprint = warp.footprint(self.crop_size)
        centre = [s + n // 2 for s, n in zip(start, self.crop_size, strict=True)]
        window = region_window(region_start(centre, footprint, shape), footprint)
        region = torch.cat([self._normalized(image[window].contiguous()), label[window].float()])
        offset = [
            int(torch.randint(c - p + 1, ()))
            for c, p in zip(self.crop_size, settings.patch_size, strict=True)
        ]
        patch = warp_region(region, warp, self.crop_size, offset, settings.patch_size)
        subject = tio.Subject(
            image=tio.ScalarImage(tensor=patch[:1].contiguous()),
            # Linear interpolation then a 0.5 threshold, as the reference treats its zoomed labels.
            label=tio.LabelMap(tensor=(patch[1:] > 0.5).to(torch.uint8)),
        )
        return self.orientation(self.shift(subject))

    def __call__(self, subject: tio.Subject) -> tio.Subject:
        """Return the stacked patches of one volume, with ``points``/``point_labels`` per patch."""
        settings, preprocessing = self.settings, self.settings.preprocessing
        volume = prepare_volume(subject, preprocessing.target_labels, preprocessing.window[0], self.crop_size)
        starts = crop_starts(
            volume.get_label_map("label").data[0], self.crop_size, self.num_patches, settings.pos_neg_ratio
        )
        images, labels, clicks = [], [], []
        for start in starts:
            patch = self.patch(volume, start)
            images.append(patch.get_scalar_image("image").data)
            labels.append(patch.get_label_map("label").data)
            clicks.append(
                _clicks(labels[-1], settings, settings.num_positive_clicks, settings.num_context_clicks)
            )
        points, point_labels = pad_clicks(clicks)
        return tio.Subject(
            image=tio.ScalarImage(tensor=torch.cat(images)),
            label=tio.LabelMap(tensor=torch.cat(labels).to(torch.uint8)),
            points=points,
            point_labels=point_labels,
            case_id=subject["case_id"],
        )


def _tensor(subject: tio.Subject, key: str) -> torch.Tensor:
    """A tensor attribute of a subject (``points``, ``point_labels``)."""
    value = subject[key]
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"subject attribute {key!r} must be a tensor, got {type(value).__name__}")
    return value


class StackedPatchSampler(PatchSampler):
    """Queue sampler yielding, one at a time, the patches :class:`TrainingPatches` stacked per volume.

    A cursor stored on the subject makes a volume the Queue splits across two fills continue where it
    stopped instead of repeating patches. It takes the ``patch_size`` (along X, Y, Z) of TorchIO's
    ``PatchSampler``.
    """

    def _generate_patches(
        self, subject: tio.Subject, num_patches: int | None = None
    ) -> Generator[tio.Subject, None, None]:
        total = subject.get_scalar_image("image").num_channels
        start = subject.get("patch_cursor", 0)
        if not isinstance(start, int):
            raise TypeError(f"patch_cursor must be an int, got {type(start).__name__}")
        stop = total if num_patches is None else min(total, start + num_patches)
        for index in range(start, stop):
            subject["patch_cursor"] = index + 1
            yield tio.Subject(
                image=tio.ScalarImage(tensor=subject.get_scalar_image("image").data[index : index + 1]),
                label=tio.LabelMap(tensor=subject.get_label_map("label").data[index : index + 1]),
                points=_tensor(subject, "points")[index],
                point_labels=_tensor(subject, "point_labels")[index],
                case_id=subject["case_id"],
            )


class ValidationPatches(Dataset):
    """One fixed positive-centred patch per case, with clicks drawn from the target.

    The centre (a target voxel) and the clicks depend only on ``seed`` and the case id.

    Args:
        cases: Cached validation cases.
        settings: Patch settings (augmentation is never applied).
        seed: Seed of the centres and clicks.
    """

    def __init__(self, cases: Sequence[CachedCase], settings: PatchSettings, seed: int) -> None:
        self.cases, self.settings, self.seed = list(cases), settings, seed

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> tio.Subject:
        settings, preprocessing, case = self.settings, self.settings.preprocessing, self.cases[index]
        generator = torch.Generator().manual_seed(
            self.seed * 1_000_003 + zlib.crc32(case.case.case_id.encode())
        )
        volume = prepare_volume(
            case.subject(), preprocessing.target_labels, preprocessing.window[0], settings.patch_size, False
        )
        label, shape = volume.get_label_map("label").data, volume.spatial_shape
        target = torch.nonzero(label[0])
        centre = (
            target[int(torch.randint(len(target), (), generator=generator))].tolist()
            if len(target)
            else [n // 2 for n in shape]
        )
        window = region_window(region_start(centre, settings.patch_size, shape), settings.patch_size)
        patch = self.normalize(volume.get_scalar_image("image").data[window])
        label = label[window].contiguous()
        mask = to_network_layout(label[0]).bool()
        count = settings.num_positive_clicks
        points, labels = training_clicks(
            mask, count, 0 if mask.any() else count, settings.click_mode, generator
        )
        return tio.Subject(
            image=tio.ScalarImage(tensor=patch),
            label=tio.LabelMap(tensor=label),
            points=points,
            point_labels=labels,
            case_id=case.case.case_id,
        )

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """Clip and z-score an image tensor with the settings' statistics."""
        subject = tio.Subject(image=tio.ScalarImage(tensor=image.contiguous()))
        preprocessing = self.settings.preprocessing
        transform = Normalize(preprocessing.window, preprocessing.mean, preprocessing.std, copy=False)
        return transform(subject).get_scalar_image("image").data


def collate_patches(batch: Sequence[tio.Subject]) -> dict[str, Any]:
    """Collate patches into the network batch.

    Returns ``image``/``label`` ``(B, 1, D, H, W)`` float32, ``points`` ``(B, N, 3)`` float32
    ``(d, h, w)``, ``point_labels`` ``(B, N)`` int64 (-1 pads) and ``case_id`` (list of str).
    """
    clicks = []
    for subject in batch:
        labels = _tensor(subject, "point_labels")
        keep = labels >= 0
        clicks.append((_tensor(subject, "points")[keep], labels[keep]))
    points, point_labels = pad_clicks(clicks)
    return {
        "image": torch.stack([to_network_layout(s.get_scalar_image("image").data) for s in batch]).float(),
        "label": torch.stack([to_network_layout(s.get_label_map("label").data) for s in batch]).float(),
        "points": points,
        "point_labels": point_labels,
        "case_id": [str(s["case_id"]) for s in batch],
    }
