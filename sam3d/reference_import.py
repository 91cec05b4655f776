"""``sam3d import-reference``: the authors' 3DSAM-adapter checkpoint as a sam3d checkpoint."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from sam3d.errors import Sam3dError
from sam3d.models import load_reference_checkpoint
from sam3d.module import VolumetricSamModule


def import_reference(checkpoint: str, output: str) -> str:
    """Convert the authors' ``best.pth.tar``/``last.pth.tar`` into a sam3d checkpoint for test and predict.

    The result holds every weight (SAM's included), so it needs no SAM checkpoint.

    Args:
        checkpoint: The authors' checkpoint (``encoder_dict``, ``decoder_dict``, ``feature_dict``).
        output: Where to write the sam3d checkpoint (``.ckpt``); an existing file is not overwritten.

    Returns:
        The path written.
    """
    target = Path(output)
    if target.exists():
        raise Sam3dError(f"{target} already exists; choose another --output or remove it")
    net = load_reference_checkpoint(checkpoint)  # checks the file before anything else is built
    module = VolumetricSamModule(variant="vit_b", store_frozen_weights=True)
    module.net.load_state_dict(net.state_dict())
    state = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": L.__version__,
        "epoch": 0,
        "global_step": 0,
    }
    module.on_save_checkpoint(state)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, target)
    print(f"wrote {target} (from {checkpoint})")
    return str(target)
