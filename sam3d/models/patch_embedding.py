"""The paper's patch embedding of a crop, computed directly or as one folded 3D convolution.

The paper upsamples a crop trilinearly (by ``scale``, 4 for 128^3 crops), applies SAM's 2D patch
convolution to every slice (the CT repeated on RGB, so the three kernels act as their sum) and merges
slices with a depthwise convolution. All three steps are linear, so their composition is one strided
3D convolution of the crop itself: :func:`folded_patch_embedding` builds its kernel from the current
weights on every call (gradients reach the slice embedding) and never materialises the upsampled volume.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam3d.models.common import autocast_dtype


def direct_patch_embedding(
    volume: torch.Tensor, patch_embed: nn.Conv2d, slice_embed: nn.Conv3d, scale: float
) -> torch.Tensor:
    """Upsample, patch-embed every D-slice, merge slices: ``(B, 1, D, H, W)`` -> ``(B, E, D', H', W')``."""
    upsampled = F.interpolate(volume, scale_factor=scale, mode="trilinear")
    b, _, d, h, w = upsampled.shape
    weight = patch_embed.weight.sum(dim=1, keepdim=True)
    slices = upsampled.transpose(1, 2).reshape(b * d, 1, h, w)
    tokens = F.conv2d(slices, weight, patch_embed.bias, stride=patch_embed.stride)
    return slice_embed(tokens.unflatten(0, (b, d)).transpose(1, 2))


def upsampling_weights(scale: float, outputs_per_token: int) -> tuple[torch.Tensor, int, int]:
    """How linear upsampling (``align_corners=False``) mixes source voxels into one token's outputs.

    A token covers ``outputs_per_token`` upsampled voxels, which start at source voxel ``t * stride`` with
    ``stride = outputs_per_token / scale``. Output ``k`` of the token reads source coordinate
    ``(k + 0.5) / scale - 0.5`` relative to that start.

    Returns:
        ``(weights, pad_before, pad_after)``: ``weights (outputs_per_token, taps)`` over the source voxels
        ``start - pad_before ... start - pad_before + taps - 1``, and the border padding the whole axis needs.
        Replicating the border voxel into that padding reproduces the interpolation's clamping at the ends.
    """
    stride = outputs_per_token / scale
    if stride != int(stride):
        raise ValueError(f"upsampling by {scale} does not map a token onto whole source voxels")
    source = (torch.arange(outputs_per_token, dtype=torch.float64) + 0.5) / scale - 0.5
    low = source.floor()
    fraction = source - low
    pad_before = max(0, -int(low.min()))
    taps = int(low.max()) + 2 + pad_before
    weights = torch.zeros(outputs_per_token, taps, dtype=torch.float64)
    rows = torch.arange(outputs_per_token)
    columns = low.long() + pad_before
    weights[rows, columns] += 1 - fraction
    weights[rows, columns + 1] += fraction
    return weights, pad_before, max(0, taps - pad_before - int(stride))


def folded_patch_embedding(
    volume: torch.Tensor, patch_embed: nn.Conv2d, slice_embed: nn.Conv3d, scale: float
) -> torch.Tensor:
    """:func:`direct_patch_embedding` as one strided 3D convolution of the crop (equal to float rounding).

    The convolution is computed as a matrix product of each token's source voxels with the folded kernel,
    in the autocast dtype. A bf16 convolution with one input channel goes to oneDNN on the CPU, which
    packs input channels in pairs around a padded lane; as such a convolution, this embedding once returned
    1e21 and NaN on a crop, depending on memory contents. Matrix products are the path every other layer
    takes.
    Returns a channels-first view of channels-last tokens, as the encoder uses them.
    """
    kernel_sizes = (slice_embed.kernel_size[0], *patch_embed.kernel_size)
    axes = [upsampling_weights(scale, size) for size in kernel_sizes]
    pads = [pad for _, before, after in reversed(axes) for pad in (before, after)]  # F.pad: last axis first
    strides = [round(size / scale) for size in kernel_sizes]
    dtype = autocast_dtype(volume)
    # The kernel is parameter-sized: built in float32 (sums of products) whatever the weights' dtype.
    with torch.autocast(volume.device.type, enabled=False):
        depth_weights, height_weights, width_weights = (
            weights.to(volume.device, torch.float32) for weights, _, _ in axes
        )
        patch = patch_embed.weight.float().sum(dim=1)  # (E, h, w): the RGB kernels on a grey image
        slice_kernel = slice_embed.weight.float().flatten(1)  # (E, d): depthwise over slices
        in_plane = torch.einsum("ua,euv,vb->eab", height_weights, patch, width_weights)
        kernel = (slice_kernel @ depth_weights)[:, :, None, None] * in_plane[:, None]
        bias = torch.zeros_like(slice_kernel[:, 0])
        if patch_embed.bias is not None:
            bias = bias + patch_embed.bias.float() * slice_kernel.sum(1)
        if slice_embed.bias is not None:
            bias = bias + slice_embed.bias.float()
        windows = F.pad(volume.to(dtype), pads, mode="replicate")[:, 0]
        for axis, (taps, stride) in enumerate(zip(kernel.shape[1:], strides, strict=True)):
            windows = windows.unfold(axis + 1, taps, stride)  # (B, D', H', W', d, h, w): views, no copy
        tokens = F.linear(windows.flatten(4), kernel.flatten(1).to(dtype), bias.to(dtype))
    return tokens.permute(0, 4, 1, 2, 3)


def can_fold(scale: float, patch_size: int, slice_kernel: int) -> bool:
    """Whether every token starts on a whole source voxel, so :func:`folded_patch_embedding` applies."""
    return all((size / scale).is_integer() for size in (patch_size, slice_kernel))
