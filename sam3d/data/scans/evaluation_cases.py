"""Whole test volumes for evaluation, each with its label on the preprocessed grid and on its own grid."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.data import Dataset

from sam3d.data.catalog import Case
from sam3d.data.errors import DatasetError
from sam3d.data.preprocessing import Preprocessing
from sam3d.data.scans.loading import label_on_source_grid, load_label, load_scan
from sam3d.data.scans.writing import to_source_grid


@dataclass
class EvaluationCase:
    """One test case in network layout, with what is needed to score it in the label's own grid.

    Attributes:
        case_id: Name of the case.
        image: Preprocessed volume ``(D, H, W)``.
        label: Binary target on the preprocessed grid ``(D, H, W)`` (clicks are simulated from it).
        spacing: Voxel size of the preprocessed grid ``(D, H, W)`` in mm.
        to_label_grid: Maps a preprocessed-grid probability map onto the label file's own grid.
        label_on_grid: Binary target on the label file's own grid.
        label_spacing: Voxel size of the label file's grid in mm, in that grid's axis order.
    """

    case_id: str
    image: torch.Tensor
    label: torch.Tensor
    spacing: tuple[float, float, float]
    to_label_grid: Callable[[torch.Tensor], torch.Tensor]
    label_on_grid: torch.Tensor
    label_spacing: tuple[float, float, float]


@dataclass  # not frozen: Lightning rebuilds dataclasses in step outputs
class SkippedCase:
    """A test case that cannot be scored, and why (the other cases are still evaluated)."""

    case_id: str
    reason: str


class EvaluationCases(Dataset):
    """Loads test cases one at a time; a case with a bad scan or label becomes a :class:`SkippedCase`.

    Args:
        cases: The cases to evaluate.
        preprocessing: The network's preprocessing.
    """

    def __init__(self, cases: Sequence[Case], preprocessing: Preprocessing) -> None:
        self.cases, self.preprocessing = list(cases), preprocessing

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> EvaluationCase | SkippedCase:
        case, targets = self.cases[index], self.preprocessing.target_labels
        try:
            scan = load_scan(case.image, self.preprocessing)
            if not case.label.is_file():
                return SkippedCase(case.case_id, f"no label file {case.label}: metrics skipped")
            return EvaluationCase(
                case_id=case.case_id,
                image=scan.image,
                label=load_label(case.label, scan, targets).bool(),
                spacing=scan.spacing,
                to_label_grid=partial(to_source_grid, scan, interpolation="linear"),
                label_on_grid=label_on_source_grid(case.label, scan, targets),
                label_spacing=scan.source_spacing,
            )
        except DatasetError as error:
            return SkippedCase(case.case_id, str(error))
