"""``SupervisedBaselineModule``: MONAI's fully supervised networks, trained and tested as the volumetric SAM is.

Same data module (its clicks are ignored), loss, validation Dice, optimiser and test reports (see
:class:`sam3d.task.SegmentationTask`); test cases are segmented without clicks by sliding-window
inference over the whole volume. Select it with a config overlay, e.g.
``sam3d fit -c kits.yaml -c baselines/swinunetr.yaml``.
"""

from __future__ import annotations

from typing import Any

import torch

from sam3d.baselines import BaselineNetwork, build_baseline
from sam3d.data.scans.evaluation_cases import EvaluationCase
from sam3d.task import Batch, CaseResult, SegmentationTask


def deep_supervision_weights(heads: int) -> list[float]:
    """nnU-Net's loss weights of the full-resolution output and ``heads`` coarser ones: halving, summing to 1."""
    weights = [0.5**level for level in range(heads + 1)]
    return [weight / sum(weights) for weight in weights]


class SupervisedBaselineModule(SegmentationTask):
    """A fully supervised baseline (:func:`sam3d.baselines.build_baseline`) with sam3d's training recipe.

    Args:
        network: ``dynunet`` (nnU-Net's 3D full-resolution plan for the crop), ``swinunetr`` or ``unetr``.
        crop_size: Training patch and sliding window ``(D, H, W)`` (linked from ``data.patch_size`` by the CLI).
        feature_size: Base width; None: the published one (32 DynUNet, 48 SwinUNETR, 16 UNETR).
        deep_supervision: ``dynunet``: train nnU-Net's deep-supervision heads too (halving loss weights).
        options: More keyword arguments of the MONAI network class (e.g. UNETR's ``hidden_size``).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        final_lr_factor: Learning-rate factor reached at the last epoch (linear decay from 1).
        dice_weight: Weight of the Dice term of the loss.
        ce_weight: Weight of the cross-entropy term of the loss.
    """

    def __init__(
        self,
        network: BaselineNetwork = "dynunet",
        crop_size: tuple[int, int, int] = (128, 128, 128),
        feature_size: int | None = None,
        deep_supervision: bool = True,
        options: dict[str, Any] | None = None,
        lr: float = 4e-4,
        weight_decay: float = 0.0,
        final_lr_factor: float = 0.01,
        dice_weight: float = 0.5,
        ce_weight: float = 0.5,
    ) -> None:
        super().__init__(dice_weight, ce_weight)
        self.check_recipe(lr, weight_decay, final_lr_factor)
        self.save_hyperparameters()
        self.crop_size = (int(crop_size[0]), int(crop_size[1]), int(crop_size[2]))
        self.net = build_baseline(network, self.crop_size, feature_size, deep_supervision, options)
        self.method = str(network)  # the method's name in test summaries and comparison reports

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 2, D, H, W)`` of ``(B, 1, D, H, W)`` crops (in training, DynUNet stacks its heads in dim 1)."""
        return self.net(image)

    def _logits(self, batch: Batch) -> torch.Tensor:
        return self(batch["image"]).float()

    def training_loss(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """The loss, summed over the deep-supervision heads with nnU-Net's weights where there are heads."""
        logits, label = self._logits(batch), batch["label"]
        if logits.ndim == 5:
            return self.loss(logits, label)
        heads = logits.unbind(1)  # MONAI upsamples every head to the crop
        weights = deep_supervision_weights(len(heads) - 1)
        return sum(
            (w * self.loss(h, label) for w, h in zip(weights, heads, strict=True)), logits.new_zeros(())
        )

    def evaluate_test_case(self, case: EvaluationCase) -> CaseResult:
        """Segment the whole case by sliding windows; one row with 0 clicks."""
        return self.sliding_window_evaluation(case, self.crop_size)
