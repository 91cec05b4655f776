import pytest
import torch

from sam3d.data.clicks import (
    correction_click,
    correction_clicks,
    first_click,
    pad_clicks,
    training_clicks,
)
from sam3d.data.layout import from_network_layout, to_network_layout


def ball(shape, centre, radius):
    grid = torch.stack(torch.meshgrid(*(torch.arange(n) for n in shape), indexing="ij"), dim=-1).float()
    return ((grid - torch.tensor(centre, dtype=torch.float)) ** 2).sum(-1) <= radius**2


def inside(mask, points):
    p = points.long()
    return mask[p[:, 0], p[:, 1], p[:, 2]]


def test_layout_maps_ras_xyz_to_dhw_and_back():
    tensor = torch.arange(2 * 4 * 5 * 6).reshape(2, 4, 5, 6)  # (C, X, Y, Z)
    network = to_network_layout(tensor)
    assert network.shape == (2, 6, 5, 4)
    assert network[1, 3, 2, 0] == tensor[1, 0, 2, 3]  # (d, h, w) = (z, y, x)
    assert torch.equal(from_network_layout(network), tensor)
    assert to_network_layout(tensor[None]).shape == (1, 2, 6, 5, 4)


def test_reference_clicks_positives_in_target_context_anywhere_all_labelled_one():
    mask = ball((20, 20, 20), (10, 10, 10), 4)
    points, labels = training_clicks(mask, 10, 20, "reference", torch.Generator().manual_seed(0))
    assert points.shape == (30, 3)
    assert points.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert inside(mask, points[:10]).all()
    assert not inside(mask, points[10:]).all()  # 20 uniform points in a 12% target: some fall outside
    assert (labels == 1).all()


def test_labelled_clicks_positive_in_target_negative_in_background():
    mask = ball((20, 20, 20), (10, 10, 10), 4)
    points, labels = training_clicks(mask, 5, 7, "labelled", torch.Generator().manual_seed(1))
    assert labels.tolist() == [1] * 5 + [0] * 7
    assert inside(mask, points[:5]).all()
    assert not inside(mask, points[5:]).any()


def test_clicks_are_reproducible_with_a_seeded_generator():
    mask = ball((16, 16, 16), (8, 8, 8), 5)
    a = training_clicks(mask, generator=torch.Generator().manual_seed(3))
    b = training_clicks(mask, generator=torch.Generator().manual_seed(3))
    c = training_clicks(mask, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0])
    assert not torch.equal(a[0], c[0])


def test_patch_without_target_gets_context_or_negative_clicks_and_empty_gets_none():
    empty_target = torch.zeros(8, 8, 8, dtype=torch.bool)
    points, labels = training_clicks(empty_target, 10, 20, "reference")
    assert len(points) == 20
    assert (labels == 1).all()
    points, labels = training_clicks(empty_target, 10, 20, "labelled")
    assert len(points) == 20
    assert (labels == 0).all()
    points, labels = training_clicks(torch.zeros(0, 8, 8, dtype=torch.bool))
    assert points.shape == (0, 3)
    assert labels.shape == (0,)
    assert len(first_click(empty_target)[0]) == 0


def test_first_click_center_is_deepest_point_of_largest_component():
    mask = ball((30, 30, 30), (10, 12, 14), 6) | ball((30, 30, 30), (24, 24, 24), 3)
    points, labels = first_click(mask, "center")
    assert points.tolist() == [[10.0, 12.0, 14.0]]
    assert labels.tolist() == [1]
    points, _ = first_click(mask, "random", torch.Generator().manual_seed(0))
    assert inside(mask, points).all()


def test_correction_click_false_negative_positive_and_false_positive_negative():
    target = ball((30, 30, 30), (15, 15, 15), 8)
    missed = target & ~ball((30, 30, 30), (15, 15, 15), 3)  # hollow prediction misses the core
    points, labels = correction_click(missed, target)
    assert labels.tolist() == [1]
    assert inside(target & ~missed, points).all()
    extra = target | ball((30, 30, 30), (5, 5, 25), 4)
    points, labels = correction_click(extra, target)
    assert labels.tolist() == [0]
    assert points.tolist() == [[5.0, 5.0, 25.0]]
    assert len(correction_click(target, target)[0]) == 0


def test_interactive_first_clicks_positive_in_target_negative_only_without_target():
    target = ball((20, 20, 20), (10, 10, 10), 4)
    points, labels = training_clicks(target, 1, 1, "interactive", torch.Generator().manual_seed(0))
    assert labels.tolist() == [1]
    assert inside(target, points).all()
    points, labels = training_clicks(torch.zeros(20, 20, 20, dtype=torch.bool), 1, 2, "interactive")
    assert labels.tolist() == [0, 0]


def test_correction_clicks_add_one_click_per_sample_where_its_own_prediction_errs():
    target = torch.stack([ball((30, 30, 30), (15, 15, 15), 8)] * 3)
    prediction = torch.stack(
        [
            target[0] & ~ball((30, 30, 30), (15, 15, 15), 3),  # misses the core: positive click there
            target[1] | ball((30, 30, 30), (5, 5, 25), 4),  # spills over: negative click there
            target[2],  # perfect: a padding click
        ]
    )
    points = torch.tensor([[[15.0, 15.0, 15.0]], [[15.0, 15.0, 15.0]], [[14.0, 15.0, 15.0]]])
    labels = torch.ones(3, 1, dtype=torch.long)
    new_points, new_labels = correction_clicks(prediction, target, points, labels)
    assert new_labels.tolist() == [[1, 1], [1, 0], [1, -1]]
    assert torch.equal(new_points[:, :1], points)
    assert torch.equal(new_points[0, 1], correction_click(prediction[0], target[0])[0][0])
    assert new_points[1, 1].tolist() == [5.0, 5.0, 25.0]
    with pytest.raises(ValueError, match="one shape"):
        correction_clicks(prediction[0], target[0], points, labels)


def test_pad_clicks_pads_with_label_minus_one():
    points, labels = pad_clicks(
        [
            (torch.ones(2, 3), torch.ones(2, dtype=torch.long)),
            (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)),
        ]
    )
    assert points.shape == (2, 2, 3)
    assert labels.tolist() == [[1, 1], [-1, -1]]


def test_invalid_click_mode_is_rejected():
    with pytest.raises(ValueError, match="click mode"):
        training_clicks(torch.ones(4, 4, 4), mode="boxes")  # type: ignore[arg-type]
