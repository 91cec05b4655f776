"""``AutomaticSamModule``: the volumetric SAM without prompts (the paper's automatic mode).

The mask decoder reads the encoder's last map directly (the prompt encoder is left out and frozen), the
crops are larger than the promptable network's (the paper: 256^3, against 128^3) and test volumes are
segmented by sliding windows, as the fully supervised baselines are. The crop is upsampled less, so the
network sees as many tokens as the promptable one (256^3 crops x 2 = 512^3, as 128^3 x 4). Select it with
``sam3d fit -c kits.yaml -c automatic/sam.yaml``.
"""

from __future__ import annotations

from typing import Any

import torch

from sam3d.data.scans.evaluation_cases import EvaluationCase
from sam3d.models import VARIANTS
from sam3d.module import VolumetricSamModule
from sam3d.task import Batch, CaseResult, SegmentationTask


class AutomaticSamModule(VolumetricSamModule):
    """The volumetric SAM trained and tested without clicks.

    Args:
        input_scale: Upsampling of the crop before the patch embedding; None keeps the variant's input
            size (512^3 for SAM's sizes, 256^3 for tiny) for the crop's longest axis.
        **kwargs: :class:`sam3d.module.VolumetricSamModule`'s arguments (``variant``, ``crop_size``, ...).
    """

    takes_clicks = False
    predict_step = SegmentationTask.predict_step  # the promptable network's needs clicks

    def __init__(self, input_scale: float | None = None, **kwargs: Any) -> None:
        variant = VARIANTS.get(kwargs.get("variant", "vit_b"))  # an unknown one is refused below
        if input_scale is None and variant is not None:
            crop = kwargs.get("crop_size") or variant.crop_size
            input_scale = variant.crop_size[0] * variant.input_scale / max(crop)
        super().__init__(input_scale=input_scale, **kwargs)
        self.net.prompt_encoder.requires_grad_(False)  # unused without clicks

    @property
    def method(self) -> str:
        """The method's name in test summaries and comparison reports."""
        return "sam-automatic"

    def forward(self, image: torch.Tensor, *_: Any) -> torch.Tensor:  # type: ignore[override]
        """Logits ``(B, 2, D, H, W)`` of ``(B, 1, D, H, W)`` crops, without clicks."""
        return self.net.segment_without_clicks(self.net.encode_image(image))

    def _logits(self, batch: Batch) -> torch.Tensor:
        return self(batch["image"]).float()

    def evaluate_test_case(self, case: EvaluationCase) -> CaseResult:
        """Segment the whole case by sliding windows; one row with 0 clicks."""
        return self.sliding_window_evaluation(case, self.net.config.crop_size)
