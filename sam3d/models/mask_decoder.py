"""Multi-level 3D decoder: four feature maps and the image, fused to two-class logits."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from sam3d.models.config import VolumetricSamConfig


def _conv_norm_relu(in_dim: int, out_dim: int) -> list[nn.Module]:
    return [nn.Conv3d(in_dim, out_dim, 3, padding=1, bias=False), nn.InstanceNorm3d(out_dim), nn.ReLU()]


class MultiLevelDecoder3D(nn.Module):
    """Each level: two conv blocks and x2 upsampling; then concat with the image, two convs, upsample to the crop.

    Only the last level depends on the clicks. The first fusing convolution is linear in its input
    channels, so it is split: :meth:`context` applies it to the three click-independent levels and the
    image once per crop, and :meth:`forward` adds its response to the click-conditioned level. Every
    click set of a crop then reuses the context (the same computation as one convolution over all levels).
    """

    def __init__(self, config: VolumetricSamConfig) -> None:
        super().__init__()
        dim = config.decoder_dim
        self.level_dim = dim
        self.merge_size = config.decoder_grid
        self.output_size = config.crop_size
        self.levels = nn.ModuleList(
            nn.Sequential(*_conv_norm_relu(config.neck_dim, dim), *_conv_norm_relu(dim, dim))
            for _ in range(4)
        )
        self.fuse = nn.Sequential(
            *_conv_norm_relu(4 * dim + 1, dim), nn.Conv3d(dim, config.num_classes, 3, padding=1, bias=False)
        )

    @property
    def _fuse_weight(self) -> torch.Tensor:
        """Weight of the first fusing convolution; input channels: the four levels, then the image."""
        return cast(nn.Conv3d, self.fuse[0]).weight

    def _level(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(
            self.levels[index](x), size=self.merge_size, mode="trilinear", align_corners=True
        )

    def context(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        """The first fusing convolution applied to the first three maps and the image ``(B, 1, D, H, W)``."""
        maps = [self._level(index, x) for index, x in enumerate(features)]
        # The image arrives in float32; concatenated as is it would promote every map to float32.
        maps.append(F.interpolate(image.to(maps[0].dtype), size=self.merge_size, mode="trilinear"))
        weight = self._fuse_weight
        context_weight = torch.cat([weight[:, : 3 * self.level_dim], weight[:, -1:]], dim=1)
        return F.conv3d(torch.cat(maps, dim=1), context_weight, padding=1)

    def forward(self, context: torch.Tensor, conditioned: torch.Tensor) -> torch.Tensor:
        """Logits from a crop's :meth:`context` and its click-conditioned last map ``(B, C, *grid)``."""
        weight = self._fuse_weight[:, 3 * self.level_dim : 4 * self.level_dim]
        level = F.conv3d(self._level(3, conditioned), weight, padding=1)
        logits = self.fuse[1:](context + level)
        return F.interpolate(logits, size=self.output_size, mode="trilinear", align_corners=True)
