"""Training crops: centres from every voxel at the reference's 2:1 ratio, crops shifted inside the volume."""

import pytest
import torch

from sam3d.data.training.crops import crop_starts, region_start


def contains_target(label, start, size):
    window = tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))
    return bool(label[window].any())


def test_positive_crops_reach_a_tumour_touching_the_border():
    # TorchIO's LabelSampler gives no positive centre to a tumour lying within half a crop of the border.
    label = torch.zeros(48, 40, 44, dtype=torch.bool)
    label[:3, 18:24, 20:26] = True  # touches the X border
    size = (24, 24, 24)
    torch.manual_seed(0)
    starts = crop_starts(label, size, 600)
    assert all(0 <= s <= n - c for start in starts for s, n, c in zip(start, label.shape, size, strict=True))
    hits = sum(contains_target(label, start, size) for start in starts) / len(starts)
    # 2/3 positive centres, plus the few background centres whose crop reaches the tumour.
    assert 0.62 < hits < 0.8


def test_centres_follow_the_ratio_and_cover_the_whole_background():
    label = torch.zeros(30, 30, 30, dtype=torch.bool)
    label[14:16, 14:16, 14:16] = True
    size = (10, 10, 10)
    torch.manual_seed(1)
    starts = crop_starts(label, size, 900, ratio=(1.0, 2.0))
    hits = sum(contains_target(label, start, size) for start in starts) / len(starts)
    assert 0.3 < hits < 0.5  # 1/3 positive centres (+ background crops near the tumour)
    # Background centres anywhere, border bands included: every clamped start occurs.
    assert {start[0] for start in starts} == set(range(21))


@pytest.mark.parametrize("fill", [False, True])
def test_volumes_without_target_or_without_background(fill):
    label = torch.full((12, 12, 12), fill, dtype=torch.bool)
    torch.manual_seed(2)
    starts = crop_starts(label, (12, 10, 8), 20)
    assert len(starts) == 20
    assert all(start[0] == 0 and 0 <= start[1] <= 2 and 0 <= start[2] <= 4 for start in starts)


def test_a_volume_smaller_than_the_crop_is_refused():
    with pytest.raises(ValueError, match="smaller than the crop"):
        crop_starts(torch.zeros(8, 20, 20, dtype=torch.bool), (10, 10, 10), 1)


def test_region_start_floors_the_centre_and_stays_inside():
    assert region_start((10, 0, 29), (6, 6, 5), (30, 30, 30)) == (7, 0, 25)
    assert region_start((3, 3, 3), (10, 10, 10), (8, 12, 10)) == (-1, 0, 0)  # larger than the volume: centred
