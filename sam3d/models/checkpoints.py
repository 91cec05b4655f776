"""Reading weights: official SAM checkpoints and the paper authors' 3D checkpoints.

Every file is read with ``torch.load(weights_only=True)``: tensors and plain containers only, no pickled code.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sam3d.errors import Sam3dError
from sam3d.models.config import VARIANTS

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

    from sam3d.models.volumetric_sam import VolumetricSam


class CheckpointError(Sam3dError):
    """A weights file that cannot be used; the message names the file and what to do."""


# Numpy scalars that the authors' train.py writes (``best_val_loss``); reconstructing them runs no code.
_NUMPY_SAFE_GLOBALS: list[Any] = [np.dtype, np.dtypes.Float64DType, np.dtypes.Float32DType]
_NUMPY_SAFE_GLOBALS.append(getattr(np, "_core", np).multiarray.scalar)


def load_weights_file(path: str | Path, what: str) -> Any:
    """``torch.load`` a file safely, turning every failure into a :class:`CheckpointError` naming ``path``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist (or is not a file); check the path")
    with path.open("rb") as stream:
        head = stream.read(2)
    # torch.save writes a zip archive ("PK"); files of older torch versions are pickles (protocol opcode 0x80).
    if head[:2] != b"PK" and head[:1] != b"\x80":
        kind = "empty" if not head else "not a PyTorch file (another kind of file, or corrupt)"
        raise CheckpointError(f"{what} {path} is {kind}; check the path, or download or export it again")
    try:
        with torch.serialization.safe_globals(_NUMPY_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        details = str(error).split("WeightsUnpickler error:")[-1].strip()  # torch's own advice is not ours
        raise CheckpointError(
            f"{what} {path} contains objects other than tensors and plain containers, so it was not "
            f"loaded (weights_only=True protects against code in pickles): {(details.splitlines() or [''])[0]}"
        ) from None
    except Exception as error:  # noqa: BLE001 (a damaged archive or pickle raises many types)
        reason = f"{type(error).__name__}: {error}".splitlines()[0].split(". ")[0]  # torch appends advice
        raise CheckpointError(
            f"{what} {path} could not be read as a PyTorch file (truncated or corrupt? download or export "
            f"it again): {reason}"
        ) from None


def _describe_sam(state: Mapping[str, torch.Tensor]) -> tuple[str, str]:
    """The SAM variant a state dict belongs to, and a description of its encoder size."""
    embed_dim = state["image_encoder.patch_embed.proj.weight"].shape[0]
    depth = len({key.split(".")[2] for key in state if key.startswith("image_encoder.blocks.")})
    for name, config in VARIANTS.items():
        if (config.embed_dim, config.depth) == (embed_dim, depth):
            return name, f"embed dim {embed_dim}, {depth} blocks"
    return "unknown", f"embed dim {embed_dim}, {depth} blocks"


def load_sam_image_encoder(net: VolumetricSam, path: str | Path, sam: Sam) -> None:
    """Copy the image-encoder weights of an official SAM checkpoint into ``net``'s 3D encoder.

    Args:
        net: The volumetric network to fill.
        path: The SAM checkpoint (a ``Sam`` state dict, as Meta publishes them).
        sam: An empty 2D SAM of the same variant (segment-anything's builder, e.g. on the meta device)
            that validates the checkpoint's keys and shapes.
    """
    variant = net.config.variant
    state = load_weights_file(path, "SAM checkpoint")
    if not isinstance(state, Mapping) or "image_encoder.patch_embed.proj.weight" not in state:
        raise CheckpointError(
            f"{path} is not a SAM checkpoint: it has no 'image_encoder.*' weights. Pass an official "
            f"segment-anything checkpoint such as sam_{variant}_*.pth"
        )
    found, size = _describe_sam(state)
    if found != variant:
        raise CheckpointError(
            f"{path} is a SAM {found} checkpoint ({size}) but the network is {variant}; "
            f"pass the sam_{variant} checkpoint or set the variant to {found}"
        )
    try:
        sam.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path} does not match segment-anything's {variant} SAM: {error}") from error
    encoder_state = {k: v for k, v in sam.image_encoder.state_dict().items() if not k.startswith("neck.")}
    for key, value in list(encoder_state.items()):
        if key.endswith("attn.rel_pos_h"):
            # The new depth table starts as the mean of SAM's height and width tables.
            width = encoder_state[key[: -len("h")] + "w"]
            encoder_state[key[: -len("h")] + "d"] = 0.5 * (value + width)
    _load_strictly(net.image_encoder, encoder_state, path, allowed_missing=_new_encoder_weights)


def _new_encoder_weights(key: str) -> bool:
    """Encoder weights the paper adds to SAM (not in a SAM checkpoint)."""
    new_parts = {"slice_embed", "depth_embed", "adapter", "necks", "lora_down", "lora_up"}
    return not new_parts.isdisjoint(key.split(".")) or key.endswith("rel_pos_scale")


def weight_mismatch(
    own: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    allowed_missing: Callable[[str], bool] | None = None,
    shown: int = 6,
) -> str:
    """The keys of ``state`` that do not fit a module's ``own`` state dict (the first ``shown`` of each kind).

    Empty when every key fits: none unexpected, none missing (but ``allowed_missing`` ones), no other shape.
    """
    unexpected = sorted(set(state) - set(own))
    missing = sorted(k for k in set(own) - set(state) if allowed_missing is None or not allowed_missing(k))
    wrong_shape = sorted(
        f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    )
    return "; ".join(
        f"{label}: {', '.join(keys[:shown])}{' ...' if len(keys) > shown else ''}"
        for label, keys in (("unexpected", unexpected), ("missing", missing), ("wrong shape", wrong_shape))
        if keys
    )


def _load_strictly(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    path: str | Path,
    allowed_missing: Callable[[str], bool] | None = None,
) -> None:
    """Load ``state`` into ``module``, naming ``path`` and the offending keys on any mismatch."""
    if details := weight_mismatch(module.state_dict(), state, allowed_missing):
        raise CheckpointError(f"weights in {path} do not fit the network ({details})")
    module.load_state_dict(state, strict=False)
