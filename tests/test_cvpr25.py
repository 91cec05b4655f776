"""The CVPR 2025 challenge's protocol (sam3d.cvpr25) against values worked out by hand on small arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sam3d.cvpr25 import (
    ChallengeBox,
    ChallengeClick,
    challenge_box,
    challenge_correction_click,
    challenge_scores,
    gated_nsd,
    run_protocol,
    step_scores,
)
from sam3d.metrics import case_metrics


def block(shape, *ranges):
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[tuple(slice(a, b) for a, b in ranges)] = True
    return mask


def test_box_spans_the_label_slices_and_the_middle_slice_in_plane():
    label = torch.zeros(9, 8, 8, dtype=torch.bool)
    for d in (2, 3, 6):  # wide slices; slice 4 is empty
        label[d, 0:8, 0:8] = True
    label[5, 3:5, 1:7] = True  # narrow; slices holding the label: 2, 3, 5, 6 -> the middle (index 4 // 2): 5
    box = challenge_box(label)
    assert box == ChallengeBox(d_min=2, d_max=6, d_mid=5, h_min=3, w_min=1, h_max=4, w_max=6)
    assert box.bounds == (2, 3, 1, 6, 4, 6)  # inclusive; not the 3D extent (h, w 0..7)


def test_box_reads_the_challenge_files_keys():
    label = block((6, 20, 30), (1, 4), (2, 5), (7, 12))  # h 2..4, w 7..11
    stored = {"z_min": 1, "z_max": 3, "z_mid": 2, "z_mid_x_min": 7, "z_mid_y_min": 2}
    stored |= {"z_mid_x_max": 11, "z_mid_y_max": 4}  # as get_boxes.py writes it: x is w, y is h
    assert ChallengeBox.from_challenge(stored) == challenge_box(label)


def test_box_shift_scales_with_the_slice_and_is_clipped():
    label = block((4, 64, 128), (1, 3), (0, 10), (20, 127))
    box = challenge_box(label, shift=5)  # h: int(5 * 64 / 256) = 1, w: int(5 * 128 / 256) = 2
    assert (box.h_min, box.h_max, box.w_min, box.w_max) == (0, 10, 18, 127)
    assert (box.d_min, box.d_max, box.d_mid) == (1, 2, 2)
    with pytest.raises(ValueError, match="empty"):
        challenge_box(torch.zeros(4, 4, 4))


def test_click_goes_to_the_centre_of_the_largest_error_with_its_sign():
    label = block((12, 12, 12), (1, 4), (1, 4), (1, 4))  # missed entirely: 27 voxels
    extra = block((12, 12, 12), (6, 11), (6, 11), (6, 11))  # 125 extra voxels, deepest at (8, 8, 8)
    assert challenge_correction_click(label, extra) == ChallengeClick((8, 8, 8), positive=False)
    big = block((12, 12, 12), (2, 9), (2, 9), (2, 9))  # 343 voxels, all missed
    assert challenge_correction_click(big, extra & ~big) == ChallengeClick((5, 5, 5), positive=True)
    assert challenge_correction_click(big, big) is None


def test_missed_and_extra_voxels_that_touch_are_one_error_region():
    # A 3 x 3 bar along w: label at w 0..5, prediction at w 6..11 and 14..21. Missed (54 voxels) and
    # extra (54) touch, so they are one region of 108 voxels, larger than the separate extra one (72).
    label = block((3, 3, 30), (0, 3), (0, 3), (0, 6))
    prediction = block((3, 3, 30), (0, 3), (0, 3), (6, 12)) | block((3, 3, 30), (0, 3), (0, 3), (14, 22))
    # Depth 2 (voxels) on the bar's axis at w 1..10; RandomState(42).choice(10) = 6 -> w = 7, extra.
    assert challenge_correction_click(label, prediction) == ChallengeClick((1, 1, 7), positive=False)


def test_equally_deep_voxels_are_drawn_with_seed_42():
    label = block((6, 6, 6), (2, 4), (2, 4), (2, 4))  # all 8 voxels at depth 1
    # In C order the 8 voxels are (2,2,2), (2,2,3), ..., (3,3,3); RandomState(42).choice(8) = 6.
    click = challenge_correction_click(label, torch.zeros_like(label))
    assert click == ChallengeClick((3, 3, 2), positive=True)


def test_scores_integrate_the_click_steps_and_gate_nsd_at_dice_0_2():
    dice = [0.1, 0.15, 0.2, 0.5, 0.8, 0.9]
    nsd = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    scores = challenge_scores(dice, nsd)
    assert scores.nsd == (0.0, 0.0, 0.0, 0.6, 0.7, 0.8)  # Dice 0.1, 0.15 and 0.2 (not > 0.2) gate NSD to 0
    # Trapezoids over the 5 click steps (the box step left out), x = 0..4, not normalised:
    assert scores.dsc_auc == pytest.approx(
        (0.15 + 0.2) / 2 + (0.2 + 0.5) / 2 + (0.5 + 0.8) / 2 + (0.8 + 0.9) / 2
    )
    assert scores.dsc_auc == pytest.approx(2.025)
    assert scores.nsd_auc == pytest.approx(0.0 + 0.3 + 0.65 + 0.75)
    assert (scores.dsc_final, scores.nsd_final) == (0.9, 0.8)
    assert challenge_scores([1.0] * 6, [1.0] * 6).dsc_auc == pytest.approx(4.0)  # the maximum
    assert gated_nsd(0.2000001, 0.5) == 0.5
    with pytest.raises(ValueError, match="n_clicks"):
        challenge_scores(dice[1:], nsd[1:])


def test_nsd_at_2_mm_of_a_shifted_cube_on_an_anisotropic_grid():
    # A 3 x 3 x 3 voxel cube and the same cube one slice (3 mm) further along d; spacing (3, 1, 1) mm.
    # Surface elements sit on voxel corners, weighted by their marching-cubes area (mm^2):
    #   face: 1 (normal along d) or 3 (along h or w); edge along h or w: sqrt(10) / 2; along d: 3 sqrt(2) / 2;
    #   corner: sqrt(19) / 8.
    # Cube surface: 8 d-faces + 16 other faces, 8 + 8 edges along h/w, 8 along d, 8 corners
    #   = 8 + 48 + 8 sqrt(10) + 12 sqrt(2) + sqrt(19).
    # Only each cube's far d-face (4 faces, 8 edges, 4 corners) is 3 mm > 2 mm from the other surface:
    #   4 + 4 sqrt(10) + sqrt(19) / 2 of each.
    label = block((10, 8, 8), (2, 5), (2, 5), (2, 5))
    prediction = block((10, 8, 8), (3, 6), (2, 5), (2, 5))
    far = 4 + 4 * math.sqrt(10) + math.sqrt(19) / 2
    total = 56 + 12 * math.sqrt(2) + 8 * math.sqrt(10) + math.sqrt(19)
    dice, nsd = step_scores(prediction, label, (3.0, 1.0, 1.0))
    assert dice == pytest.approx(2 * 18 / 54)
    assert nsd == pytest.approx(1 - far / total, abs=1e-6)  # 0.81654
    assert step_scores(prediction, label, (1.0, 1.0, 1.0))[1] == pytest.approx(1.0)  # 1 mm: all within


def test_step_nsd_is_zero_where_dice_is_at_most_0_2():
    label = block((11, 11, 11), (4, 7), (4, 7), (4, 7))  # 27 voxels inside a 343-voxel prediction
    prediction = block((11, 11, 11), (2, 9), (2, 9), (2, 9))
    assert case_metrics(prediction, label, (1.0, 1.0, 1.0), tolerance_mm=2.0)["nsd"] > 0.4
    assert step_scores(prediction, label, (1.0, 1.0, 1.0)) == (pytest.approx(54 / 370), 0.0)


def test_protocol_places_each_click_on_the_previous_prediction_and_passes_it_in():
    label = block((10, 10, 10), (2, 7), (2, 7), (2, 7))
    steps = [torch.zeros_like(label), label | block((10, 10, 10), (7, 10), (7, 10), (7, 10))] + [label] * 4
    calls = []

    def predict(box, clicks, previous):
        calls.append((box, tuple(clicks), previous))
        return steps[len(calls) - 1]

    scores, clicks = run_protocol(label, (1.0, 1.0, 1.0), predict)
    first, second = ChallengeClick((4, 4, 4), positive=True), ChallengeClick((8, 8, 8), positive=False)
    assert clicks == [first, second]  # no click once the prediction is perfect
    assert [c[1] for c in calls] == [(), (first,), (first, second)] + [(first, second)] * 3
    assert calls[0][2] is None
    assert all(calls[k][2] is steps[k - 1] for k in range(1, 6))
    assert all(c[0].bounds == (2, 2, 2, 6, 6, 6) for c in calls)
    assert scores.dice[0] == 0.0
    assert scores.nsd[0] == 0.0
    assert scores.dice[1] == pytest.approx(250 / 277)
    assert scores.dice[2:] == (1.0,) * 4
    assert scores.nsd[2:] == (1.0,) * 4
    assert scores.dsc_auc == pytest.approx((250 / 277 + 1) / 2 + 3)
    assert np.isclose(scores.dsc_final, 1.0)
    assert np.isclose(scores.nsd_final, 1.0)
