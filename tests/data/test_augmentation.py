"""The reference's augmentations: zoom/rotation without padding, its probabilities and its 90-degree plane."""

import math

import pytest
import torch
import torchio as tio

from sam3d.data.preprocessing import Preprocessing
from sam3d.data.training.augmentation import (
    Warp,
    fit_warp,
    orientation_augmentation,
    random_warp,
    warp_region,
)
from sam3d.data.training.patches import PatchSettings, TrainingPatches

WARPS = [
    Warp((0.85, 0.85, 0.85)),
    Warp((1.25, 1.25, 1.25)),
    Warp((0.9, 1.1, 1.0), math.radians(30)),
    Warp((0.9, 0.9, 1.0), math.radians(-17)),
    Warp((1.0, 1.0, 1.0), math.radians(45)),
]


@pytest.mark.parametrize("warp", WARPS)
def test_a_warped_crop_reads_only_inside_its_footprint(warp):
    size = (21, 20, 14)
    footprint = warp.footprint(size)
    assert all((f - n) % 2 == 0 for f, n in zip(footprint, size, strict=True))
    region = torch.ones(1, *footprint)
    crop = warp_region(region, warp, size)
    assert crop.shape == (1, *size)
    # Interpolating only inside the region keeps every value 1; a read outside it would bring in a 0.
    assert torch.allclose(crop, torch.ones_like(crop), atol=1e-5)
    smaller = torch.ones(1, footprint[0] - 4, *footprint[1:])
    assert warp_region(torch.nn.functional.pad(smaller, (0, 0, 0, 0, 2, 2)), warp, size).min() < 0.99


@pytest.mark.parametrize("warp", [Warp(), *WARPS])
def test_a_part_of_the_warped_crop_is_computed_alone(warp):
    size = (21, 20, 14)
    region = torch.randn(2, *warp.footprint(size), generator=torch.Generator().manual_seed(0))
    whole = warp_region(region, warp, size)
    part = warp_region(region, warp, size, (3, 0, 5), (16, 20, 8))
    torch.testing.assert_close(part, whole[:, 3:19, :, 5:13], atol=1e-4, rtol=0)


def test_identity_warp_is_the_centre_crop():
    region = torch.arange(2 * 8 * 9 * 10, dtype=torch.float32).view(2, 8, 9, 10)
    assert torch.equal(warp_region(region, Warp(), (4, 5, 6)), region[:, 2:6, 2:7, 2:8])


def test_rotation_and_in_plane_zoom_leave_the_axial_axis_alone():
    ramp = torch.arange(30, dtype=torch.float32).view(1, 1, 1, 30).expand(1, 40, 40, 30)
    warp = Warp((0.9, 1.1, 1.0), math.radians(25))
    crop = warp_region(ramp, warp, (20, 20, 20))
    assert torch.allclose(crop, ramp[:, :20, :20, 5:25], atol=1e-4)


def test_fit_warp_weakens_only_what_the_volume_cannot_hold():
    size = (20, 20, 20)
    in_plane = Warp((0.9, 1.1, 1.0), math.radians(30))
    assert in_plane.footprint(size)[2] == 20  # Z is left alone: no margin needed
    assert fit_warp(in_plane, size, (40, 40, 20)) == in_plane
    zoom_out = Warp((0.85, 0.85, 0.85))
    assert fit_warp(zoom_out, size, (40, 40, 40)) == zoom_out
    fitted = fit_warp(zoom_out, size, (40, 40, 22))
    assert 0.85 < fitted.zoom[0] < 1
    assert all(f <= n for f, n in zip(fitted.footprint(size), (40, 40, 22), strict=True))
    assert fit_warp(zoom_out, size, (20, 20, 20)) == Warp()


def test_random_warps_follow_the_reference_per_dataset():
    torch.manual_seed(0)
    isotropic = [random_warp(in_plane_only=False) for _ in range(2000)]
    zoomed = [w for w in isotropic if not w.is_identity]
    assert 0.76 < len(zoomed) / 2000 < 0.84
    assert all(w.angle == 0 and len(set(w.zoom)) == 1 and 0.85 <= w.zoom[0] <= 1.25 for w in zoomed)
    in_plane = [random_warp(in_plane_only=True) for _ in range(2000)]
    rotated = [w for w in in_plane if w.angle != 0]
    zoomed = [w for w in in_plane if w.zoom != (1.0, 1.0, 1.0)]
    assert 0.26 < len(rotated) / 2000 < 0.34
    assert 0.26 < len(zoomed) / 2000 < 0.34
    assert all(abs(w.angle) <= math.radians(30) for w in rotated)
    assert all(w.zoom[2] == 1 and 0.9 <= min(w.zoom[:2]) <= max(w.zoom[:2]) <= 1.1 for w in zoomed)


def test_right_angle_turns_use_the_depth_height_plane_only():
    torch.manual_seed(0)
    x_ramp = torch.arange(8, dtype=torch.float32).view(1, 8, 1, 1).expand(1, 8, 8, 8).contiguous()
    y_ramp = x_ramp.transpose(1, 2).contiguous()
    transform = orientation_augmentation((8, 8, 8))
    turned = 0
    for _ in range(200):
        out = transform(
            tio.Subject(x=tio.ScalarImage(tensor=x_ramp.clone()), y=tio.ScalarImage(tensor=y_ramp.clone()))
        )
        x, y = out["x"].data, out["y"].data
        assert torch.equal(x, x_ramp) or torch.equal(x, x_ramp.flip(1))  # X (left-right) never turns
        turned += not (torch.equal(y, y_ramp) or torch.equal(y, y_ramp.flip(2)))
    assert 45 < turned < 90  # p 0.5, and two of the three turns move Y onto Z: 1/3 expected


def settings(in_plane_only):
    preprocessing = Preprocessing((1.0, 1.0, 1.0), (-100.0, 300.0), 0.0, 100.0, (1,))
    return PatchSettings((16, 16, 16), preprocessing, in_plane_only=in_plane_only)


@pytest.mark.parametrize("in_plane_only", [False, True])
@pytest.mark.parametrize("shape", [(21, 22, 23), (30, 44, 26), (48, 48, 20), (48, 48, 48)])
def test_augmented_patches_hold_no_padding_from_zoom_or_rotation(in_plane_only, shape):
    # Intensities 150-250 HU are 1.5-2.5 after z-scoring, 1.3-2.7 after the 20 HU shift; a padded voxel
    # (0, or the window's low end) or one interpolated with it falls outside that band.
    generator = torch.Generator().manual_seed(sum(shape))
    image = 150 + 100 * torch.rand(1, *shape, generator=generator)
    label = torch.zeros(1, *shape, dtype=torch.uint8)
    label[:, : shape[0] // 3, 3:9, -6:] = 1  # at the border
    subject = tio.Subject(image=tio.ScalarImage(tensor=image), label=tio.LabelMap(tensor=label), case_id="c")
    transform = TrainingPatches(settings(in_plane_only), num_patches=8)
    torch.manual_seed(0)
    for _ in range(6):
        patches = transform(subject)["image"].data
        assert patches.shape == (8, 16, 16, 16)
        assert patches.min() > 1.29
        assert patches.max() < 2.71
