"""New scans and their clicks, boxes and scribbles for ``sam3d predict`` (no labels), loaded one at a time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset

from sam3d.data.catalog import is_scan
from sam3d.data.dicom import holds_dicom, split_series_path
from sam3d.data.errors import DatasetError, Problem
from sam3d.data.files import case_id
from sam3d.data.preprocessing import Preprocessing
from sam3d.data.scans.click_files import Entry, ObjectSteps, match_clicks, objects_to_network, read_clicks
from sam3d.data.scans.evaluation_cases import SkippedCase
from sam3d.data.scans.loading import Scan, load_scan
from sam3d.interaction import Interaction


class PredictionCase:
    """A preprocessed scan and each of its objects' steps to replay, their interactions on the network grid.

    Not a dataclass: Lightning moves a step's output (which holds its case) to the CPU field by field, and
    cannot rebuild the frozen :class:`~sam3d.interaction.Interaction` inside; the case stays on the CPU anyway.

    Args:
        scan: The preprocessed scan.
        objects: Each object's id, name and steps (one tuple of interactions per step, in order; the plain
            clicks of a clicks file are one step), by id.
        clicks_file: The file the steps come from, for messages.
    """

    def __init__(self, scan: Scan, objects: tuple[ObjectSteps, ...], clicks_file: str = "") -> None:
        self.scan, self.objects, self.clicks_file = scan, objects, clicks_file

    def __repr__(self) -> str:
        return (
            f"PredictionCase({self.case_id!r}, {len(self.objects)} object(s), {len(self.steps)} step(s), "
            f"from {self.clicks_file!r})"
        )

    @property
    def case_id(self) -> str:
        """The scan's file name without extension."""
        return self.scan.case_id

    @property
    def steps(self) -> tuple[tuple[Interaction, ...], ...]:
        """Every object's steps, object after object."""
        return tuple(step for each in self.objects for step in each.steps)

    @property
    def interactions(self) -> tuple[Interaction, ...]:
        """Every interaction of every step, object after object."""
        return tuple(interaction for step in self.steps for interaction in step)


def scan_files(inputs: Sequence[str | Path]) -> tuple[list[Path], list[Problem]]:
    """The scans named by ``inputs``: files, DICOM series and folders of both.

    An input is a scan file, a DICOM series (a folder of DICOM files, or ``FOLDER::SeriesInstanceUID``;
    see :mod:`sam3d.data.dicom`), or a folder searched for NIfTI/NRRD/MHA files and DICOM series
    sub-folders (one level). A series is checked when it is read, not here.
    """
    files: list[Path] = []
    problems: list[Problem] = []
    for item in inputs:
        path = Path(item).expanduser()
        folder, uid = split_series_path(path)
        if (uid is not None and folder.is_dir()) or holds_dicom(path):
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if is_scan(p))
            if not found:
                problems.append(
                    Problem("-", "folder holds no NIfTI, NRRD or MHA scan and no DICOM series", path)
                )
            files += found
        elif path.is_file():
            files.append(path)
        else:
            problems.append(Problem(case_id(path), "scan file does not exist", path))
    return files, problems


class PredictionCases(Dataset):
    """Scans with their clicks, boxes and scribbles; a scan that cannot be used becomes a :class:`SkippedCase`.

    Args:
        scans: Scan files or folders of scans.
        clicks_file: CSV or JSON clicks file (see :mod:`sam3d.data.scans.click_files`).
        preprocessing: The network's preprocessing.

    Attributes:
        problems: Inputs that name no usable scan (missing files, clicks for unknown scans), to report.
        missing_scans: Those of ``problems`` that are scan inputs (missing files, folders without scans).
    """

    def __init__(
        self,
        scans: Sequence[str | Path],
        clicks_file: str | Path,
        preprocessing: Preprocessing,
    ) -> None:
        files, self.missing_scans = scan_files(scans)
        matched, unmatched = match_clicks(read_clicks(clicks_file), files, clicks_file)
        self.problems = [*self.missing_scans, *unmatched]
        self.items: list[tuple[Path, list[Entry]]] = [(path, matched.get(path, [])) for path in files]
        self.preprocessing, self.clicks_file = preprocessing, str(clicks_file)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> PredictionCase | SkippedCase:
        path, entries = self.items[index]
        if not entries:
            return SkippedCase(case_id(path), f"the clicks file has no click for {path}")
        try:
            scan = load_scan(path, self.preprocessing)
            objects = objects_to_network(entries, scan)
        except DatasetError as error:
            return SkippedCase(case_id(path), str(error))
        return PredictionCase(scan, objects, self.clicks_file)
