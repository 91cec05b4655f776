"""3D image encoder built from SAM's ViT: patch and slice embedding, 3D window blocks, spatial adapters, four necks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import MLPBlock
from segment_anything.modeling.image_encoder import PatchEmbed
from torch import nn
from torch.utils.checkpoint import checkpoint

from sam3d.models.adapters import block_adapter
from sam3d.models.common import LayerNorm, LayerNorm3d, channels_first_3d, channels_last_3d
from sam3d.models.config import Adaptation, VolumetricSamConfig
from sam3d.models.patch_embedding import can_fold, direct_patch_embedding, folded_patch_embedding
from sam3d.models.window_attention import (
    WindowAttention3D,
    shifted_window_mask,
    window_order,
)


class Block3D(nn.Module):
    """Adapter (if any), (shifted) 3D window attention and SAM's MLP, each residual."""

    window_order: torch.Tensor
    token_order: torch.Tensor

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift: int,
        rel_pos_length: int,
        adapter_dim: int,
        grid: tuple[int, int, int],
        adaptation: Adaptation = "spatial",
        lora_rank: int = 4,
    ) -> None:
        super().__init__()
        self.adapter = block_adapter(adaptation, dim, adapter_dim)
        self.norm1 = LayerNorm(dim, eps=1e-6)
        rank = lora_rank if adaptation == "lora" else 0
        self.attn = WindowAttention3D(dim, num_heads, window_size, rel_pos_length, lora_rank=rank)
        self.norm2 = LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=4 * dim, act=nn.GELU)
        self.window_size = window_size
        self.shift = shift
        order = window_order(grid, window_size, shift)
        self.register_buffer("window_order", order, persistent=False)
        self.register_buffer("token_order", torch.argsort(order), persistent=False)

    def forward(
        self, x: torch.Tensor, shift_mask: torch.Tensor | None = None, checkpoint_attention: bool = False
    ) -> torch.Tensor:
        """``(B, D, H, W, C)`` -> same shape; ``shift_mask`` from :func:`shifted_window_mask` if shifted.

        ``checkpoint_attention`` recomputes the attention branch in the backward pass, so that its saved
        tensors are not held while the MLP's gradients are computed (used inside a checkpointed block).
        """
        x = self.adapter(x)
        if checkpoint_attention:
            x = checkpoint(self._attention_branch, x, shift_mask, use_reentrant=False)
        else:
            x = self._attention_branch(x, shift_mask)
        return x + self.mlp(self.norm2(x))

    def _attention_branch(self, x: torch.Tensor, shift_mask: torch.Tensor | None) -> torch.Tensor:
        b, c = x.shape[0], x.shape[-1]
        tokens = self.norm1(x).view(b, -1, c)
        windows = tokens.index_select(1, self.window_order).view(-1, self.window_size**3, c)
        attended = self.attn(windows, shift_mask).view(b, -1, c).index_select(1, self.token_order)
        return x + attended.view(x.shape)


def _neck(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_dim, out_dim, kernel_size=1, bias=False),
        LayerNorm3d(out_dim),
        nn.Conv3d(out_dim, out_dim, kernel_size=3, padding=1, bias=False),
        LayerNorm3d(out_dim),
    )


class ImageEncoder3D(nn.Module):
    """SAM's ViT turned volumetric; returns four ``(B, neck_dim, *token_grid)`` maps.

    ``fused`` (default True) computes the patch embedding as one folded convolution of the crop and the
    window attention without a materialised bias; False runs both as the paper writes them (same result
    to float rounding, kept for comparison). ``activation_checkpointing`` recomputes the activations of
    each block and neck in the backward pass instead of keeping them, and within a block recomputes the
    attention branch once more so that the block's peak is that of its attention or its MLP, not both
    (training only).
    """

    shift_mask: torch.Tensor

    def __init__(self, config: VolumetricSamConfig, activation_checkpointing: bool = False) -> None:
        super().__init__()
        dim = config.embed_dim
        grid = config.token_grid
        sam_grid = config.sam_image_size // config.patch_size
        self.input_scale = config.input_scale
        self.neck_after_blocks = config.neck_after_blocks
        self.activation_checkpointing = activation_checkpointing
        self._fused = True
        self._foldable = can_fold(config.input_scale, config.patch_size, config.slice_kernel)
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
                adaptation=config.adaptation,
                lora_rank=config.lora_rank,
            )
            for i in range(config.depth)
        )
        # Every shifted block shifts by half a window, so one mask serves them all.
        mask = shifted_window_mask(grid, config.window_size, config.window_size // 2)
        self.register_buffer("shift_mask", mask, persistent=False)
        self.necks = nn.ModuleList(_neck(dim, config.neck_dim) for _ in config.neck_after_blocks)

    @property
    def fused(self) -> bool:
        """Whether the folded patch embedding and the bias-free attention are used."""
        return self._fused

    @fused.setter
    def fused(self, enabled: bool) -> None:
        for module in self.modules():
            if isinstance(module, WindowAttention3D):
                module.fused = enabled
        self._fused = enabled

    def positional_embedding(self, grid: Sequence[int], dtype: torch.dtype | None = None) -> torch.Tensor:
        """SAM's in-plane embedding pooled to the token grid, plus the learned depth embedding."""
        in_plane = F.adaptive_avg_pool2d(self.pos_embed.permute(0, 3, 1, 2), (grid[1], grid[2])).permute(
            0, 2, 3, 1
        )
        return in_plane.to(dtype)[:, None] + self.depth_embed.to(dtype)[:, :, None, None]

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, D', H', W', C)`` of ``(B, 1, D, H, W)`` crops, positions included."""
        fold = self._fused and self._foldable
        embedding = folded_patch_embedding if fold else direct_patch_embedding
        tokens = channels_last_3d(embedding(image, self.patch_embed.proj, self.slice_embed, self.input_scale))
        return tokens + self.positional_embedding(tokens.shape[1:4], tokens.dtype)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Encode ``(B, 1, D, H, W)`` crops into the four multi-level feature maps."""
        tokens = self.embed(image)
        features: list[torch.Tensor] = []
        checkpointing = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for index, block in enumerate(self.blocks):
            mask = self.shift_mask if block.shift else None
            if checkpointing:
                tokens = checkpoint(block, tokens, mask, True, use_reentrant=False)
            else:
                tokens = block(tokens, mask)
            if index in self.neck_after_blocks:
                neck = self.necks[len(features)]
                maps = channels_first_3d(tokens)
                features.append(checkpoint(neck, maps, use_reentrant=False) if checkpointing else neck(maps))
        return features
