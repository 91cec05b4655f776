"""Attention inside cubic 3D windows with decomposed relative positions and Swin's shifted-window mask.

The relative-position bias ``q_i . r[p_i - p_j]`` (summed over the d, h and w axes) depends on the key
only through its position in the window, so it is a dot product of a per-query vector
``(q_i . r[p_i - m])_m`` with a one-hot of the key's position ``m``. Appending those vectors to the queries
and the one-hots to the keys gives the biased logits from a plain dot product: attention then runs in
``scaled_dot_product_attention``'s fused kernels without a ``(windows, heads, N, N)`` bias tensor, in the
forward pass or kept for the backward pass. ``fused=False`` materialises the bias as written in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam3d.models.adapters import LowRankLinear

# Attention logit added between tokens of different regions of a shifted window (Swin's value).
_REGION_MASK_VALUE = -100.0


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """``(B, D, H, W, C)`` -> ``(B * windows, window^3, C)``, windows in (b, d, h, w) order."""
    b, d, h, w, c = x.shape
    x = x.view(b, d // window, window, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, window**3, c)


def window_order(grid: tuple[int, int, int], window: int, shift: int) -> torch.Tensor:
    """Token indices (row-major over ``grid``) in the order of :func:`window_partition` after a cyclic shift.

    The shift is by ``-shift`` on every axis; one gather by this order replaces the roll and the partition.
    """
    index = torch.arange(grid[0] * grid[1] * grid[2]).view(1, *grid, 1)
    if shift:
        index = torch.roll(index, shifts=(-shift,) * 3, dims=(1, 2, 3))
    return window_partition(index, window).flatten()


def shifted_window_mask(grid: tuple[int, int, int], window: int, shift: int) -> torch.Tensor:
    """Additive mask ``(windows, N, N)`` that stops attention between regions a cyclic shift brought together."""
    region = torch.zeros(1, *grid, 1)
    bounds = [(slice(0, -window), slice(-window, -shift), slice(-shift, None))] * 3
    label = 0
    for sd in bounds[0]:
        for sh in bounds[1]:
            for sw in bounds[2]:
                region[:, sd, sh, sw] = label
                label += 1
    ids = window_partition(region, window).squeeze(-1)
    different = ids[:, :, None] != ids[:, None, :]
    return torch.zeros(different.shape).masked_fill(different, _REGION_MASK_VALUE)


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resample a relative-position table ``(L, C)`` to ``(length, C)``."""
    if table.shape[0] == length:
        return table
    resized = F.interpolate(table.T[None], size=length, mode="linear")
    return resized[0].T


def relative_position_terms(
    q: torch.Tensor, tables: tuple[torch.Tensor, ...], window: int
) -> list[torch.Tensor]:
    """``q_i . r[p_i - m]`` for every key coordinate ``m``, one tensor per axis (d, h, w).

    Args:
        q: Queries ``(B, heads, window^3, C)``, tokens in (d, h, w) order.
        tables: Relative-position tables for the d, h and w axes, any length (resized to ``2 * window - 1``).
        window: Window edge in tokens.

    Returns:
        Three ``(B, heads, window, window, window, window)`` tensors: query position (d, h, w), then the
        key's coordinate along that axis.
    """
    b, heads, _, c = q.shape
    offsets = torch.arange(window, device=q.device)
    index = offsets[:, None] - offsets[None, :] + window - 1
    r_d, r_h, r_w = (resize_rel_pos(t, 2 * window - 1)[index] for t in tables)
    q = q.reshape(b, heads, window, window, window, c)
    return [
        torch.einsum("bndhwc,dkc->bndhwk", q, r_d),
        torch.einsum("bndhwc,hkc->bndhwk", q, r_h),
        torch.einsum("bndhwc,wkc->bndhwk", q, r_w),
    ]


