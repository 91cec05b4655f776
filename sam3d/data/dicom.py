"""DICOM series folders as scans: finding them, choosing one series, checking it and reading it exactly.

A scan path may name a folder of DICOM files (one series), or one series of a folder that holds several
as ``FOLDER::SeriesInstanceUID``. Only tomographic image slices count (CT, MR, PET...: single-frame
objects with a position, an orientation and a pixel spacing); other objects in the folder (structure
sets, reports, DICOM-SEG, DICOMDIR) are ignored.

The array is ``(i, j, k)``: ``i`` the column (along the first three values of ImageOrientationPatient),
``j`` the row (along the last three) and ``k`` the slice, in increasing position along the slice normal
(row direction x column direction), which is how ITK/SimpleITK's series reader indexes it. The affine
maps ``(i, j, k)`` to RAS+ millimetres: ImagePositionPatient of the first slice is the origin, the
columns of the matrix are the direction cosines times PixelSpacing and the slice step, with x and y
negated (DICOM's patient coordinates are LPS+). Voxels are ``stored * RescaleSlope + RescaleIntercept``
(HU for CT), per slice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from sam3d.data.errors import DatasetError

__all__ = [
    "SERIES_SEPARATOR",
    "DicomSeries",
    "DicomSeriesError",
    "holds_dicom",
    "is_dicom_file",
    "names_dicom_series",
    "read_series",
    "read_series_header",
    "series_stamp",
    "split_series_path",
]

# ``FOLDER::SeriesInstanceUID`` names one series of a folder; UIDs hold only digits and dots.
SERIES_SEPARATOR = "::"
# Part 10 files carry "DICM" after a 128-byte preamble.
_MAGIC_OFFSET, _MAGIC = 128, b"DICM"
# Slices agree on orientation within this (direction cosines), on positions within this (mm) ...
_COSINE_TOLERANCE = 1e-4
_POSITION_TOLERANCE_MM = 0.02
# ... and their gaps within this fraction of the median gap (more is a missing or an extra slice).
_GAP_TOLERANCE = 0.01
_INT16 = (-32768, 32767)
# LPS+ (DICOM) to RAS+ (NIfTI, sam3d): x and y change sign.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


class DicomSeriesError(DatasetError):
    """A DICOM folder or series that cannot be read as one 3D scan.

    Args:
        path: The folder (or ``FOLDER::SeriesInstanceUID``).
        reason: What is wrong and what to do, without the path.
    """

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"DICOM series {path} cannot be used: {reason}")


def split_series_path(path: str | Path) -> tuple[Path, str | None]:
    """``FOLDER::UID`` as ``(FOLDER, UID)``; a plain path as ``(path, None)``."""
    path = Path(path).expanduser()
    folder, separator, uid = path.name.partition(SERIES_SEPARATOR)
    if not separator:
        return path, None
    return path.with_name(folder), uid.strip()


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with path.open("rb") as stream:
            stream.seek(_MAGIC_OFFSET)
            return stream.read(len(_MAGIC)) == _MAGIC
    except OSError:
        return False


def _dicom_entries(folder: Path) -> Iterator[Path]:
    """The DICOM files directly in ``folder`` (not hidden), in directory order."""
    return (p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file() and is_dicom_file(p))


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(_dicom_entries(folder))


def holds_dicom(folder: Path) -> bool:
    """Whether ``folder`` is a folder with at least one DICOM file directly in it."""
    try:
        return folder.is_dir() and any(_dicom_entries(folder))
    except OSError:
        return False


def names_dicom_series(path: str | Path) -> bool:
    """Whether a scan path names a DICOM series: a folder, or ``FOLDER::SeriesInstanceUID``."""
    folder, uid = split_series_path(path)
    return uid is not None or folder.is_dir()


def series_stamp(path: str | Path) -> list[object]:
    """What changes when the series' files change: the folder, the UID asked for, each file's size and time."""
    folder, uid = split_series_path(path)
    stamps: list[object] = [str(folder.resolve()), uid or ""]
    for file in _dicom_files(folder):
        stat = file.stat()
        stamps.append([file.name, stat.st_size, stat.st_mtime_ns])
    return stamps


@dataclass(frozen=True)
class DicomSeries:
    """One checked series: its slices in array order and its grid.

    Attributes:
        path: The scan path it was read from (a folder, or ``FOLDER::UID``).
        uid: SeriesInstanceUID.
        files: The slice files, in increasing position along the slice normal (``k`` order).
        headers: Their datasets without pixel data, in the same order (for DICOM-SEG references).
        shape: ``(i, j, k)``: columns, rows, slices.
        affine: Voxel-to-RAS+ matrix, 4 x 4.
    """

    path: Path
    uid: str
    files: tuple[Path, ...]
    headers: tuple[Dataset, ...]
    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along ``i``, ``j``, ``k``."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


def _is_slice(header: Dataset) -> bool:
    """A single-frame image with the geometry of a tomographic slice."""
    return all(
        key in header for key in ("Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient")
    )


def _is_multiframe(header: Dataset) -> bool:
    return int(header.get("NumberOfFrames", 1) or 1) > 1


def _sop_class(header: Dataset) -> str:
    """The object's kind in words (``RT Plan Storage``), or its UID if pydicom does not know it."""
    uid = header.get("SOPClassUID")
    return str(getattr(uid, "name", uid) or "unknown SOP class")


