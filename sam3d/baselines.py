"""MONAI's fully supervised 3D networks as the paper's baselines: nnU-Net's DynUNet, SwinUNETR and UNETR.

Each is built for one crop size (the training patch, also the sliding window at test time) and checked
against it here, so a crop the network cannot take is refused with the sizes that fit instead of failing
deep inside MONAI. Two output channels (background, tumour), as the volumetric SAM.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from monai.networks.nets import UNETR, DynUNet, SwinUNETR
from torch import nn

from sam3d.errors import Sam3dError

BaselineNetwork = Literal["dynunet", "swinunetr", "unetr"]

# The published widths: nnU-Net's 32 base filters, SwinUNETR's 48 (its BTCV/BraTS models), UNETR's 16.
DEFAULT_FEATURE_SIZE: dict[str, int] = {"dynunet": 32, "swinunetr": 48, "unetr": 16}

# nnU-Net's planner: pool an axis while its feature map stays >= 4 voxels, at most 5 times; widths
# double per stage from the base, capped at 320 for 3D (10x the base of 32).
NNUNET_MIN_FEATURE_MAP = 4
NNUNET_MAX_POOLS = 5
NNUNET_MAX_FILTERS_FACTOR = 10

SWINUNETR_DIVISOR = 32  # patch size 2, then four 2x patch mergings
SWINUNETR_MIN_CROP = 64  # its bottleneck's instance norm needs more than one voxel
UNETR_PATCH = 16  # UNETR's ViT patch size


@dataclass(frozen=True)
class NnUNetPlan:
    """The DynUNet arguments nnU-Net's 3D full-resolution plan gives for a crop (isotropic spacing).

    Attributes:
        kernel_size: Convolution kernel per stage (3 on every axis at isotropic spacing).
        strides: Downsampling per stage (the first stage keeps full resolution).
        filters: Channels per stage.
        deep_supervision_heads: Extra outputs supervised during training (every decoder level except the two
            coarsest, as nnU-Net weights the coarsest outputs zero).
    """

    kernel_size: tuple[tuple[int, int, int], ...]
    strides: tuple[tuple[int, int, int], ...]
    filters: tuple[int, ...]
    deep_supervision_heads: int

    @property
    def divisor(self) -> tuple[int, int, int]:
        """What each crop axis must be a multiple of (the product of the strides along it)."""
        total = [1, 1, 1]
        for stride in self.strides:
            total = [t * s for t, s in zip(total, stride, strict=True)]
        return (total[0], total[1], total[2])


def _pools(size: int) -> int:
    pools = 0
    while pools < NNUNET_MAX_POOLS and size / 2 ** (pools + 1) >= NNUNET_MIN_FEATURE_MAP:
        pools += 1
    return pools


def _nearby_multiples(size: int, divisor: int) -> str:
    below = max(size // divisor * divisor, divisor)
    return f"{below} or {below + divisor}" if below != size else str(size)


def _stage_stride(stage: int, pools: Sequence[int]) -> tuple[int, int, int]:
    """The downsampling of ``stage``: 2 along each axis pooled at least ``stage`` times, none at stage 0."""
    depth, height, width = (2 if 0 < stage <= count else 1 for count in pools)
    return depth, height, width


def nnunet_plan(crop_size: tuple[int, int, int], base_filters: int = 32) -> NnUNetPlan:
    """The 3D full-resolution U-Net nnU-Net would plan for ``crop_size`` at isotropic spacing.

    For 128^3: six stages (five 2x poolings down to 4^3), 3^3 kernels, 32-64-128-256-320-320 filters and
    three deep-supervision heads.

    Raises:
        Sam3dError: If an axis is not a multiple of 2 per pooling (nnU-Net pads its patch to one).
    """
    pools = [_pools(size) for size in crop_size]
    if min(pools) < 1:
        raise Sam3dError(
            f"crop size {tuple(crop_size)} is too small for nnU-Net's plan: every axis needs at least "
            f"{2 * NNUNET_MIN_FEATURE_MAP} voxels (data.patch_size)"
        )
    for axis, (size, count) in enumerate(zip(crop_size, pools, strict=True)):
        if size % 2**count:
            raise Sam3dError(
                f"crop size {tuple(crop_size)} cannot be taken by nnU-Net's DynUNet: axis {axis} ({size} voxels) "
                f"is pooled {count} times, so it must be a multiple of {2**count}; use "
                f"{_nearby_multiples(size, 2**count)} (data.patch_size)"
            )
    stages = max(pools) + 1
    strides = tuple(_stage_stride(stage, pools) for stage in range(stages))
    filters = tuple(
        min(base_filters * 2**stage, NNUNET_MAX_FILTERS_FACTOR * base_filters) for stage in range(stages)
    )
    return NnUNetPlan(
        kernel_size=((3, 3, 3),) * stages,
        strides=strides,
        filters=filters,
        deep_supervision_heads=max(stages - 3, 0),
    )


def check_divisible(network: str, crop_size: tuple[int, int, int], divisor: int, smallest: int = 1) -> None:
    """Refuse a crop whose axes are not multiples of what ``network`` downsamples by, or below ``smallest``."""
    if min(crop_size) < smallest:
        raise Sam3dError(
            f"crop size {tuple(crop_size)} is too small for {network}: every axis needs at least {smallest} "
            "voxels (data.patch_size)"
        )
    bad = [axis for axis, size in enumerate(crop_size) if size % divisor]
    if bad:
        sizes = ", ".join(_nearby_multiples(crop_size[axis], divisor) for axis in bad)
        raise Sam3dError(
            f"crop size {tuple(crop_size)} cannot be taken by {network}: every axis must be a multiple of "
            f"{divisor} (axis {', '.join(map(str, bad))}: use {sizes}; set data.patch_size)"
        )


def build_baseline(
    network: BaselineNetwork,
    crop_size: tuple[int, int, int],
    feature_size: int | None = None,
    deep_supervision: bool = True,
    options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """One of MONAI's fully supervised networks for ``crop_size`` crops, 1 input and 2 output channels.

    Args:
        network: ``dynunet`` (nnU-Net's 3D full-resolution U-Net, planned by :func:`nnunet_plan`),
            ``swinunetr`` or ``unetr``.
        crop_size: The crop ``(D, H, W)`` (training patch and sliding window).
        feature_size: Base width; None: the published one (:data:`DEFAULT_FEATURE_SIZE`).
        deep_supervision: ``dynunet`` only: nnU-Net's deep-supervision heads (training mode only).
        options: More keyword arguments of the MONAI class (e.g. UNETR's ``hidden_size``, ``num_heads``).
    """
    if network not in DEFAULT_FEATURE_SIZE:
        raise Sam3dError(
            f"unknown baseline network {network!r}; choose one of {', '.join(DEFAULT_FEATURE_SIZE)}"
        )
    crop = tuple(int(n) for n in crop_size)
    if len(crop) != 3:
        raise Sam3dError(f"crop size must have three axes (D, H, W), got {crop_size!r}")
    width = DEFAULT_FEATURE_SIZE[network] if feature_size is None else feature_size
    if width < 1:
        raise Sam3dError(f"feature_size must be >= 1, got {feature_size}")
    extra = dict(options or {})
    if network == "dynunet":
        plan = nnunet_plan(crop, width)
        heads = plan.deep_supervision_heads if deep_supervision else 0
        planned: dict[str, Any] = {
            "kernel_size": plan.kernel_size,
            "strides": plan.strides,
            "upsample_kernel_size": plan.strides[1:],
            "filters": plan.filters,
            "deep_supervision": heads > 0,
            "deep_supr_num": max(heads, 1),
        }
        return _built(DynUNet, network, extra, spatial_dims=3, in_channels=1, out_channels=2, **planned)
    if network == "swinunetr":
        check_divisible("SwinUNETR", crop, SWINUNETR_DIVISOR, SWINUNETR_MIN_CROP)
        return _built(
            SwinUNETR, network, extra, in_channels=1, out_channels=2, feature_size=width, spatial_dims=3
        )
    check_divisible("UNETR", crop, UNETR_PATCH)
    return _built(
        UNETR,
        network,
        extra,
        in_channels=1,
        out_channels=2,
        img_size=crop,
        feature_size=width,
        spatial_dims=3,
    )


def _built(cls: type[nn.Module], network: str, options: dict[str, Any], **arguments: Any) -> nn.Module:
    """``cls(**arguments, **options)`` (options win), MONAI's refusals as a message naming the options."""
    try:
        return cls(**{**arguments, **options})
    except (TypeError, ValueError, AssertionError) as error:
        raise Sam3dError(f"cannot build {network} with options {options}: {error}") from None
