"""Where training crops go: centres from target and background voxels, the crop kept inside the volume.

As MONAI's ``RandCropByPosNegLabeld`` (the reference's sampler): each crop's centre is a target voxel
with probability ``positive / (positive + negative)``, else a background voxel, each drawn uniformly
from every voxel of its kind; the crop is then shifted to lie inside the volume. Unlike TorchIO's
``LabelSampler``, voxels within half a crop of the border can be centres, so a tumour touching the
border gets its share of positive crops. MONAI's own helper lists every background voxel's index (a
few hundred MB per CT volume); background centres are drawn here by rejection instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["crop_starts", "region_start", "region_window"]

# Background centres are drawn by rejection among all voxels; past this many misses (a volume that is
# nearly all target) they are drawn from an explicit list.
REJECTION_TRIES = 64


def _background_voxel(label: torch.Tensor) -> tuple[int, ...]:
    flat = label.reshape(-1)
    for _ in range(REJECTION_TRIES):
        index = int(torch.randint(flat.numel(), ()))
        if not flat[index]:
            break
    else:
        background = torch.nonzero(~flat)[:, 0]
        index = int(background[int(torch.randint(len(background), ()))])
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(index), label.shape))


def crop_starts(
    label: torch.Tensor, size: Sequence[int], count: int, ratio: tuple[float, float] = (2.0, 1.0)
) -> list[tuple[int, ...]]:
    """Starts of ``count`` crops of ``size`` in a volume whose target is ``label``, from torch's generator.

    Args:
        label: ``(X, Y, Z)`` boolean target, at least ``size`` along every axis.
        size: Crop size.
        count: Number of crops.
        ratio: Relative frequency of target and background centres; a volume without target (or
            without background) gets only background (or only target) centres.

    Returns:
        One start per crop, the crop ``start : start + size`` lying inside the volume.
    """
    label = label.bool()
    shape = torch.tensor(label.shape)
    if (shape < torch.tensor(size)).any():
        raise ValueError(f"volume {tuple(label.shape)} is smaller than the crop {tuple(size)}")
    target = torch.nonzero(label)
    has_background = len(target) < label.numel()
    positive = ratio[0] / (ratio[0] + ratio[1])
    starts = []
    for _ in range(count):
        centre: torch.Tensor | tuple[int, ...]
        if len(target) and (not has_background or float(torch.rand(())) < positive):
            centre = target[int(torch.randint(len(target), ()))]
        else:
            centre = _background_voxel(label)
        starts.append(region_start(centre, size, label.shape))
    return starts


def region_start(
    centre: torch.Tensor | Sequence[int], size: Sequence[int], shape: Sequence[int]
) -> tuple[int, ...]:
    """Start of the region of ``size`` centred on ``centre`` (floor), shifted to lie inside ``shape``.

    A region larger than the volume along an axis is centred on the volume there (negative start).
    """
    return tuple(
        min(max(int(c) - n // 2, 0), s - n) if s >= n else (s - n) // 2
        for c, n, s in zip(centre, size, shape, strict=True)
    )


def region_window(start: Sequence[int], size: Sequence[int]) -> tuple[slice, ...]:
    """Index of the region ``start : start + size`` in a ``(C, X, Y, Z)`` tensor."""
    return (slice(None), *(slice(s, s + n) for s, n in zip(start, size, strict=True)))
