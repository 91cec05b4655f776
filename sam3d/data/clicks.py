"""Click simulation on binary masks, as tensors the network takes (pure torch plus SciPy, no TorchIO).

All functions work on ``(D, H, W)`` masks in network layout and return ``points`` ``(N, 3)`` float32
voxel coordinates ``(d, h, w)`` and ``labels`` ``(N,)`` int64: 1 positive, 0 negative. Randomness
comes only from the explicit ``generator`` (on the mask's device), so a seeded generator gives the
same clicks every time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, cast, get_args

import numpy as np
import torch
from scipy import ndimage

from sam3d.errors import Sam3dError

__all__ = [
    "CLICK_MODES",
    "ClickMode",
    "FirstClick",
    "checked_click_mode",
    "correction_click",
    "correction_clicks",
    "deepest_point",
    "first_click",
    "largest_component",
    "pad_clicks",
    "training_clicks",
]

ClickMode = Literal["reference", "labelled", "interactive"]
CLICK_MODES: tuple[str, ...] = get_args(ClickMode)
FirstClick = Literal["random", "center"]
Clicks = tuple[torch.Tensor, torch.Tensor]

_FULL_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)


def checked_click_mode(mode: str) -> ClickMode:
    """``mode`` if it is one of :data:`CLICK_MODES`, else a :class:`Sam3dError` (the one check of click modes)."""
    if mode not in CLICK_MODES:
        raise Sam3dError(f"unknown click mode {mode!r}: click_mode must be one of {', '.join(CLICK_MODES)}")
    return cast(ClickMode, mode)


def _as_mask(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    if mask.ndim != 3:
        raise ValueError(f"{name} must be a (D, H, W) tensor, got shape {tuple(mask.shape)}")
    return mask.bool()


def _no_clicks(device: torch.device) -> Clicks:
    return torch.zeros(0, 3, device=device), torch.zeros(0, dtype=torch.long, device=device)


def _draw(coords: torch.Tensor, count: int, generator: torch.Generator | None) -> torch.Tensor:
    """Draw ``count`` rows of ``coords`` uniformly with replacement."""
    index = torch.randint(len(coords), (count,), generator=generator, device=coords.device)
    return coords[index].float()


def training_clicks(
    mask: torch.Tensor,
    num_positive: int = 10,
    num_context: int = 20,
    mode: ClickMode = "reference",
    generator: torch.Generator | None = None,
) -> Clicks:
    """Clicks for one training patch.

    ``"reference"`` follows 3DSAM-adapter: ``num_positive`` voxels drawn uniformly (with replacement)
    from the target plus ``num_context`` voxels drawn uniformly from the whole patch, all labelled 1
    (the reference network has no point labels). ``"labelled"`` draws the positives the same way and
    ``num_context`` negatives from the background, labelled 0. A patch without target gets only the
    context (reference) or negative (labelled) clicks; an empty patch gets none.

    Args:
        mask: Binary target ``(D, H, W)``.
        num_positive: Clicks drawn from the target.
        num_context: Clicks drawn from the whole patch (reference) or the background (labelled; interactive:
            only in a patch without target).
        mode: ``"reference"``, ``"labelled"`` or ``"interactive"``.
        generator: Source of randomness, on the mask's device.

    Returns:
        ``points (N, 3)`` float32 and ``labels (N,)`` int64, positives first.
    """
    checked_click_mode(mode)
    if num_positive < 0 or num_context < 0:
        raise ValueError(f"click counts must be >= 0, got {num_positive} positive, {num_context} context")
    mask = _as_mask(mask)
    if mask.numel() == 0:
        return _no_clicks(mask.device)
    points, labels = [], []
    target = torch.nonzero(mask)
    if len(target) and num_positive:
        points.append(_draw(target, num_positive, generator))
        labels.append(torch.ones(num_positive, dtype=torch.long, device=mask.device))
    if mode == "interactive" and len(target):
        num_context = 0
    if num_context:
        if mode == "reference":
            # Uniform over all voxels == independent uniform index per axis.
            axes = [
                torch.randint(n, (num_context,), generator=generator, device=mask.device) for n in mask.shape
            ]
            points.append(torch.stack(axes, dim=1).float())
            labels.append(torch.ones(num_context, dtype=torch.long, device=mask.device))
        else:
            background = torch.nonzero(~mask)
            if len(background):
                points.append(_draw(background, num_context, generator))
                labels.append(torch.zeros(num_context, dtype=torch.long, device=mask.device))
    if not points:
        return _no_clicks(mask.device)
    return torch.cat(points), torch.cat(labels)


def largest_component(mask: torch.Tensor) -> torch.Tensor:
    """The largest 26-connected component of a binary ``(D, H, W)`` mask (all False if it is empty)."""
    array = _as_mask(mask).cpu().numpy()
    components, count = ndimage.label(array, structure=_FULL_CONNECTIVITY)
    if count == 0:
        return torch.zeros_like(mask, dtype=torch.bool)
    sizes = np.bincount(components.ravel())[1:]
    largest = components == (int(np.argmax(sizes)) + 1)
    return torch.from_numpy(largest).to(mask.device)


def deepest_point(
    mask: torch.Tensor, spacing: tuple[float, float, float] | None = None
) -> torch.Tensor | None:
    """The voxel of a binary mask farthest (Euclidean) from its boundary, or None if the mask is empty.

    The patch border counts as boundary, so a region cut by the border gets its click inside.

    Args:
        mask: Binary ``(D, H, W)`` mask.
        spacing: Voxel size along ``(d, h, w)`` for anisotropic grids; isotropic if None.

    Returns:
        ``(3,)`` int64 coordinates ``(d, h, w)``; the first maximum wins ties.
    """
    array = _as_mask(mask).cpu().numpy()
    if not array.any():
        return None
    distance = ndimage.distance_transform_edt(np.pad(array, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    index = np.unravel_index(int(np.argmax(distance)), array.shape)
    return torch.tensor(index, dtype=torch.long, device=mask.device)


def first_click(
    mask: torch.Tensor,
    strategy: FirstClick = "center",
    generator: torch.Generator | None = None,
) -> Clicks:
    """The first positive click of an evaluation.

    Args:
        mask: Binary target ``(D, H, W)``.
        strategy: ``"random"``: a voxel drawn uniformly from the target; ``"center"``: the deepest
            interior point of the target's largest connected component.
        generator: Source of randomness for ``"random"``.

    Returns:
        One positive click, or none if the target is empty.
    """
    mask = _as_mask(mask)
    if strategy == "random":
        target = torch.nonzero(mask)
        if not len(target):
            return _no_clicks(mask.device)
        point = _draw(target, 1, generator)
    elif strategy == "center":
        deepest = deepest_point(largest_component(mask))
        if deepest is None:
            return _no_clicks(mask.device)
        point = deepest[None].float()
    else:
        raise ValueError(f"first click strategy must be 'random' or 'center', got {strategy!r}")
    return point, torch.ones(1, dtype=torch.long, device=mask.device)


def correction_click(
    prediction: torch.Tensor,
    target: torch.Tensor,
    spacing: tuple[float, float, float] | None = None,
) -> Clicks:
    """A corrective click at the deepest point of the largest error region.

    False negatives (target missed) give a positive click, false positives a negative one. Sizes are
    compared in voxels; an exact tie goes to the false negative.

    Args:
        prediction: Binary prediction ``(D, H, W)``.
        target: Binary target ``(D, H, W)``, same shape.
        spacing: Voxel size along ``(d, h, w)`` for the distance transform.

    Returns:
        One click, or none if the prediction is already perfect.
    """
    prediction, target = _as_mask(prediction, "prediction"), _as_mask(target, "target")
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ")
    missed = largest_component(target & ~prediction)
    extra = largest_component(prediction & ~target)
    region, label = (missed, 1) if missed.sum() >= extra.sum() else (extra, 0)
    deepest = deepest_point(region, spacing)
    if deepest is None:
        return _no_clicks(target.device)
    return deepest[None].float(), torch.tensor([label], dtype=torch.long, device=target.device)


def correction_clicks(
    prediction: torch.Tensor, target: torch.Tensor, points: torch.Tensor, labels: torch.Tensor
) -> Clicks:
    """A batch's clicks with one :func:`correction_click` per sample appended (a simulated user's next click).

    Args:
        prediction: Binary predictions ``(B, D, H, W)``.
        target: Binary targets ``(B, D, H, W)``.
        points: ``(B, N, 3)`` clicks so far.
        labels: ``(B, N)`` their labels (-1 padding).

    Returns:
        ``(B, N + 1, 3)`` points and ``(B, N + 1)`` labels; a sample predicted perfectly gets a padding click.
    """
    if prediction.ndim != 4 or prediction.shape != target.shape:
        raise ValueError(
            f"prediction and target must be (B, D, H, W) of one shape, got {tuple(prediction.shape)} and "
            f"{tuple(target.shape)}"
        )
    new_points = points.new_zeros(len(points), 1, 3)
    new_labels = labels.new_full((len(labels), 1), -1)
    for sample, (predicted, wanted) in enumerate(zip(prediction, target, strict=True)):
        point, label = correction_click(predicted, wanted)
        if len(point):
            new_points[sample], new_labels[sample] = point.to(points), label.to(labels)
    return torch.cat([points, new_points], 1), torch.cat([labels, new_labels], 1)


def pad_clicks(clicks: Sequence[Clicks]) -> Clicks:
    """Stack per-sample clicks of different counts into ``(B, N, 3)`` points and ``(B, N)`` labels.

    Missing clicks are padded with coordinates 0 and label -1.
    """
    size = max((len(points) for points, _ in clicks), default=0)
    points = torch.zeros(len(clicks), size, 3)
    labels = torch.full((len(clicks), size), -1, dtype=torch.long)
    for i, (sample_points, sample_labels) in enumerate(clicks):
        points[i, : len(sample_points)] = sample_points.cpu()
        labels[i, : len(sample_labels)] = sample_labels.cpu()
    return points, labels
