"""Small building blocks shared by the encoder, prompt encoder and decoder."""

from __future__ import annotations

import torch
from torch import nn


class LayerNorm3d(nn.Module):
    """LayerNorm over the channel axis of a ``(B, C, D, H, W)`` map."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x (B, C, D, H, W)`` over C."""
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None, None] * x + self.bias[:, None, None, None]


def channels_last_3d(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, D, H, W)`` -> ``(B, D, H, W, C)``."""
    return x.permute(0, 2, 3, 4, 1)


def channels_first_3d(x: torch.Tensor) -> torch.Tensor:
    """``(B, D, H, W, C)`` -> ``(B, C, D, H, W)``."""
    return x.permute(0, 4, 1, 2, 3)
