"""The volumetric SAM: image encoder, click prompt encoder and multi-level decoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sam3d.models.config import VolumetricSamConfig
from sam3d.models.dense_prompts import DenseInputs, check_dense_inputs
from sam3d.models.image_encoder import ImageEncoder3D
from sam3d.models.mask_decoder import MultiLevelDecoder3D
from sam3d.models.prompt_encoder import NEGATIVE, PADDING, POSITIVE, ClickPromptEncoder


@dataclass(frozen=True)
class CropEncoding:
    """Everything the clicks of a crop batch are decoded against (see :meth:`VolumetricSam.encode_image`).

    Attributes:
        last_map: ``(B, neck_dim, *token_grid)``: the encoder's last map, which the clicks condition.
        decoder_context: ``(B, decoder_dim, *decoder_grid)``: the decoder's click-independent part.
    """

    last_map: torch.Tensor
    decoder_context: torch.Tensor


class VolumetricSam(nn.Module):
    """Promptable 3D segmentation network of 3DSAM-adapter.

    ``net(image, points, labels)`` maps a crop and its clicks to two-class logits. The expensive part,
    :meth:`encode_image`, depends on the crop only; :meth:`segment` decodes one set of clicks against it,
    so several click sets of one crop cost one encoding (``net(...)`` is exactly ``segment(encode_image)``).
    """

    def __init__(self, config: VolumetricSamConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoder3D(config)
        self.prompt_encoder = ClickPromptEncoder(config)
        self.mask_decoder = MultiLevelDecoder3D(config)

    @property
    def activation_checkpointing(self) -> bool:
        """Whether training recomputes encoder blocks and upsampled decoder maps in the backward pass."""
        return self.image_encoder.activation_checkpointing

    @activation_checkpointing.setter
    def activation_checkpointing(self, enabled: bool) -> None:
        self.image_encoder.activation_checkpointing = enabled
        self.mask_decoder.activation_checkpointing = enabled

    def forward(
        self,
        image: torch.Tensor,
        points: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        boxes: torch.Tensor | None = None,
        box_valid: torch.Tensor | None = None,
        scribbles: torch.Tensor | None = None,
        previous_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Segment crops from clicks and, in a network built with ``dense_prompts``, dense prompts.

        Args:
            image: ``(B, 1, D, H, W)`` float crops, already windowed and normalised.
            points: ``(B, N, 3)`` click coordinates in voxels of the crop, in the image's axis order.
            labels: ``(B, N)`` with 1 (positive), 0 (negative) or -1 (padding); None means all positive.
            boxes: ``box`` prompts: ``(B, K, 6)`` boxes ``(d0, h0, w0, d1, h1, w1)``, crop voxel indices
                with both ends inside; ``d0 == d1`` for a 2D box on one slice.
            box_valid: ``(B, K)`` bool, False for padding boxes; None: every box is real.
            scribbles: ``scribble`` prompts: ``(B, 2, D, H, W)`` positive and negative voxel masks.
            previous_mask: ``mask`` prompt: ``(B, 1, D, H, W)`` the previous foreground probability.

        Returns:
            Logits ``(B, num_classes, D, H, W)``.
        """
        return self.segment(
            self.encode_image(image),
            points,
            labels,
            boxes=boxes,
            box_valid=box_valid,
            scribbles=scribbles,
            previous_mask=previous_mask,
        )

    def encode_image(self, image: torch.Tensor) -> CropEncoding:
        """The click-independent encoding of ``(B, 1, D, H, W)`` crops."""
        self._check_image(image)
        features = self.image_encoder(image)
        return CropEncoding(features[-1], self.mask_decoder.context(features[:-1], image))

    def segment(
        self,
        encoding: CropEncoding,
        points: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        boxes: torch.Tensor | None = None,
        box_valid: torch.Tensor | None = None,
        scribbles: torch.Tensor | None = None,
        previous_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of one set of prompts per crop against the crops' ``encoding`` (see :meth:`forward`)."""
        b = len(encoding.last_map)
        labels = self._check_clicks(b, points, labels)
        dense = DenseInputs(boxes, box_valid, scribbles, previous_mask)
        check_dense_inputs(dense, self.config.dense_prompts, b, self.config.crop_size)
        conditioned = self.prompt_encoder(encoding.last_map, points, labels, dense)
        return self.mask_decoder(encoding.decoder_context, conditioned)

    def segment_without_clicks(self, encoding: CropEncoding) -> torch.Tensor:
        """Logits of the automatic mode: the decoder on the encoder's last map, without the prompt encoder."""
        return self.mask_decoder(encoding.decoder_context, encoding.last_map)

    def _check_image(self, image: torch.Tensor) -> None:
        crop = tuple(self.config.crop_size)
        if image.ndim != 5 or image.shape[1] != 1 or tuple(image.shape[2:]) != crop:
            raise ValueError(
                f"image must have shape (B, 1, {', '.join(map(str, crop))}) for the {self.config.variant} "
                f"network built for {crop} crops, got {tuple(image.shape)}"
            )
        if not image.is_floating_point():
            raise TypeError(f"image must be a float tensor, got {image.dtype}")

    def _check_clicks(self, b: int, points: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if points.ndim != 3 or points.shape[0] != b or points.shape[2] != 3:
            raise ValueError(f"points must have shape ({b}, N, 3), got {tuple(points.shape)}")
        if labels is None:
            labels = torch.full(points.shape[:2], POSITIVE, dtype=torch.long, device=points.device)
        if labels.shape != points.shape[:2]:
            raise ValueError(f"labels must have shape {tuple(points.shape[:2])}, got {tuple(labels.shape)}")
        labels = labels.long()
        if not torch.isin(labels, labels.new_tensor([POSITIVE, NEGATIVE, PADDING])).all():
            raise ValueError("labels must be 1 (positive), 0 (negative) or -1 (padding)")
        upper = points.new_tensor(self.config.crop_size) - 1
        outside = ((points < 0) | (points > upper)).any(-1) & (labels != PADDING)
        if outside.any():
            sample, click = (int(i) for i in outside.nonzero()[0])
            raise ValueError(
                f"click {click} of sample {sample} at {points[sample, click].tolist()} lies outside the crop "
                f"{tuple(self.config.crop_size)}; clicks are voxel coordinates inside the crop"
            )
        return labels
