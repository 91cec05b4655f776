"""The CVPR 2025 interactive 3D segmentation challenge's protocol: first box, correction clicks, scores.

Pure functions (NumPy, SciPy, MONAI; no Lightning) that reproduce what the challenge's published
evaluation does, read from ``JunMa11/CVPR-MedSegFMCompetition`` at commit
``748e862d162e3e3ee8197bd4085b19bbbe0bb8a0``: ``CVPR25_iter_eval.py`` (clicks and scores),
``get_boxes.py`` (the boxes stored in the test files) and ``SurfaceDice.py`` (NSD). This is an
independent implementation; the differences are listed in ``docs/evaluation.md``.

One case is six predictions: the first from the box alone, then five, each after one more correction
click placed on the previous prediction's errors, with that prediction passed in as well.
:func:`challenge_steps` drives the loop for any ``predict`` callable and :func:`run_protocol` scores it;
``sam3d test --evaluation.protocol cvpr25`` runs it on the network (:func:`sam3d.evaluation.evaluate_cvpr25_case`).

Masks are binary ``(D, H, W)`` tensors (one tumour class: the challenge averages Dice and NSD over
the classes of a multi-class label, which for one class is the value itself); coordinates are voxel
indices ``(d, h, w)`` in the masks' axis order, which the challenge calls ``(z, y, x)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from sam3d.metrics import case_metrics, clicks_curve_area

__all__ = [
    "CLICK_SEED",
    "DICE_GATE",
    "N_CLICKS",
    "TOLERANCE_MM",
    "ChallengeBox",
    "ChallengeClick",
    "ChallengeScores",
    "Predict",
    "challenge_box",
    "challenge_correction_click",
    "challenge_scores",
    "challenge_steps",
    "gated_nsd",
    "run_protocol",
    "step_metrics",
    "step_scores",
]

N_CLICKS = 5
"""Correction clicks after the box (six predictions in all)."""
TOLERANCE_MM = 2.0
"""NSD tolerance in mm."""
DICE_GATE = 0.2
"""NSD is computed only where Dice is strictly above this; it is 0 otherwise."""
CLICK_SEED = 42
"""Seed of the draw among equally deep voxels (the challenge reseeds NumPy with it for every click)."""

_FULL_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)  # 26-connectivity, as the challenge


def _mask(mask: torch.Tensor, name: str) -> np.ndarray:
    if mask.ndim != 3:
        raise ValueError(f"{name} must be a (D, H, W) mask, got shape {tuple(mask.shape)}")
    return mask.detach().cpu().numpy() != 0


@dataclass(frozen=True)
class ChallengeBox:
    """The challenge's first interaction: a slab of slices and a 2D box on its middle slice.

    All bounds are inclusive voxel indices. ``d_min..d_max`` spans every slice of the label;
    ``h_*`` and ``w_*`` are the extent of the label on slice ``d_mid`` only (not over the whole
    volume), as the challenge's ``z_min, z_max, z_mid, z_mid_y_min, ...`` keys.
    """

    d_min: int
    d_max: int
    d_mid: int
    h_min: int
    w_min: int
    h_max: int
    w_max: int

    @classmethod
    def from_challenge(cls, box: Mapping[str, int]) -> ChallengeBox:
        """The box a challenge test file stores (one entry of its ``boxes``), in sam3d's names.

        The challenge's ``x`` is the last array axis (w) and ``y`` the middle one (h).
        """
        return cls(
            d_min=int(box["z_min"]),
            d_max=int(box["z_max"]),
            d_mid=int(box["z_mid"]),
            h_min=int(box["z_mid_y_min"]),
            w_min=int(box["z_mid_x_min"]),
            h_max=int(box["z_mid_y_max"]),
            w_max=int(box["z_mid_x_max"]),
        )

    @property
    def bounds(self) -> tuple[int, int, int, int, int, int]:
        """``(d0, h0, w0, d1, h1, w1)``, inclusive: the 3D box a network given one box would take."""
        return (self.d_min, self.h_min, self.w_min, self.d_max, self.h_max, self.w_max)


def challenge_box(label: torch.Tensor, shift: int = 0) -> ChallengeBox:
    """The box the challenge gives as the first interaction, derived from the label.

    Slices: the first and last slice holding the label; the middle one is the ``len // 2``-th of the
    distinct slices that hold it (so a label with gaps takes a slice that holds it). In-plane: the
    label's extent on that middle slice, widened by ``int(shift * W / 256)`` along w and
    ``int(shift * H / 256)`` along h and clipped to the slice. The challenge drew ``shift`` uniformly
    from 0..5 when it wrote its test files (``np.random.seed(2025)`` in a process pool, so not
    reproducible from the label); the default 0 is the tight, deterministic box. Use the test file's
    stored box when there is one.

    Args:
        label: Binary ``(D, H, W)`` label, not empty.
        shift: The in-plane widening in voxels of a 256-wide slice (0..5 in the challenge).

    Returns:
        The box, inclusive voxel bounds.

    Raises:
        ValueError: For an empty label, a label that is not 3D or a negative shift.
    """
    array = _mask(label, "label")
    if not array.any():
        raise ValueError("the label is empty: the challenge's box needs a labelled voxel")
    if shift < 0:
        raise ValueError(f"shift must be >= 0, got {shift}")
    slices = np.flatnonzero(array.any(axis=(1, 2)))
    middle = int(slices[len(slices) // 2])
    rows, columns = np.nonzero(array[middle])
    height, width = array.shape[1:]
    shift_h, shift_w = int(shift * height / 256), int(shift * width / 256)
    return ChallengeBox(
        d_min=int(slices[0]),
        d_max=int(slices[-1]),
        d_mid=middle,
        h_min=max(0, int(rows.min()) - shift_h),
        w_min=max(0, int(columns.min()) - shift_w),
        h_max=min(height - 1, int(rows.max()) + shift_h),
        w_max=min(width - 1, int(columns.max()) + shift_w),
    )


@dataclass(frozen=True)
class ChallengeClick:
    """One correction click: a voxel ``(d, h, w)``, positive (foreground) or negative (background)."""

    point: tuple[int, int, int]
    positive: bool


def challenge_correction_click(label: torch.Tensor, prediction: torch.Tensor) -> ChallengeClick | None:
    """Where the challenge puts the next correction click, and its sign.

    The errors are all voxels where prediction and label differ, missed and extra voxels together,
    split into 26-connected components; the largest component by voxel count is taken (equal sizes:
    the one met first in C order). Its voxels' Euclidean distance (in voxels, not mm) to the nearest
    voxel outside it, the volume's edge counting as outside, is computed; the click goes on a deepest
    voxel, chosen among equally deep ones (listed in C order) by ``RandomState(42).choice``, as the
    challenge reseeds NumPy's generator with 42 before each draw. The click is positive if the label
    holds that voxel (a miss) and negative otherwise (an extra voxel). A component that mixes missed
    and extra voxels gets one click, of the sign of its deepest voxel.

    Args:
        label: Binary ``(D, H, W)`` label.
        prediction: Binary ``(D, H, W)`` prediction on the same grid (the previous step's).

    Returns:
        The click, or None if the prediction equals the label (the challenge adds no click then).

    Raises:
        ValueError: For masks that are not 3D or differ in shape.
    """
    truth, predicted = _mask(label, "label"), _mask(prediction, "prediction")
    if truth.shape != predicted.shape:
        raise ValueError(f"label {truth.shape} and prediction {predicted.shape} differ in shape")
    errors = truth != predicted
    components, count = ndimage.label(errors, structure=_FULL_CONNECTIVITY)
    if count == 0:
        return None
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    region = components == int(np.argmax(sizes))
    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1, 1:-1]
    deepest = np.argwhere(depth == depth.max())
    chosen = deepest[int(np.random.RandomState(CLICK_SEED).choice(len(deepest)))]
    point = (int(chosen[0]), int(chosen[1]), int(chosen[2]))
    return ChallengeClick(point=point, positive=bool(truth[point]))


def gated_nsd(dice: float, nsd: float) -> float:
    """The challenge's NSD for a step: ``nsd`` if ``dice > 0.2``, else 0."""
    return float(nsd) if dice > DICE_GATE else 0.0


def step_metrics(
    prediction: torch.Tensor,
    label: torch.Tensor,
    spacing: Sequence[float],
    tolerance_mm: float = TOLERANCE_MM,
) -> dict[str, float]:
    """Dice, the challenge's gated NSD and HD95 (mm) of one step's prediction (see :func:`step_scores`)."""
    metrics = case_metrics(prediction, label, spacing, tolerance_mm=tolerance_mm, use_subvoxels=True)
    return {**metrics, "nsd": gated_nsd(metrics["dice"], metrics["nsd"])}


def step_scores(
    prediction: torch.Tensor,
    label: torch.Tensor,
    spacing: Sequence[float],
    tolerance_mm: float = TOLERANCE_MM,
) -> tuple[float, float]:
    """Dice and gated NSD of one step's prediction, as the challenge scores it.

    NSD is the area-weighted surface Dice of DeepMind's ``surface-distance`` (the challenge's
    ``SurfaceDice.py``), which MONAI's ``compute_surface_dice(use_subvoxels=True)`` reproduces; it
    is computed only when Dice exceeds 0.2 and is 0 otherwise.

    Args:
        prediction: Binary ``(D, H, W)`` prediction.
        label: Binary ``(D, H, W)`` label, not empty.
        spacing: Voxel size in mm along the masks' axes, in their order.
        tolerance_mm: NSD tolerance (the challenge: 2 mm).

    Returns:
        ``(dice, nsd)``.

    Raises:
        ValueError: For an empty label (the challenge scores only the classes a label holds), or as
            :func:`sam3d.metrics.case_metrics`.
    """
    if not bool(label.any()):
        raise ValueError("the label is empty: the challenge scores only labelled classes")
    metrics = step_metrics(prediction, label, spacing, tolerance_mm)
    return metrics["dice"], metrics["nsd"]


@dataclass(frozen=True)
class ChallengeScores:
    """One case's scores: the AUCs, the final values and the per-step values (NSD gated)."""

    dsc_auc: float
    nsd_auc: float
    dsc_final: float
    nsd_final: float
    dice: tuple[float, ...]
    nsd: tuple[float, ...]


def challenge_scores(
    dice_per_step: Sequence[float], nsd_per_step: Sequence[float], n_clicks: int = N_CLICKS
) -> ChallengeScores:
    """DSC_AUC, NSD_AUC and the final DSC and NSD of one case, from its per-step values.

    The steps are the box prediction and then one per correction click (``n_clicks + 1`` values).
    NSD is gated first (0 where Dice <= 0.2). Each AUC is the trapezoid rule over the last
    ``n_clicks`` steps, the click steps, at x = 0, 1, ..., n_clicks - 1: the box step does not enter
    it, and it is not normalised (it lies in [0, n_clicks - 1], 0 to 4 for five clicks). The final
    values are those of the last step.

    Args:
        dice_per_step: Dice after the box and after each click.
        nsd_per_step: NSD at the same steps (gated here if not already).
        n_clicks: Correction clicks (the challenge: 5).

    Returns:
        The scores.

    Raises:
        ValueError: For a number of steps other than ``n_clicks + 1``, ``n_clicks < 2`` or a value
            that is not finite.
    """
    dice = tuple(float(d) for d in dice_per_step)
    if n_clicks < 2 or len(dice) != n_clicks + 1 or len(nsd_per_step) != n_clicks + 1:
        raise ValueError(
            f"need n_clicks >= 2 and n_clicks + 1 values per metric, got n_clicks={n_clicks}, "
            f"{len(dice)} Dice and {len(nsd_per_step)} NSD values"
        )
    nsd = tuple(gated_nsd(d, n) for d, n in zip(dice, nsd_per_step, strict=True))
    if not all(math.isfinite(v) for v in dice + nsd):
        raise ValueError(f"scores must be finite, got Dice {dice} and NSD {nsd}")

    return ChallengeScores(
        dsc_auc=clicks_curve_area(dice[-n_clicks:]),
        nsd_auc=clicks_curve_area(nsd[-n_clicks:]),
        dsc_final=dice[-1],
        nsd_final=nsd[-1],
        dice=dice,
        nsd=nsd,
    )


Predict = Callable[[ChallengeBox, Sequence[ChallengeClick], torch.Tensor | None], torch.Tensor]
"""``predict(box, clicks, previous)``: a binary ``(D, H, W)`` mask from the box, the clicks so far
(oldest first) and the previous step's mask (None at the box step)."""


def challenge_steps(
    label: torch.Tensor, predict: Predict, box: ChallengeBox | None = None, n_clicks: int = N_CLICKS
) -> Iterator[tuple[torch.Tensor, tuple[ChallengeClick, ...]]]:
    """The challenge's interactions for one case: each step's prediction and the clicks it was given.

    The box step, then ``n_clicks`` correction steps. Each correction click is placed on the previous
    step's prediction (:func:`challenge_correction_click`) and added to the clicks so far; ``predict``
    gets the box, all clicks and the previous prediction. When a prediction is already perfect no click
    is added, but the step is still predicted, as in the challenge.

    Args:
        label: Binary ``(D, H, W)`` label, not empty.
        predict: The method under test (see :data:`Predict`).
        box: The first interaction; :func:`challenge_box` of the label if None.
        n_clicks: Correction clicks.

    Yields:
        ``(prediction, clicks)`` per step, the box step first.
    """
    box = challenge_box(label) if box is None else box
    clicks: list[ChallengeClick] = []
    previous: torch.Tensor | None = None
    for step in range(n_clicks + 1):
        if step > 0:
            assert previous is not None
            click = challenge_correction_click(label, previous)
            if click is not None:
                clicks.append(click)
        previous = predict(box, tuple(clicks), previous)
        yield previous, tuple(clicks)


def run_protocol(
    label: torch.Tensor,
    spacing: Sequence[float],
    predict: Predict,
    box: ChallengeBox | None = None,
    n_clicks: int = N_CLICKS,
    tolerance_mm: float = TOLERANCE_MM,
) -> tuple[ChallengeScores, list[ChallengeClick]]:
    """One case through the challenge's protocol (:func:`challenge_steps`), scored as the challenge scores.

    Args:
        label: Binary ``(D, H, W)`` label, not empty.
        spacing: Voxel size in mm along the label's axes.
        predict: The method under test (see :data:`Predict`).
        box: The first interaction; :func:`challenge_box` of the label if None.
        n_clicks: Correction clicks.
        tolerance_mm: NSD tolerance.

    Returns:
        The case's scores and the clicks placed.
    """
    steps = list(challenge_steps(label, predict, box, n_clicks))
    dice, nsd = zip(
        *(step_scores(prediction, label, spacing, tolerance_mm) for prediction, _ in steps), strict=True
    )
    return challenge_scores(dice, nsd, n_clicks), list(steps[-1][1])
