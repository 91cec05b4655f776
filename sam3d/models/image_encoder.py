"""3D image encoder built from SAM's ViT: slice embedding, 3D windows, spatial adapters, four necks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import MLPBlock
from segment_anything.modeling.image_encoder import PatchEmbed
from torch import nn

from sam3d.models.common import LayerNorm3d, channels_first_3d, channels_last_3d
from sam3d.models.config import VolumetricSamConfig

# Attention logit added between tokens of different regions of a shifted window (Swin's value).
_REGION_MASK_VALUE = -100.0


def embed_slices(volume: torch.Tensor, proj: nn.Conv2d) -> torch.Tensor:
    """SAM's RGB patch embedding applied to every D-slice of a one-channel volume.

    The paper repeats the CT on three channels; a convolution of three identical channels equals a
    one-channel convolution with the three kernels summed, at a third of the cost.

    Args:
        volume: ``(B, 1, D, H, W)``.
        proj: SAM's patch-embedding convolution (``3 -> E``, kernel = stride = patch size).

    Returns:
        ``(B, E, D, H / patch, W / patch)``.
    """
    b, _, d, h, w = volume.shape
    weight = proj.weight.sum(dim=1, keepdim=True)
    tokens = F.conv2d(volume.transpose(1, 2).reshape(b * d, 1, h, w), weight, proj.bias, stride=proj.stride)
    return tokens.unflatten(0, (b, d)).transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention with an additive bias, ``(..., N, C)`` tensors."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """``(B, D, H, W, C)`` -> ``(B * windows, window^3, C)``, windows in (b, d, h, w) order."""
    b, d, h, w, c = x.shape
    x = x.view(b, d // window, window, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, window**3, c)


def window_unpartition(windows: torch.Tensor, window: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition` for a token grid ``(D, H, W)``."""
    d, h, w = grid
    c = windows.shape[-1]
    x = windows.view(-1, d // window, h // window, w // window, window, window, window, c)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(-1, d, h, w, c)


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


def decomposed_rel_pos_bias(q: torch.Tensor, tables: tuple[torch.Tensor, ...], window: int) -> torch.Tensor:
    """Decomposed 3D relative-position bias (MViTv2, extended to depth).

    Args:
        q: Queries ``(B, heads, window^3, C)``, tokens in (d, h, w) order.
        tables: Relative-position tables for the d, h and w axes, any length (resized to ``2 * window - 1``).
        window: Window edge in tokens.

    Returns:
        Bias ``(B, heads, window^3, window^3)``.
    """
    b, heads, n, c = q.shape
    offsets = torch.arange(window, device=q.device)
    index = offsets[:, None] - offsets[None, :] + window - 1
    r_d, r_h, r_w = (resize_rel_pos(t, 2 * window - 1)[index] for t in tables)
    q = q.reshape(b, heads, window, window, window, c)
    bias_d = torch.einsum("bndhwc,dkc->bndhwk", q, r_d)
    bias_h = torch.einsum("bndhwc,hkc->bndhwk", q, r_h)
    bias_w = torch.einsum("bndhwc,wkc->bndhwk", q, r_w)
    bias = (
        bias_d[..., :, None, None] + bias_h[..., None, :, None] + bias_w[..., None, None, :]
    )  # (b, heads, d, h, w, kd, kh, kw)
    return bias.reshape(b, heads, n, n)


class SpatialAdapter(nn.Module):
    """Bottleneck adapter with a depthwise 3D convolution, added residually before each block."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden_dim)
        self.conv = nn.Conv3d(hidden_dim, hidden_dim, kernel_size=3, padding=1, groups=hidden_dim)
        self.up = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, D, H, W, C)`` -> same shape."""
        hidden = F.relu(self.down(x))
        hidden = F.relu(channels_last_3d(self.conv(channels_first_3d(hidden))))
        return x + F.relu(self.up(hidden))


class WindowAttention3D(nn.Module):
    """Multi-head self-attention inside cubic windows with decomposed 3D relative positions.

    ``qkv``, ``proj``, ``rel_pos_h`` and ``rel_pos_w`` come from SAM (tables keep SAM's length and are
    resized on the fly); ``rel_pos_d`` is new.
    """

    rel_pos_scale: torch.Tensor

    def __init__(self, dim: int, num_heads: int, window_size: int, rel_pos_length: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
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
        tables = (self.rel_pos_d, self.rel_pos_h, self.rel_pos_w)
        bias = self.rel_pos_scale * decomposed_rel_pos_bias(q, tables, self.window_size)
        if mask is not None:
            num_windows = mask.shape[0]
            bias = (bias.view(-1, num_windows, self.num_heads, n, n) + mask[None, :, None]).view(bw, -1, n, n)
        out = attention(q, k, v, bias)
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class Block3D(nn.Module):
    """Adapter, (shifted) 3D window attention and SAM's MLP, each residual."""

    attn_mask: torch.Tensor | None

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift: int,
        rel_pos_length: int,
        adapter_dim: int,
        grid: tuple[int, int, int],
    ) -> None:
        super().__init__()
        self.adapter = SpatialAdapter(dim, adapter_dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = WindowAttention3D(dim, num_heads, window_size, rel_pos_length)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=4 * dim, act=nn.GELU)
        self.window_size = window_size
        self.shift = shift
        self.grid = grid
        mask = shifted_window_mask(grid, window_size, shift) if shift else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, D, H, W, C)`` -> same shape."""
        x = self.adapter(x)
        shortcut = x
        x = self.norm1(x)
        dims = (1, 2, 3)
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift,) * 3, dims=dims)
        x = self.attn(window_partition(x, self.window_size), self.attn_mask)
        x = window_unpartition(x, self.window_size, self.grid)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift,) * 3, dims=dims)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


def _neck(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_dim, out_dim, kernel_size=1, bias=False),
        LayerNorm3d(out_dim),
        nn.Conv3d(out_dim, out_dim, kernel_size=3, padding=1, bias=False),
        LayerNorm3d(out_dim),
    )


class ImageEncoder3D(nn.Module):
    """SAM's ViT turned volumetric; returns four ``(B, neck_dim, *token_grid)`` maps."""

    def __init__(self, config: VolumetricSamConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        grid = config.token_grid
        sam_grid = config.sam_image_size // config.patch_size
        self.input_scale = config.input_scale
        self.neck_after_blocks = config.neck_after_blocks
        self.patch_embed = PatchEmbed(
            kernel_size=(config.patch_size,) * 2, stride=(config.patch_size,) * 2, in_chans=3, embed_dim=dim
        )
        kernel = (config.slice_kernel, 1, 1)
        self.slice_embed = nn.Conv3d(dim, dim, kernel_size=kernel, stride=kernel, groups=dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, sam_grid, sam_grid, dim))
        self.depth_embed = nn.Parameter(torch.ones(1, grid[0], dim))
        self.blocks = nn.ModuleList(
            Block3D(
                dim=dim,
                num_heads=config.num_heads,
                window_size=config.window_size,
                shift=config.window_size // 2 if i % 2 == 0 else 0,
                rel_pos_length=2 * (sam_grid if i in config.global_attn_indexes else config.sam_window_size)
                - 1,
                adapter_dim=int(dim * config.adapter_ratio),
                grid=grid,
            )
            for i in range(config.depth)
        )
        self.necks = nn.ModuleList(_neck(dim, config.neck_dim) for _ in config.neck_after_blocks)

    def positional_embedding(self, grid: Sequence[int]) -> torch.Tensor:
        """SAM's in-plane embedding pooled to the token grid, plus the learned depth embedding."""
        in_plane = F.adaptive_avg_pool2d(self.pos_embed.permute(0, 3, 1, 2), (grid[1], grid[2])).permute(
            0, 2, 3, 1
        )
        return in_plane[:, None] + self.depth_embed[:, :, None, None]

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Encode ``(B, 1, D, H, W)`` crops into the four multi-level feature maps."""
        volume = F.interpolate(image, scale_factor=self.input_scale, mode="trilinear")
        tokens = channels_last_3d(self.slice_embed(embed_slices(volume, self.patch_embed.proj)))
        tokens = tokens + self.positional_embedding(tokens.shape[1:4])
        features: list[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index in self.neck_after_blocks:
                features.append(self.necks[len(features)](channels_first_3d(tokens)))
        return features
