"""Test and validation pictures: radiological orientation, every click, one window, outlines together."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from matplotlib.image import AxesImage
from serve_helpers import PREPROCESSING

from sam3d.data.scans import load_scan
from sam3d.data.scans.evaluation_cases import EvaluationCase
from sam3d.task import SegmentationTask
from sam3d.visualize import VIEWS, render, slices_figure

# Voxel (i, j, k) of the phantom file to world RAS+ mm: axes permuted and flipped (not the network's order),
# so that only a correct chain file -> canonical grid -> picture puts the marker where the patient has it.
PHANTOM_AFFINE = np.array(
    [
        [0.0, 0.0, -1.0, 15.0],  # x (to the patient's right) = 15 - k
        [1.0, 0.0, 0.0, -15.0],  # y (anterior) = i - 15
        [0.0, -1.0, 0.0, 15.0],  # z (superior) = 15 - j
        [0.0, 0.0, 0.0, 1.0],
    ]
)
RIGHT, ANTERIOR, SUPERIOR = (10.0, 0.0, 0.0), (0.0, 10.0, 0.0), (0.0, 0.0, 10.0)


def _phantom_with_marker(folder: Path, world: tuple[float, float, float]) -> Path:
    """A 30 mm cube of water with a 5 mm bright marker centred at ``world`` (RAS+ mm)."""
    volume = np.zeros((30, 30, 30), np.int16)
    centre = np.linalg.solve(PHANTOM_AFFINE, [*world, 1.0])[:3].round().astype(int)
    i, j, k = centre
    volume[i - 2 : i + 3, j - 2 : j + 3, k - 2 : k + 3] = 150
    path = folder / "phantom.nii.gz"
    nib.save(nib.Nifti1Image(volume, PHANTOM_AFFINE), path)
    return path


def _marker_centre_in_panel(figure, picture: np.ndarray, gid: str) -> tuple[float, float]:
    """Where the white marker is in a panel: (x, y) as fractions of its width and height from the top left."""
    axis = next(a for a in figure.axes if a.get_gid() == gid)
    box = axis.get_window_extent()
    height = picture.shape[0]
    top, bottom = round(height - box.y1), round(height - box.y0)
    panel = picture[top:bottom, round(box.x0) : round(box.x1)]
    rows, cols = np.nonzero((panel > 240).all(axis=-1))
    assert len(rows), f"no marker drawn in the {gid} panel"
    return cols.mean() / panel.shape[1], rows.mean() / panel.shape[0]


@pytest.mark.parametrize(
    ("view", "world", "side"),
    [
        ("axial", RIGHT, "left"),  # radiological: the patient's right on the screen's left
        ("axial", ANTERIOR, "top"),
        ("coronal", RIGHT, "left"),
        ("coronal", SUPERIOR, "top"),
        ("sagittal", ANTERIOR, "left"),
        ("sagittal", SUPERIOR, "top"),
    ],
)
def test_pictures_show_the_patient_as_the_viewer_page_does(view, world, side, tmp_path):
    scan = load_scan(_phantom_with_marker(tmp_path, world), PREPROCESSING)
    # The click at the marker, on the network grid (D, H, W) = TorchIO's (X, Y, Z) reversed.
    xyz = np.linalg.solve(scan.affine, [*world, 1.0])[:3]
    click = torch.from_numpy(xyz[::-1].copy()).float()[None]
    empty = torch.zeros_like(scan.image, dtype=torch.bool)
    figure = slices_figure(scan.image, empty, empty, click)
    x, y = _marker_centre_in_panel(figure, render(figure), f"{view} image")
    across, down = (x, y) if side == "left" else (y, x)
    assert across < 0.4, f"{view}: marker at {x:.2f}, {y:.2f} of the panel, expected on its {side}"
    assert 0.3 < down < 0.7  # and centred the other way: the marker is on no other edge
    letters = {
        t.get_position(): t.get_text() for a in figure.axes if a.get_gid() == f"{view} image" for t in a.texts
    }
    assert letters[(0.02, 0.5)] + letters[(0.5, 0.98)] == "".join(VIEWS[view].edges[i] for i in (2, 0))


def _clicks_on(axis, kind: str) -> int:
    return sum(len(line.get_xdata()) for line in axis.lines if line.get_gid() == f"{kind} clicks")


def test_every_click_is_drawn_on_every_panel_positive_and_negative_apart():
    image = torch.rand(20, 24, 28)
    points = torch.tensor([[10.0, 12, 14], [3, 4, 5], [10, 20, 2], [17, 1, 25], [10, 12, 20]])
    positive = torch.tensor([True, True, False, False, False])
    figure = slices_figure(image, image > 0.5, image > 0.6, points, positive)
    assert len(figure.axes) == 6
    for axis in figure.axes:
        assert (_clicks_on(axis, "positive"), _clicks_on(axis, "negative")) == (2, 3), axis.get_gid()
        markers = {line.get_gid(): line.get_marker() for line in axis.lines}
        assert markers["positive clicks"] != markers["negative clicks"]


def test_one_window_for_every_panel():
    image = torch.rand(20, 24, 28) * torch.linspace(1, 5, 28)  # each slice its own range
    image[0, 0, 0] = -3.0
    figure = slices_figure(image, None, image > 2, torch.tensor([[10.0, 12, 14]]))
    windows = [im.get_clim() for axis in figure.axes for im in axis.images if isinstance(im, AxesImage)]
    assert len(windows) == 6
    assert set(windows) == {(-3.0, float(image.max()))}


def test_truth_and_prediction_are_outlined_together():
    image = torch.zeros(20, 24, 28)
    truth = torch.zeros_like(image, dtype=torch.bool)
    truth[6:14, 8:16, 10:18] = True
    prediction = torch.roll(truth, 3, dims=2)
    figure = slices_figure(image, truth, prediction, torch.tensor([[10.0, 12, 14]]))
    for view in VIEWS:
        outlines = next(a for a in figure.axes if a.get_gid() == f"{view} outlines")
        assert {c.get_gid() for c in outlines.collections} >= {"truth", "prediction"}


class _Clicked(SegmentationTask):
    """A trainer whose test clicks are given: two inside the target, one outside."""

    takes_clicks = True

    def evaluate_test_case(self, case):
        points = torch.tensor([[5.0, 5, 5], [6, 6, 6], [1, 1, 1]])
        return [{"case": case.case_id, "repeat": 0, "clicks": 3, "dice": 0.5}], case.label, points


def test_a_test_picture_marks_every_click_with_its_sign(monkeypatch):
    drawn = []
    monkeypatch.setattr(
        "sam3d.task.orthogonal_slices", lambda *args: drawn.append(args) or np.zeros((2, 2, 3), np.uint8)
    )
    label = torch.zeros(10, 10, 10, dtype=torch.bool)
    label[4:8, 4:8, 4:8] = True
    case = EvaluationCase("c", torch.zeros(10, 10, 10), label, (1.0, 1.0, 1.0), lambda p: p, label, (1, 1, 1))
    task = _Clicked()
    monkeypatch.setattr(task, "log", lambda *args, **kwargs: None)
    task.test_step(case, 0)
    (_, _, _, points, positive, _, spacing) = drawn[0]
    assert len(points) == 3
    assert positive.tolist() == [True, True, False]
    assert spacing == (1.0, 1.0, 1.0)