def decomposed_rel_pos_bias(q: torch.Tensor, tables: tuple[torch.Tensor, ...], window: int) -> torch.Tensor:
    """Decomposed 3D relative-position bias (MViTv2, extended to depth), ``(B, heads, N, N)``."""
    b, heads, n, _ = q.shape
    bias_d, bias_h, bias_w = relative_position_terms(q, tables, window)
    bias = bias_d[..., :, None, None] + bias_h[..., None, :, None] + bias_w[..., None, None, :]
    return bias.reshape(b, heads, n, n)


def key_positions(window: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One-hots of every window token's d, h and w coordinate, concatenated: ``(window^3, 3 * window)``."""
    token = torch.arange(window**3, device=device)
    coordinates = (token // window**2, token // window % window, token % window)
    return torch.cat([F.one_hot(axis, window) for axis in coordinates], dim=-1).to(dtype)


class WindowAttention3D(nn.Module):
    """Multi-head self-attention inside cubic windows with decomposed 3D relative positions.

    ``qkv``, ``proj``, ``rel_pos_h`` and ``rel_pos_w`` come from SAM (tables keep SAM's length and are
    resized on the fly); ``rel_pos_d`` is new. ``lora_rank > 0`` adds LoRA updates of that rank to ``qkv``.
    ``fused`` selects the bias-free formulation (default) or the
    direct one with a materialised bias; both give the same result to float rounding.
    """

    rel_pos_scale: torch.Tensor

    def __init__(
        self, dim: int, num_heads: int, window_size: int, rel_pos_length: int, lora_rank: int = 0
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.fused = True
        head_dim = dim // num_heads
        self.qkv = LowRankLinear(dim, dim * 3, lora_rank) if lora_rank else nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_d = nn.Parameter(torch.zeros(rel_pos_length, head_dim))
        self.rel_pos_h = nn.Parameter(torch.zeros(rel_pos_length, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(rel_pos_length, head_dim))
        self.register_buffer("rel_pos_scale", torch.tensor(1.0))

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend within windows.

        Args:
            windows: ``(B * num_windows, window^3, C)``.
            mask: Optional additive ``(num_windows, window^3, window^3)`` mask, shared by the batch.

        Returns:
            ``(B * num_windows, window^3, C)``.
        """
        bw, n, c = windows.shape
        q, k, v = self.qkv(windows).reshape(bw, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        attend = self._fused_attention if self.fused else self._direct_attention
        out = attend(q, k, v, None if mask is None else mask.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))

    def _tables(self) -> tuple[torch.Tensor, ...]:
        return (self.rel_pos_d, self.rel_pos_h, self.rel_pos_w)

    def _direct_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        bias = self.rel_pos_scale * decomposed_rel_pos_bias(q, self._tables(), self.window_size)
        if mask is not None:
            bw, heads, n, _ = bias.shape
            bias = (bias.view(-1, len(mask), heads, n, n) + mask[None, :, None]).view(bw, heads, n, n)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

    def _fused_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        bw, heads, n, head_dim = q.shape
        window = self.window_size
        if torch.is_grad_enabled():  # the relative-position terms keep their queries for the backward
            q = q.contiguous()  # pass, and a view would keep the whole qkv projection alive with them
        relative = torch.cat(relative_position_terms(q, self._tables(), window), dim=-1)
        query = torch.cat([q * head_dim**-0.5, self.rel_pos_scale * relative.view(bw, heads, n, -1)], dim=-1)
        positions = key_positions(window, q.device, k.dtype).expand(bw, heads, n, 3 * window)
        key = torch.cat([k, positions], dim=-1)
        # The fused CPU and GPU kernels want one head size for queries, keys and values.
        value = F.pad(v, (0, 3 * window))
        if mask is not None:  # shared by the batch: a view, not a copy, for batch size 1
            mask = mask[None].expand(bw // len(mask), -1, -1, -1).reshape(bw, 1, n, n)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=1.0)
        return out[..., :head_dim]
