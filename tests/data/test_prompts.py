"""The simulated user's boxes and scribbles (sam3d.data.prompts)."""

from __future__ import annotations

import pytest
import torch

from sam3d.cvpr25 import challenge_box
from sam3d.data.prompts import batch_boxes, batch_scribbles, simulated_box, simulated_scribbles

SHAPE = (16, 24, 20)


def _target() -> torch.Tensor:
    """An irregular target touching the crop's last h row: two boxes, only the smaller on the middle slice."""
    target = torch.zeros(SHAPE, dtype=torch.bool)
    target[3:6, 10:24, 4:9] = True
    target[6:12, 12:16, 8:15] = True
    return target


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _box_voxels(box: torch.Tensor) -> torch.Tensor:
    inside = torch.zeros(SHAPE, dtype=torch.bool)
    d0, h0, w0, d1, h1, w1 = box.tolist()
    inside[d0 : d1 + 1, h0 : h1 + 1, w0 : w1 + 1] = True
    return inside


@pytest.mark.parametrize("margin", [0, 3])
def test_each_box_style_covers_the_target_stays_in_the_crop_and_widens_by_at_most_the_margin(margin):
    target = _target()
    tight = {"bounding": [3, 10, 4, 11, 23, 14], "challenge": [3, 12, 8, 11, 15, 14]}
    assert list(challenge_box(target).bounds) == tight["challenge"]  # the middle slice's in-plane extent
    for seed in range(20):
        for style in ("bounding", "challenge"):
            box = simulated_box(target, _generator(seed), margin, styles=(style,))
            assert box is not None
            assert box.dtype == torch.long
            assert box.shape == (6,)
            assert (box[:3] >= 0).all()
            assert (box[3:] <= torch.tensor(SHAPE) - 1).all()
            widened = (torch.tensor(tight[style]) - box) * torch.tensor([1, 1, 1, -1, -1, -1])
            assert ((widened >= 0) & (widened <= margin)).all(), (style, box)
        box = simulated_box(target, _generator(seed), margin, styles=("bounding",))
        assert _box_voxels(box)[target].all()  # type: ignore[arg-type]


def test_a_slice_box_is_2d_on_a_labelled_slice_and_covers_the_target_there():
    target = _target()
    slices = set()
    for seed in range(30):
        box = simulated_box(target, _generator(seed), margin=2, styles=("slice",))
        assert box is not None
        d0, h0, w0, d1, h1, w1 = box.tolist()
        assert d0 == d1
        assert target[d0].any()
        assert _box_voxels(box)[d0][target[d0]].all()
        assert 0 <= h0 <= h1 < SHAPE[1]
        assert 0 <= w0 <= w1 < SHAPE[2]
        slices.add(d0)
    assert len(slices) > 3  # a random labelled slice, not always the same


def test_boxes_are_reproducible_from_a_seeded_generator_and_vary_with_it():
    target = _target()
    boxes = [simulated_box(target, _generator(seed)) for seed in range(20)]
    again = [simulated_box(target, _generator(seed)) for seed in range(20)]
    assert all(torch.equal(a, b) for a, b in zip(boxes, again, strict=True))  # type: ignore[arg-type]
    assert len({tuple(box.tolist()) for box in boxes}) > 5  # type: ignore[union-attr]
    # The three styles all come up: some 2D, some spanning the target's slices.
    assert any(box[0] == box[3] for box in boxes)
    assert any(box[3] - box[0] >= 8 for box in boxes)


def test_an_empty_target_has_no_box_and_no_scribbles():
    empty = torch.zeros(SHAPE, dtype=torch.bool)
    assert simulated_box(empty, _generator()) is None
    assert not simulated_scribbles(empty, _generator(), negative_probability=1.0).any()


def test_scribbles_mark_the_target_positively_and_the_background_nearby_negatively():
    target = _target()
    negatives = 0
    for seed in range(20):
        scribbles = simulated_scribbles(target, _generator(seed), negative_probability=1.0)
        positive, negative = scribbles
        assert scribbles.shape == (2, *SHAPE)
        assert scribbles.dtype == torch.bool
        assert positive.any()
        assert target[positive].all()
        assert len(positive.any(2).any(1).nonzero()) == 1  # drawn on one slice
        assert not target[negative].any()
        if negative.any():
            negatives += 1
            d = int(negative.any(2).any(1).nonzero()[0])
            assert positive[d].any()  # beside the positive stroke, on its slice
            near = torch.nn.functional.max_pool2d(target[d][None, None].float(), 11, 1, 5)[0, 0] > 0
            assert near[negative[d]].all()  # within 5 pixels of the target
    assert negatives >= 15
    seeded = [simulated_scribbles(target, _generator(seed)) for seed in (1, 1)]
    assert torch.equal(*seeded)
    assert not any(
        simulated_scribbles(target, _generator(s), negative_probability=0.0)[1].any() for s in range(5)
    )


def test_batched_prompts_follow_each_sample_and_mark_samples_without_target():
    targets = torch.stack([_target(), torch.zeros(SHAPE, dtype=torch.bool)])
    boxes, valid = batch_boxes(targets, _generator())
    assert boxes.shape == (2, 1, 6)
    assert boxes.dtype == torch.long
    assert valid.tolist() == [[True], [False]]
    scribbles = batch_scribbles(targets, _generator())
    assert scribbles.shape == (2, 2, *SHAPE)
    assert scribbles[0, 0].any()
    assert not scribbles[1].any()
    with pytest.raises(ValueError, match=r"\(B, D, H, W\)"):
        batch_boxes(targets[0], _generator())
