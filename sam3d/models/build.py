"""Builders: the volumetric SAM at SAM's sizes, filled with SAM's 2D weights, frozen as in the paper."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn

from sam3d.models.checkpoints import load_sam_image_encoder
from sam3d.models.config import (
    VARIANTS,
    Adaptation,
    ClickEncoding,
    DensePrompt,
    Variant,
    VolumetricSamConfig,
)
from sam3d.models.volumetric_sam import VolumetricSam

# Encoder parameters trained in the paper (and the LoRA updates of the `lora` adaptation); every other
# encoder weight stays as SAM learned it unless the adaptation is `full`.
TRAINABLE_ENCODER_PARTS = frozenset(
    {"slice_embed", "depth_embed", "norm1", "norm2", "adapter", "rel_pos_d", "necks", "lora_down", "lora_up"}
)


def build_sam_2d(config: VolumetricSamConfig, device: str | torch.device = "cpu") -> Sam:
    """The 2D SAM whose image encoder ``config`` adapts, built by segment-anything (random weights)."""
    with torch.device(device):
        if config.variant in sam_model_registry:
            return sam_model_registry[config.variant]()
        # The tiny variant: SAM's modules at test sizes, saved in the official checkpoint format by tests.
        grid = config.sam_image_size // config.patch_size
        return Sam(
            image_encoder=ImageEncoderViT(
                img_size=config.sam_image_size,
                patch_size=config.patch_size,
                embed_dim=config.embed_dim,
                depth=config.depth,
                num_heads=config.num_heads,
                norm_layer=partial(nn.LayerNorm, eps=1e-6),
                use_rel_pos=True,
                window_size=config.sam_window_size,
                global_attn_indexes=config.global_attn_indexes,
                out_chans=config.neck_dim,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=config.neck_dim,
                image_embedding_size=(grid, grid),
                input_image_size=(config.sam_image_size, config.sam_image_size),
                mask_in_chans=16,
            ),
            mask_decoder=MaskDecoder(
                transformer_dim=config.neck_dim,
                transformer=TwoWayTransformer(
                    depth=2, embedding_dim=config.neck_dim, mlp_dim=64, num_heads=2
                ),
            ),
        )


def freeze_like_paper(net: VolumetricSam) -> VolumetricSam:
    """Freeze SAM's pretrained encoder weights as the paper does (all train for the ``full`` adaptation).

    Adapters or LoRA updates, new embeddings, layer norms, necks, prompt encoder and decoder train.
    """
    full = net.config.adaptation == "full"
    for name, parameter in net.image_encoder.named_parameters():
        parameter.requires_grad_(full or not TRAINABLE_ENCODER_PARTS.isdisjoint(name.split(".")))
    for module in (net.prompt_encoder, net.mask_decoder):
        module.requires_grad_(True)
    return net


def trainable_parameter_groups(net: VolumetricSam) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters by part, for optimisers with one group per part as in the paper."""
    parts = {"encoder": net.image_encoder, "prompt_encoder": net.prompt_encoder, "decoder": net.mask_decoder}
    return {name: [p for p in module.parameters() if p.requires_grad] for name, module in parts.items()}


def build_volumetric_sam(
    variant: Variant = "vit_b",
    sam_checkpoint: str | Path | None = None,
    crop_size: int | tuple[int, int, int] | None = None,
    freeze: bool = True,
    adaptation: Adaptation = "spatial",
    lora_rank: int = 4,
    input_scale: float | None = None,
    click_maps: bool = False,
    click_encoding: ClickEncoding = "gaussian",
    dense_prompts: Sequence[DensePrompt] = (),
) -> VolumetricSam:
    """Build the paper's network.

    Args:
        variant: ``vit_b``, ``vit_l``, ``vit_h`` (SAM's sizes) or ``tiny`` (tests, CPU demo).
        sam_checkpoint: Official SAM checkpoint of the same variant (e.g. ``sam_vit_b_01ec64.pth``); None
            leaves SAM's weights randomly initialised.
        crop_size: Input crop; defaults to the variant's (128^3 for SAM's sizes, 64^3 for tiny).
        freeze: Freeze as in the paper (only adapters, new embeddings, necks, prompt encoder, decoder train);
            False trains every weight whatever the adaptation.
        adaptation: ``spatial`` (the paper's), ``bottleneck``, ``lora``, ``frozen`` or ``full`` (see
            :class:`VolumetricSamConfig`).
        lora_rank: Rank of the ``lora`` adaptation's updates.
        input_scale: Upsampling of the crop before the patch embedding; None: the variant's (4 for SAM's sizes).
        click_maps: Beyond the paper: tell the prompt encoder where the clicks are, with Gaussian maps
            1/16 and 1/4 of the crop's smallest edge wide (see ``VolumetricSamConfig.click_map_sigmas``).
        click_encoding: ``gaussian`` or ``distance`` click maps (needs ``click_maps``; see
            ``VolumetricSamConfig.click_encoding``).
        dense_prompts: Beyond the paper: the dense prompt types the network takes, among ``box``,
            ``scribble`` and ``mask`` (see ``VolumetricSamConfig.dense_prompts``).

    Returns:
        The network, on the CPU, in training mode.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    config = VARIANTS[variant].with_adaptation(adaptation, lora_rank)
    if crop_size is not None:
        config = config.with_crop_size(crop_size)
    if input_scale is not None:
        config = replace(config, input_scale=input_scale)
    if click_maps:
        edge = min(config.crop_size)
        config = replace(config, click_map_sigmas=(edge / 16, edge / 4))
    config = replace(config, click_encoding=click_encoding, dense_prompts=tuple(dense_prompts))
    net = VolumetricSam(config)
    if sam_checkpoint is not None:
        load_sam_image_encoder(net, sam_checkpoint, build_sam_2d(config, device="meta"))
    return freeze_like_paper(net) if freeze else net
