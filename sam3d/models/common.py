"""Small building blocks shared by the encoder, prompt encoder and decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def autocast_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast computes in on ``x``'s device, or ``x``'s own dtype outside autocast."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def _layer_norm_float32(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """LayerNorm over the last axis computed in float32 (its statistics need it), in ``x``'s dtype."""
    with torch.autocast(x.device.type, enabled=False):
        weight = None if weight is None else weight.float()
        bias = None if bias is None else bias.float()
        return F.layer_norm(x.float(), x.shape[-1:], weight, bias, eps).to(x.dtype)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last axis that keeps the input's dtype under mixed precision.

    Autocast runs layer norms in float32 on some devices and returns float32, which would turn the
    token stream into float32 from the first norm on; here only the normalisation itself is float32.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x (..., C)`` over C."""
        return _layer_norm_float32(x, self.weight, self.bias, self.eps)


class LayerNorm3d(nn.Module):
    """LayerNorm over the channel axis of a ``(B, C, D, H, W)`` map (float32 statistics, input dtype out)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x (B, C, D, H, W)`` over C."""
        return _layer_norm_float32(x.movedim(1, -1), self.weight, self.bias, self.eps).movedim(-1, 1)


def channels_last_3d(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, D, H, W)`` -> ``(B, D, H, W, C)``."""
    return x.permute(0, 2, 3, 4, 1)


def channels_first_3d(x: torch.Tensor) -> torch.Tensor:
    """``(B, D, H, W, C)`` -> ``(B, C, D, H, W)``."""
    return x.permute(0, 4, 1, 2, 3)
