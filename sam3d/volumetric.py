"""``VolumetricSamTask``: what the volumetric SAM's two trainers share, with clicks or without.

:class:`sam3d.module.VolumetricSamModule` (the promptable network) and
:class:`sam3d.automatic.AutomaticSamModule` (the network without prompts) are siblings under this class.
It holds what depends on the network only: building it from the variant, SAM checkpoint, crop and
adaptation, its optimiser parts, and checkpoints that leave out the frozen SAM weights (restored from the
SAM file, whose path and SHA-256 they record). Clicks, and everything about them, are the promptable
trainer's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from sam3d.data.files import file_sha256
from sam3d.models import (
    Adaptation,
    CheckpointError,
    ClickEncoding,
    DensePrompt,
    Variant,
    VolumetricSam,
    build_volumetric_sam,
    trainable_parameter_groups,
)
from sam3d.task import SegmentationTask


class VolumetricSamTask(SegmentationTask):
    """Base of the volumetric SAM's trainers: the network, its parts and its checkpoints.

    AdamW trains the trainable parameters only, with one group per part (encoder, prompt encoder,
    decoder) whose gradient norms are clipped separately (the paper's three optimisers each clip their
    own). Checkpoints leave out the frozen SAM weights when ``sam_checkpoint`` is given (they come back
    from that file, whose path and SHA-256 are recorded and checked on loading).

    A subclass calls ``super().__init__`` with these arguments, then sets ``self.net`` to
    :meth:`build_network`'s network.

    Args:
        variant: Network size: ``vit_b``, ``vit_l``, ``vit_h`` or ``tiny``.
        sam_checkpoint: Official SAM checkpoint of the same variant; None trains from random SAM weights.
        crop_size: Input crop ``(D, H, W)`` (linked from ``data.patch_size`` by the CLI); None: the variant's.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        final_lr_factor: Learning-rate factor reached at the last epoch (linear decay from 1).
        dice_weight: Weight of the Dice term of the loss.
        ce_weight: Weight of the cross-entropy term of the loss.
        store_frozen_weights: Keep the frozen SAM weights in checkpoints even when ``sam_checkpoint`` is given.
        freeze_sam: Freeze SAM's weights as ``adaptation`` says. Turn off only without pretrained SAM weights
            (e.g. the tiny network), where nothing is gained by freezing random weights: every weight trains.
        activation_checkpointing: Recompute each encoder block's activations and the decoder's upsampled
            maps in the backward pass instead of keeping them (same gradients, a fraction of the memory,
            more time per step); None turns it on for SAM's ViT sizes and off for the tiny network.
        checkpoint_monitor: Validation metric that chooses the ``best`` checkpoint (the CLI points its
            best-checkpoint callback at it): ``val/dice``, the Dice of the thresholded patches (highest
            wins), or ``val/dice_loss``, the soft Dice loss (lowest wins) by which the authors keep their
            best checkpoint.
        adaptation: How SAM's encoder is adapted: ``spatial`` (the paper's 3D adapters), ``bottleneck``
            (2D adapters), ``lora`` (low-rank qkv updates), ``frozen`` (no adapters) or ``full`` (no
            adapters, every weight trains); see :class:`sam3d.models.VolumetricSamConfig`.
        lora_rank: Rank of the ``lora`` updates.
        input_scale: Upsampling of the crop before the patch embedding; None: the variant's (4 for SAM's
            sizes: 128^3 crops become 512^3).
    """

    net: VolumetricSam

    def __init__(
        self,
        variant: Variant = "vit_b",
        sam_checkpoint: str | None = None,
        crop_size: tuple[int, int, int] | None = None,
        lr: float = 4e-4,
        weight_decay: float = 0.0,
        final_lr_factor: float = 0.01,
        dice_weight: float = 0.5,
        ce_weight: float = 0.5,
        store_frozen_weights: bool = False,
        freeze_sam: bool = True,
        activation_checkpointing: bool | None = None,
        checkpoint_monitor: Literal["val/dice", "val/dice_loss"] = "val/dice",
        adaptation: Adaptation = "spatial",
        lora_rank: int = 4,
        input_scale: float | None = None,
    ) -> None:
        super().__init__(dice_weight, ce_weight)
        self.check_recipe(lr, weight_decay, final_lr_factor)
        self.save_hyperparameters()  # also the subclass's own arguments (Lightning collects every __init__'s)

    def build_network(
        self,
        click_maps: bool = False,
        prompted: bool = True,
        click_encoding: ClickEncoding = "gaussian",
        dense_prompts: Sequence[DensePrompt] = (),
    ) -> VolumetricSam:
        """The network these hyperparameters describe, frozen as the paper freezes it.

        Args:
            click_maps: Give the prompt encoder Gaussian maps of where the clicks are (see
                :func:`sam3d.models.build_volumetric_sam`).
            click_encoding: ``gaussian`` or ``distance`` click maps.
            dense_prompts: Dense prompt types the network takes (``box``, ``scribble``, ``mask``).
            prompted: False for a network that nothing prompts: its prompt encoder stays in the network
                (and in checkpoints, as before) but is frozen, so no optimiser group holds it.
        """
        hparams = self.hparams
        net = build_volumetric_sam(
            hparams["variant"],
            sam_checkpoint=hparams["sam_checkpoint"],
            crop_size=hparams["crop_size"],
            freeze=hparams["freeze_sam"],
            adaptation=hparams["adaptation"],
            lora_rank=hparams["lora_rank"],
            input_scale=hparams["input_scale"],
            click_maps=click_maps,
            click_encoding=click_encoding,
            dense_prompts=dense_prompts,
        )
        checkpointing = hparams["activation_checkpointing"]
        net.activation_checkpointing = (
            hparams["variant"] != "tiny" if checkpointing is None else checkpointing
        )
        if not prompted:
            net.prompt_encoder.requires_grad_(False)
        return net

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """The paper's parts: encoder, prompt encoder and decoder (one optimiser group and clip each)."""
        return trainable_parameter_groups(self.net)

    # Checkpoints --------------------------------------------------------------------------------------
    def _frozen_keys(self) -> set[str]:
        return {f"net.{name}" for name, p in self.net.named_parameters() if not p.requires_grad}

    def _sam_record(self) -> dict[str, str | None]:
        path = self.hparams["sam_checkpoint"]
        return {"path": path, "sha256": file_sha256(str(Path(path).resolve())) if path else None}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record sam3d's version and SAM source; drop frozen SAM weights that the SAM file restores."""
        checkpoint["sam3d"] = {
            **self.checkpoint_record(),
            "variant": self.hparams["variant"],
            "sam": self._sam_record(),
        }
        if self.hparams["sam_checkpoint"] and not self.hparams["store_frozen_weights"]:
            for key in self._frozen_keys():
                checkpoint["state_dict"].pop(key, None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse checkpoints of other programs or trained from another SAM file; restore dropped frozen weights."""
        record = self.checked_record(checkpoint)
        trained_from, current = record["sam"], self._sam_record()
        if trained_from["sha256"] and trained_from["sha256"] != current["sha256"]:
            raise CheckpointError(
                f"the checkpoint was trained from SAM checkpoint {trained_from['path']} (sha256 "
                f"{trained_from['sha256'][:12]}...), but this run uses {current['path']} "
                f"(sha256 {(current['sha256'] or 'none')[:12]}...); pass --model.sam_checkpoint with the original file"
            )
        state = checkpoint["state_dict"]
        own = self.state_dict()
        for key in self._frozen_keys() - set(state):
            state[key] = own[key]
