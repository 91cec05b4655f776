"""Evaluation protocols on whole volumes (pure torch): clicks, crops, correction clicks and metrics.

Promptable methods: a case is evaluated ``repeats`` times with seeded clicks. Each repeat starts from ``num_clicks`` clicks
and adds ``refinement_clicks`` correction clicks, recording the metrics after every click (a
clicks-vs-Dice curve). Correction clicks keep the crops of the first clicks, so they reuse those crops'
encodings and cost only the decoding (see :class:`sam3d.interaction.InteractionSession`).

``cvpr25``: the CVPR 2025 interactive 3D segmentation challenge's protocol (:mod:`sam3d.cvpr25`): a box from
the label first, then five correction clicks at the challenge's error regions, every step with the previous
prediction passed in (a network built with the ``mask`` prompt takes it), scored with a 2 mm NSD gated at
Dice 0.2; one row per step (``clicks`` 0 is the box step).

Methods without clicks (fully supervised baselines, automatic SAM): one prediction per case, reported as
repeat 0 with 0 clicks in the same rows (:func:`evaluate_without_clicks`).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from sam3d.cvpr25 import N_CLICKS, ChallengeBox, ChallengeClick, challenge_steps, step_metrics
from sam3d.data.clicks import correction_click, first_click, training_clicks
from sam3d.data.scans.evaluation_cases import EvaluationCase
from sam3d.errors import Sam3dError
from sam3d.inference import CropEncoder, Protocol
from sam3d.interaction import InteractionSession
from sam3d.metrics import case_metrics
from sam3d.models import VolumetricSam

EvaluationProtocol = Literal["paper", "full", "cvpr25"]
EVALUATION_PROTOCOLS: tuple[str, ...] = get_args(EvaluationProtocol)


@dataclass(frozen=True)
class EvaluationSettings:
    """How test cases are clicked and scored.

    Args:
        protocol: ``paper``: one crop centred on the clicks' bounding box (centre rounded down, padded with
            the dataset mean), zero elsewhere: the authors' test; ``full``: crops follow the object so
            tumours larger than a crop are covered, padded with the volume's minimum (see
            :mod:`sam3d.inference`); ``cvpr25``: the CVPR 2025 challenge's box, five correction clicks and
            previous mask on ``full``'s crops, its own NSD tolerance (2 mm) and gating, one deterministic
            sequence (``num_clicks``, ``first_click``, ``refinement_clicks``, ``repeats``, ``seed`` and
            ``tolerance_mm`` do not apply). ``sam3d predict`` and ``serve`` place crops as ``full`` for it.
        num_clicks: Initial clicks.
        first_click: ``random``: drawn uniformly from the tumour (the paper); ``center``: the deepest
            interior point of the largest component (later initial clicks are random).
        refinement_clicks: Correction clicks added one by one after the initial ones.
        repeats: Repeats with different seeds (mean and standard deviation across repeats).
        seed: Base seed of the clicks.
        tolerance_mm: Normalised surface Dice tolerance.
        threshold: Foreground probability threshold (test metrics, and the masks `sam3d predict` writes).
        cache_size: Crop encodings kept per case for correction clicks and repeats (0: none).
        overlap: Methods without clicks (baselines, automatic SAM): the sliding-window overlap of crops.
        window_batch_size: Methods without clicks: crops segmented together (faster, more memory).
    """

    protocol: EvaluationProtocol = "paper"
    num_clicks: int = 1
    first_click: Literal["random", "center"] = "random"
    refinement_clicks: int = 0
    repeats: int = 1
    seed: int = 0
    tolerance_mm: float = 5.0
    threshold: float = 0.5
    cache_size: int = 8
    overlap: float = 0.5
    window_batch_size: int = 2

    def __post_init__(self) -> None:
        if self.protocol not in EVALUATION_PROTOCOLS:
            raise Sam3dError(
                f"unknown evaluation protocol {self.protocol!r}: use one of {', '.join(EVALUATION_PROTOCOLS)}"
            )
        if self.num_clicks < 1 or self.refinement_clicks < 0 or self.repeats < 1 or self.cache_size < 0:
            raise Sam3dError(
                f"need num_clicks >= 1, refinement_clicks >= 0, repeats >= 1 and cache_size >= 0, got "
                f"{self.num_clicks}, {self.refinement_clicks}, {self.repeats} and {self.cache_size}"
            )
        if not 0 <= self.overlap < 1 or self.window_batch_size < 1:
            raise Sam3dError(
                f"need 0 <= overlap < 1 and window_batch_size >= 1, got {self.overlap} and {self.window_batch_size}"
            )

    @property
    def crops(self) -> Protocol:
        """Where crops go: ``paper`` or ``full`` (``cvpr25`` uses ``full``'s crops)."""
        return "paper" if self.protocol == "paper" else "full"


def initial_clicks(
    label: torch.Tensor, settings: EvaluationSettings, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``num_clicks`` positive clicks of a repeat."""
    if settings.first_click == "center":
        points, labels = first_click(label, "center")
        extra = settings.num_clicks - 1
    else:
        points, labels = torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)
        extra = settings.num_clicks
    if extra:
        more, more_labels = training_clicks(label, num_positive=extra, num_context=0, generator=generator)
        points, labels = torch.cat([points, more]), torch.cat([labels, more_labels])
    return points, labels


def case_seed(settings: EvaluationSettings, case_id: str, repeat: int) -> int:
    """Seed of one repeat of one case: independent of case order, batch and rank."""
    return (settings.seed * 1_000_003 + zlib.crc32(case_id.encode()) * 1_009 + repeat) % 2**63


def evaluate_case(
    net: VolumetricSam, case: EvaluationCase, settings: EvaluationSettings
) -> tuple[list[dict[str, float | int | str]], torch.Tensor, torch.Tensor]:
    """Score one case; returns a row per (repeat, click count), and the last prediction and clicks."""
    if settings.protocol == "cvpr25":
        return evaluate_cvpr25_case(net, case, settings)
    rows: list[dict[str, float | int | str]] = []
    prediction = torch.zeros_like(case.label, dtype=torch.bool)
    points = torch.zeros(0, 3)
    encoder = CropEncoder(net, settings.cache_size)
    for repeat in range(settings.repeats):
        generator = torch.Generator().manual_seed(case_seed(settings, case.case_id, repeat))
        points, labels = initial_clicks(case.label, settings, generator)
        if not len(points):
            break  # no tumour to click: the caller reports the case as skipped
        session = InteractionSession(net, case.image, settings.crops, settings.threshold, encoder=encoder)
        new_points, new_labels = points, labels
        for step in range(settings.refinement_clicks + 1):
            start = time.perf_counter()
            probability = session.add_clicks(new_points, new_labels)
            prediction = probability > settings.threshold
            on_grid = case.to_label_grid(probability) > settings.threshold
            seconds = time.perf_counter() - start
            metrics = case_metrics(on_grid, case.label_on_grid, case.label_spacing, settings.tolerance_mm)
            rows.append(
                {
                    "case": case.case_id,
                    "repeat": repeat,
                    "clicks": len(session.points),
                    **metrics,
                    "seconds": seconds,
                }
            )
            if step < settings.refinement_clicks:
                new_points, new_labels = correction_click(prediction, case.label, case.spacing)
        points = session.points
    return rows, prediction, points


def evaluate_cvpr25_case(
    net: VolumetricSam, case: EvaluationCase, settings: EvaluationSettings
) -> tuple[list[dict[str, float | int | str]], torch.Tensor, torch.Tensor]:
    """Score one case with the CVPR 2025 challenge's interactions (see :mod:`sam3d.cvpr25`).

    The box and the clicks are derived from the label on the network grid, where the network works; the
    scores are computed on the label's own grid. A network without the ``box`` prompt gets a positive
    click at the box's centre instead (on its middle slice, the one slice whose extent the box gives).
    """
    if not case.label.any():
        return [], torch.zeros_like(case.label, dtype=torch.bool), torch.zeros(0, 3)
    session = InteractionSession(net, case.image, "full", settings.threshold, settings.cache_size)
    seconds: list[float] = []

    def predict(
        box: ChallengeBox, clicks: Sequence[ChallengeClick], previous: torch.Tensor | None
    ) -> torch.Tensor:
        start = time.perf_counter()
        if previous is None:
            if "box" in session.takes:
                session.add_box(box.bounds[:3], box.bounds[3:])
            else:
                session.add_click(_box_centre(box))
        elif len(clicks) >= len(session.interactions):  # the first interaction, then one per new click
            # (none after a perfect prediction: nothing changes)
            session.add_click(clicks[-1].point, clicks[-1].positive)
        seconds.append(time.perf_counter() - start)
        return session.probability > settings.threshold

    rows: list[dict[str, float | int | str]] = []
    for step, _ in enumerate(challenge_steps(case.label, predict, n_clicks=N_CLICKS)):
        on_grid = case.to_label_grid(session.probability) > settings.threshold
        metrics = step_metrics(on_grid, case.label_on_grid, case.label_spacing)
        rows.append({"case": case.case_id, "repeat": 0, "clicks": step, **metrics, "seconds": seconds[step]})
    shown = session.points if len(session.points) else session.prompts().positive_seeds()
    return rows, session.probability > settings.threshold, shown


def _box_centre(box: ChallengeBox) -> tuple[int, int, int]:
    return box.d_mid, (box.h_min + box.h_max) // 2, (box.w_min + box.w_max) // 2


def evaluate_without_clicks(
    probability_of: Callable[[torch.Tensor], torch.Tensor], case: EvaluationCase, settings: EvaluationSettings
) -> tuple[list[dict[str, float | int | str]], torch.Tensor, torch.Tensor]:
    """Score one case segmented without clicks; returns its row, the predicted mask and a point to show it.

    A case without target voxels is skipped (no row), as the promptable methods skip it, so every method
    of a comparison is scored on the same cases.

    Args:
        probability_of: Maps the ``(D, H, W)`` volume to its foreground probability.
        case: The test case.
        settings: The threshold and NSD tolerance.
    """
    centre, _ = first_click(case.label, "center")
    if not len(centre):
        return [], torch.zeros_like(case.label, dtype=torch.bool), centre
    start = time.perf_counter()
    probability = probability_of(case.image)
    on_grid = case.to_label_grid(probability) > settings.threshold
    seconds = time.perf_counter() - start
    metrics = case_metrics(on_grid, case.label_on_grid, case.label_spacing, settings.tolerance_mm)
    row: dict[str, float | int | str] = {
        "case": case.case_id,
        "repeat": 0,
        "clicks": 0,
        **metrics,
        "seconds": seconds,
    }
    return [row], probability > settings.threshold, centre
