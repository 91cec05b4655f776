import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from sam3d.metrics import case_metrics, summarize

SPACING = (3.0, 1.0, 0.5)  # anisotropic, in the masks' axis order
SHAPE = (12, 22, 32)


def box(start, size, shape=SHAPE):
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[tuple(slice(a, a + n) for a, n in zip(start, size, strict=True))] = True
    return mask


def ball(centre_mm, radius_mm, shape=SHAPE, spacing=SPACING):
    grids = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing, strict=True)), indexing="ij")
    squared = sum((g - c) ** 2 for g, c in zip(grids, centre_mm, strict=True))
    return torch.from_numpy(squared <= radius_mm**2)


def boundary_distances(a, b, spacing):
    """Distances (mm) from the boundary voxels of ``a`` to the nearest boundary voxel of ``b``."""
    a, b = a.numpy(), b.numpy()
    edge_a, edge_b = a ^ ndimage.binary_erosion(a), b ^ ndimage.binary_erosion(b)
    return ndimage.distance_transform_edt(~edge_b, sampling=spacing)[edge_a]


def voxel_nsd(a, b, spacing, tau):
    ab, ba = boundary_distances(a, b, spacing), boundary_distances(b, a, spacing)
    return ((ab <= tau).sum() + (ba <= tau).sum()) / (len(ab) + len(ba))


def hd95(a, b, spacing):
    return max(
        np.percentile(boundary_distances(a, b, spacing), 95),
        np.percentile(boundary_distances(b, a, spacing), 95),
    )


def continuous_nsd_shifted_box(size_mm, axis, shift_mm, tau):
    """NSD of two boxes (continuous surfaces) of the given size, one shifted along ``axis``."""
    length = size_mm[axis]
    w, h = (s for i, s in enumerate(size_mm) if i != axis)
    cap, perimeter = w * h, 2 * (w + h)
    if tau >= shift_mm:
        return 1.0
    # Cap inside the other box: correct within tau of its sides; cap outside: never; sides: where
    # the other box is within tau along the axis.
    inner_cap = cap - max(w - 2 * tau, 0) * max(h - 2 * tau, 0)
    side = perimeter * (length - shift_mm + tau)
    return (inner_cap + side) / (2 * cap + perimeter * length)


@pytest.mark.parametrize(("axis", "k"), [(0, 1), (0, 2), (1, 3), (2, 3)])
def test_shifted_box_on_anisotropic_grid(axis, k):
    size, start = (6, 16, 24), [2, 2, 2]
    shifted = list(start)
    shifted[axis] += k
    a, b = box(start, size), box(shifted, size)
    shift_mm = k * SPACING[axis]
    size_mm = [n * s for n, s in zip(size, SPACING, strict=True)]
    for tau in (1.0, 2.5, 5.0):
        metrics = case_metrics(a, b, SPACING, tolerance_mm=tau)
        # More than 5% of each boundary (the cap left behind) lies exactly shift_mm away.
        assert metrics["hd95"] == pytest.approx(shift_mm)
        assert metrics["hd95"] == pytest.approx(hd95(a, b, SPACING))
        expected = continuous_nsd_shifted_box(size_mm, axis, shift_mm, tau)
        assert metrics["nsd"] == pytest.approx(expected, abs=0.04), (tau, expected)
        if tau >= shift_mm:
            assert metrics["nsd"] == 1.0
        assert metrics["dice"] == pytest.approx(1 - k / size[axis])
    voxel = case_metrics(a, b, SPACING, tolerance_mm=2.5, use_subvoxels=False)
    assert voxel["nsd"] == pytest.approx(voxel_nsd(a, b, SPACING, 2.5), abs=1e-6)


def test_spacing_axis_order_matters():
    a, b = box((2, 2, 2), (4, 10, 20)), box((3, 2, 2), (4, 10, 20))  # one voxel along the 3 mm axis
    assert case_metrics(a, b, (3.0, 1.0, 0.5))["hd95"] == pytest.approx(3.0)
    assert case_metrics(a, b, (0.5, 1.0, 3.0))["hd95"] == pytest.approx(0.5)
    assert case_metrics(a, b, (3.0, 1.0, 0.5), tolerance_mm=2.0)["nsd"] < 0.8
    assert case_metrics(a, b, (0.5, 1.0, 3.0), tolerance_mm=2.0)["nsd"] == 1.0


