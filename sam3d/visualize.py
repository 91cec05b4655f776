"""Pictures of volumes: axial, coronal and sagittal slices through a click, with label and prediction."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

_VIEWS = ("axial", "coronal", "sagittal")


def _numpy(volume: torch.Tensor) -> np.ndarray:
    return volume.detach().float().cpu().numpy()


def _slices(volume: np.ndarray, point: Sequence[int]) -> list[np.ndarray]:
    d, h, w = point
    # Network layout (D, H, W) = (inferior->superior, posterior->anterior, left->right).
    return [volume[d], volume[:, h], volume[:, :, w]]


def orthogonal_slices(
    image: torch.Tensor,
    label: torch.Tensor | None,
    prediction: torch.Tensor,
    point: Sequence[float],
    title: str = "",
) -> np.ndarray:
    """An RGB picture ``(height, width, 3)`` uint8: rows are views, columns image / ground truth / prediction.

    Args:
        image: ``(D, H, W)`` intensities.
        label: ``(D, H, W)`` ground-truth mask, or None (column left empty).
        prediction: ``(D, H, W)`` predicted mask.
        point: The click ``(d, h, w)`` the slices pass through.
        title: Figure title.
    """
    index = [round(float(c)) for c in point]
    volume = _numpy(image)
    masks = (None, None if label is None else _numpy(label), _numpy(prediction))  # per column
    columns = ("image", "ground truth", "prediction")
    figure = Figure(figsize=(9, 9))
    canvas = FigureCanvasAgg(figure)
    axes = figure.subplots(3, 3, squeeze=False)
    for row, view in enumerate(_VIEWS):
        image_slice = _slices(volume, index)[row]
        for col, (name, mask) in enumerate(zip(columns, masks, strict=True)):
            axis = axes[row][col]
            axis.imshow(image_slice, cmap="gray", origin="lower" if row else "upper")
            if mask is not None:
                overlay = np.ma.masked_equal(_slices(mask, index)[row], 0)
                axis.imshow(
                    overlay,
                    cmap="autumn" if col == 2 else "summer",
                    alpha=0.5,
                    origin="lower" if row else "upper",
                )
            if col == 0:
                marker = [(index[2], index[1]), (index[2], index[0]), (index[1], index[0])][row]
                axis.plot(*marker, "c+", markersize=12)
            axis.set_title(f"{view}: {name}", fontsize=9)
            axis.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def png_bytes(picture: np.ndarray) -> bytes:
    """PNG encoding of an RGB picture."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()
