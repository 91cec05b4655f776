"""``VolumetricSamModule``: trains and validates the volumetric SAM as the paper does."""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import lightning as L
import torch
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from torch.optim import AdamW
from torch.optim.lr_scheduler import LinearLR

from sam3d import __version__
from sam3d.data.clicks import ClickMode, correction_clicks
from sam3d.data.scans.evaluation_cases import EvaluationCase, SkippedCase
from sam3d.data.scans.prediction_cases import PredictionCase
from sam3d.errors import Sam3dError
from sam3d.evaluation import EvaluationSettings, evaluate_case
from sam3d.inference import segment
from sam3d.models import CheckpointError, Variant, build_volumetric_sam, trainable_parameter_groups
from sam3d.visualize import orthogonal_slices, png_bytes

Batch = dict[str, Any]


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


class VolumetricSamModule(L.LightningModule):
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
        freeze_sam: Freeze SAM's weights as the paper does. Turn off only without pretrained SAM weights
            (e.g. the tiny network), where nothing is gained by freezing random weights.
        activation_checkpointing: Recompute each encoder block's activations and the decoder's upsampled
            maps in the backward pass instead of keeping them (same gradients, a fraction of the memory,
            more time per step); None turns it on for SAM's ViT sizes and off for the tiny network.
        click_mode: The training clicks (linked from ``data.click_mode`` by the CLI); ``interactive`` adds
            the simulated correction rounds above.
        correction_rounds: ``interactive`` only: the most correction clicks simulated in one step.
    """

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
        click_mode: ClickMode = "reference",
        correction_rounds: int = 4,
    ) -> None:
        super().__init__()
        if lr <= 0 or weight_decay < 0 or not 0 < final_lr_factor <= 1:
            raise Sam3dError(
                f"need lr > 0, weight_decay >= 0 and 0 < final_lr_factor <= 1; got lr={lr}, "
                f"weight_decay={weight_decay}, final_lr_factor={final_lr_factor}"
            )
        if click_mode not in ("reference", "labelled", "interactive"):
            raise Sam3dError(
                f"click_mode must be 'reference', 'labelled' or 'interactive', got {click_mode!r}"
            )
        if not isinstance(correction_rounds, int) or correction_rounds < 0:
            raise Sam3dError(f"correction_rounds must be an integer >= 0, got {correction_rounds!r}")
        self.save_hyperparameters()
        self.net = build_volumetric_sam(
            variant, sam_checkpoint=sam_checkpoint, crop_size=crop_size, freeze=freeze_sam
        )
        if activation_checkpointing is None:
            activation_checkpointing = variant != "tiny"
        self.net.activation_checkpointing = activation_checkpointing
        self.loss = DiceCELoss(
            include_background=False,
            softmax=True,
            to_onehot_y=True,
            lambda_dice=dice_weight,
            lambda_ce=ce_weight,
        )
        self.val_dice = DiceMetric(include_background=False)
        # Set by the CLI from the `evaluation` config group (not a hyperparameter: a checkpoint's
        # hyperparameters override the model config, and evaluation choices must not be overridden).
        self.evaluation = EvaluationSettings()
        self.test_rows: list[dict[str, Any]] = []
        self.test_pictures: dict[str, bytes] = {}
        self.test_skipped: dict[str, str] = {}

    def forward(
        self, image: torch.Tensor, points: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits ``(B, 2, D, H, W)`` of the network (see :class:`sam3d.models.VolumetricSam`)."""
        return self.net(image, points, labels)

    def _logits(self, batch: Batch) -> torch.Tensor:
        # Losses and metrics in float32 whatever the autocast precision.
        return self(batch["image"], batch["points"], batch["point_labels"]).float()

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

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """One optimisation step's loss."""
        if self.hparams["click_mode"] == "interactive":
            logits = self._corrected_logits(batch, batch_idx)
        else:
            logits = self._logits(batch)
        loss = self.loss(logits, batch["label"])
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,
            batch_size=len(batch["image"]),
        )
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """Loss and Dice of validation patches; returns the predicted masks for picture callbacks."""
        logits = self._logits(batch)
        label = batch["label"]
        self.log("val/loss", self.loss(logits, label), on_epoch=True, sync_dist=True, batch_size=len(label))
        prediction = logits.argmax(1, keepdim=True)
        self.val_dice(
            y_pred=torch.cat([prediction == 0, prediction == 1], 1), y=torch.cat([label == 0, label == 1], 1)
        )
        return {"prediction": prediction}

    def on_validation_epoch_end(self) -> None:
        """Log the mean validation Dice (gathered over all ranks by MONAI)."""
        dice = self.val_dice.aggregate()
        self.val_dice.reset()
        self.log(
            "val/dice",
            dice.item() if dice.numel() == 1 else dice.mean().item(),
            prog_bar=True,
            sync_dist=False,
        )

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Whole test volumes stay on the CPU; their crops move to the device one at a time."""
        if isinstance(batch, EvaluationCase | PredictionCase | SkippedCase):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_test_epoch_start(self) -> None:
        """Start collecting per-case rows and pictures."""
        self.test_rows, self.test_pictures, self.test_skipped = [], {}, {}

    def test_step(self, case: EvaluationCase | SkippedCase, batch_idx: int) -> None:
        """Evaluate one whole case with the configured protocol."""
        if isinstance(case, SkippedCase):
            warnings.warn(f"test case {case.case_id} skipped: {case.reason}", stacklevel=1)
            self.test_skipped[case.case_id] = case.reason
            return
        rows, prediction, points = evaluate_case(self.net, case, self.evaluation)
        if not rows:
            self.test_skipped[case.case_id] = "the label has no target voxel to click"
            return
        self.test_rows += rows
        final = rows[-1]
        title = f"{case.case_id}: Dice {final['dice']:.3f} with {final['clicks']} click(s)"
        self.test_pictures[case.case_id] = png_bytes(
            orthogonal_slices(case.image, case.label, prediction, points[0].tolist(), title)
        )
        self.log(
            "test/dice", float(final["dice"]), batch_size=1, prog_bar=True, on_epoch=True, sync_dist=True
        )

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

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with one parameter group per part, linear decay to ``final_lr_factor`` over the run."""
        max_epochs = self.trainer.max_epochs
        if max_epochs is None or max_epochs < 1:
            raise Sam3dError(
                "trainer.max_epochs must be set (>= 1): the learning rate decays linearly over the epochs"
            )
        groups = [
            {"params": params, "name": name}
            for name, params in trainable_parameter_groups(self.net).items()
            if params
        ]
        optimizer = AdamW(groups, lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"])
        scheduler = LinearLR(optimizer, 1.0, self.hparams["final_lr_factor"], total_iters=max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip each part's gradient norm separately, as the paper's three optimisers do."""
        if gradient_clip_val is None:
            return
        if gradient_clip_algorithm not in (None, "norm"):
            raise Sam3dError("only gradient_clip_algorithm 'norm' is supported (the paper clips norms)")
        for group in optimizer.param_groups:
            torch.nn.utils.clip_grad_norm_(group["params"], gradient_clip_val)

    # Checkpoints --------------------------------------------------------------------------------------
    def _frozen_keys(self) -> set[str]:
        return {f"net.{name}" for name, p in self.net.named_parameters() if not p.requires_grad}

    def _sam_record(self) -> dict[str, str | None]:
        path = self.hparams["sam_checkpoint"]
        return {"path": path, "sha256": file_sha256(str(Path(path).resolve())) if path else None}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record sam3d's version and SAM source; drop frozen SAM weights that the SAM file restores."""
        checkpoint["sam3d"] = {
            "version": __version__,
            "variant": self.hparams["variant"],
            "sam": self._sam_record(),
        }
        if self.hparams["sam_checkpoint"] and not self.hparams["store_frozen_weights"]:
            for key in self._frozen_keys():
                checkpoint["state_dict"].pop(key, None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse checkpoints of other programs or trained from another SAM file; restore dropped frozen weights."""
        record = checkpoint.get("sam3d")
        if record is None:
            raise CheckpointError(
                "this checkpoint was not written by sam3d (no 'sam3d' record); import the authors' checkpoints "
                "with `sam3d import-reference`"
            )
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
