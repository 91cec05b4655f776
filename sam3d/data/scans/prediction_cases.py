"""New scans and their clicks for ``sam3d predict`` (no labels), loaded one at a time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from sam3d.data.errors import DatasetError, Problem
from sam3d.data.files import SCAN_SUFFIXES, case_id
from sam3d.data.preprocessing import Preprocessing
from sam3d.data.scans.click_files import Click, clicks_to_network, match_clicks, read_clicks
from sam3d.data.scans.evaluation_cases import SkippedCase
from sam3d.data.scans.loading import Scan, load_scan


@dataclass
class PredictionCase:
    """A preprocessed scan and its clicks on the network grid (``(N, 3)`` points, ``(N,)`` labels)."""

    scan: Scan
    points: torch.Tensor
    labels: torch.Tensor

    @property
    def case_id(self) -> str:
        """The scan's file name without extension."""
        return self.scan.case_id


def scan_files(inputs: Sequence[str | Path]) -> tuple[list[Path], list[Problem]]:
    """The scan files named by ``inputs`` (files, or folders searched for NIfTI/NRRD/MHA files)."""
    files: list[Path] = []
    problems: list[Problem] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.name.lower().endswith(SCAN_SUFFIXES))
            if not found:
                problems.append(Problem("-", "folder holds no NIfTI, NRRD or MHA scan", path))
            files += found
        elif path.is_file():
            files.append(path)
        else:
            problems.append(Problem(case_id(path), "scan file does not exist", path))
    return files, problems


class PredictionCases(Dataset):
    """Scans with their clicks; a scan that cannot be used becomes a :class:`SkippedCase`.

    Args:
        scans: Scan files or folders of scans.
        clicks_file: CSV or JSON clicks file (see :mod:`sam3d.data.scans.click_files`).
        preprocessing: The network's preprocessing.

    Attributes:
        problems: Inputs that name no usable scan (missing files, clicks for unknown scans), to report.
    """

    def __init__(
        self,
        scans: Sequence[str | Path],
        clicks_file: str | Path,
        preprocessing: Preprocessing,
    ) -> None:
        files, self.problems = scan_files(scans)
        matched, unmatched = match_clicks(read_clicks(clicks_file), files, clicks_file)
        self.problems += unmatched
        self.items: list[tuple[Path, list[Click]]] = [(path, matched.get(path, [])) for path in files]
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> PredictionCase | SkippedCase:
        path, clicks = self.items[index]
        if not clicks:
            return SkippedCase(case_id(path), f"the clicks file has no click for {path}")
        try:
            scan = load_scan(path, self.preprocessing)
            points, labels = clicks_to_network(clicks, scan)
        except DatasetError as error:
            return SkippedCase(case_id(path), str(error))
        return PredictionCase(scan, points, labels)
