"""``VolumetricSamModule``: trains and validates the volumetric SAM as the paper does."""

from __future__ import annotations

import hashlib
import os
import time
from functools import cache
from pathlib import Path
from typing import Any, Literal

import torch

from sam3d.data.clicks import CLICK_MODES, ClickMode, correction_clicks
from sam3d.data.scans.evaluation_cases import EvaluationCase, SkippedCase
from sam3d.data.scans.prediction_cases import PredictionCase
from sam3d.errors import Sam3dError
from sam3d.evaluation import evaluate_case
from sam3d.inference import segment
from sam3d.models import (
    Adaptation,
    CheckpointError,
    Variant,
    build_volumetric_sam,
    trainable_parameter_groups,
)
from sam3d.task import Batch, CaseResult, SegmentationTask


def file_sha256(path: str) -> str:
    """SHA-256 of a file, read in chunks (cached for the process while its size and modification time hold)."""
    status = os.stat(path)
    return _sha256(path, status.st_size, status.st_mtime_ns)


@cache
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


class VolumetricSamModule(SegmentationTask):
    """The paper's training recipe around :class:`sam3d.models.VolumetricSam`.

    DiceCE loss (0.5/0.5, softmax, Dice without background), AdamW on the trainable parameters only with
    one group per part (encoder, prompt encoder, decoder), linear learning-rate decay per epoch, gradient
    norms clipped per part (the paper's three optimisers each clip their own parameters).

    ``click_mode: interactive`` (beyond the paper) trains corrections as SAM-Med3D and nnInteractive do:
    each step encodes its crops once, then simulates a user for a random number of rounds (0 to
    ``correction_rounds``): the network predicts from the clicks so far and a click is added at the
    deepest point of each sample's largest error region (positive where the tumour is missed, negative
    where the prediction spills over). Only the last prediction is backpropagated; the simulation rounds
    run without gradients, as in RITM's iterative training. They reach the loss only through where the
    clicks land (a thresholded, non-differentiable choice), and the network takes no mask prompt, so
    backpropagating them would only add losses on shorter click sequences, which the random number of
    rounds trains anyway, at one decoder's activation memory instead of one per round.

    Checkpoints leave out the frozen SAM weights when ``sam_checkpoint`` is given (they come back from that
    file, whose path and SHA-256 are recorded and checked on loading).

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
        click_mode: The training clicks (``data.click_mode``, set by the CLI); ``interactive`` adds
            the simulated correction rounds above.
        correction_rounds: ``interactive`` only: the most correction clicks simulated in one step.
        click_maps: Beyond the paper: the prompt encoder also gets Gaussian maps of where the positive and
            negative clicks are (the paper's clicks carry only the features under them, so a correction
            cannot say which of two look-alike regions it means); see ``build_volumetric_sam``.
    """

    takes_clicks = True

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
        click_mode: ClickMode = "reference",
        correction_rounds: int = 4,
        click_maps: bool = False,
    ) -> None:
        super().__init__(dice_weight, ce_weight)
        self.check_recipe(lr, weight_decay, final_lr_factor)
        if click_mode not in CLICK_MODES:
            raise Sam3dError(f"click_mode must be one of {CLICK_MODES}, got {click_mode!r}")
        if not isinstance(correction_rounds, int) or correction_rounds < 0:
            raise Sam3dError(f"correction_rounds must be an integer >= 0, got {correction_rounds!r}")
        self.save_hyperparameters()
        self.net = build_volumetric_sam(
            variant,
            sam_checkpoint=sam_checkpoint,
            crop_size=crop_size,
            freeze=freeze_sam,
            adaptation=adaptation,
            lora_rank=lora_rank,
            input_scale=input_scale,
            click_maps=click_maps,
        )
        if activation_checkpointing is None:
            activation_checkpointing = variant != "tiny"
        self.net.activation_checkpointing = activation_checkpointing

    @property
    def method(self) -> str:
        """The method's name in test summaries and comparison reports, e.g. ``sam-spatial``, ``sam-lora-r4``."""
        adaptation = self.hparams["adaptation"]
        name = f"sam-lora-r{self.hparams['lora_rank']}" if adaptation == "lora" else f"sam-{adaptation}"
        return name if self.hparams["freeze_sam"] or adaptation == "full" else f"{name}-unfrozen"

    def forward(
        self, image: torch.Tensor, points: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits ``(B, 2, D, H, W)`` of the network (see :class:`sam3d.models.VolumetricSam`)."""
        return self.net(image, points, labels)

    def _logits(self, batch: Batch) -> torch.Tensor:
        # Losses and metrics in float32 whatever the autocast precision.
        return self(batch["image"], batch["points"], batch["point_labels"]).float()

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """The paper's parts: encoder, prompt encoder and decoder (one optimiser group and clip each)."""
        return trainable_parameter_groups(self.net)

    def _corrected_logits(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """Logits after a random number of simulated correction clicks on one encoding of the crops."""
        encoding = self.net.encode_image(batch["image"])
        points, labels = batch["points"], batch["point_labels"]
        target = batch["label"][:, 0] > 0
        for _ in range(self._correction_rounds(batch_idx)):
            with torch.no_grad():
                prediction = self.net.segment(encoding, points, labels).argmax(1)
            points, labels = correction_clicks(prediction, target, points, labels)
        return self.net.segment(encoding, points, labels).float()

    def _correction_rounds(self, batch_idx: int) -> int:
        """This step's number of rounds, uniform in 0..correction_rounds.

        A function of (run seed, epoch, batch, rank), so a resumed run simulates the rounds of an uninterrupted one.
        """
        seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
        key = ((seed * 1_000_003 + self.current_epoch) * 1_000_003 + batch_idx) * 1_009 + self.global_rank
        generator = torch.Generator().manual_seed(key % 2**63)
        return int(torch.randint(self.hparams["correction_rounds"] + 1, (), generator=generator))

    def training_loss(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """The loss of the batch's clicks; ``interactive``: after this step's simulated correction rounds."""
        if self.hparams["click_mode"] != "interactive":
            return super().training_loss(batch, batch_idx)
        return self.loss(self._corrected_logits(batch, batch_idx), batch["label"])

    def evaluate_test_case(self, case: EvaluationCase) -> CaseResult:
        """Click the case with the configured protocol (see :func:`sam3d.evaluation.evaluate_case`)."""
        return evaluate_case(self.net, case, self.evaluation)

    def predict_step(self, case: PredictionCase | SkippedCase, batch_idx: int) -> dict[str, Any]:
        """Foreground probability of a new scan from its clicks, with the `evaluation` settings' protocol."""
        if isinstance(case, SkippedCase):
            return {"case": case}
        start = time.perf_counter()
        settings = self.evaluation
        probability = segment(
            self.net, case.scan.image, case.points, case.labels, settings.protocol, settings.threshold
        )
        return {"case": case, "probability": probability, "seconds": time.perf_counter() - start}

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
