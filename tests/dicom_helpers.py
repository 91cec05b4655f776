"""DICOM series written from arrays with pydicom (CT Image Storage, one file per slice), for the DICOM tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def rotation(degrees: float, axis: int) -> np.ndarray:
    """A 4 x 4 rotation about one world axis."""
    angle = np.radians(degrees)
    a, b = [n for n in range(3) if n != axis]
    matrix = np.eye(4)
    matrix[a, a] = matrix[b, b] = np.cos(angle)
    matrix[a, b], matrix[b, a] = -np.sin(angle), np.sin(angle)
    return matrix


def write_dicom_series(
    folder: Path,
    hu: np.ndarray,
    affine: np.ndarray,
    *,
    slope: float = 0.5,
    intercept: float = -1024.0,
    series_uid: str | None = None,
    study_uid: str | None = None,
    description: str = "phantom",
    series_number: int = 2,
    prefix: str = "IM",
) -> list[Path]:
    """Write ``hu`` (array ``(i, j, k)`` on the RAS+ ``affine``) as a CT series, one slice ``k`` per file.

    Stored values are ``(hu - intercept) / slope`` (int16), so the reader must apply the rescale. The
    voxel axes ``i``, ``j`` must be orthogonal; ``k`` may run against the slice normal (the reader then
    reverses it). Files are named ``<prefix><number>.dcm`` in a shuffled order, so that the reader cannot
    rely on names.

    Returns:
        The files, in ``k`` order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    lps = _RAS_TO_LPS @ affine[:3]
    column_spacing, row_spacing = np.linalg.norm(lps[:, 0]), np.linalg.norm(lps[:, 1])
    orientation = [*(lps[:, 0] / column_spacing), *(lps[:, 1] / row_spacing)]
    stored = np.round((hu.astype(np.float64) - intercept) / slope)
    assert np.abs(stored).max() < 2**15, "values do not fit int16 with this slope and intercept"
    study_uid, series_uid = study_uid or generate_uid(), series_uid or generate_uid()
    frame_of_reference = generate_uid()
    names = np.random.default_rng(len(hu.flat)).permutation(hu.shape[2])
    files = []
    for k in range(hu.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Sam3d", "P001", "", "O"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study_uid, "20260101", "120000", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, series_number, description
        ds.Modality, ds.Manufacturer = "CT", "sam3d tests"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(v) for v in lps @ [0, 0, k, 1]]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [float(row_spacing), float(column_spacing)]
        ds.SliceThickness = float(np.linalg.norm(lps[:, 2]))
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "HU"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T.astype("<i2")).tobytes()
        path = folder / f"{prefix}{names[k]:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def phantom_series(
    nifti: Path, folder: Path, oblique: np.ndarray | None = None, **options: object
) -> np.ndarray:
    """Write the NIfTI scan ``nifti`` as a DICOM series in ``folder``; its affine, turned by ``oblique`` if given.

    Returns:
        The RAS+ affine the series was written with.
    """
    import nibabel as nib

    image = nib.load(nifti)
    affine = image.affine if oblique is None else oblique @ image.affine
    write_dicom_series(folder, np.asarray(image.dataobj), affine, **options)  # type: ignore[arg-type]
    return affine
