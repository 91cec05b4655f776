"""The ways of adapting SAM's frozen ViT blocks: bottleneck adapters (with or without a 3D convolution), LoRA."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sam3d.models.common import channels_first_3d, channels_last_3d
from sam3d.models.config import Adaptation


class BottleneckAdapter(nn.Module):
    """Down-projection, ReLU, (depthwise 3D convolution, ReLU,) up-projection, ReLU, added residually.

    With the convolution it is the paper's spatial adapter; without it, the common 2D adapter.
    """

    def __init__(self, dim: int, hidden_dim: int, depthwise_conv: bool = True) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden_dim)
        self.conv: nn.Module | None = None
        if depthwise_conv:
            # Tokens are channels-last, so the convolution runs channels-last; its weight is stored that way
            # too, so that its gradient has the weight's own strides (which DDP's gradient buckets expect).
            conv = nn.Conv3d(hidden_dim, hidden_dim, kernel_size=3, padding=1, groups=hidden_dim)
            self.conv = conv.to(memory_format=torch.channels_last_3d)
        self.up = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, D, H, W, C)`` -> same shape."""
        hidden = F.relu(self.down(x))
        if self.conv is not None:
            hidden = F.relu(channels_last_3d(self.conv(channels_first_3d(hidden))))
        return x + F.relu(self.up(hidden))


def block_adapter(adaptation: Adaptation, dim: int, hidden_dim: int) -> nn.Module:
    """The adapter a block runs before its attention: identity for the adaptations without one."""
    if adaptation in ("spatial", "bottleneck"):
        return BottleneckAdapter(dim, hidden_dim, depthwise_conv=adaptation == "spatial")
    return nn.Identity()


class LowRankLinear(nn.Linear):
    """``nn.Linear`` plus a trainable low-rank update ``up @ down`` of its weight (LoRA, scale 1).

    ``weight`` and ``bias`` keep ``nn.Linear``'s names, so SAM's weights load unchanged; ``up`` starts at
    zero, so the layer starts as the pretrained one.
    """

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__(in_features, out_features)
        self.lora_down = nn.Parameter(torch.empty(rank, in_features))
        self.lora_up = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_down, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features)`` -> ``(..., out_features)``."""
        return super().forward(x) + F.linear(F.linear(x, self.lora_down), self.lora_up)
