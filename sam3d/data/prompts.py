"""A simulated user's boxes and scribbles on binary masks, as tensors the network takes (torch plus SciPy).

Beyond the paper: training with ``model.dense_prompts`` starts some steps with a box or scribbles instead
of a click (see :class:`sam3d.module.VolumetricSamModule`). Masks are ``(D, H, W)`` in network layout;
boxes are ``(d0, h0, w0, d1, h1, w1)`` int64 crop voxel indices with both ends inside (``d0 == d1``: a
2D box on one slice). Randomness comes only from the explicit CPU ``generator``, so a seeded generator
draws the same prompts every time.
"""

from __future__ import annotations

import itertools
from typing import Literal, get_args

import numpy as np
import torch
from scipy import ndimage

from sam3d.cvpr25 import challenge_box

__all__ = [
    "BOX_STYLES",
    "BoxStyle",
    "batch_boxes",
    "batch_scribbles",
    "simulated_box",
    "simulated_scribbles",
]

BoxStyle = Literal["bounding", "challenge", "slice"]
BOX_STYLES: tuple[BoxStyle, ...] = get_args(BoxStyle)


def _mask(mask: torch.Tensor, name: str = "target") -> torch.Tensor:
    if mask.ndim != 3:
        raise ValueError(f"{name} must be a (D, H, W) mask, got shape {tuple(mask.shape)}")
    return mask.detach().cpu() != 0


def _randint(high: int, generator: torch.Generator) -> int:
    """A uniform integer in ``0..high - 1``."""
    return int(torch.randint(high, (), generator=generator))


def _bounding(target: torch.Tensor) -> list[int]:
    voxels = torch.nonzero(target)
    return [*voxels.min(0).values.tolist(), *voxels.max(0).values.tolist()]


def _slice_box(target: torch.Tensor, generator: torch.Generator) -> list[int]:
    """The in-plane extent of the target on one labelled slice drawn uniformly, as a 2D box."""
    slices = torch.nonzero(target.any(2).any(1))[:, 0]
    d = int(slices[_randint(len(slices), generator)])
    rows, columns = torch.nonzero(target[d], as_tuple=True)
    return [d, int(rows.min()), int(columns.min()), d, int(rows.max()), int(columns.max())]


def simulated_box(
    target: torch.Tensor,
    generator: torch.Generator,
    margin: int = 3,
    styles: tuple[BoxStyle, ...] = BOX_STYLES,
) -> torch.Tensor | None:
    """A box a user draws around the target, in a style drawn uniformly from ``styles``.

    ``bounding``: the target's 3D bounding box; ``challenge``: the CVPR 2025 challenge's box (slices of the
    target, in-plane extent on its middle labelled slice, :func:`sam3d.cvpr25.challenge_box`); ``slice``:
    a 2D box around the target on one labelled slice (``d0 == d1``). Each side is then widened by its own
    uniform 0..``margin`` voxels (in-plane only for ``slice``, which stays on its slice), clipped to the crop:
    a user's box is rarely tight.

    Args:
        target: Binary ``(D, H, W)`` target.
        generator: CPU source of randomness.
        margin: The most voxels a side is widened by.
        styles: The styles to draw from.

    Returns:
        ``(6,)`` int64 ``(d0, h0, w0, d1, h1, w1)`` on the target's device, or None for an empty target.
    """
    if margin < 0 or not styles or any(style not in BOX_STYLES for style in styles):
        raise ValueError(f"margin must be >= 0 and styles a non-empty subset of {BOX_STYLES}")
    mask = _mask(target)
    if not mask.any():
        return None
    style = styles[_randint(len(styles), generator)]
    if style == "bounding":
        box = _bounding(mask)
    elif style == "challenge":
        box = list(challenge_box(mask).bounds)
    else:
        box = _slice_box(mask, generator)
    widen = torch.randint(margin + 1, (6,), generator=generator).tolist()
    if style == "slice":
        widen[0] = widen[3] = 0
    last = [size - 1 for size in mask.shape]
    lower = [max(0, box[axis] - widen[axis]) for axis in range(3)]
    upper = [min(last[axis], box[3 + axis] + widen[3 + axis]) for axis in range(3)]
    return torch.tensor([*lower, *upper], dtype=torch.long, device=target.device)