def _describe(uid: str, headers: Sequence[Dataset], folder: Path) -> str:
    first = headers[0]
    description = str(first.get("SeriesDescription", "") or "").strip() or "no description"
    return (
        f"{folder}{SERIES_SEPARATOR}{uid} ({first.get('Modality', '?')}, {description!r}, "
        f"series number {first.get('SeriesNumber', '?')}, {len(headers)} slice(s))"
    )


def _read_headers(path: Path, folder: Path) -> list[tuple[Path, Dataset]]:
    if not folder.is_dir():
        what = "folder not found" if not folder.exists() else "is a file, not a folder of DICOM files"
        raise DicomSeriesError(path, f"{what}; name a folder holding one DICOM series")
    files = _dicom_files(folder)
    if not files:
        raise DicomSeriesError(
            path,
            "the folder holds no DICOM file (Part 10 files, with 'DICM' at byte 128) and is not a scan: "
            "name a NIfTI, NRRD or MHA file or a folder of DICOM slices",
        )
    headers: list[tuple[Path, Dataset]] = []
    for file in files:
        try:
            headers.append((file, pydicom.dcmread(file, stop_before_pixels=True)))
        except (InvalidDicomError, OSError, ValueError, EOFError) as error:
            raise DicomSeriesError(path, f"{file.name} is an unreadable DICOM file ({error})") from None
    return headers


def _choose_series(path: Path, folder: Path, uid: str | None, headers: list[tuple[Path, Dataset]]) -> str:
    """The UID of the series to read: the one asked for, or the folder's only image series."""
    series: dict[str, list[Dataset]] = {}
    for _, header in headers:
        if _is_slice(header):
            series.setdefault(str(header.get("SeriesInstanceUID", "")), []).append(header)
    listing = "\n".join(f"      {_describe(u, h, folder)}" for u, h in sorted(series.items()))
    if uid is not None:
        if uid not in series:
            found = f"its image series are:\n{listing}" if series else "it holds no image series"
            raise DicomSeriesError(path, f"the folder holds no image series with UID {uid!r}; {found}")
        return uid
    if not series:
        multiframe = sum(_is_multiframe(h) for _, h in headers)
        kinds = Counter(_sop_class(h) for _, h in headers)
        listed = ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
        note = (
            "; multi-frame (enhanced) images are not read: export the series as single-frame slices"
            if multiframe
            else ""
        )
        raise DicomSeriesError(
            path, f"the folder holds no image slices, only other DICOM objects ({listed}){note}"
        )
    if len(series) > 1:
        raise DicomSeriesError(
            path,
            f"the folder holds {len(series)} image series; name one as FOLDER{SERIES_SEPARATOR}"
            f"SeriesInstanceUID, one of:\n{listing}",
        )
    return next(iter(series))


