"""Intensity window and z-scoring statistics of a dataset's foreground voxels."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from sam3d.data.errors import DatasetError

__all__ = ["fill_statistics", "intensity_statistics"]

log = logging.getLogger(__name__)

# nnU-Net's CT recipe, which the reference values follow: foreground 0.5/99.5 percentiles.
PERCENTILES = (0.5, 99.5)


def intensity_statistics(samples: Sequence[Sequence[float]]) -> tuple[tuple[float, float], float, float]:
    """Window and statistics from per-case samples of foreground intensities.

    Args:
        samples: Per case, intensities drawn from its foreground (label > 0) voxels.

    Returns:
        ``((low, high), mean, std)``: the pooled 0.5/99.5 percentiles, and the mean and standard
        deviation of the pooled values clipped to that window.

    Raises:
        DatasetError: If no case has foreground voxels.
    """
    pooled = torch.tensor([value for case in samples for value in case], dtype=torch.float64)
    if pooled.numel() == 0:
        raise DatasetError(
            "no foreground voxels to compute intensity statistics from: the label maps are all empty"
        )
    low, high = (float(torch.quantile(pooled, q / 100)) for q in PERCENTILES)
    clipped = pooled.clamp(low, high)
    std = float(clipped.std()) if pooled.numel() > 1 else 0.0
    return (round(low, 2), round(high, 2)), round(float(clipped.mean()), 4), round(max(std, 1e-3), 4)


def fill_statistics(
    window: tuple[float, float] | None,
    mean: float | None,
    std: float | None,
    samples: Sequence[Sequence[float]],
) -> tuple[tuple[float, float], float, float]:
    """The given window and statistics, with the missing ones computed from the training cases.

    Args:
        window: Clipping window, or None to compute it.
        mean: Z-scoring mean, or None to compute it.
        std: Z-scoring standard deviation, or None to compute it.
        samples: Per training case, intensities drawn from its foreground.

    Returns:
        ``((low, high), mean, std)``.

    Raises:
        DatasetError: If a value is missing and no training label has foreground.
    """
    if window is not None and mean is not None and std is not None:
        return window, mean, std
    try:
        computed_window, computed_mean, computed_std = intensity_statistics(samples)
    except ValueError:
        raise DatasetError(
            "cannot estimate the intensity window: no training label has foreground; set "
            "data.intensity_window, data.mean and data.std"
        ) from None
    window = window or computed_window
    mean = computed_mean if mean is None else mean
    std = computed_std if std is None else std
    log.info("intensity window %s, mean %s, std %s (from the training cases)", window, mean, std)
    return window, mean, std