def _stroke(shape: tuple[int, int], ends: torch.Tensor) -> np.ndarray:
    """The pixels of the polyline through ``ends`` ``(n, 2)`` on a ``shape`` slice."""
    drawn = np.zeros(shape, dtype=bool)
    for start, end in itertools.pairwise(ends):
        steps = int((end - start).abs().max()) + 1
        line = torch.stack([torch.linspace(float(start[i]), float(end[i]), steps) for i in range(2)], 1)
        rows, columns = line.round().long().unbind(1)
        drawn[rows.numpy(), columns.numpy()] = True
    return drawn


def simulated_scribbles(
    target: torch.Tensor,
    generator: torch.Generator,
    negative_probability: float = 0.5,
    ring: tuple[int, int] = (2, 5),
    arc: float = 6.0,
) -> torch.Tensor:
    """Scribbles a user draws on one slice: a stroke across the target and perhaps one beside it.

    Imitates a quick hand stroke on one displayed slice (one drawn uniformly among the target's): the
    positive scribble is the polyline through three target pixels of that slice drawn uniformly, kept
    where it runs inside the target (a stroke across a concave target leaves it; at least its first pixel
    stays). With probability ``negative_probability`` a negative scribble marks the background next to the
    target: the part of the in-plane ring ``ring[0] + 1``..``ring[1]`` pixels outside the target within
    ``arc`` pixels of one ring pixel drawn uniformly (an arc a user draws beside the boundary to stop a
    spill; none when the slice leaves no room).

    Args:
        target: Binary ``(D, H, W)`` target.
        generator: CPU source of randomness.
        negative_probability: How often a negative scribble is drawn too.
        ring: The inner and outer distance (dilation steps) of the negative scribble's ring.
        arc: The negative scribble's radius around its drawn ring pixel.

    Returns:
        ``(2, D, H, W)`` bool: the positive then the negative scribble (both empty for an empty target).
    """
    mask = _mask(target)
    scribbles = torch.zeros(2, *mask.shape, dtype=torch.bool)
    if mask.any():
        slices = torch.nonzero(mask.any(2).any(1))[:, 0]
        d = int(slices[_randint(len(slices), generator)])
        plane = mask[d]
        pixels = torch.nonzero(plane)
        ends = pixels[torch.randint(len(pixels), (3,), generator=generator)]
        positive = _stroke(tuple(plane.shape), ends) & plane.numpy()  # type: ignore[arg-type]
        scribbles[0, d] = torch.from_numpy(positive)
        draw_negative = float(torch.rand((), generator=generator)) < negative_probability
        if draw_negative:
            scribbles[1, d] = _negative_arc(plane.numpy(), generator, ring, arc)
    return scribbles.to(target.device)


def _negative_arc(
    plane: np.ndarray, generator: torch.Generator, ring: tuple[int, int], arc: float
) -> torch.Tensor:
    """Background pixels in a ring around ``plane``'s target, near one ring pixel drawn uniformly."""
    inner = ndimage.binary_dilation(plane, iterations=ring[0])
    outer = ndimage.binary_dilation(plane, iterations=ring[1])
    band = torch.from_numpy(outer & ~inner)
    pixels = torch.nonzero(band)
    if not len(pixels):
        return band
    anchor = pixels[_randint(len(pixels), generator)]
    rows, columns = torch.meshgrid(*(torch.arange(n) for n in plane.shape), indexing="ij")
    near = (rows - anchor[0]) ** 2 + (columns - anchor[1]) ** 2 <= arc**2
    return band & near


def _targets(targets: torch.Tensor) -> torch.Tensor:
    if targets.ndim != 4:
        raise ValueError(f"targets must be (B, D, H, W) masks, got shape {tuple(targets.shape)}")
    return targets


def batch_boxes(
    targets: torch.Tensor, generator: torch.Generator, margin: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """One :func:`simulated_box` per sample: ``boxes (B, 1, 6)`` int64 and ``box_valid (B, 1)`` bool.

    A sample without target gets an all-zero box with ``box_valid`` False.
    """
    targets = _targets(targets)
    boxes = torch.zeros(len(targets), 1, 6, dtype=torch.long, device=targets.device)
    valid = torch.zeros(len(targets), 1, dtype=torch.bool, device=targets.device)
    for sample, target in enumerate(targets):
        box = simulated_box(target, generator, margin)
        if box is not None:
            boxes[sample, 0], valid[sample, 0] = box, True
    return boxes, valid


def batch_scribbles(
    targets: torch.Tensor, generator: torch.Generator, negative_probability: float = 0.5
) -> torch.Tensor:
    """One :func:`simulated_scribbles` per sample: ``(B, 2, D, H, W)`` bool (empty without target)."""
    targets = _targets(targets)
    return torch.stack([simulated_scribbles(t, generator, negative_probability) for t in targets])