def test_concentric_spheres():
    shape = (12, 36, 72)
    centre = [n * s / 2 for n, s in zip(shape, SPACING, strict=True)]
    inner, outer = ball(centre, 6.0, shape), ball(centre, 14.0, shape)
    close = case_metrics(inner, outer, SPACING, tolerance_mm=12.0)
    assert close["nsd"] == 1.0
    far = case_metrics(inner, outer, SPACING, tolerance_mm=4.0)
    assert far["nsd"] == 0.0
    # 8 mm apart, up to about a voxel diagonal of discretisation.
    assert far["hd95"] == pytest.approx(8.0, abs=3.0)
    assert far["hd95"] == pytest.approx(hd95(inner, outer, SPACING), abs=1e-5)
    voxel = case_metrics(inner, outer, SPACING, tolerance_mm=8.0, use_subvoxels=False)
    assert voxel["nsd"] == pytest.approx(voxel_nsd(inner, outer, SPACING, 8.0), abs=1e-6)
    assert 0 < voxel["nsd"] < 1
    assert far["dice"] == pytest.approx(2 * inner.sum().item() / (inner.sum() + outer.sum()).item())


def test_sphere_against_slightly_larger_sphere():
    centre = [n * s / 2 for n, s in zip(SHAPE, SPACING, strict=True)]
    a, b = ball(centre, 7.0), ball(centre, 8.0)
    metrics = case_metrics(a, b, SPACING)
    assert metrics["nsd"] == 1.0
    assert metrics["hd95"] == pytest.approx(hd95(a, b, SPACING), abs=1e-5)
    assert metrics["hd95"] <= 3.0


def test_identical_masks():
    a = ball([18, 10, 8], 6.0)
    assert case_metrics(a, a.clone(), SPACING) == {"dice": 1.0, "nsd": 1.0, "hd95": 0.0}


def test_disjoint_far_objects():
    a, b = box((0, 0, 0), (3, 4, 4)), box((8, 14, 26), (3, 4, 4))
    metrics = case_metrics(a, b, SPACING)
    assert metrics["dice"] == 0.0
    assert metrics["nsd"] == 0.0
    assert metrics["hd95"] == pytest.approx(hd95(a, b, SPACING), abs=1e-5)
    assert metrics["hd95"] > 30


def test_dice_of_overlapping_cubes():
    a, b = box((2, 2, 2), (10, 10, 10), (20, 20, 20)), box((5, 4, 2), (10, 10, 10), (20, 20, 20))
    metrics = case_metrics(a, b, (1.0, 1.0, 1.0))
    assert metrics["dice"] == pytest.approx(2 * 7 * 8 * 10 / 2000)


def test_empty_conventions():
    empty, full = torch.zeros(SHAPE, dtype=torch.bool), box((2, 2, 2), (4, 6, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no MONAI empty-mask warnings either
        assert case_metrics(empty, empty, SPACING) == {"dice": 1.0, "nsd": 1.0, "hd95": 0.0}
        for prediction, label in ((empty, full), (full, empty)):
            metrics = case_metrics(prediction, label, SPACING)
            assert metrics["dice"] == 0.0
            assert metrics["nsd"] == 0.0
            assert metrics["hd95"] == math.inf


def test_accepts_integer_masks_and_rejects_probabilities():
    a = box((2, 2, 2), (4, 6, 6))
    assert case_metrics(a.to(torch.uint8), a.float(), SPACING)["dice"] == 1.0
    with pytest.raises(ValueError, match="binary"):
        case_metrics(a.float() * 0.7, a, SPACING)
    with pytest.raises(ValueError, match="shape"):
        case_metrics(a, a[:-1], SPACING)
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(a, a, (1.0, 1.0))


def test_summarize_leaves_out_infinite_and_missing_values_and_counts_them():
    stats = summarize([1.0, 3.0, math.inf, math.nan, 2.0])
    assert stats["mean"] == pytest.approx(2.0)
    assert stats["median"] == pytest.approx(2.0)
    assert stats["std"] == pytest.approx(np.std([1.0, 3.0, 2.0]))
    assert (stats["min"], stats["max"]) == (1.0, 3.0)
    assert (stats["count"], stats["infinite"], stats["missing"], stats["total"]) == (3, 1, 1, 5)


def test_summarize_with_no_finite_value():
    stats = summarize([math.inf])
    assert stats["mean"] is None
    assert stats["median"] is None
    assert (stats["count"], stats["infinite"], stats["total"]) == (0, 1, 1)
    assert summarize([])["total"] == 0
