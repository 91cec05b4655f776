"""Label maps written as DICOM-SEG objects that reference the DICOM series they were drawn on (highdicom).

:func:`write_dicom_seg` takes a label map on the series' own grid (the array order of
:mod:`sam3d.data.dicom`, as ``sam3d predict`` writes its NIfTI masks) and one name per label value:
each label value becomes a segment (BINARY), its frames reference the source slices, and the object
joins the source's patient, study and frame of reference in a new series.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

from sam3d import __version__
from sam3d.data.dicom import DicomSeries, names_dicom_series, read_series_header
from sam3d.errors import Sam3dError

__all__ = ["DICOM_SEG_SUFFIX", "write_dicom_seg"]

DICOM_SEG_SUFFIX = "_seg.dcm"
# The series number of the objects written (DICOM asks for one; nothing depends on it).
_SERIES_NUMBER = 1000


def _segment(number: int, name: str) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="sam3d", version=__version__, family=codes.cid7162.ArtificialIntelligence
        ),
    )


def write_dicom_seg(
    label_map: np.ndarray,
    segment_names: Sequence[str] | Mapping[int, str],
    series: str | Path | DicomSeries,
    output_path: str | Path,
) -> Path:
    """Write a label map on a DICOM series' grid as a BINARY DICOM-SEG object referencing that series.

    Args:
        label_map: Integer array ``(i, j, k)`` on the series' grid (its shape is
            :attr:`DicomSeries.shape`): 0 background, else a label value with a name.
        segment_names: The name of each label value: a sequence names the values ``1..K`` in order, a
            mapping any positive values (e.g. object ids ``{1: "liver", 3: "tumour"}``). The segments
            are numbered ``1..K`` in the order of their label values (DICOM-SEG allows no gaps); one may
            be empty.
        series: The source series: a :class:`DicomSeries`, or its path (folder or ``FOLDER::UID``).
        output_path: The file to write (folders are created), e.g. ``<case>_seg.dcm``.

    Returns:
        The written path.

    Raises:
        Sam3dError: If ``series`` is not a DICOM series, or the label map does not fit it or its names.
    """
    if not isinstance(series, DicomSeries):
        if not names_dicom_series(series):
            raise Sam3dError(
                f"DICOM-SEG references a DICOM series, but {series} is a file: write NIfTI masks for it "
                "(leave out --prediction.dicom_seg), or give the scan as its DICOM series folder"
            )
        series = read_series_header(series)
    labels = np.asarray(label_map)
    if labels.shape != series.shape:
        raise Sam3dError(
            f"label map shape {labels.shape} differs from the shape {series.shape} of {series.path}"
        )
    names = (
        {int(value): str(name) for value, name in segment_names.items()}
        if isinstance(segment_names, Mapping)
        else {value: str(name) for value, name in enumerate(segment_names, start=1)}
    )
    if not names or min(names) < 1:
        raise Sam3dError(f"DICOM-SEG needs a name for each label value from 1 up, got {segment_names!r}")
    if labels.dtype.kind not in "biu" or (labels.size and not 0 <= labels.min() <= labels.max() < 2**16):
        raise Sam3dError(f"a label map holds integers 0 to 65535, got {labels.dtype} values")
    present = np.flatnonzero(np.bincount(labels.ravel()))
    unnamed = sorted(set(present.tolist()) - {0} - set(names))
    if unnamed:
        raise Sam3dError(
            f"label map values {unnamed} have no segment name (names are given for {sorted(names)})"
        )
    segment_of = np.zeros(max(*names, int(present.max(initial=0))) + 1, np.uint16)
    for number, value in enumerate(sorted(names), start=1):
        segment_of[value] = number
    # Frames follow the source slices: frame k is slice k, rows j and columns i.
    frames = np.ascontiguousarray(
        segment_of[labels].transpose(2, 1, 0).astype(np.uint8 if len(names) < 256 else np.uint16)
    )
    segmentation = hd.seg.Segmentation(
        source_images=list(series.headers),
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            _segment(number, names[value]) for number, value in enumerate(sorted(names), start=1)
        ],
        series_instance_uid=hd.UID(),
        series_number=_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="sam3d",
        manufacturer_model_name="sam3d",
        software_versions=__version__,
        device_serial_number="0",
        content_description="sam3d promptable segmentation",
        omit_empty_frames=bool(labels.any()),
    )
    segmentation.SeriesDescription = "sam3d segmentation"
    output = Path(output_path).expanduser()
    output.parent.mkdir(parents=True, exist_ok=True)
    segmentation.save_as(output)
    return output
