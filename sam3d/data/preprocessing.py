"""The preprocessing that travels with a trained network, and the one path that applies it to files.

:class:`Preprocessing` is resolved once per run by the data module (from the config, the dataset's
preset or statistics of the training fold), saved in every checkpoint and in the run's config, and
handed whole to everything that turns scans into network inputs. Training, testing and prediction
all read a file with :func:`read_volume` and bring it onto the network's grid with :func:`to_grid`:
the cache stores that result for training, :func:`sam3d.data.scans.load_scan` clips and z-scores it
at once (:class:`Normalize`), so the three see the same voxels.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import torch
import torchio as tio

from sam3d.data.checks import check_file
from sam3d.data.dicom import DicomSeriesError, names_dicom_series, read_series
from sam3d.data.errors import DatasetError, Problem
from sam3d.data.files import reader_for

__all__ = [
    "ORIENTATION",
    "BinarizeLabel",
    "LabelInterpolation",
    "Normalize",
    "Preprocessing",
    "RequestedPreprocessing",
    "read_volume",
    "to_grid",
]

LabelInterpolation = Literal["nearest", "linear"]

# Volumes are turned to TorchIO's canonical orientation (``tio.ToCanonical``): RAS+.
ORIENTATION = "RAS"
_INT16 = (-32768, 32767)


@dataclass(frozen=True)
class Preprocessing:
    """How scans become network inputs; a network is only valid on inputs made the way it was trained.

    Attributes:
        spacing: Voxel size in mm after resampling, network order ``(D, H, W)``.
        window: ``(low, high)`` intensity clipping window (HU for CT).
        mean: Z-scoring mean after clipping.
        std: Z-scoring standard deviation after clipping.
        target_labels: Label values forming the target, sorted.
        orientation: Axis codes volumes are reoriented to before resampling.
    """

    spacing: tuple[float, float, float]
    window: tuple[float, float]
    mean: float
    std: float
    target_labels: tuple[int, ...]
    orientation: str = ORIENTATION

    def __post_init__(self) -> None:
        spacing = tuple(float(s) for s in self.spacing)
        window = tuple(float(w) for w in self.window)
        labels = tuple(sorted({int(label) for label in self.target_labels}))
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "mean", float(self.mean))
        object.__setattr__(self, "std", float(self.std))
        object.__setattr__(self, "target_labels", labels)
        problems = []
        if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
            problems.append(f"spacing must be three positive numbers (mm), got {self.spacing!r}")
        if len(window) != 2 or not window[0] < window[1]:
            problems.append(f"window must be (low, high) with low < high, got {self.window!r}")
        if not self.std > 0 or not math.isfinite(self.mean):
            problems.append(f"need a finite mean and std > 0, got {self.mean} and {self.std}")
        if not labels:
            problems.append("target_labels must name at least one label value")
        if self.orientation != ORIENTATION:
            problems.append(f"orientation {self.orientation!r} is not sam3d's {ORIENTATION!r}")
        if problems:
            raise DatasetError("invalid preprocessing: " + "; ".join(problems))

    def as_dict(self) -> dict[str, Any]:
        """Plain lists and numbers (loadable with ``torch.load(weights_only=True)``, writable as YAML)."""
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Preprocessing:
        """The inverse of :meth:`as_dict`."""
        return cls(**values)


@dataclass(frozen=True)
class RequestedPreprocessing:
    """The preprocessing values a config sets; None leaves a value to a checkpoint, a preset or statistics.

    Attributes:
        spacing: ``data.target_spacing``, ``(D, H, W)`` mm.
        window: ``data.intensity_window``.
        mean: ``data.mean``.
        std: ``data.std``.
        target_labels: ``data.target_label``, sorted.
    """

    spacing: tuple[float, float, float] | None = None
    window: tuple[float, float] | None = None
    mean: float | None = None
    std: float | None = None
    target_labels: tuple[int, ...] | None = None

    # The data module's argument setting each Preprocessing field.
    ARGUMENTS: ClassVar[dict[str, str]] = {
        "spacing": "target_spacing",
        "window": "intensity_window",
        "mean": "mean",
        "std": "std",
        "target_labels": "target_label",
    }

    @classmethod
    def from_arguments(
        cls,
        target_spacing: float | Sequence[float] | None,
        intensity_window: Sequence[float] | None,
        mean: float | None,
        std: float | None,
        target_label: int | Sequence[int] | None,
    ) -> RequestedPreprocessing:
        """Parse the data module's arguments (one spacing for all axes, one label or several)."""
        if isinstance(target_spacing, int | float):
            target_spacing = (target_spacing,) * 3
        if target_spacing is not None and (len(target_spacing) != 3 or min(target_spacing) <= 0):
            raise DatasetError(
                f"data.target_spacing must be one or three positive numbers, got {target_spacing!r}"
            )
        labels = [target_label] if isinstance(target_label, int) else target_label
        return cls(
            spacing=_floats(target_spacing) if target_spacing is not None else None,
            window=_floats(intensity_window) if intensity_window else None,
            mean=mean,
            std=std,
            target_labels=tuple(sorted(set(labels))) if labels else None,
        )

    def contradictions(self, stored: Preprocessing) -> list[Problem]:
        """The set values that differ from ``stored`` (beyond YAML rounding), each naming both values."""
        return [
            Problem(
                f"data.{argument}", f"the config says {mine}, the checkpoint says {getattr(stored, field)}"
            )
            for field, argument in self.ARGUMENTS.items()
            if (mine := getattr(self, field)) is not None and not _same(mine, getattr(stored, field))
        ]

    @classmethod
    def arguments(cls, preprocessing: Preprocessing) -> dict[str, Any]:
        """``preprocessing`` as the data module's arguments, e.g. for a saved config."""
        values = preprocessing.as_dict()
        return {argument: values[field] for field, argument in cls.ARGUMENTS.items()}


