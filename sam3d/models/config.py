"""Sizes of the volumetric SAM: SAM's three ViTs plus a tiny one for tests and the CPU demo."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from sam3d.errors import Sam3dError

Variant = Literal["vit_b", "vit_l", "vit_h", "tiny"]
# How SAM's pretrained encoder is adapted (see `VolumetricSamConfig`); `spatial` is the paper's.
Adaptation = Literal["spatial", "bottleneck", "lora", "frozen", "full"]
ADAPTATIONS: tuple[Adaptation, ...] = get_args(Adaptation)
# How the click maps encode each click: a Gaussian of the distance, or its exponential decay.
ClickEncoding = Literal["gaussian", "distance"]
CLICK_ENCODINGS: tuple[ClickEncoding, ...] = get_args(ClickEncoding)
# Dense prompts beyond the clicks (see `sam3d.models.dense_prompts`).
DensePrompt = Literal["box", "scribble", "mask"]
DENSE_PROMPTS: tuple[DensePrompt, ...] = get_args(DensePrompt)


@dataclass(frozen=True)
class VolumetricSamConfig:
    """Every size of the network; the defaults are the paper's ``vit_b`` on 128^3 crops.

    Args:
        variant: Name of the SAM image encoder the weights come from.
        embed_dim: ViT token width.
        depth: Number of ViT blocks.
        num_heads: Attention heads per block.
        global_attn_indexes: Blocks that use global attention in 2D SAM. In 3D every block is windowed;
            these blocks only keep SAM's longer relative-position tables.
        sam_image_size: Input size of the 2D SAM (sets ``pos_embed``'s grid).
        patch_size: In-plane patch size of SAM's patch embedding.
        sam_window_size: SAM's 2D window size (sets the windowed blocks' relative-position tables).
        crop_size: Input crop ``(D, H, W)`` in voxels.
        input_scale: Trilinear upsampling factor of the crop before the patch embedding (512/128 in the paper).
        slice_kernel: Slices merged into one token by the depthwise slice embedding.
        window_size: Edge of the cubic attention window, in tokens.
        adapter_ratio: Hidden width of the spatial adapters relative to ``embed_dim``.
        neck_dim: Channels of the four multi-level feature maps.
        prompt_num_heads: Heads of the click prompt encoder's attention.
        prompt_mlp_dim: Hidden width of the prompt encoder's MLP.
        prompt_depth: Two-way layers in the prompt encoder.
        num_global_queries: Learned global queries per prompt-encoder layer.
        prompt_attention_downsample: Channel downsampling of the image-to-query cross-attention.
        decoder_dim: Channels of the multi-level decoder.
        num_classes: Output channels (the paper's two-class head: background, tumour).
        adaptation: How SAM's pretrained encoder weights are adapted. ``spatial`` (the paper's): a bottleneck
            adapter with a depthwise 3D convolution before each block; ``bottleneck``: the same adapter
            without the convolution; ``lora``: low-rank updates of the frozen qkv projections; ``frozen``:
            no adapter; ``full``: no adapter, every weight trains. Besides the adapters, the new embeddings,
            the layer norms, the necks, the prompt encoder and the decoder train in all of them.
        lora_rank: Rank of the ``lora`` updates.
        click_map_sigmas: Beyond the paper, empty in it: widths (crop voxels) of Gaussian maps of the positive
            and negative clicks that the prompt encoder adds to the last map, so that the network knows
            where each click is. The paper's clicks enter only as the features under them, which tells
            the network what the tumour looks like but not where: a correction click cannot single out
            one region among look-alikes. See :class:`sam3d.models.prompt_encoder.ClickMaps`.
        click_encoding: How the click maps encode a click at distance ``d`` (crop voxels) from a token's
            centre: ``gaussian`` ``exp(-d^2 / (2 sigma^2))`` or ``distance`` ``exp(-d / sigma)`` (a
            distance-transform encoding: 1 at the click, slower decay far from it). Needs click maps.
        dense_prompts: Beyond the paper, empty in it: dense prompt types the network takes besides clicks,
            ``box``, ``scribble`` and ``mask`` (the previous prediction). See
            :class:`sam3d.models.dense_prompts.DensePrompts`.
    """

    variant: Variant = "vit_b"
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    sam_image_size: int = 1024
    patch_size: int = 16
    sam_window_size: int = 14
    crop_size: tuple[int, int, int] = (128, 128, 128)
    input_scale: float = 4.0
    slice_kernel: int = 16
    window_size: int = 8
    adapter_ratio: float = 0.5
    neck_dim: int = 256
    prompt_num_heads: int = 8
    prompt_mlp_dim: int = 2048
    prompt_depth: int = 2
    num_global_queries: int = 10
    prompt_attention_downsample: int = 2
    decoder_dim: int = 128
    num_classes: int = 2
    adaptation: Adaptation = "spatial"
    lora_rank: int = 4
    click_map_sigmas: tuple[float, ...] = ()
    click_encoding: ClickEncoding = "gaussian"
    dense_prompts: tuple[DensePrompt, ...] = ()
    neck_after_blocks: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.depth % 4:
            raise ValueError(f"depth must be a multiple of 4 (four feature levels), got {self.depth}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.adaptation not in ADAPTATIONS:
            raise Sam3dError(
                f"unknown adaptation {self.adaptation!r}; choose one of {', '.join(ADAPTATIONS)}"
            )
        if self.lora_rank < 1:
            raise Sam3dError(f"lora_rank must be at least 1, got {self.lora_rank}")
        if any(sigma <= 0 for sigma in self.click_map_sigmas):
            raise Sam3dError(f"click_map_sigmas must be positive, got {self.click_map_sigmas}")
        if self.click_encoding not in CLICK_ENCODINGS:
            raise Sam3dError(
                f"unknown click_encoding {self.click_encoding!r}; choose one of {', '.join(CLICK_ENCODINGS)}"
            )
        if self.click_encoding != "gaussian" and not self.click_map_sigmas:
            raise Sam3dError(
                f"click_encoding {self.click_encoding!r} encodes the click maps, which this network does not "
                "have: turn them on (click_map_sigmas; model.click_maps in the CLI)"
            )
        unknown = [name for name in self.dense_prompts if name not in DENSE_PROMPTS]
        if unknown or len(set(self.dense_prompts)) != len(self.dense_prompts):
            raise Sam3dError(
                f"dense_prompts must name each of {', '.join(DENSE_PROMPTS)} at most once, got {self.dense_prompts}"
            )
        step = self.depth // 4
        object.__setattr__(self, "neck_after_blocks", tuple(step * (i + 1) - 1 for i in range(4)))
        _ = self.token_grid  # raises if the crop size does not fit the network

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """Token grid ``(D, H, W)`` that a crop of ``crop_size`` produces."""
        strides = (self.slice_kernel, self.patch_size, self.patch_size)
        grid = []
        for axis, (size, stride) in enumerate(zip(self.crop_size, strides, strict=True)):
            scaled = size * self.input_scale
            tokens = scaled / stride
            if scaled != int(scaled) or tokens != int(tokens) or int(tokens) % self.window_size:
                valid = self.window_size * stride / self.input_scale
                raise Sam3dError(
                    f"crop size {tuple(self.crop_size)} cannot be taken by the {self.variant} network: axis {axis} "
                    f"({size} voxels x {self.input_scale} upsampling / {stride}) must give a whole number of "
                    f"tokens divisible by the window size {self.window_size}; use a multiple of {valid:g} voxels"
                )
            grid.append(int(tokens))
        return (grid[0], grid[1], grid[2])

    @property
    def decoder_grid(self) -> tuple[int, int, int]:
        """Resolution at which the decoder merges its levels (twice the token grid)."""
        d, h, w = self.token_grid
        return (2 * d, 2 * h, 2 * w)

    def with_crop_size(self, crop_size: int | tuple[int, int, int]) -> VolumetricSamConfig:
        """The same network for another crop size; the token grid follows the crop."""
        crop = (crop_size,) * 3 if isinstance(crop_size, int) else tuple(crop_size)
        return replace(self, crop_size=crop)  # type: ignore[arg-type]

    def with_adaptation(self, adaptation: Adaptation, lora_rank: int = 4) -> VolumetricSamConfig:
        """The same network with another adaptation of SAM's encoder."""
        return replace(self, adaptation=adaptation, lora_rank=lora_rank)


VARIANTS: dict[str, VolumetricSamConfig] = {
    "vit_b": VolumetricSamConfig(),
    "vit_l": VolumetricSamConfig(
        variant="vit_l", embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)
    ),
    "vit_h": VolumetricSamConfig(
        variant="vit_h", embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)
    ),
    # Same geometry as the paper at half the crop (64^3 -> 16^3 tokens), narrow and shallow for CPUs.
    "tiny": VolumetricSamConfig(
        variant="tiny",
        embed_dim=48,
        depth=4,
        num_heads=3,
        global_attn_indexes=(1, 3),
        sam_image_size=256,
        sam_window_size=7,
        crop_size=(64, 64, 64),
        window_size=4,
        neck_dim=32,
        prompt_num_heads=4,
        prompt_mlp_dim=128,
        decoder_dim=16,
    ),
}
