"""Interactive segmentation of one volume: clicks, boxes and scribbles, one interaction at a time.

:class:`InteractionSession` keeps every interaction and the last foreground probability. A network built
with the ``mask`` prompt gets that probability back with the next interaction (its previous mask, as
nnInteractive and the CVPR 2025 challenge pass it); boxes and scribbles need a network built with the
``box`` and ``scribble`` prompts (``configs/prompts/*.yaml``). The crop encodings are kept, so an
interaction in a crop already seen costs only the prompt encoder and decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from sam3d.errors import Sam3dError
from sam3d.inference import (
    CropEncoder,
    Protocol,
    VolumePrompts,
    crop_start,
    segment_around_clicks,
    segment_object,
)
from sam3d.models import VolumetricSam
from sam3d.models.prompt_encoder import NEGATIVE, POSITIVE

__all__ = ["Interaction", "InteractionKind", "InteractionSession", "click_tensors"]

InteractionKind = Literal["click", "box", "scribble"]


@dataclass(frozen=True)
class Interaction:
    """One user interaction in volume voxels ``(d, h, w)`` of the network grid.

    Attributes:
        kind: ``click``, ``box`` or ``scribble``.
        voxels: A click: ``(1, 3)`` float; a box: ``(2, 3)`` its lower and upper corners, both inside the box
            (``d`` equal for a 2D box on one slice); a scribble: ``(N, 3)`` its voxels.
        positive: Inside the object (a box is always positive).
    """

    kind: InteractionKind
    voxels: torch.Tensor
    positive: bool = True

    @classmethod
    def click(cls, point: Sequence[float] | torch.Tensor, positive: bool = True) -> Interaction:
        """A click at ``(d, h, w)``."""
        return cls("click", torch.as_tensor(point, dtype=torch.float32).reshape(1, 3), positive)

    @classmethod
    def box(cls, lower: Sequence[float] | torch.Tensor, upper: Sequence[float] | torch.Tensor) -> Interaction:
        """A box from its corners ``(d0, h0, w0)`` and ``(d1, h1, w1)``, both inside it (any order per axis)."""
        corners = torch.stack(
            [torch.as_tensor(lower).float().reshape(3), torch.as_tensor(upper).float().reshape(3)]
        )
        return cls("box", torch.stack([corners.amin(0), corners.amax(0)]))

    @classmethod
    def scribble(cls, voxels: Sequence[Sequence[float]] | torch.Tensor, positive: bool = True) -> Interaction:
        """A scribble through ``(N, 3)`` voxels."""
        return cls("scribble", torch.as_tensor(voxels, dtype=torch.float32).reshape(-1, 3), positive)


def click_tensors(interactions: Sequence[Interaction]) -> tuple[torch.Tensor, torch.Tensor]:
    """The clicks among ``interactions``: ``(N, 3)`` float points and ``(N,)`` int64 labels (1 positive, 0 negative)."""
    clicks = [i for i in interactions if i.kind == "click"]
    points = torch.cat([i.voxels for i in clicks]) if clicks else torch.zeros(0, 3)
    labels = torch.tensor([POSITIVE if i.positive else NEGATIVE for i in clicks], dtype=torch.long)
    return points, labels


@dataclass(frozen=True)
class _Step:
    """One undoable step: its interactions and the probability before it."""

    interactions: tuple[Interaction, ...]
    probability_before: torch.Tensor


class InteractionSession:
    """Interactive segmentation of one volume: add clicks, boxes and scribbles, get the updated probability.

    The crops stay where the first interaction put them: ``full`` (the default) keeps a lattice of crops
    through that crop and grows into the neighbouring crops wherever the object reaches a crop's border, so
    an object larger than a crop needs no extra interaction; ``paper`` keeps that one crop for everything
    after (what lies outside it is ignored), as the paper's test does. Every
    interaction is one undoable step (:meth:`add_clicks` adds its clicks as one step).

    Example::

        session = InteractionSession(net, image)  # image (D, H, W), normalised, on the network's grid
        probability = session.add_box((30, 40, 50), (46, 70, 80))  # a network built with the box prompt
        probability = session.add_click((44, 50, 71), positive=False)
        probability = session.add_scribble([(40, 52, 60), (40, 53, 61)])
        probability = session.undo()

    Args:
        net: The network, on its device, in eval mode.
        image: ``(D, H, W)`` normalised volume on the CPU.
        protocol: ``full`` or ``paper`` (see :mod:`sam3d.inference`).
        threshold: Foreground probability threshold (``full`` follows the object at this level).
        cache_size: Crop encodings kept; ignored when ``encoder`` is given.
        encoder: A crop encoder to share (e.g. across the repeats of one volume).
    """

    def __init__(
        self,
        net: VolumetricSam,
        image: torch.Tensor,
        protocol: Protocol = "full",
        threshold: float = 0.5,
        cache_size: int = 8,
        encoder: CropEncoder | None = None,
    ) -> None:
        if image.ndim != 3 or not image.is_floating_point():
            raise Sam3dError(f"the volume must be a 3D float tensor (D, H, W), got {tuple(image.shape)}")
        if protocol not in ("paper", "full"):
            raise Sam3dError(f"unknown protocol {protocol!r}: use 'paper' or 'full'")
        self.image, self.protocol, self.threshold = image, protocol, threshold
        self.encoder = CropEncoder(net, cache_size) if encoder is None else encoder
        self.takes: tuple[str, ...] = tuple(self.encoder.net.config.dense_prompts)
        self._steps: list[_Step] = []
        self._anchor: torch.Tensor | None = None
        self.probability = torch.zeros_like(image)

    @property
    def interactions(self) -> tuple[Interaction, ...]:
        """Every interaction so far, oldest first."""
        return tuple(interaction for step in self._steps for interaction in step.interactions)

    @property
    def points(self) -> torch.Tensor:
        """``(N, 3)`` the clicks so far."""
        return click_tensors(self.interactions)[0]

    @property
    def labels(self) -> torch.Tensor:
        """``(N,)`` the clicks' labels, 1 positive, 0 negative."""
        return click_tensors(self.interactions)[1]

    @property
    def anchor(self) -> torch.Tensor | None:
        """Start ``(3,)`` of the crop the first interaction placed (``full`` builds its lattice through it)."""
        return self._anchor

    def add_click(self, point: Sequence[float] | torch.Tensor, positive: bool = True) -> torch.Tensor:
        """Add one click ``(d, h, w)`` in voxels; returns the probability ``(D, H, W)``."""
        return self.add(Interaction.click(point, positive))

    def add_clicks(self, points: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Add ``(N, 3)`` clicks as one step (labels 1 positive, 0 negative; default all positive)."""
        points = points.float().reshape(-1, 3)
        labels = torch.full((len(points),), POSITIVE) if labels is None else labels.long().reshape(-1)
        if len(labels) != len(points) or not torch.isin(labels, torch.tensor([POSITIVE, NEGATIVE])).all():
            raise Sam3dError("click labels must be 1 (positive) or 0 (negative), one per click")
        return self.add(
            *(Interaction.click(p, bool(l == POSITIVE)) for p, l in zip(points, labels, strict=True))
        )

    def add_box(
        self, lower: Sequence[float] | torch.Tensor, upper: Sequence[float] | torch.Tensor
    ) -> torch.Tensor:
        """Add a box from its corners ``(d0, h0, w0)``, ``(d1, h1, w1)`` (both inside; equal ``d``: a 2D box)."""
        return self.add(Interaction.box(lower, upper))

    def add_scribble(
        self, voxels: Sequence[Sequence[float]] | torch.Tensor, positive: bool = True
    ) -> torch.Tensor:
        """Add a scribble through ``(N, 3)`` voxels (positive: inside the object, negative: outside)."""
        return self.add(Interaction.scribble(voxels, positive))

    def add(self, *interactions: Interaction) -> torch.Tensor:
        """Add interactions as one step; returns the probability ``(D, H, W)``.

        Raises:
            Sam3dError: For an interaction outside the volume, one the network does not take, or a first step
                with nothing positive; nothing is added then.
        """
        if not interactions:
            raise Sam3dError("no interaction given")
        for interaction in interactions:
            self._check(interaction)
        if not self._steps and not any(i.positive for i in interactions):
            raise Sam3dError(
                "the first interaction must be positive (a click inside the object, a box or a scribble)"
            )
        self._steps.append(_Step(tuple(interactions), self.probability))
        try:
            return self._update()
        except Exception:
            self._steps.pop()  # segmenting failed: the interaction is not kept
            if not self._steps:
                self._anchor = None
            raise

    def undo(self) -> torch.Tensor:
        """Remove the last step; returns the probability before it."""
        if self._steps:
            self.probability = self._steps.pop().probability_before
        if not self._steps:
            self._anchor = None
        return self.probability

    def reset(self) -> None:
        """Remove every interaction (the crop encodings are kept)."""
        self._steps, self._anchor = [], None
        self.probability = torch.zeros_like(self.image)

    def prompts(self) -> VolumePrompts:
        """Every interaction so far as the network's prompts, with the previous probability if it takes it."""
        interactions = self.interactions
        boxes = [i.voxels.round().long().reshape(6) for i in interactions if i.kind == "box"]
        scribbles = [i for i in interactions if i.kind == "scribble"]
        voxels = [i.voxels.round().long() for i in scribbles]
        return VolumePrompts(
            points=self.points,
            labels=self.labels,
            boxes=torch.stack(boxes) if boxes else torch.zeros(0, 6, dtype=torch.long),
            scribble_voxels=torch.cat(voxels) if voxels else torch.zeros(0, 3, dtype=torch.long),
            scribble_labels=torch.cat(
                [torch.full((len(i.voxels),), POSITIVE if i.positive else NEGATIVE) for i in scribbles]
            )
            if scribbles
            else torch.zeros(0, dtype=torch.long),
            previous=self._steps[-1].probability_before if "mask" in self.takes and self._steps else None,
        )

    def _check(self, interaction: Interaction) -> None:
        if interaction.kind != "click" and interaction.kind not in self.takes:
            raise Sam3dError(
                f"this network takes no {interaction.kind} prompts: use a checkpoint trained with "
                f"configs/prompts/{interaction.kind}.yaml (model.dense_prompts), or click instead"
            )
        if interaction.kind == "box" and not interaction.positive:
            raise Sam3dError("a box marks the object: it cannot be negative")
        voxels = interaction.voxels
        if not len(voxels) or not voxels.isfinite().all():
            raise Sam3dError(f"the {interaction.kind} has no voxel or a coordinate that is not a number")
        upper = torch.tensor(self.image.shape) - 1
        outside = ((voxels < 0) | (voxels > upper)).any(1)
        if outside.any():
            raise Sam3dError(
                f"{interaction.kind} voxel {voxels[outside][0].tolist()} lies outside the volume of shape "
                f"{tuple(self.image.shape)}; positions are (d, h, w) voxel coordinates inside it"
            )

    def _update(self) -> torch.Tensor:
        prompts = self.prompts()
        if self._anchor is None:
            self._anchor = crop_start(prompts.extent_points(), self.encoder.crop_size)
        if self.protocol == "full":
            self.probability = segment_object(
                self.encoder, self.image, prompts, self.threshold, anchor=self._anchor
            )
        else:
            self.probability = segment_around_clicks(self.encoder, self.image, prompts, start=self._anchor)
        return self.probability
