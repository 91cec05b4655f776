"""The reference's training augmentations.

The reference (3DSAM-adapter) clips to the dataset window, shifts intensities by up to 20 HU
(p 0.5), z-scores, zooms 0.85-1.25 (p 0.8; for pancreas and colon in-plane rotation up to 30
degrees, then in-plane zoom 0.9-1.1, p 0.3 each) the whole volume, crops, then flips every axis and
rotates by multiples of 90 degrees in the depth-height plane. Here the zoom and rotation (a
:class:`Warp`) act on a region around each crop just large enough that the crop never reads past
it, so the crop gets no padding from them; only the patch taken from the crop is interpolated.
Spatial transforms act on TorchIO's ``(C, X, Y, Z)`` RAS+ tensors, Z axial.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchio as tio
from monai.transforms import Affine

__all__ = [
    "RandomIntensityShift",
    "RandomRot90",
    "Warp",
    "fit_warp",
    "orientation_augmentation",
    "random_warp",
    "warp_region",
]

# The reference turns by 90 degrees in its arrays' first two axes, depth (Z) and height (Y), for every dataset.
ROT90_PLANE = (1, 2)


class RandomIntensityShift(tio.IntensityTransform):
    """Add one offset drawn uniformly from ``[-max_offset, max_offset]`` to every intensity image.

    Args:
        max_offset: Largest absolute offset, in the images' current units.
        **kwargs: Passed to :class:`torchio.Transform` (e.g. ``p``).
    """

    def __init__(self, max_offset: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_offset = float(max_offset)
        self.args_names = ["max_offset"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        """Shift every intensity image of the subject by the same random offset."""
        offset = (2 * float(torch.rand(())) - 1) * self.max_offset
        for image in self.get_images(subject):
            image.set_data(image.data + offset)
        return subject


class RandomRot90(tio.SpatialTransform):
    """Rotate every image by k x 90 degrees (k in 1..3) in one plane drawn from ``planes``.

    Args:
        planes: Pairs of spatial axes (0 X, 1 Y, 2 Z) that may be rotated.
        **kwargs: Passed to :class:`torchio.Transform` (e.g. ``p``).
    """

    def __init__(self, planes: Sequence[tuple[int, int]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not planes:
            raise ValueError("RandomRot90 needs at least one plane")
        self.planes = [tuple(plane) for plane in planes]
        self.args_names = ["planes"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        """Rotate all images of the subject with the same random plane and angle."""
        plane = self.planes[int(torch.randint(len(self.planes), ()))]
        turns = int(torch.randint(1, 4, ()))
        dims = (plane[0] + 1, plane[1] + 1)  # skip the channel axis
        for image in self.get_images(subject):
            image.set_data(torch.rot90(image.data, turns, dims).contiguous())
        return subject


@dataclass(frozen=True)
class Warp:
    """A zoom and an axial rotation about a crop's centre, as the reference applies them (rotation first).

    Attributes:
        zoom: Zoom factor per axis (X, Y, Z); above 1 enlarges the anatomy.
        angle: Rotation in the axial (X-Y) plane, radians.
    """

    zoom: tuple[float, float, float] = (1.0, 1.0, 1.0)
    angle: float = 0.0

    @property
    def is_identity(self) -> bool:
        """Whether the warp leaves every voxel where it is."""
        return self.angle == 0 and all(z == 1 for z in self.zoom)

    def weakened(self, fraction: float) -> Warp:
        """The warp with its zoom exponent and angle scaled by ``fraction`` (0: identity)."""
        x, y, z = self.zoom
        return Warp((x**fraction, y**fraction, z**fraction), self.angle * fraction)

    def footprint(self, size: Sequence[int]) -> tuple[int, ...]:
        """Shape of the region a warped crop of ``size`` interpolates from, concentric with the crop.

        It holds every voxel that linear interpolation reads and has the parity of ``size`` (so the crop's
        voxel centres fall on the region's lattice along the axes the warp leaves alone, which need no
        margin: e.g. Z under an axial rotation).
        """
        half = [(n - 1) / 2 / z for n, z in zip(size, self.zoom, strict=True)]
        cos, sin = abs(math.cos(self.angle)), abs(math.sin(self.angle))
        reach = (cos * half[0] + sin * half[1], sin * half[0] + cos * half[1], half[2])
        moved = [z != 1 or (axis < 2 and self.angle != 0) for axis, z in enumerate(self.zoom)]
        region = [math.ceil(2 * r - 1e-6) + 2 if m else n for r, m, n in zip(reach, moved, size, strict=True)]
        return tuple(r + (r - n) % 2 for r, n in zip(region, size, strict=True))


def random_warp(in_plane_only: bool) -> Warp:
    """The reference's random zoom (and, in-plane, rotation), from torch's global generator.

    Args:
        in_plane_only: Pancreas/colon variant: rotation up to 30 degrees in the axial plane (p 0.3), then
            zoom 0.9-1.1 of each in-plane axis (p 0.3); otherwise isotropic zoom 0.85-1.25 (p 0.8).
    """

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand(()))

    if not in_plane_only:
        if float(torch.rand(())) >= 0.8:
            return Warp()
        factor = uniform(0.85, 1.25)
        return Warp((factor, factor, factor))
    angle = math.radians(uniform(-30.0, 30.0)) if float(torch.rand(())) < 0.3 else 0.0
    zoom = (uniform(0.9, 1.1), uniform(0.9, 1.1), 1.0) if float(torch.rand(())) < 0.3 else (1.0, 1.0, 1.0)
    return Warp(zoom, angle)


def fit_warp(warp: Warp, size: Sequence[int], shape: Sequence[int]) -> Warp:
    """``warp``, weakened as little as needed for its footprint to fit in a volume of ``shape``.

    A volume too small for the drawn zoom-out or rotation thus gets a milder one rather than padding.
    """
    for fraction in (1.0, 0.75, 0.5, 0.25):
        weakened = warp.weakened(fraction)
        if all(f <= n for f, n in zip(weakened.footprint(size), shape, strict=True)):
            return weakened
    return Warp()


def warp_region(
    region: torch.Tensor,
    warp: Warp,
    crop_size: Sequence[int],
    offset: Sequence[int] | None = None,
    size: Sequence[int] | None = None,
) -> torch.Tensor:
    """Part of the crop of ``crop_size`` at the centre of ``region`` ``(C, X, Y, Z)``, warped by ``warp``.

    Args:
        region: The region, holding at least ``warp.footprint(crop_size)`` (nothing is read outside it;
            a read outside would be zeros).
        warp: Zoom and rotation about the crop's centre.
        crop_size: The warped crop.
        offset: Start of the part within the crop (default: the whole crop).
        size: Size of the part (default: the whole crop).

    Returns:
        The part ``[:, offset : offset + size]`` of the warped crop, every channel interpolated
        linearly; only the part is computed.
    """
    offset = [0, 0, 0] if offset is None else list(offset)
    size = list(crop_size) if size is None else list(size)
    if warp.is_identity:
        start = [(r - c) // 2 + o for r, c, o in zip(region.shape[1:], crop_size, offset, strict=True)]
        part = (slice(None), *(slice(s, s + n) for s, n in zip(start, size, strict=True)))
        return region[part]
    # MONAI's affine maps output voxels (about the output's centre) to input voxels (about the region's
    # centre): rotation after the inverse zoom, shifted to the part's centre. The angle's sign is
    # immaterial (angles are drawn symmetrically).
    cos, sin = math.cos(warp.angle), math.sin(warp.angle)
    linear = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]]) @ np.diag(
        [1 / z for z in warp.zoom]
    )
    shift = [o + (n - 1) / 2 - (c - 1) / 2 for o, n, c in zip(offset, size, crop_size, strict=True)]
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = linear, linear @ np.array(shift)
    transform = Affine(
        affine=affine, spatial_size=size, mode="bilinear", padding_mode="zeros", image_only=True
    )
    warped = transform(region.float())
    assert isinstance(warped, torch.Tensor)  # image_only: the image, not (image, affine)
    return warped.as_subclass(torch.Tensor)  # a plain tensor, not MONAI's MetaTensor


def orientation_augmentation(patch_size: Sequence[int]) -> tio.Transform:
    """Flips of all three axes (p 0.5 each) and 90-degree rotations (p 0.5) on the final patch.

    Rotations turn the reference's plane (depth-height for every dataset), when its two sides are
    equal in ``patch_size`` (so the patch keeps its shape).

    Args:
        patch_size: Patch size along X, Y, Z.

    Returns:
        The TorchIO transform.
    """
    transforms: list[tio.Transform] = [tio.RandomFlip(axes=(0, 1, 2), flip_probability=0.5, copy=False)]
    if patch_size[ROT90_PLANE[0]] == patch_size[ROT90_PLANE[1]]:
        transforms.append(RandomRot90([ROT90_PLANE], p=0.5, copy=False))
    return tio.Compose(transforms)
