"""Import of the paper authors' released 3D checkpoints (``last.pth.tar`` / ``best.pth.tar``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from sam3d.models.build import build_volumetric_sam
from sam3d.models.checkpoints import CheckpointError, _load_strictly, load_weights_file
from sam3d.models.volumetric_sam import VolumetricSam

# The authors' code uses only the last of its four prompt encoders.
_USED_PROMPT_ENCODER = 3

# (pattern, replacement) from the authors' names to ours; a replacement of None drops the tensor.
_RENAMES: dict[str, list[tuple[str, str | None]]] = {
    "image_encoder": [
        (r"^blocks\.(\d+)\.attn_mask$", None),  # recomputed from the token grid
        (r"^blocks\.(\d+)\.attn\.lr$", r"blocks.\1.attn.rel_pos_scale"),
        (r"^blocks\.(\d+)\.adapter\.linear1\.", r"blocks.\1.adapter.down."),
        (r"^blocks\.(\d+)\.adapter\.linear2\.", r"blocks.\1.adapter.up."),
        (r"^neck_3d\.", "necks."),
    ],
    "prompt_encoder": [
        (r"^positional_encoding_gaussian_matrix$", None),  # computed but never read by their layers
        (r"^transformer\.layers\.(\d+)\.cross_attn_token_to_image\.", None),  # built but never called
        (r"^transformer\.layers\.(\d+)\.global_query$", r"layers.\1.global_queries"),
        (r"^transformer\.layers\.", "layers."),
    ],
    "mask_decoder": [
        (r"^mlahead\.head([2-5])\.", "levels.{level}."),
        (r"^cls\.", "fuse."),
    ],
}


def _rename(key: str, rules: list[tuple[str, str | None]]) -> str | None:
    for pattern, replacement in rules:
        match = re.match(pattern, key)
        if match:
            if replacement is None:
                return None
            renamed = re.sub(pattern, replacement, key)
            return renamed.format(level=int(match.group(1)) - 2) if "{level}" in renamed else renamed
    return key


def convert_reference_state(part: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map one of the authors' state dicts (``part`` of our network) to our names and axis order.

    The authors' token maps are ordered (H, W, D) where ours are (D, H, W), so every 3D convolution
    kernel has its last axis moved to the front of the spatial axes.
    """
    converted = {}
    for key, value in state.items():
        new_key = _rename(key, _RENAMES[part])
        if new_key is not None:
            converted[new_key] = value.permute(0, 1, 4, 2, 3) if value.ndim == 5 else value
    return converted


def load_reference_checkpoint(path: str | Path) -> VolumetricSam:
    """The paper's configuration (``vit_b``, 128^3) filled from the authors' 3DSAM-adapter checkpoint.

    The file is read with ``weights_only=True``. It must hold ``encoder_dict``, ``decoder_dict`` and
    ``feature_dict`` (the four prompt encoders; the authors use the last). Positive and negative clicks
    are available afterwards; the label embedding starts at zero, so outputs equal the authors' network.
    """
    checkpoint = load_weights_file(path, "3DSAM-adapter checkpoint")
    required = ("encoder_dict", "decoder_dict", "feature_dict")
    if not isinstance(checkpoint, Mapping) or any(key not in checkpoint for key in required):
        found = sorted(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise CheckpointError(
            f"{path} is not a 3DSAM-adapter checkpoint: expected keys {', '.join(required)} "
            f"(written by the authors' train.py), found {found}"
        )
    prompt_encoders = checkpoint["feature_dict"]
    if not isinstance(prompt_encoders, list | tuple) or len(prompt_encoders) <= _USED_PROMPT_ENCODER:
        raise CheckpointError(f"{path}: 'feature_dict' must list the authors' four prompt encoders")
    net = build_volumetric_sam("vit_b")
    parts = {
        "image_encoder": checkpoint["encoder_dict"],
        "prompt_encoder": prompt_encoders[_USED_PROMPT_ENCODER],
        "mask_decoder": checkpoint["decoder_dict"],
    }
    for part, state in parts.items():
        allowed_missing = (lambda key: key.startswith("label_embed.")) if part == "prompt_encoder" else None
        _load_strictly(getattr(net, part), convert_reference_state(part, state), path, allowed_missing)
    return net
