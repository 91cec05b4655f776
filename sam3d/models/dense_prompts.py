"""Dense prompts (beyond the paper): boxes, scribbles and the previous mask, added to the prompt encoder's map.

Each prompt is rendered as channels at crop resolution (a box: one inside-any-box indicator; scribbles: a
positive and a negative channel; the previous mask: its probability), area-pooled to the token grid and
added to the last map through a zero-initialised 1x1 convolution, as :class:`ClickMaps` add the clicks. A
network that has not trained the projection therefore behaves exactly as without the prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sam3d.models.common import autocast_dtype
from sam3d.models.config import DENSE_PROMPTS, DensePrompt

# Rendered channels per prompt type.
CHANNELS: dict[DensePrompt, int] = {"box": 1, "scribble": 2, "mask": 1}
# The VolumetricSam keyword argument of each prompt type (for refusals).
ARGUMENTS: dict[DensePrompt, str] = {"box": "boxes", "scribble": "scribbles", "mask": "previous_mask"}


@dataclass(frozen=True)
class DenseInputs:
    """The dense prompts of a crop batch; None where the batch has none of that type.

    Attributes:
        boxes: ``(B, K, 6)`` boxes ``(d0, h0, w0, d1, h1, w1)`` in crop voxel indices, both ends inside the
            box; a 2D box on one slice has ``d0 == d1``.
        box_valid: ``(B, K)`` bool, False for padding boxes (batches with unequal box counts).
        scribbles: ``(B, 2, D, H, W)`` voxel masks in [0, 1], the positive then the negative scribbles.
        previous_mask: ``(B, 1, D, H, W)`` the previous foreground probability of the crop, in [0, 1].
    """

    boxes: torch.Tensor | None = None
    box_valid: torch.Tensor | None = None
    scribbles: torch.Tensor | None = None
    previous_mask: torch.Tensor | None = None

    def given(self) -> tuple[DensePrompt, ...]:
        """The prompt types these inputs hold."""
        held = {"box": self.boxes, "scribble": self.scribbles, "mask": self.previous_mask}
        return tuple(name for name in DENSE_PROMPTS if held[name] is not None)


def check_dense_inputs(
    inputs: DenseInputs, enabled: tuple[DensePrompt, ...], batch: int, crop_size: tuple[int, int, int]
) -> None:
    """Refuse dense prompts the network does not take, and shapes or values it cannot read."""
    for name in inputs.given():
        if name not in enabled:
            raise ValueError(
                f"{ARGUMENTS[name]} given, but this network takes no {name} prompts: build it with "
                f"'{name}' in VolumetricSamConfig.dense_prompts"
            )
    crop = tuple(crop_size)
    if inputs.box_valid is not None and inputs.boxes is None:
        raise ValueError("box_valid given without boxes")
    if inputs.boxes is not None:
        _check_boxes(inputs.boxes, inputs.box_valid, batch, crop)
    if inputs.scribbles is not None:
        _check_voxel_map("scribbles", inputs.scribbles, (batch, 2, *crop))
    if inputs.previous_mask is not None:
        _check_voxel_map("previous_mask", inputs.previous_mask, (batch, 1, *crop))


def _check_boxes(boxes: torch.Tensor, valid: torch.Tensor | None, batch: int, crop: tuple[int, ...]) -> None:
    if boxes.ndim != 3 or boxes.shape[0] != batch or boxes.shape[2] != 6:
        raise ValueError(f"boxes must have shape ({batch}, K, 6), got {tuple(boxes.shape)}")
    if valid is not None and (valid.dtype != torch.bool or valid.shape != boxes.shape[:2]):
        raise ValueError(
            f"box_valid must be a bool tensor of shape {tuple(boxes.shape[:2])}, "
            f"got {valid.dtype} {tuple(valid.shape)}"
        )
    used = torch.ones(boxes.shape[:2], dtype=torch.bool, device=boxes.device) if valid is None else valid
    lower, upper = boxes[..., :3], boxes[..., 3:]
    last = boxes.new_tensor(crop) - 1
    problems = {
        "lies outside the crop": ((lower < 0) | (upper > last) | ~boxes.isfinite().all(-1, keepdim=True)).any(
            -1
        ),
        "has an end before its start (boxes are d0, h0, w0, d1, h1, w1)": (upper < lower).any(-1),
    }
    for problem, found in problems.items():
        found = found & used
        if found.any():
            sample, box = (int(i) for i in found.nonzero()[0])
            raise ValueError(
                f"box {box} of sample {sample}, {boxes[sample, box].tolist()}, {problem} {crop}; boxes are "
                "voxel indices inside the crop, both ends included"
            )


def _check_voxel_map(name: str, values: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(values.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} (the crop's voxels), got {tuple(values.shape)}")
    if values.dtype != torch.bool:
        if not values.is_floating_point():
            raise TypeError(f"{name} must be a bool or float tensor, got {values.dtype}")
        if not ((values >= 0) & (values <= 1)).all():
            raise ValueError(f"{name} must hold values in [0, 1] (masks or probabilities)")


def area_pool(values: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """``(B, C, *crop)`` averaged over each cell of ``grid``: the fraction of a cell a mask covers.

    A mean over reshaped blocks when the grid divides the crop (it stays in the input's dtype, where CPU
    autocast would run pooling ops in float32), else adaptive average pooling.
    """
    crop = values.shape[2:]
    if any(size % cells for size, cells in zip(crop, grid, strict=True)):
        return F.adaptive_avg_pool3d(values, (grid[0], grid[1], grid[2]))
    blocks = [(cells, size // cells) for size, cells in zip(crop, grid, strict=True)]
    shape = [size for block in blocks for size in block]
    return values.reshape(*values.shape[:2], *shape).mean((3, 5, 7))


def render_boxes(
    boxes: torch.Tensor, valid: torch.Tensor | None, crop: tuple[int, ...], dtype: torch.dtype
) -> torch.Tensor:
    """``(B, 1, *crop)``: 1 at voxels inside any valid box (both ends included), else 0."""
    inside = torch.ones(1, dtype=torch.bool, device=boxes.device)
    for axis, size in enumerate(crop):
        index = torch.arange(size, device=boxes.device, dtype=boxes.dtype)
        along = (boxes[..., axis, None] <= index) & (index <= boxes[..., 3 + axis, None])  # (B, K, size)
        shape = [*along.shape[:2], 1, 1, 1]
        shape[2 + axis] = size
        inside = inside & along.view(shape)
    if valid is not None:
        inside = inside & valid[..., None, None, None]
    return inside.any(1, keepdim=True).to(dtype)


class DensePrompts(nn.Module):
    """Renders the enabled dense prompts, area-pools them to the map grid and projects them to its channels.

    The channels follow ``prompts``' order; a type enabled but not given renders as zeros. Rendering and
    pooling run in the autocast dtype under autocast (indicators and area fractions need no float32).
    """

    def __init__(self, crop_size: tuple[int, int, int], prompts: tuple[DensePrompt, ...], dim: int) -> None:
        super().__init__()
        self.crop_size = tuple(crop_size)
        self.prompts = prompts
        self.project = nn.Conv3d(sum(CHANNELS[name] for name in prompts), dim, 1)
        for parameter in self.project.parameters():
            nn.init.zeros_(parameter)

    def maps(self, inputs: DenseInputs, batch: int, grid: tuple[int, ...]) -> torch.Tensor:
        """``(B, channels, *grid)``: each prompt's channels, area-pooled to ``grid``."""
        device, dtype = self.project.weight.device, autocast_dtype(self.project.weight)
        pooled = []
        for name in self.prompts:
            rendered = self._render(name, inputs, dtype)
            if rendered is None:
                pooled.append(torch.zeros(batch, CHANNELS[name], *grid, device=device, dtype=dtype))
            else:
                pooled.append(area_pool(rendered, grid))
        return torch.cat(pooled, dim=1)

    def _render(self, name: DensePrompt, inputs: DenseInputs, dtype: torch.dtype) -> torch.Tensor | None:
        if name == "scribble" and inputs.scribbles is not None:
            return inputs.scribbles.to(dtype)
        if name == "mask" and inputs.previous_mask is not None:
            return inputs.previous_mask.to(dtype)
        if name == "box" and inputs.boxes is not None:
            return render_boxes(inputs.boxes, inputs.box_valid, self.crop_size, dtype)
        return None

    def forward(self, inputs: DenseInputs, batch: int, grid: tuple[int, ...]) -> torch.Tensor:
        """The prompts projected to ``(B, dim, *grid)``."""
        return self.project(self.maps(inputs, batch, grid))
