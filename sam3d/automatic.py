"""``AutomaticSamModule``: the volumetric SAM without prompts (the paper's automatic mode).

The mask decoder reads the encoder's last map directly (nothing prompts the network, so its prompt
encoder is frozen), the crops are larger than the promptable network's (the paper: 256^3, against 128^3)
and test volumes are segmented by sliding windows, as the fully supervised baselines are (a volume
smaller than a window padded with 0, the dataset mean after z-scoring, as the authors' ``test_auto.py``;
their gradient-norm clip of 12.0 is in ``configs/automatic/sam.yaml``). The crop is
upsampled less, so the network sees as many tokens as the promptable one (256^3 crops x 2 = 512^3, as
128^3 x 4). Select it with ``sam3d fit -c kits.yaml -c automatic/sam.yaml``.

A sibling of the promptable :class:`sam3d.module.VolumetricSamModule` under
:class:`sam3d.volumetric.VolumetricSamTask`: it takes no clicks, so ``sam3d predict`` and ``serve`` refuse
it, and the CLI refuses click settings with it (``data.click_mode: interactive``, the click overlay).
"""

from __future__ import annotations

from typing import Any

import torch

from sam3d.data.scans.evaluation_cases import EvaluationCase
from sam3d.inference import PAPER_PAD_VALUE
from sam3d.models import VARIANTS
from sam3d.task import Batch, CaseResult
from sam3d.volumetric import VolumetricSamTask


class AutomaticSamModule(VolumetricSamTask):
    """The volumetric SAM trained and tested without clicks.

    Args:
        input_scale: Upsampling of the crop before the patch embedding; None keeps the variant's input
            size (512^3 for SAM's sizes, 256^3 for tiny) for the crop's longest axis.
        **kwargs: The network and recipe (:class:`sam3d.volumetric.VolumetricSamTask`: ``variant``,
            ``sam_checkpoint``, ``crop_size``, ``lr``, ...).
    """

    def __init__(self, input_scale: float | None = None, **kwargs: Any) -> None:
        variant = VARIANTS.get(kwargs.get("variant", "vit_b"))  # an unknown one is refused by the builder
        if input_scale is None and variant is not None:
            crop = kwargs.get("crop_size") or variant.crop_size
            input_scale = variant.crop_size[0] * variant.input_scale / max(crop)
        super().__init__(input_scale=input_scale, **kwargs)
        self.net = self.build_network(prompted=False)
        self.method = "sam-automatic"  # the method's name in test summaries and comparison reports

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 2, D, H, W)`` of ``(B, 1, D, H, W)`` crops."""
        return self.net.segment_without_clicks(self.net.encode_image(image))

    def _logits(self, batch: Batch) -> torch.Tensor:
        return self(batch["image"]).float()

    def evaluate_test_case(self, case: EvaluationCase) -> CaseResult:
        """Segment the whole case by sliding windows, padded with 0 as the authors' ``test_auto.py``; one row."""
        return self.sliding_window_evaluation(case, self.net.config.crop_size, PAPER_PAD_VALUE)
