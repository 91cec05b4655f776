"""The reference's training augmentations as TorchIO transforms.

The reference (3DSAM-adapter) clips to the dataset window, shifts intensities by up to 20 HU
(p 0.5), z-scores, zooms 0.85-1.25 (p 0.8; for pancreas and colon in-plane zoom 0.9-1.1 and
in-plane rotation up to 30 degrees, p 0.3 each), then flips every axis and rotates by multiples of
90 degrees. Spatial transforms here act on TorchIO's ``(C, X, Y, Z)`` RAS+ tensors, Z axial.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import torch
import torchio as tio

__all__ = [
    "RandomIntensityShift",
    "RandomRot90",
    "orientation_augmentation",
    "spatial_augmentation",
]

AXIAL_PLANE = (0, 1)  # X-Y in RAS+ tensors


class RandomIntensityShift(tio.IntensityTransform):
    """Add one offset drawn uniformly from ``[-max_offset, max_offset]`` to every intensity image.

    Args:
        max_offset: Largest absolute offset, in the images' current units.
        **kwargs: Passed to :class:`torchio.Transform` (e.g. ``p``).
    """

    def __init__(self, max_offset: float, **kwargs: object) -> None:
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

    def __init__(self, planes: Sequence[tuple[int, int]], **kwargs: object) -> None:
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


def spatial_augmentation(in_plane_only: bool) -> tio.Transform:
    """The reference's zoom (and, in-plane, rotation), to run on a crop 1.2x the patch.

    Args:
        in_plane_only: Pancreas/colon variant: in-plane zoom 0.9-1.1 and in-plane rotation up to
            30 degrees, p 0.3 each; otherwise isotropic zoom 0.85-1.25 with p 0.8.

    Returns:
        The TorchIO transform.
    """
    if in_plane_only:
        return tio.Compose(
            [
                tio.RandomAffine(scales=(0.9, 1.1, 0.9, 1.1, 1.0, 1.0), degrees=0, p=0.3, copy=False),
                tio.RandomAffine(scales=0, degrees=(0, 0, 0, 0, -30, 30), p=0.3, copy=False),
            ]
        )
    return tio.RandomAffine(scales=(0.85, 1.25), degrees=0, isotropic=True, p=0.8, copy=False)


def orientation_augmentation(patch_size: Sequence[int], in_plane_only: bool) -> tio.Transform:
    """Flips of all three axes (p 0.5 each) and 90-degree rotations (p 0.5) on the final patch.

    Rotations use the axial plane only when ``in_plane_only``, else every plane, and only planes
    whose two sides are equal in ``patch_size`` (so the patch keeps its shape).

    Args:
        patch_size: Patch size along X, Y, Z.
        in_plane_only: Restrict rotations to the axial plane.

    Returns:
        The TorchIO transform.
    """
    planes = [AXIAL_PLANE] if in_plane_only else list(combinations(range(3), 2))
    planes = [plane for plane in planes if patch_size[plane[0]] == patch_size[plane[1]]]
    transforms: list[tio.Transform] = [tio.RandomFlip(axes=(0, 1, 2), flip_probability=0.5, copy=False)]
    if planes:
        transforms.append(RandomRot90(planes, p=0.5, copy=False))
    return tio.Compose(transforms)
