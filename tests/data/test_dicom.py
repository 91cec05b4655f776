"""DICOM series as scans (sam3d.data.dicom) and masks written as DICOM-SEG (sam3d.data.scans.dicom_seg)."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from cli_helpers import SYNTHETIC_CONFIG, predict_options, synthetic_cli_args
from dicom_helpers import phantom_series, rotation, write_dicom_series
from pydicom.data import get_testdata_file
from pydicom.uid import RLELossless, generate_uid
from serve_helpers import PREPROCESSING

from sam3d.cli import main
from sam3d.data.catalog import discover
from sam3d.data.checks import check_headers
from sam3d.data.dicom import read_series, read_series_header
from sam3d.data.errors import DatasetError
from sam3d.data.preprocessing import read_volume
from sam3d.data.scans import load_scan, scan_files
from sam3d.data.scans.dicom_seg import write_dicom_seg
from sam3d.data.training.cache import cache_cases
from sam3d.errors import Sam3dError
from sam3d.serve.viewer import open_scan


def _phantom(root: Path, index: int = 0) -> Path:
    return sorted((root / "imagesTr").glob("*.nii.gz"))[index]


def _canonical(voxels: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    return nib.as_closest_canonical(nib.Nifti1Image(voxels, affine))


def _slices(nifti: Path, folder: Path, along_normal: bool) -> Path:
    """``nifti`` with its slice axis along the slice normal or against it (the same world image)."""
    image = nib.load(nifti)
    if (np.linalg.det(image.affine[:3, :3]) > 0) == along_normal:
        return nifti
    flip = np.eye(4)
    flip[2, 2], flip[2, 3] = -1, image.shape[2] - 1
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"flipped_{nifti.name}"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:, :, ::-1], image.affine @ flip), path)
    return path


def _stretched(nifti: Path, folder: Path) -> Path:
    """``nifti`` with pixels 0.8 times as wide along i and 1.25 times along j (rows and columns differ)."""
    image = nib.load(nifti)
    path = folder / f"stretched_{nifti.name}"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), image.affine @ np.diag([0.8, 1.25, 1, 1])), path)
    return path


def _msd_roots(synthetic_root: Path, tmp_path: Path, count: int = 6) -> tuple[Path, Path]:
    """The first ``count`` phantoms as two MSD roots: NIfTI images, and DICOM case folders in ``imagesTr``.

    Images and labels get their slice axis along the normal: the grid sam3d reads a series on, so that
    the labels fit both.
    """
    nifti_root, dicom_root, scratch = tmp_path / "nifti", tmp_path / "dicom", tmp_path / "scratch"
    for folder in (nifti_root / "imagesTr", nifti_root / "labelsTr", dicom_root / "labelsTr", scratch):
        folder.mkdir(parents=True)
    for image in sorted((synthetic_root / "imagesTr").glob("*.nii.gz"))[:count]:
        forward = _slices(image, scratch, along_normal=True)
        label = _slices(synthetic_root / "labelsTr" / image.name, scratch / "labels", along_normal=True)
        shutil.copy(forward, nifti_root / "imagesTr" / image.name)
        for root in (nifti_root, dicom_root):
            shutil.copy(label, root / "labelsTr" / image.name)
        phantom_series(forward, dicom_root / "imagesTr" / image.name.removesuffix(".nii.gz"))
    return nifti_root, dicom_root


@pytest.fixture
def series(synthetic_root: Path, tmp_path: Path) -> Path:
    """The first phantom as a DICOM series folder."""
    folder = tmp_path / "phantom_000"
    phantom_series(_phantom(synthetic_root), folder)
    return folder


# ---------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize(
    "geometry", ["as_is", "slices_reversed", "oblique"], ids=["as-is", "slices-reversed", "oblique"]
)
def test_a_series_reads_as_the_nifti_it_was_written_from(synthetic_root, tmp_path, geometry):
    nifti = _slices(_phantom(synthetic_root, 1), tmp_path, along_normal=geometry != "slices_reversed")
    if geometry == "oblique":
        nifti = _stretched(nifti, tmp_path)
    oblique = rotation(20, 0) @ rotation(-12, 2) if geometry == "oblique" else None
    affine = phantom_series(nifti, tmp_path / "series", oblique, slope=0.5, intercept=-1024)
    hu = np.asarray(nib.load(nifti).dataobj)
    image = read_volume(tmp_path / "series", "scan", "case")
    assert image.data.dtype.is_floating_point is False  # HU are integers: kept as int16, like NIfTI scans
    expected, read = _canonical(hu, affine), _canonical(image.data[0].numpy(), image.affine)
    np.testing.assert_array_equal(read.get_fdata(), expected.get_fdata())  # same HU at the same voxels
    np.testing.assert_allclose(read.affine, expected.affine, atol=1e-6)  # same world geometry
    # k runs along the slice normal (i x j in LPS, whose determinant is the RAS one), as in ITK's reader
    assert np.linalg.det(image.affine[:3, :3]) > 0
    assert (np.linalg.det(affine[:3, :3]) < 0) == (geometry == "slices_reversed")


def test_the_array_and_geometry_are_simpleitks(synthetic_root, tmp_path):
    folder = tmp_path / "series"
    nifti = _stretched(_slices(_phantom(synthetic_root, 2), tmp_path, along_normal=False), tmp_path)
    phantom_series(nifti, folder, rotation(15, 1))
    series, voxels = read_series(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    itk = reader.Execute()
    np.testing.assert_array_equal(voxels[0].numpy(), sitk.GetArrayFromImage(itk).transpose(2, 1, 0))
    lps = np.eye(4)
    lps[:3, :3] = np.reshape(itk.GetDirection(), (3, 3)) * np.asarray(itk.GetSpacing())
    lps[:3, 3] = itk.GetOrigin()
    np.testing.assert_allclose(series.affine, np.diag([-1, -1, 1, 1]) @ lps, atol=1e-9)


def test_rescale_slope_and_intercept_give_the_values(tmp_path):
    hu = np.arange(4 * 3 * 2, dtype=np.int16).reshape(4, 3, 2) * 10 - 100
    files = write_dicom_series(tmp_path / "s", hu, np.diag([0.8, 0.8, 2.0, 1]), slope=2.5, intercept=-50)
    stored = pydicom.dcmread(files[0]).pixel_array
    assert not np.array_equal(stored, hu[:, :, 0].T)  # the files hold other numbers than the HU
    _, voxels = read_series(tmp_path / "s")
    np.testing.assert_array_equal(voxels[0].numpy(), hu)
    write_dicom_series(tmp_path / "f", hu + 0.25, np.diag([0.8, 0.8, 2.0, 1]), slope=0.25, intercept=0.0)
    _, fractions = read_series(tmp_path / "f")
    assert fractions.dtype.is_floating_point
    np.testing.assert_allclose(fractions[0].numpy(), hu + 0.25)


def test_a_compressed_series_reads_as_the_uncompressed_one(series, tmp_path):
    compressed = shutil.copytree(series, tmp_path / "rle")
    for file in compressed.iterdir():
        dataset = pydicom.dcmread(file)
        dataset.compress(RLELossless)
        dataset.save_as(file)
    assert pydicom.dcmread(next(compressed.iterdir())).file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(read_series(compressed)[1], read_series(series)[1])


def _decodes(dataset: pydicom.Dataset) -> bool:
    try:
        dataset.pixel_array  # noqa: B018
    except Exception:  # noqa: BLE001 (pydicom's decoders raise many types)
        return False
    return True


def test_pixels_that_cannot_be_decoded_are_refused_naming_the_compression(tmp_path):
    (tmp_path / "jpeg").mkdir()
    for k in range(2):  # pydicom's 12-bit JPEG Extended slice, made a series of two
        dataset = pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm"))
        dataset.ImageOrientationPatient, dataset.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [0, 0, 2 * k]
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.save_as(tmp_path / "jpeg" / f"{k}.dcm")
    if _decodes(dataset):
        pytest.skip("this environment decodes 12-bit JPEG Extended: nothing to refuse")
    message = _refusal(tmp_path / "jpeg")
    assert "pixels of 0.dcm (transfer syntax JPEG Extended (Process 2 and 4)) cannot be decoded" in message
    assert "pylibjpeg" in message


def test_load_scan_of_a_series_is_load_scan_of_its_nifti(synthetic_root, tmp_path):
    nifti = _slices(_phantom(synthetic_root, 3), tmp_path, along_normal=False)
    phantom_series(nifti, tmp_path / "series")
    from_dicom, from_nifti = load_scan(tmp_path / "series", PREPROCESSING), load_scan(nifti, PREPROCESSING)
    assert from_dicom.case_id == "series"
    assert from_dicom.image.shape == from_nifti.image.shape
    np.testing.assert_array_equal(from_dicom.image.numpy(), from_nifti.image.numpy())
    np.testing.assert_allclose(from_dicom.affine, from_nifti.affine, atol=1e-6)


# ------------------------------------------------------------------------------------------------ refusals


def _refusal(path: Path) -> str:
    with pytest.raises(DatasetError) as error:
        read_volume(path, "scan", "case")
    return str(error.value)


def test_a_folder_without_dicom_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a scan")
    message = _refusal(tmp_path / "empty")
    assert "holds no DICOM file" in message
    assert str(tmp_path / "empty") in message


def test_a_single_ct_slice_is_refused_as_not_3d(tmp_path):
    (tmp_path / "one").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "one")
    message = _refusal(tmp_path / "one")
    assert "single 2D slice (CT_small.dcm)" in message
    assert "3D series" in message


@pytest.mark.parametrize("name", ["rtplan.dcm", "SC_rgb_rle_2frame.dcm"])
def test_non_image_objects_only_are_refused(tmp_path, name):
    (tmp_path / "objects").mkdir()
    shutil.copy(get_testdata_file(name), tmp_path / "objects")
    message = _refusal(tmp_path / "objects")
    assert "no image slices" in message
    expected = {"rtplan.dcm": "1 RT Plan Storage", "SC_rgb_rle_2frame.dcm": "multi-frame"}[name]
    assert expected in message


def test_mixed_sizes_are_refused(series, tmp_path):
    uid = read_series_header(series).uid
    write_dicom_series(tmp_path / "other", np.zeros((8, 6, 2), np.int16), np.eye(4), series_uid=uid)
    shutil.copy(next((tmp_path / "other").iterdir()), series / "extra.dcm")
    message = _refusal(series)
    assert "differ in size" in message
    assert "(6, 8): 1 slice(s)" in message


def test_mixed_orientations_are_refused(synthetic_root, series, tmp_path):
    uid = read_series_header(series).uid
    phantom_series(_phantom(synthetic_root), tmp_path / "turned", rotation(30, 2), series_uid=uid)
    shutil.copy(min((tmp_path / "turned").iterdir()), series / "turned.dcm")
    assert "different orientations" in _refusal(series)


def test_a_missing_slice_is_refused_naming_the_gap(series):
    files = read_series_header(series).files
    files[5].unlink()
    message = _refusal(series)
    assert "not evenly spaced" in message
    assert f"between {files[4].name} and {files[6].name}" in message


def test_a_duplicate_slice_is_refused(series):
    shutil.copy(read_series_header(series).files[3], series / "copy.dcm")
    message = _refusal(series)
    assert "same position" in message
    assert "copy.dcm" in message


def test_a_sheared_series_is_refused(tmp_path):
    sheared = np.diag([1.0, 1.0, 2.0, 1.0])
    sheared[1, 2] = 0.5  # each slice moves 0.5 mm anterior: a tilted gantry
    write_dicom_series(tmp_path / "tilt", np.zeros((6, 6, 4), np.int16), sheared)
    assert "tilted gantry" in _refusal(tmp_path / "tilt")


def test_several_series_are_listed_and_one_is_chosen_by_uid(synthetic_root, series):
    first = read_series_header(series)
    phantom_series(_phantom(synthetic_root, 1), series, description="second", series_number=7, prefix="B")
    message = _refusal(series)
    assert "holds 2 image series" in message
    assert "FOLDER::SeriesInstanceUID" in message
    assert f"{series}::{first.uid} (CT, 'phantom', series number 2, {first.shape[2]} slice(s))" in message
    assert "'second', series number 7" in message
    chosen = read_volume(f"{series}::{first.uid}", "scan", "case")
    assert chosen.spatial_shape == first.shape
    np.testing.assert_allclose(chosen.affine, first.affine)
    listed = re.findall(r"::([0-9.]+) \(CT", message)
    assert len(listed) == 2
    other = next(uid for uid in listed if uid != first.uid)
    assert (
        read_volume(f"{series}::{other}", "scan", "case").spatial_shape
        == nib.load(_phantom(synthetic_root, 1)).shape
    )
    unknown = _refusal(Path(f"{series}::1.2.3"))
    assert "no image series with UID '1.2.3'" in unknown
    assert first.uid in unknown


def test_a_label_folder_is_refused(series):
    with pytest.raises(DatasetError, match="label is a folder, not a file"):
        read_volume(series, "label", "case")


# ------------------------------------------------------------------------------- where scans are listed


def test_scan_files_takes_series_folders_and_folders_of_them(synthetic_root, series, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copytree(series, scans / "case_a")
    shutil.copy(_phantom(synthetic_root), scans / "case_b.nii.gz")
    (scans / "notes").mkdir()
    uid = read_series_header(series).uid
    files, problems = scan_files([series, f"{series}::{uid}", scans, tmp_path / "nothing_here"])
    assert files == [series, Path(f"{series}::{uid}"), scans / "case_a", scans / "case_b.nii.gz"]
    assert [problem.message for problem in problems] == ["scan file does not exist"]
    _, problems = scan_files([scans / "notes"])
    assert "no NIfTI, NRRD or MHA scan and no DICOM series" in problems[0].message


def test_an_msd_case_folder_stands_in_for_its_image_file(synthetic_root, tmp_path):
    _, root = _msd_roots(synthetic_root, tmp_path, count=2)
    (root / "imagesTr" / "notes.txt").write_text("not a case")
    cases = discover(root, "msd").cases
    assert sorted(cases) == ["phantom_000", "phantom_001"]
    case = cases["phantom_000"]
    assert case.image == (root / "imagesTr" / "phantom_000").resolve()
    assert case.label == (root / "labelsTr" / "phantom_000.nii.gz").resolve()
    assert check_headers(case) == []
    (root / "labelsTr" / "phantom_001.nii.gz").unlink()
    problems = check_headers(cases["phantom_001"])
    assert ["label file not found" in problem.message for problem in problems] == [True]


def test_the_training_cache_holds_a_dicom_case_as_its_nifti(synthetic_root, tmp_path):
    nifti_root, dicom_root = _msd_roots(synthetic_root, tmp_path, count=1)
    cached = {}
    for name, root in (("nifti", nifti_root), ("dicom", dicom_root)):
        found, problems = cache_cases(list(discover(root, "msd").cases.values()), tmp_path / name, (1.5,) * 3)
        assert not problems
        cached[name] = found["phantom_000"].subject()
    for image in ("image", "label"):
        np.testing.assert_array_equal(cached["dicom"][image].data, cached["nifti"][image].data)
        np.testing.assert_allclose(cached["dicom"][image].affine, cached["nifti"][image].affine, atol=1e-6)
    case = discover(dicom_root, "msd").cases["phantom_000"]
    entries = set((tmp_path / "dicom").iterdir())
    slice_file = read_series_header(case.image).files[0]
    slice_file.write_bytes(slice_file.read_bytes())  # a slice rewritten: the entry is made again
    cache_cases([case], tmp_path / "dicom", (1.5,) * 3)
    assert len(set((tmp_path / "dicom").iterdir()) - entries) == 1


def test_serve_opens_a_series_folder(series):
    scan = open_scan(series, PREPROCESSING, max_voxels=2**28)
    assert scan.source_shape == read_series_header(series).shape
    assert scan.intensities is not None


def test_serve_refuses_a_single_dicom_file(series):
    with pytest.raises(Sam3dError, match=r"DICOM series folders listed with --data.predict_scans"):
        open_scan(next(series.iterdir()), PREPROCESSING, max_voxels=2**28)


# ----------------------------------------------------------------------------------------------- DICOM-SEG


def test_a_label_map_becomes_named_segments_referencing_the_series(series, tmp_path):
    source = read_series_header(series)
    labels = np.zeros(source.shape, np.uint8)
    labels[10:20, 12:30, 3:9] = 1
    labels[40:44, 40:45, 10:12] = 3  # segment 2 stays empty
    path = write_dicom_seg(labels, ["liver", "spleen", "tumour"], series, tmp_path / "out" / "seg.dcm")
    seg = hd.seg.segread(path)
    assert seg.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "spleen", "tumour"]
    assert seg.StudyInstanceUID == source.headers[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.headers[0].FrameOfReferenceUID
    assert seg.SeriesInstanceUID != source.uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.uid
    uids = [header.SOPInstanceUID for header in source.headers]
    back = seg.get_pixels_by_source_instance(
        uids, combine_segments=True, assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(back.transpose(2, 1, 0), labels)
    # Object ids with gaps: segments 1 and 2 in the order of the values, named by value.
    path = write_dicom_seg(labels, {3: "tumour", 1: "liver"}, series, tmp_path / "out" / "ids.dcm")
    seg = hd.seg.segread(path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "tumour"]
    back = seg.get_pixels_by_source_instance(uids, combine_segments=True).transpose(2, 1, 0)
    np.testing.assert_array_equal(back, np.array([0, 1, 0, 2])[labels])


def test_dicom_seg_refuses_what_does_not_fit(synthetic_root, series, tmp_path):
    shape = read_series_header(series).shape
    with pytest.raises(Sam3dError, match="is a file: write NIfTI masks"):
        write_dicom_seg(np.zeros(shape, np.uint8), ["a"], _phantom(synthetic_root), tmp_path / "s.dcm")
    with pytest.raises(Sam3dError, match="differs from the shape"):
        write_dicom_seg(np.zeros((2, 2, 2), np.uint8), ["a"], series, tmp_path / "s.dcm")
    with pytest.raises(Sam3dError, match=r"values \[2\] have no segment name \(names are given for \[1\]\)"):
        write_dicom_seg(np.full(shape, 2, np.uint8), ["a"], series, tmp_path / "s.dcm")
    with pytest.raises(Sam3dError, match="integers 0 to 65535"):
        write_dicom_seg(np.full(shape, -1, np.int16), ["a"], series, tmp_path / "s.dcm")
    with pytest.raises(Sam3dError, match="a name for each label value from 1 up"):
        write_dicom_seg(np.zeros(shape, np.uint8), {0: "background"}, series, tmp_path / "s.dcm")


# ------------------------------------------------------------------------------------------ through the CLI


def _predict(*options: str) -> None:
    main(["predict", "--config", str(SYNTHETIC_CONFIG), *options, "--trainer.logger", "false"])


def _lesion_click(nifti: Path, label: Path, scan: str, shift_mm: float = 0.0) -> tuple:
    """A positive click at the lesion's middle voxel (moved ``shift_mm`` along x), in world RAS+ mm."""
    voxels = np.argwhere(np.asarray(nib.load(label).dataobj) > 0)
    world = nib.load(nifti).affine @ [*voxels[len(voxels) // 2], 1]
    return (scan, world[0] + shift_mm, *world[1:3], "world", "positive")


def _clicks_file(path: Path, rows: list[tuple], objects: bool = False) -> Path:
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(
            ["scan", "x", "y", "z", "space", "label", *(["object", "object_name"] if objects else [])]
        )
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("objects", [1, 2], ids=["one-object", "two-objects"])
def test_predict_writes_dicom_seg_holding_the_nifti_mask(synthetic_root, trained, tmp_path, capsys, objects):
    """Series in, DICOM-SEG out, read back with highdicom: the voxels of the NIfTI mask (or label map)."""
    _, checkpoint = trained
    nifti = _phantom(synthetic_root, 4)
    folder = tmp_path / "scans" / "patient_a"
    phantom_series(_slices(nifti, tmp_path, along_normal=False), folder, rotation(10, 2))
    click = _lesion_click(nifti, synthetic_root / "labelsTr" / nifti.name, "patient_a")
    if objects == 1:
        clicks = _clicks_file(tmp_path / "clicks.csv", [click])
    else:  # ids 1 and 3: the label map's values have a gap, DICOM-SEG's segment numbers may not
        beside = _lesion_click(nifti, synthetic_root / "labelsTr" / nifti.name, "patient_a", shift_mm=25.0)
        rows = [(*beside, 1, "body"), (*click, 3, "lesion")]
        clicks = _clicks_file(tmp_path / "clicks.csv", rows, objects=True)
    output = tmp_path / "masks"
    _predict(
        *predict_options(checkpoint, [tmp_path / "scans"], clicks, output),
        "--prediction.dicom_seg",
        "true",
        "--evaluation.threshold",
        "0.2",
    )
    assert f"{output / 'patient_a_seg.dcm'}" in capsys.readouterr().out
    source = read_series_header(folder)
    written = nib.load(output / ("patient_a_mask.nii.gz" if objects == 1 else "patient_a_labels.nii.gz"))
    labels = np.asarray(written.dataobj)
    assert labels.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    assert labels.max() == (1 if objects == 1 else 3)  # the lesion was found
    seg = hd.seg.segread(output / "patient_a_seg.dcm")
    names = ["object 1"] if objects == 1 else ["body", "lesion"]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == names
    uids = [header.SOPInstanceUID for header in source.headers]
    back = seg.get_pixels_by_source_instance(
        uids, combine_segments=True, assert_missing_frames_are_empty=True
    ).transpose(2, 1, 0)
    segment_of = np.array([0, 1, 0, 2]) if objects == 2 else np.array([0, 1])  # label value -> segment
    np.testing.assert_array_equal(back, segment_of[labels])


def test_predict_refuses_dicom_seg_for_a_nifti_scan(synthetic_root, trained, series, tmp_path):
    _, checkpoint = trained
    nifti = _phantom(synthetic_root)
    clicks = _clicks_file(
        tmp_path / "clicks.csv", [_lesion_click(nifti, synthetic_root / "labelsTr" / nifti.name, nifti.name)]
    )
    with pytest.raises(SystemExit) as exit_info:
        _predict(
            *predict_options(checkpoint, [series, nifti], clicks, tmp_path / "masks"),
            "--prediction.dicom_seg",
            "true",
        )
    message = str(exit_info.value.code)
    assert "these scans are not DICOM series" in message
    assert str(nifti) in message
    assert str(series) not in message
    assert not (tmp_path / "masks").exists() or not list((tmp_path / "masks").glob("*_mask.nii.gz"))


def test_sam3d_test_scores_dicom_cases_as_their_nifti(synthetic_root, trained, tmp_path):
    """An MSD root whose images are DICOM case folders scores exactly as the same cases in NIfTI."""
    _, checkpoint = trained
    nifti_root, dicom_root = _msd_roots(synthetic_root, tmp_path)
    rows = {}
    for name, root in (("nifti", nifti_root), ("dicom", dicom_root)):
        workdir = tmp_path / f"work_{name}"
        main(synthetic_cli_args("test", root, workdir, "--ckpt_path", str(checkpoint)))
        with open(next(workdir.glob("runs/**/test/cases.csv"))) as stream:
            rows[name] = [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(stream)]
    assert rows["dicom"]
    assert rows["dicom"] == rows["nifti"]
