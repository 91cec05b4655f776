"""The one place where TorchIO's array layout meets the network's.

TorchIO holds canonical RAS+ tensors ``(C, X, Y, Z)`` (X right, Y anterior, Z superior). The network
takes ``(C, D, H, W)`` with D the axial (superior-inferior) axis, i.e. ``(C, Z, Y, X)``. Both
helpers also accept a leading batch axis.
"""

from __future__ import annotations

import torch

__all__ = ["from_network_layout", "to_network_layout"]


def to_network_layout(tensor: torch.Tensor) -> torch.Tensor:
    """Convert ``(..., X, Y, Z)`` (TorchIO, RAS+) to ``(..., Z, Y, X)`` = ``(..., D, H, W)`` (network)."""
    if tensor.ndim < 3:
        raise ValueError(f"expected at least 3 spatial dimensions, got shape {tuple(tensor.shape)}")
    return tensor.transpose(-3, -1)


def from_network_layout(tensor: torch.Tensor) -> torch.Tensor:
    """Convert ``(..., D, H, W)`` (network) back to ``(..., X, Y, Z)`` (TorchIO, RAS+)."""
    # Swapping the first and last spatial axes is its own inverse.
    return to_network_layout(tensor)