def _floats(values: Sequence[float]) -> Any:
    return tuple(float(value) for value in values)


def _same(mine: Any, stored: Any) -> bool:
    if isinstance(stored, tuple):
        return len(mine) == len(stored) and all(map(_same, mine, stored))
    return math.isclose(float(mine), float(stored), rel_tol=1e-6, abs_tol=1e-9)


def _unusable(path: Path, kind: str, problems: Sequence[Problem]) -> DatasetError:
    return DatasetError(f"{kind} {path} cannot be used:", problems)


def read_volume(path: str | Path, kind: str, case: str) -> tio.ScalarImage | tio.LabelMap:
    """Read a scan or label map whose every problem becomes an error naming the file.

    Checks the header (missing, unreadable, not single-channel 3D, absurd spacing), loads the voxels
    (a truncated file is reported, not raised), and refuses NaN/inf intensities and non-integer labels.
    A DICOM series is read by :func:`sam3d.data.dicom.read_series` (scans only, not labels).

    Args:
        path: NIfTI, NRRD or MHA file, or a DICOM series (a folder, or ``FOLDER::SeriesInstanceUID``).
        kind: ``"label"`` for a label map, else what to call the image in messages (``"image"``, ``"scan"``).
        case: Case id for the messages.

    Returns:
        The loaded TorchIO image (a ``LabelMap`` for ``kind="label"``).

    Raises:
        DatasetError: With one :class:`Problem` naming the file.
    """
    path = Path(path).expanduser()
    _, problems = check_file(case, path, kind)
    if problems:
        raise _unusable(path, kind, problems)
    if names_dicom_series(path):
        try:
            series, voxels = read_series(path)
        except DicomSeriesError as error:
            raise _unusable(path, kind, [Problem(case, error.reason, path)]) from None
        return tio.ScalarImage(tensor=voxels, affine=series.affine)
    image = (tio.LabelMap if kind == "label" else tio.ScalarImage)(path, **reader_for(path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
    except Exception as error:  # noqa: BLE001 (truncated files raise from gzip, NiBabel or SimpleITK)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise _unusable(
            path, kind, [Problem(case, f"{kind} voxels are unreadable ({reason})", path)]
        ) from None
    data = image.data
    if kind == "label":
        if data.is_floating_point() and not torch.equal(data, data.round()):
            message = "label has non-integer values; is it an image, or a probability map?"
            raise _unusable(path, kind, [Problem(case, message, path)])
    elif data.is_floating_point() and (bad := int((~torch.isfinite(data)).sum())):
        message = f"{kind} has {bad} NaN/inf voxels; replace them (e.g. with -1024 HU) or drop the case"
        raise _unusable(path, kind, [Problem(case, message, path)])
    return image


def to_grid(image: tio.Image, spacing: Sequence[float], labels: LabelInterpolation = "nearest") -> tio.Image:
    """Reorient to RAS+ and resample to ``spacing``: the grid the network sees.

    Label maps are returned as int16, resampled nearest-neighbour or, with ``labels="linear"``, as the
    authors resample their training labels: each label value's 0/1 mask interpolated linearly and kept
    where it exceeds 0.5 (at most one value can). Intensities of integer-valued scans are rounded back to
    integers (int16, when they fit) after the linear resampling, so that the cache, which stores them as
    such, and a scan loaded for prediction hold the same values; other scans are float32.

    Args:
        image: A loaded image from :func:`read_volume`.
        spacing: Target voxel size in mm, network order ``(D, H, W)``.
        labels: How a label map is resampled: ``nearest`` or ``linear`` (then thresholded at 0.5).

    Returns:
        A new image on the canonical, resampled grid.
    """
    if labels not in get_args(LabelInterpolation):
        raise DatasetError(f"label interpolation must be 'nearest' or 'linear', got {labels!r}")
    if isinstance(image, tio.LabelMap) and labels == "linear":
        return _label_to_grid_linearly(image, spacing)
    data = image.data
    integral = not data.is_floating_point() or torch.equal(data, data.round())
    resampled = _resampled(image, spacing)
    data = resampled.data
    integers = isinstance(resampled, tio.LabelMap) or (
        integral and _INT16[0] <= float(data.min()) and float(data.max()) <= _INT16[1]
    )
    resampled.set_data(data.round().to(torch.int16) if integers else data.float())
    return resampled


def _resampled(image: tio.Image, spacing: Sequence[float]) -> tio.Image:
    # TorchIO draws a random number per transform call even for deterministic ones: keep the global
    # stream untouched, so that preprocessing never changes what a run draws afterwards.
    with torch.random.fork_rng(devices=[]):
        d, h, w = (float(s) for s in spacing)
        return tio.Compose([tio.ToCanonical(), tio.Resample((w, h, d))])(image)


def _label_to_grid_linearly(label: tio.LabelMap, spacing: Sequence[float]) -> tio.Image:
    """Each non-zero value's mask resampled linearly (one at a time, to bound memory), kept above 0.5."""
    grid: torch.Tensor | None = None
    affine = None
    for value in (int(v) for v in torch.unique(label.data) if v != 0):
        mask = _resampled(tio.ScalarImage(tensor=(label.data == value).float(), affine=label.affine), spacing)
        grid = torch.zeros_like(mask.data, dtype=torch.int16) if grid is None else grid
        grid[mask.data > 0.5], affine = value, mask.affine
    if grid is None:  # background only: all zeros, on the nearest-neighbour grid
        return to_grid(label, spacing)
    return tio.LabelMap(tensor=grid, affine=affine)


class BinarizeLabel(tio.Transform):
    """Label maps become 1 where they hold one of ``target_labels`` and 0 elsewhere (uint8).

    Args:
        target_labels: Label values forming the target.
        **kwargs: Passed to :class:`torchio.Transform`.
    """

    def __init__(self, target_labels: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target_labels = [int(value) for value in target_labels]
        self.args_names = ["target_labels"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        """Binarise every label map of the subject."""
        targets = torch.tensor(self.target_labels)
        for image in subject.get_images(intensity_only=False, include=self.include, exclude=self.exclude):
            if isinstance(image, tio.LabelMap):
                image.set_data(torch.isin(image.data, targets.to(image.data.dtype)).to(torch.uint8))
        return subject


class Normalize(tio.IntensityTransform):
    """Clip intensities to a window, then z-score with fixed dataset statistics (float32 output).

    Args:
        window: ``(low, high)`` clipping bounds, e.g. in HU.
        dataset_mean: Mean subtracted after clipping (``data.mean``).
        dataset_std: Standard deviation divided by after clipping (``data.std``).
        **kwargs: Passed to :class:`torchio.Transform`.
    """

    # TorchIO reproduces a transform from the attributes named as its arguments; `mean` would hide
    # torchio.Transform.mean, a masking method.
    def __init__(
        self, window: tuple[float, float], dataset_mean: float, dataset_std: float, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.window = (float(window[0]), float(window[1]))
        self.dataset_mean, self.dataset_std = float(dataset_mean), float(dataset_std)
        self.args_names = ["window", "dataset_mean", "dataset_std"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        """Normalise every intensity image of the subject."""
        for image in self.get_images(subject):
            data = image.data.float().clamp(*self.window)
            image.set_data(data.sub_(self.dataset_mean).div_(self.dataset_std))
        return subject
