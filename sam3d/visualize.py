"""Pictures of volumes: axial, coronal and sagittal slices through a click, drawn as ``sam3d serve`` draws them.

Radiological display, as the viewer page: axial slices seen from the feet (patient's right on the
picture's left, anterior up), coronal slices from the front (right on the left, superior up), sagittal
slices with anterior on the left and superior up; orientation letters at the edges. Every panel uses one
intensity window (the volume's range); the lower row outlines the ground truth and the prediction together;
every click is marked (filled on the slice shown, faint when it lies on another slice).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

__all__ = [
    "VIEWS",
    "display_point",
    "display_slice",
    "orthogonal_slices",
    "png_bytes",
    "render",
    "slices_figure",
]

TRUTH_COLOUR, PREDICTION_COLOUR = "#33dd33", "#ff3030"
POSITIVE_CLICK, NEGATIVE_CLICK = (
    ("P", "#00e5ff"),
    ("X", "#ff40ff"),
)  # (marker, colour): shape and colour differ


class View(NamedTuple):
    """A slice orientation: the axis it cuts, the axes shown down and across, the letters at its edges.

    Axes of the network grid ``(D, H, W)`` = (inferior->superior, posterior->anterior, left->right).
    """

    axis: int
    rows: int
    cols: int
    edges: tuple[str, str, str, str]  # top, bottom, left, right


# As the viewer page (sam3d/serve/static/app.js): both shown axes reversed, i.e. the radiological display.
VIEWS = {
    "axial": View(0, 1, 2, ("A", "P", "R", "L")),
    "coronal": View(1, 0, 2, ("S", "I", "R", "L")),
    "sagittal": View(2, 0, 1, ("S", "I", "A", "P")),
}


def _numpy(volume: torch.Tensor) -> np.ndarray:
    return volume.detach().float().cpu().numpy()


def display_slice(volume: np.ndarray, view: str, index: int) -> np.ndarray:
    """Slice ``index`` of ``volume`` ``(D, H, W)`` cut by ``view``, as displayed (row 0 at the top)."""
    return np.flip(np.take(volume, index, axis=VIEWS[view].axis))  # both axes reversed


def display_point(point: Sequence[float], shape: Sequence[int], view: str) -> tuple[float, float]:
    """``(column, row)`` on the displayed slice of ``view`` of a voxel ``(d, h, w)`` of a ``shape`` volume."""
    rows, cols = VIEWS[view].rows, VIEWS[view].cols
    return shape[cols] - 1 - float(point[cols]), shape[rows] - 1 - float(point[rows])


def _outline(axis: Axes, mask: np.ndarray, colour: str, name: str) -> None:
    """The border of a displayed mask slice (padded, so that a mask touching the edge is closed)."""
    if not mask.any():
        return
    padded = np.pad(mask.astype(np.float32), 1)
    x, y = np.arange(-1, mask.shape[1] + 1), np.arange(-1, mask.shape[0] + 1)
    contours = axis.contour(x, y, padded, levels=[0.5], colors=[colour], linewidths=1.2)
    contours.set_gid(name)


def _clicks(
    axis: Axes, points: np.ndarray, positive: np.ndarray, shape: Sequence[int], view: str, index: int
) -> None:
    """Every click, projected onto this view: filled on this slice, faint off it; positive and negative apart."""
    on_slice = np.abs(points[:, VIEWS[view].axis] - index) < 0.5
    for kind, (marker, colour), chosen in (
        ("positive", POSITIVE_CLICK, positive),
        ("negative", NEGATIVE_CLICK, ~positive),
    ):
        for here, alpha in ((True, 1.0), (False, 0.45)):
            selected = points[chosen & (on_slice == here)]
            if not len(selected):
                continue
            xy = np.array([display_point(p, shape, view) for p in selected])
            axis.plot(
                xy[:, 0],
                xy[:, 1],
                linestyle="none",
                marker=marker,
                markersize=9 if here else 7,
                markerfacecolor=colour,
                markeredgecolor="black",
                alpha=alpha,
                gid=f"{kind} clicks",
            )


def _letters(axis: Axes, edges: tuple[str, str, str, str]) -> None:
    top, bottom, left, right = edges
    style: dict[str, Any] = {
        "color": "yellow",
        "fontsize": 9,
        "fontweight": "bold",
        "transform": axis.transAxes,
        "gid": "edge",
    }
    axis.text(0.5, 0.98, top, ha="center", va="top", **style)
    axis.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
    axis.text(0.02, 0.5, left, ha="left", va="center", **style)
    axis.text(0.98, 0.5, right, ha="right", va="center", **style)


def slices_figure(
    image: torch.Tensor,
    label: torch.Tensor | None,
    prediction: torch.Tensor,
    points: torch.Tensor | Sequence[Sequence[float]],
    positive: torch.Tensor | Sequence[bool] | None = None,
    title: str = "",
    spacing: Sequence[float] | None = None,
) -> Figure:
    """The figure: columns axial, coronal, sagittal through the first click; rows image, then outlines.

    Args:
        image: ``(D, H, W)`` intensities (network layout).
        label: ``(D, H, W)`` ground-truth mask, or None (no truth outline).
        prediction: ``(D, H, W)`` predicted mask.
        points: ``(N, 3)`` clicks ``(d, h, w)``; the slices pass through the first (the centre without any).
        positive: ``(N,)`` whether each click is positive; None: all are.
        title: Figure title.
        spacing: Voxel size in mm along ``(d, h, w)``, for the panels' aspect; None: isotropic.
    """
    volume = _numpy(image)
    shape = volume.shape
    clicks = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    signs = np.ones(len(clicks), bool) if positive is None else np.asarray(positive, dtype=bool).reshape(-1)
    centre = clicks[0] if len(clicks) else (np.array(shape) - 1) / 2
    through = [int(np.clip(round(float(c)), 0, n - 1)) for c, n in zip(centre, shape, strict=True)]
    low, high = float(volume.min()), float(volume.max())
    window = (low, high if high > low else low + 1.0)  # one window for every panel
    masks = {"truth": None if label is None else _numpy(label) > 0, "prediction": _numpy(prediction) > 0}
    mm = tuple(float(s) for s in spacing) if spacing is not None else (1.0, 1.0, 1.0)

    figure = Figure(figsize=(10.5, 7.6))
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 3, squeeze=False)
    for col, (name, view) in enumerate(VIEWS.items()):
        index = through[view.axis]
        shown = display_slice(volume, name, index)
        for row in range(2):
            axis = axes[row][col]
            axis.imshow(
                shown,
                cmap="gray",
                vmin=window[0],
                vmax=window[1],
                origin="upper",
                interpolation="nearest",
                aspect=mm[view.rows] / mm[view.cols],
            )
            axis.set_gid(f"{name} {'image' if row == 0 else 'outlines'}")
            if row == 1:
                for kind, colour in (("truth", TRUTH_COLOUR), ("prediction", PREDICTION_COLOUR)):
                    mask = masks[kind]
                    if mask is not None:
                        _outline(axis, display_slice(mask, name, index), colour, kind)
            _clicks(axis, clicks, signs, shape, name, index)
            _letters(axis, view.edges)
            axis.set_title(f"{name} {index}" + ("" if row == 0 else ": truth and prediction"), fontsize=9)
            axis.axis("off")
    legend = [
        Line2D([], [], color=TRUTH_COLOUR, label="ground truth"),
        Line2D([], [], color=PREDICTION_COLOUR, label="prediction"),
        *(
            Line2D([], [], linestyle="none", marker=m, markerfacecolor=c, markeredgecolor="black", label=n)
            for n, (m, c) in (("positive click", POSITIVE_CLICK), ("negative click", NEGATIVE_CLICK))
        ),
    ]
    figure.legend(handles=legend, loc="lower center", ncol=4, fontsize=9, frameon=False)
    figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    return figure


def render(figure: Figure) -> np.ndarray:
    """An RGB picture ``(height, width, 3)`` uint8 of a figure."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def orthogonal_slices(
    image: torch.Tensor,
    label: torch.Tensor | None,
    prediction: torch.Tensor,
    points: torch.Tensor | Sequence[Sequence[float]],
    positive: torch.Tensor | Sequence[bool] | None = None,
    title: str = "",
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """The picture of :func:`slices_figure` as RGB ``(height, width, 3)`` uint8."""
    return render(slices_figure(image, label, prediction, points, positive, title, spacing))


def png_bytes(picture: np.ndarray) -> bytes:
    """PNG encoding of an RGB picture."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()
