"""Segmenting whole volumes with a network trained on crops (pure torch, network layout ``(D, H, W)``)."""

from __future__ import annotations

import torch

from sam3d.models import VolumetricSam


def crop_start(points: torch.Tensor, crop_size: tuple[int, int, int]) -> torch.Tensor:
    """Start ``(3,)`` of the crop centred on the midpoint of the clicks' bounding box (the paper's test crop)."""
    centre = torch.round((points.amin(0) + points.amax(0)) / 2).long()
    return centre - torch.tensor(crop_size) // 2


@torch.no_grad()
def segment_around_clicks(
    net: VolumetricSam, image: torch.Tensor, points: torch.Tensor, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """Foreground probability of a whole volume from one crop centred on the clicks (zero outside the crop).

    Args:
        net: The network (its ``config.crop_size`` sets the crop).
        image: ``(D, H, W)`` normalised volume.
        points: ``(N, 3)`` clicks in volume voxels ``(d, h, w)``.
        labels: ``(N,)`` click labels, None for all positive.

    Returns:
        ``(D, H, W)`` float probabilities.
    """
    crop = tuple(net.config.crop_size)
    start = crop_start(points, crop)
    # Source and destination ranges of the part of the crop that lies inside the volume.
    src = [(max(s, 0), min(s + c, n)) for s, c, n in zip(start.tolist(), crop, image.shape, strict=True)]
    dst = [(a - s, b - s) for (a, b), s in zip(src, start.tolist(), strict=True)]
    patch = image.new_full(crop, float(image.min()))
    patch[tuple(slice(a, b) for a, b in dst)] = image[tuple(slice(a, b) for a, b in src)]
    device = next(net.parameters()).device
    local = (points - start).float()
    logits = net(
        patch[None, None].to(device),
        local[None].to(device),
        None if labels is None else labels[None].to(device),
    )
    probability = image.new_zeros(image.shape)
    probability[tuple(slice(a, b) for a, b in src)] = (
        logits.float().softmax(1)[0, 1][tuple(slice(a, b) for a, b in dst)].cpu()
    )
    return probability