def _counts(values: Sequence[object]) -> str:
    return ", ".join(f"{value}: {count} slice(s)" for value, count in Counter(values).most_common())


def _geometry(
    path: Path, slices: list[tuple[Path, Dataset]]
) -> tuple[list[tuple[Path, Dataset]], np.ndarray]:
    """The slices sorted along their normal and the series' RAS+ affine, after checking they form a grid."""
    if len(slices) < 2:
        raise DicomSeriesError(
            path,
            f"the series has a single 2D slice ({slices[0][0].name}); sam3d needs a 3D series of at "
            "least two slices",
        )
    sizes = [(int(h.Rows), int(h.Columns)) for _, h in slices]
    if len(set(sizes)) > 1:
        raise DicomSeriesError(
            path, f"the slices differ in size (rows, columns): {_counts(sizes)}; keep one series per folder"
        )
    if any(int(h.get("SamplesPerPixel", 1) or 1) != 1 for _, h in slices):
        raise DicomSeriesError(path, "the slices are colour images; sam3d reads greyscale (CT, MR) series")
    orientations = np.array([[float(v) for v in h.ImageOrientationPatient] for _, h in slices])
    if np.abs(orientations - orientations[0]).max() > _COSINE_TOLERANCE:
        rounded = [tuple(round(float(v), 3) for v in row) for row in orientations]
        raise DicomSeriesError(
            path,
            f"the slices have different orientations (ImageOrientationPatient {_counts(rounded)}); "
            "keep one series, e.g. without its localizer, per folder",
        )
    spacings = [tuple(float(v) for v in h.get("PixelSpacing", ()) or ()) for _, h in slices]
    if any(len(s) != 2 for s in spacings) or len(set(spacings)) > 1:
        raise DicomSeriesError(
            path, f"the slices lack PixelSpacing or differ in it: {_counts(spacings)}; fix the series"
        )
    row_direction, column_direction = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row_direction, column_direction)
    positions = np.array([[float(v) for v in h.ImagePositionPatient] for _, h in slices])
    heights = positions @ normal
    order = np.argsort(heights, kind="stable")
    slices, positions, heights = [slices[i] for i in order], positions[order], heights[order]
    gaps = np.diff(heights)
    duplicate = int(np.argmin(gaps))
    if gaps[duplicate] < _POSITION_TOLERANCE_MM:
        first, second = slices[duplicate][0].name, slices[duplicate + 1][0].name
        raise DicomSeriesError(
            path,
            f"two slices lie at the same position ({first} and {second}, {heights[duplicate]:.4g} mm along "
            "the slice normal): a duplicate slice or two series in one folder; remove the duplicate",
        )
    median = float(np.median(gaps))
    uneven = np.abs(gaps - median) > max(_POSITION_TOLERANCE_MM, _GAP_TOLERANCE * median)
    if uneven.any():
        worst = int(np.argmax(np.abs(gaps - median)))
        raise DicomSeriesError(
            path,
            f"the slices are not evenly spaced: {int(uneven.sum())} gap(s) differ from the usual "
            f"{median:.4g} mm, e.g. {gaps[worst]:.4g} mm between {slices[worst][0].name} and "
            f"{slices[worst + 1][0].name}; a slice is missing or the series has several spacings",
        )
    step = normal * (heights[-1] - heights[0]) / (len(slices) - 1)
    expected = positions[0] + np.outer(np.arange(len(slices)), step)
    if np.abs(positions - expected).max() > max(_POSITION_TOLERANCE_MM, _GAP_TOLERANCE * median):
        raise DicomSeriesError(
            path,
            "the slices do not stack along their normal (a tilted gantry, or a sheared series); "
            "resample it to an orthogonal grid first (e.g. with dcm2niix, which corrects gantry tilt)",
        )
    row_spacing, column_spacing = spacings[0]
    lps = np.eye(4)
    lps[:3, 0] = row_direction * column_spacing  # i: along a row, one column further
    lps[:3, 1] = column_direction * row_spacing  # j: along a column, one row further
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    affine = np.eye(4)
    affine[:3] = _LPS_TO_RAS @ lps[:3]
    return slices, affine


