"""Multi-level 3D decoder: four feature maps and the image, fused to two-class logits."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from sam3d.models.common import autocast_dtype
from sam3d.models.config import VolumetricSamConfig


def _conv_norm_relu(in_dim: int, out_dim: int) -> list[nn.Module]:
    return [nn.Conv3d(in_dim, out_dim, 3, padding=1, bias=False), nn.InstanceNorm3d(out_dim), nn.ReLU()]


class MultiLevelDecoder3D(nn.Module):
    """Each level: two conv blocks and x2 upsampling; then concat with the image, two convs, upsample to the crop.

    The first fusing convolution is linear in its input channels, so it runs as a sum of one convolution
    per input (the four upsampled levels and the image) instead of one over their concatenation. Only the
    last level depends on the clicks: :meth:`context` sums the other responses once per crop and
    :meth:`forward` adds the click-conditioned level, so every click set of a crop reuses the context.
    With ``activation_checkpointing``, each upsampled level is recomputed in the backward pass rather
    than kept (an upsampling is cheap; a map at twice the token grid is not).
    """

    def __init__(self, config: VolumetricSamConfig) -> None:
        super().__init__()
        dim = config.decoder_dim
        self.level_dim = dim
        self.merge_size = config.decoder_grid
        self.output_size = config.crop_size
        self.activation_checkpointing = False
        self.levels = nn.ModuleList(
            nn.Sequential(*_conv_norm_relu(config.neck_dim, dim), *_conv_norm_relu(dim, dim))
            for _ in range(4)
        )
        self.fuse = nn.Sequential(
            *_conv_norm_relu(4 * dim + 1, dim), nn.Conv3d(dim, config.num_classes, 3, padding=1, bias=False)
        )

    def _fusing_weight(self, index: int) -> torch.Tensor:
        """The first fusing convolution's weight for level ``index`` (0-3) or the image (4)."""
        weight = cast(nn.Conv3d, self.fuse[0]).weight
        return weight[:, index * self.level_dim : (index + 1) * self.level_dim]

    def _upsampled_response(self, x: torch.Tensor, weight: torch.Tensor, align_corners: bool) -> torch.Tensor:
        upsampled = F.interpolate(x, size=self.merge_size, mode="trilinear", align_corners=align_corners)
        return F.conv3d(upsampled, weight, padding=1)

    def _checkpointed_response(
        self, x: torch.Tensor, weight: torch.Tensor, align_corners: bool
    ) -> torch.Tensor:
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self._upsampled_response, x, weight, align_corners, use_reentrant=False)
        return self._upsampled_response(x, weight, align_corners)

    def _level_response(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """The first fusing convolution's response to level ``index`` (0-3) of the maps."""
        return self._checkpointed_response(self.levels[index](x), self._fusing_weight(index), True)

    def _image_response(self, image: torch.Tensor) -> torch.Tensor:
        """The first fusing convolution's response to the image (resized as the paper: no corner alignment)."""
        image = image.to(autocast_dtype(image))  # float32 input would keep a float32 map under autocast
        return self._checkpointed_response(image, self._fusing_weight(len(self.levels)), False)

    def context(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        """The first fusing convolution's response to the first three maps and the image ``(B, 1, D, H, W)``."""
        responses = [self._level_response(index, x) for index, x in enumerate(features)]
        return sum(responses, self._image_response(image))

    def forward(self, context: torch.Tensor, conditioned: torch.Tensor) -> torch.Tensor:
        """Logits from a crop's :meth:`context` and its click-conditioned last map ``(B, C, *grid)``."""
        logits = self.fuse[1:](context + self._level_response(len(self.levels) - 1, conditioned))
        return F.interpolate(logits, size=self.output_size, mode="trilinear", align_corners=True)
