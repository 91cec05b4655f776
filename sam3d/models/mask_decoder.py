"""Multi-level 3D decoder: four feature maps and the image, fused to two-class logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam3d.models.config import VolumetricSamConfig


def _conv_norm_relu(in_dim: int, out_dim: int) -> list[nn.Module]:
    return [nn.Conv3d(in_dim, out_dim, 3, padding=1, bias=False), nn.InstanceNorm3d(out_dim), nn.ReLU()]


class MultiLevelDecoder3D(nn.Module):
    """Each level: two conv blocks and x2 upsampling; then concat with the image, two convs, upsample to the crop."""

    def __init__(self, config: VolumetricSamConfig) -> None:
        super().__init__()
        dim = config.decoder_dim
        self.merge_size = config.decoder_grid
        self.output_size = config.crop_size
        self.levels = nn.ModuleList(
            nn.Sequential(*_conv_norm_relu(config.neck_dim, dim), *_conv_norm_relu(dim, dim))
            for _ in range(4)
        )
        self.fuse = nn.Sequential(
            *_conv_norm_relu(4 * dim + 1, dim), nn.Conv3d(dim, config.num_classes, 3, padding=1, bias=False)
        )

    def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        """Fuse ``features`` (four ``(B, C, *grid)`` maps) and ``image (B, 1, D, H, W)`` into logits."""
        maps = [
            F.interpolate(level(x), size=self.merge_size, mode="trilinear", align_corners=True)
            for level, x in zip(self.levels, features, strict=True)
        ]
        maps.append(F.interpolate(image, size=self.merge_size, mode="trilinear"))
        logits = self.fuse(torch.cat(maps, dim=1))
        return F.interpolate(logits, size=self.output_size, mode="trilinear", align_corners=True)