def read_series_header(path: str | Path) -> DicomSeries:
    """Find, choose and check a DICOM series without reading its pixels.

    Args:
        path: A folder of DICOM files, or ``FOLDER::SeriesInstanceUID``.

    Returns:
        The series: its slices in array order and its grid.

    Raises:
        DicomSeriesError: If the folder is missing or holds no DICOM file, holds several series and
            none is named (each is listed), holds no image slices, or the series is a single slice, mixes
            sizes or orientations, has duplicate, missing or unevenly spaced slices, or is sheared.
    """
    path = Path(path).expanduser()
    folder, uid = split_series_path(path)
    headers = _read_headers(path, folder)
    chosen = _choose_series(path, folder, uid, headers)
    slices = [(f, h) for f, h in headers if _is_slice(h) and str(h.get("SeriesInstanceUID", "")) == chosen]
    if any(_is_multiframe(h) for _, h in slices):
        raise DicomSeriesError(
            path, "the series holds multi-frame images; export it as single-frame slices (one file per slice)"
        )
    slices, affine = _geometry(path, slices)
    rows, columns = int(slices[0][1].Rows), int(slices[0][1].Columns)
    return DicomSeries(
        path=path,
        uid=chosen,
        files=tuple(f for f, _ in slices),
        headers=tuple(h for _, h in slices),
        shape=(columns, rows, len(slices)),
        affine=affine,
    )


def _rescaled(path: Path, file: Path) -> np.ndarray:
    """One slice's values, ``(rows, columns)``: stored values times RescaleSlope plus RescaleIntercept."""
    try:
        dataset = pydicom.dcmread(file)
    except (InvalidDicomError, OSError, ValueError, EOFError) as error:
        raise DicomSeriesError(path, f"{file.name} is an unreadable DICOM file ({error})") from None
    try:
        stored = dataset.pixel_array
    except Exception as error:  # noqa: BLE001 (pydicom's pixel handlers raise many types)
        meta = getattr(dataset, "file_meta", None)
        syntax = meta.get("TransferSyntaxUID") if meta is not None else None
        name = f" (transfer syntax {syntax.name})" if syntax is not None else ""
        raise DicomSeriesError(
            path,
            f"the pixels of {file.name}{name} cannot be decoded ({error}); install the decoder pydicom "
            "names (e.g. pylibjpeg) or decompress the series (e.g. gdcmconv --raw)",
        ) from None
    slope = float(dataset.get("RescaleSlope", 1) or 1)
    intercept = float(dataset.get("RescaleIntercept", 0) or 0)
    return stored.astype(np.float64) * slope + intercept


def read_series(path: str | Path) -> tuple[DicomSeries, torch.Tensor]:
    """Read a DICOM series: its checked header and its voxels in the file's units (HU for CT).

    Args:
        path: A folder of DICOM files, or ``FOLDER::SeriesInstanceUID``.

    Returns:
        The series and a ``(1, i, j, k)`` tensor on its grid (:attr:`DicomSeries.affine`): int16 when
        every rescaled value is an integer in its range, else float32.

    Raises:
        DicomSeriesError: As :func:`read_series_header`, or if a slice's pixels cannot be decoded.
    """
    series = read_series_header(path)
    values = np.stack([_rescaled(series.path, file).T for file in series.files], axis=-1)
    if np.array_equal(values, np.round(values)) and _INT16[0] <= values.min() and values.max() <= _INT16[1]:
        voxels = torch.from_numpy(values.astype(np.int16))
    else:
        voxels = torch.from_numpy(values.astype(np.float32))
    return series, voxels[None]
