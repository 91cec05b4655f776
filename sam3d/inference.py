"""Segmenting whole volumes with a network trained on crops (pure torch, network layout ``(D, H, W)``).

Two protocols:

* ``paper``: one crop centred on the midpoint of the clicks' bounding box, zero probability elsewhere
  (the authors' test). Tumours larger than the crop are cut off.
* ``full``: crops follow the object. Starting from the paper's crop, a neighbouring crop (half a crop
  away) is added wherever the predicted object touches a crop face inside the volume; overlapping
  predictions are blended with a smooth weight. Crops without a click get a positive click at the
  deepest point of the object predicted so far inside them. The final object is the part of the
  prediction connected to the positive clicks.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scipy import ndimage

from sam3d.models import VolumetricSam
from sam3d.models.prompt_encoder import POSITIVE

Protocol = Literal["paper", "full"]
Box = tuple[tuple[int, int], ...]


def crop_start(points: torch.Tensor, crop_size: tuple[int, int, int]) -> torch.Tensor:
    """Start ``(3,)`` of the crop centred on the midpoint of the clicks' bounding box (the paper's test crop)."""
    centre = torch.round((points.amin(0) + points.amax(0)) / 2).long()
    return centre - torch.tensor(crop_size) // 2


def _ranges(start: torch.Tensor, crop: tuple[int, ...], shape: tuple[int, ...]) -> tuple[Box, Box]:
    """The part of a crop inside the volume: its range in the volume and in the crop."""
    inside = tuple((max(s, 0), min(s + c, n)) for s, c, n in zip(start.tolist(), crop, shape, strict=True))
    in_crop = tuple((a - s, b - s) for (a, b), s in zip(inside, start.tolist(), strict=True))
    return inside, in_crop


def _slices(box: Box) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in box)


def predict_crop(
    net: VolumetricSam,
    image: torch.Tensor,
    start: torch.Tensor,
    points: torch.Tensor,
    labels: torch.Tensor | None,
) -> torch.Tensor:
    """Foreground probability ``crop_size`` of the crop at ``start`` (padded with the volume's minimum)."""
    crop = tuple(net.config.crop_size)
    inside, in_crop = _ranges(start, crop, tuple(image.shape))
    patch = image.new_full(crop, float(image.min()))
    patch[_slices(in_crop)] = image[_slices(inside)]
    device = next(net.parameters()).device
    batch_labels = None if labels is None else labels[None].to(device)
    logits = net(patch[None, None].to(device), (points - start).float()[None].to(device), batch_labels)
    return logits.float().softmax(1)[0, 1].cpu()


@torch.no_grad()
def segment_around_clicks(
    net: VolumetricSam, image: torch.Tensor, points: torch.Tensor, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """``paper`` protocol: probability ``(D, H, W)`` from one crop centred on the clicks, zero elsewhere.

    Args:
        net: The network (its ``config.crop_size`` sets the crop).
        image: ``(D, H, W)`` normalised volume.
        points: ``(N, 3)`` clicks in volume voxels ``(d, h, w)``.
        labels: ``(N,)`` click labels, None for all positive.
    """
    crop = tuple(net.config.crop_size)
    start = crop_start(points, crop)
    inside, in_crop = _ranges(start, crop, tuple(image.shape))
    probability = image.new_zeros(image.shape)
    probability[_slices(inside)] = predict_crop(net, image, start, points, labels)[_slices(in_crop)]
    return probability


def _blend_weight(crop: tuple[int, ...]) -> torch.Tensor:
    """Separable weight, highest at the crop centre, never zero (every voxel of a crop counts)."""
    axes = [torch.hann_window(n + 2, periodic=False)[1:-1] for n in crop]
    return axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]


@torch.no_grad()
def segment_object(
    net: VolumetricSam,
    image: torch.Tensor,
    points: torch.Tensor,
    labels: torch.Tensor | None = None,
    threshold: float = 0.5,
    max_crops: int = 64,
) -> torch.Tensor:
    """``full`` protocol: probability ``(D, H, W)`` from crops that follow the object around the clicks."""
    crop = tuple(net.config.crop_size)
    shape = tuple(image.shape)
    labels = torch.full((len(points),), POSITIVE, dtype=torch.long) if labels is None else labels
    step = torch.tensor(crop) // 2
    total, weights = image.new_zeros(shape), image.new_zeros(shape)
    blend = _blend_weight(crop)
    queue, seen = [crop_start(points, crop)], set()
    while queue and len(seen) < max_crops:
        start = queue.pop(0)
        if tuple(start.tolist()) in seen:
            continue
        seen.add(tuple(start.tolist()))
        inside, in_crop = _ranges(start, crop, shape)
        crop_points, crop_labels = _clicks_in_crop(points, labels, start, crop, total, weights, threshold)
        if not len(crop_points):
            continue
        probability = predict_crop(net, image, start, crop_points, crop_labels)
        total[_slices(inside)] += (probability * blend)[_slices(in_crop)]
        weights[_slices(inside)] += blend[_slices(in_crop)]
        queue += _neighbours(start, probability > threshold, crop, shape, step)
    probability = torch.where(weights > 0, total / weights.clamp(min=1e-12), 0)
    return probability * _connected_to(probability > threshold, points[labels == POSITIVE])


def _clicks_in_crop(
    points: torch.Tensor,
    labels: torch.Tensor,
    start: torch.Tensor,
    crop: tuple[int, ...],
    total: torch.Tensor,
    weights: torch.Tensor,
    threshold: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clicks inside the crop, or a positive click at the deepest predicted object voxel in it."""
    upper = start + torch.tensor(crop) - 1
    inside = ((points >= start) & (points <= upper)).all(1)
    if inside.any():
        return points[inside], labels[inside]
    box, _ = _ranges(start, crop, tuple(total.shape))
    known = weights[_slices(box)] > 0
    object_so_far = (total[_slices(box)] > threshold * weights[_slices(box)]) & known
    if not object_so_far.any():
        return points[:0], labels[:0]
    depth = ndimage.distance_transform_edt(np.pad(object_so_far.numpy(), 1))[1:-1, 1:-1, 1:-1]
    deepest = torch.tensor(np.unravel_index(int(depth.argmax()), depth.shape)) + torch.tensor(
        [a for a, _ in box]
    )
    return deepest[None].float(), torch.tensor([POSITIVE])


def _neighbours(
    start: torch.Tensor, mask: torch.Tensor, crop: tuple[int, ...], shape: tuple[int, ...], step: torch.Tensor
) -> list[torch.Tensor]:
    """Starts of the crops beside each face of this crop that the object touches, if they reach into the volume."""
    found = []
    for axis in range(3):
        for side, face in ((-1, 0), (1, crop[axis] - 1)):
            if not mask.select(axis, face).any():
                continue
            neighbour = start.clone()
            neighbour[axis] += side * step[axis]
            if (
                neighbour[axis] + crop[axis] > 0
                and neighbour[axis] < shape[axis]
                and ((side < 0 and start[axis] > 0) or (side > 0 and start[axis] + crop[axis] < shape[axis]))
            ):
                found.append(neighbour)
    return found


def _connected_to(mask: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """The connected components of ``mask`` that contain a seed voxel (all of ``mask`` without seeds)."""
    if not len(seeds) or not mask.any():
        return mask
    components, _ = ndimage.label(mask.numpy(), structure=np.ones((3, 3, 3)))
    index = seeds.round().long().clamp(min=torch.zeros(3, dtype=torch.long), max=torch.tensor(mask.shape) - 1)
    ids = {int(components[tuple(p)]) for p in index.tolist()} - {0}
    if not ids:
        return mask
    return torch.from_numpy(np.isin(components, list(ids)))


def segment(
    net: VolumetricSam,
    image: torch.Tensor,
    points: torch.Tensor,
    labels: torch.Tensor | None,
    protocol: Protocol,
    threshold: float = 0.5,
) -> torch.Tensor:
    """Whole-volume probability with the chosen protocol."""
    if protocol == "full":
        return segment_object(net, image, points, labels, threshold)
    return segment_around_clicks(net, image, points, labels)
