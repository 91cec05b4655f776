"""``SegmentationTask``: what every trainer of sam3d shares (loss, metrics, test reports, optimiser, checkpoints).

The trainers are siblings, as torchgeo's tasks: :class:`sam3d.module.VolumetricSamModule` (the promptable
volumetric SAM), :class:`sam3d.automatic.AutomaticSamModule` (the SAM without prompts), both on
:class:`sam3d.volumetric.VolumetricSamTask` (their network and its checkpoints), and
:class:`sam3d.supervised.SupervisedBaselineModule` (MONAI's fully supervised networks). Each says how a
batch becomes logits and how a whole test case is segmented; the loss, validation Dice, test rows,
pictures, the optimiser and the checkpoint record are this class's, so every method is trained and scored
the same way and ``sam3d test`` writes the same ``cases.csv``/``summary.json`` for all of them. Only the
promptable trainer takes clicks (:attr:`SegmentationTask.takes_clicks`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import lightning as L
import torch
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from torch.optim import AdamW
from torch.optim.lr_scheduler import LinearLR

from sam3d import __version__
from sam3d.data.scans.evaluation_cases import EvaluationCase, SkippedCase
from sam3d.data.scans.prediction_cases import PredictionCase
from sam3d.errors import Sam3dError, Sam3dWarning
from sam3d.evaluation import EvaluationSettings, evaluate_without_clicks
from sam3d.inference import sliding_window_probability
from sam3d.models import CheckpointError
from sam3d.models.checkpoints import weight_mismatch
from sam3d.visualize import orthogonal_slices, png_bytes

Batch = dict[str, Any]
CaseResult = tuple[list[dict[str, float | int | str]], torch.Tensor, torch.Tensor]
# Validation metrics that can choose the `best` checkpoint, and whether higher or lower is better.
CHECKPOINT_MONITORS: dict[str, Literal["max", "min"]] = {"val/dice": "max", "val/dice_loss": "min"}


def class_path(module: type) -> str:
    """``package.module.Class`` of a class: how configs and checkpoints name a trainer."""
    return f"{module.__module__}.{module.__qualname__}"


def checkpoint_module(record: dict[str, Any]) -> str:
    """The trainer that wrote a checkpoint, from its ``sam3d`` record (older records: the volumetric SAM)."""
    return str(record.get("module", "sam3d.module.VolumetricSamModule"))


class SegmentationTask(L.LightningModule):
    """Base of sam3d's trainers: DiceCE loss, validation Dice, test reports, AdamW, checkpoint record.

    Subclasses build their network, then implement :meth:`_logits` (a batch's logits ``(B, 2, D, H, W)``)
    and :meth:`evaluate_test_case`; they may override :meth:`parameter_groups` (one optimiser group per
    part) and :meth:`training_loss`.

    Args:
        dice_weight: Weight of the Dice term of the loss.
        ce_weight: Weight of the cross-entropy term of the loss.
    """

    # Whether the trainer takes clicks: trains and tests with them, and `sam3d predict`/`serve` segment new
    # scans from their clicks with it. The CLI refuses click settings for a trainer without them.
    takes_clicks: ClassVar[bool] = False

    def __init__(self, dice_weight: float = 0.5, ce_weight: float = 0.5) -> None:
        super().__init__()
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
        self.evaluation: EvaluationSettings = EvaluationSettings()
        self.method: str = type(self).__name__  # the name in test summaries and comparison reports
        self.test_rows: list[dict[str, Any]] = []
        self.test_pictures: dict[str, bytes] = {}
        self.test_skipped: dict[str, str] = {}

    @staticmethod
    def check_recipe(lr: float, weight_decay: float, final_lr_factor: float) -> None:
        """Refuse optimiser settings the recipe cannot use."""
        if lr <= 0 or weight_decay < 0 or not 0 < final_lr_factor <= 1:
            raise Sam3dError(
                f"need lr > 0, weight_decay >= 0 and 0 < final_lr_factor <= 1; got lr={lr}, "
                f"weight_decay={weight_decay}, final_lr_factor={final_lr_factor}"
            )

    # What each trainer defines ------------------------------------------------------------------------
    def _logits(self, batch: Batch) -> torch.Tensor:
        """Logits ``(B, 2, D, H, W)`` of a batch of patches, in float32 (losses and metrics)."""
        raise NotImplementedError

    def evaluate_test_case(self, case: EvaluationCase) -> CaseResult:
        """Rows of metrics of one whole test case, its last predicted mask and clicks ``(N, 3)``."""
        raise NotImplementedError

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """Trainable parameters by part (one optimiser group and one gradient clip per part)."""
        return {"network": [p for p in self.parameters() if p.requires_grad]}

    def learning_rate_factors(self) -> dict[str, float]:
        """Factor of ``lr`` for some parts of :meth:`parameter_groups` (the others train at ``lr``)."""
        return {}

    def clipped_with(self) -> dict[str, str]:
        """Parts whose gradients are clipped together with another part's (as one norm)."""
        return {}

    def training_loss(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """The loss of one training batch."""
        return self.loss(self._logits(batch), batch["label"])

    # Training and validation --------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """One optimisation step's loss."""
        loss = self.training_loss(batch, batch_idx)
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
        dice_loss = self.loss.dice(logits, label)  # soft Dice: the authors' checkpoint criterion
        self.log("val/dice_loss", dice_loss, on_epoch=True, sync_dist=True, batch_size=len(label))
        prediction = logits.argmax(1, keepdim=True)
        self.val_dice(
            y_pred=torch.cat([prediction == 0, prediction == 1], 1), y=torch.cat([label == 0, label == 1], 1)
        )
        return {"prediction": prediction}

    def on_validation_epoch_end(self) -> None:
        """Log the mean validation Dice (gathered over all ranks by MONAI)."""
        dice = self.val_dice.aggregate()
        assert isinstance(dice, torch.Tensor)  # a (Dice, not-NaN count) pair only with get_not_nans=True
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

    # Testing ------------------------------------------------------------------------------------------
    def on_test_epoch_start(self) -> None:
        """Start collecting per-case rows and pictures."""
        self.test_rows, self.test_pictures, self.test_skipped = [], {}, {}

    def test_step(self, case: EvaluationCase | SkippedCase, batch_idx: int) -> None:
        """Evaluate one whole case (see :meth:`evaluate_test_case`); keep its rows and picture."""
        if isinstance(case, SkippedCase):
            warnings.warn(f"test case {case.case_id} skipped: {case.reason}", Sam3dWarning, stacklevel=1)
            self.test_skipped[case.case_id] = case.reason
            return
        rows, prediction, points = self.evaluate_test_case(case)
        if not rows:
            self.test_skipped[case.case_id] = "the label has no target voxel to click"
            return
        self.test_rows += rows
        final = rows[-1]
        prompts = f"{final['clicks']} click(s)"
        if self.evaluation.protocol == "cvpr25":
            prompts = f"a box and {prompts}"
        title = f"{case.case_id}: Dice {final['dice']:.3f} with {prompts}"
        # The simulated user clicks positive inside the target and negative outside it (sam3d.data.clicks).
        voxels = points.round().long().clamp(min=0)
        positive = case.label.bool()[tuple(voxels.T)] if len(points) else torch.zeros(0, dtype=torch.bool)
        self.test_pictures[case.case_id] = png_bytes(
            orthogonal_slices(case.image, case.label, prediction, points, positive, title, case.spacing)
        )
        self.log(
            "test/dice", float(final["dice"]), batch_size=1, prog_bar=True, on_epoch=True, sync_dist=True
        )

    def sliding_window_evaluation(
        self, case: EvaluationCase, crop_size: tuple[int, int, int], pad_value: float | None = None
    ) -> CaseResult:
        """Score a case segmented without clicks: ``self(crops)`` over the whole volume by sliding windows.

        ``pad_value``: what a volume smaller than a crop is padded with; None: the volume's minimum.
        """
        settings = self.evaluation

        def probability_of(image: torch.Tensor) -> torch.Tensor:
            return sliding_window_probability(
                self, image, crop_size, settings.overlap, settings.window_batch_size, self.device, pad_value
            )

        return evaluate_without_clicks(probability_of, case, settings)

    def predict_step(self, case: PredictionCase | SkippedCase, batch_idx: int) -> dict[str, Any]:
        """Refused: ``sam3d predict`` segments new scans from their clicks (see :attr:`takes_clicks`)."""
        raise Sam3dError(self.no_clicks_message())

    @classmethod
    def no_clicks_message(cls, command: str = "predict") -> str:
        """Why ``sam3d predict`` (or ``serve``) refuses this trainer."""
        return (
            f"sam3d {command} segments new scans from their clicks, which {cls.__name__} does not take; "
            "score it on the test folds with `sam3d test`, or use a promptable volumetric SAM checkpoint"
        )

    # Optimisation -------------------------------------------------------------------------------------
    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        """AdamW with one parameter group per part, linear decay to ``final_lr_factor`` over the run."""
        max_epochs = self.trainer.max_epochs
        if max_epochs is None or max_epochs < 1:
            raise Sam3dError(
                "trainer.max_epochs must be set (>= 1): the learning rate decays linearly over the epochs"
            )
        factors = self.learning_rate_factors()
        groups = [
            {"params": params, "name": name, "lr": self.hparams["lr"] * factors.get(name, 1.0)}
            for name, params in self.parameter_groups().items()
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
        together = self.clipped_with()
        parts: dict[str, list[torch.Tensor]] = {}
        for group in optimizer.param_groups:
            parts.setdefault(together.get(group["name"], group["name"]), []).extend(group["params"])
        for params in parts.values():
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    # Checkpoints --------------------------------------------------------------------------------------
    def checkpoint_record(self) -> dict[str, Any]:
        """The ``sam3d`` record of every checkpoint: the version and the trainer that wrote it."""
        return {"version": __version__, "module": class_path(type(self))}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record sam3d's version and this trainer (the CLI checks them against the config on loading)."""
        checkpoint["sam3d"] = self.checkpoint_record()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse checkpoints of other programs or of another trainer."""
        self.checked_record(checkpoint)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Load weights; with ``strict``, weights that do not fit this network are a :class:`CheckpointError`.

        (torch's own error is a traceback listing every key.)
        """
        if strict and (details := weight_mismatch(self.state_dict(), state_dict, shown=4)):
            path = getattr(self._trainer, "ckpt_path", None)
            raise CheckpointError(
                f"the weights in {f'checkpoint {path}' if path else 'the checkpoint'} do not fit the network this config builds ({details}); "
                "use the config of the run that wrote it (config.yaml in its run folder), or a checkpoint of "
                "this network"
            )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def checked_record(self, checkpoint: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint's ``sam3d`` record, if this trainer wrote it (else a :class:`CheckpointError`)."""
        record = checkpoint.get("sam3d")
        if record is None:
            raise CheckpointError(
                "this checkpoint was not written by sam3d (no 'sam3d' record); import the authors' checkpoints "
                "with `sam3d import-reference`"
            )
        written_by, this = checkpoint_module(record), class_path(type(self))
        if written_by != this:
            raise CheckpointError(
                f"the checkpoint holds a {written_by.rsplit('.', 1)[-1]} but this run builds a "
                f"{this.rsplit('.', 1)[-1]}; use the config overlay of the run that wrote it (model.class_path "
                f"{written_by})"
            )
        return record
