import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torchio as tio

from sam3d.data.catalog import discover
from sam3d.data.errors import DatasetError
from sam3d.data.files import case_id
from sam3d.data.layout import to_network_layout
from sam3d.data.preprocessing import BinarizeLabel, Normalize, Preprocessing
from sam3d.data.scans import label_on_source_grid, load_label, load_scan, to_source_grid, write_like
from sam3d.data.training.cache import cache_cases
from sam3d.metrics import case_metrics

WINDOW, MEAN, STD = (-200.0, 300.0), 50.0, 100.0


def load(path, spacing=(1.0, 1.0, 1.0)):
    return load_scan(path, Preprocessing(spacing, WINDOW, MEAN, STD, (1,)))


def dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def cases(root):
    return [(path, root / "labelsTr" / path.name) for path in sorted((root / "imagesTr").glob("*.nii.gz"))]


@pytest.fixture(scope="module")
def cached_phantoms(synthetic_root, tmp_path_factory):
    """Every phantom as the training cache holds it at 1.5 mm, normalised and binarised, by case id."""
    cached, problems = cache_cases(
        list(discover(synthetic_root, "msd").cases.values()), tmp_path_factory.mktemp("cache"), (1.5,) * 3
    )
    assert not problems
    transform = tio.Compose([BinarizeLabel((1,)), Normalize(WINDOW, MEAN, STD)])
    return {name: transform(case.subject()) for name, case in cached.items()}


def test_load_scan_preprocesses_the_image_exactly_as_the_training_cache(synthetic_root, cached_phantoms):
    assert len(cached_phantoms) == 6
    for image_path, label_path in cases(synthetic_root):
        subject = cached_phantoms[case_id(image_path)]
        scan = load(image_path, (1.5, 1.5, 1.5))
        expected = to_network_layout(subject["image"].data[0])
        assert scan.image.dtype == torch.float32
        assert torch.equal(scan.image, expected)  # one preprocessing path: bitwise the same voxels
        np.testing.assert_allclose(scan.affine, subject["image"].affine, atol=1e-6)
        assert scan.spacing == (1.5, 1.5, 1.5)
        assert scan.source_shape == nib.load(image_path).shape
        np.testing.assert_allclose(scan.source_spacing, nib.load(image_path).header.get_zooms(), rtol=1e-5)
        # Test labels are resampled nearest-neighbour, training labels linearly then kept above 0.5 (both as
        # the authors): the same object, the boundary voxels aside.
        assert (
            dice(load_label(label_path, scan).numpy(), to_network_layout(subject["label"].data[0]).numpy())
            > 0.9
        )


def check_overlay(image_path, label_path, out_path):
    """A preprocessed label mapped back and written like the scan overlays the original label."""
    scan = load(image_path)
    preprocessed = load_label(label_path, scan)
    assert preprocessed.shape == scan.image.shape
    back = to_source_grid(scan, preprocessed)
    assert back.dtype == torch.uint8
    assert tuple(back.shape) == scan.source_shape
    write_like(image_path, back, out_path)
    written, original = nib.load(out_path), nib.load(label_path)
    assert written.shape == original.shape
    np.testing.assert_allclose(written.affine, original.affine, atol=1e-5)
    assert nib.aff2axcodes(written.affine) == nib.aff2axcodes(original.affine)
    assert written.get_data_dtype() == np.uint8
    assert dice(written.get_fdata(), original.get_fdata() == 1) > 0.98
    assert torch.equal(label_on_source_grid(label_path, scan), torch.from_numpy(original.get_fdata() == 1))
    return scan, back


def test_written_prediction_overlays_every_phantom_orientation(synthetic_root, tmp_path):
    orientations = set()
    for image_path, label_path in cases(synthetic_root):
        check_overlay(image_path, label_path, tmp_path / f"{image_path.name}")
        orientations.add(nib.aff2axcodes(nib.load(image_path).affine))
    assert len(orientations) >= 4


def test_written_prediction_overlays_real_ct(shared_ct_root, tmp_path):
    for image_path, label_path in cases(shared_ct_root):
        scan, back = check_overlay(image_path, label_path, tmp_path / "out" / image_path.name)
        assert scan.source_spacing == pytest.approx((0.977, 0.977, 3.27), abs=1e-3)
        # Metrics in the label's own grid and spacing (the evaluation protocol).
        metrics = case_metrics(back, label_on_source_grid(label_path, scan), scan.source_spacing)
        assert metrics["dice"] > 0.98
        assert metrics["nsd"] > 0.99
        assert metrics["hd95"] <= 1.0
        # The header's codes are kept, so viewers place it exactly like the scan.
        written, reference = nib.load(tmp_path / "out" / image_path.name), nib.load(image_path)
        assert written.header["sform_code"] == reference.header["sform_code"]
        assert written.header["qform_code"] == reference.header["qform_code"]


def test_linear_mapping_back_reproduces_the_scan(shared_ct_root):
    image_path = shared_ct_root / "imagesTr" / "sts_002.nii.gz"
    scan = load(image_path)
    back = to_source_grid(scan, scan.image, "linear")
    assert back.dtype == torch.float32
    original = np.clip(nib.load(image_path).get_fdata(), *WINDOW)
    error = np.abs(back.numpy() * STD + MEAN - original)
    assert np.median(error) < 10.0  # HU, after a 0.98 mm -> 1 mm -> 0.98 mm (linear) round trip
    # Any one-voxel shift of the result would be clearly worse.
    shifted = [np.abs(np.roll(back.numpy(), 1, axis) * STD + MEAN - original).mean() for axis in range(3)]
    assert error.mean() < 0.7 * min(shifted)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_itk_formats_map_back_onto_the_same_place(synthetic_root, tmp_path, suffix):
    # An oblique-free but permuted and flipped phantom, re-saved in LPS-based formats.
    image_nii, label_nii = cases(synthetic_root)[1]
    image_path, label_path = tmp_path / f"image{suffix}", tmp_path / f"label{suffix}"
    sitk.WriteImage(sitk.ReadImage(str(image_nii)), str(image_path))
    sitk.WriteImage(sitk.ReadImage(str(label_nii)), str(label_path))
    scan, reference = load(image_path), load(image_nii)
    assert torch.allclose(scan.image, reference.image)
    label = label_on_source_grid(label_path, scan)
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path))).transpose()  # (i, j, k)
    assert torch.equal(label, torch.from_numpy(array == 1))
    back = to_source_grid(scan, load_label(label_path, scan))
    write_like(image_path, back, tmp_path / "mask.nii.gz")
    written = nib.load(tmp_path / "mask.nii.gz")
    # The NIfTI lands on the grid of the NIfTI the ITK file was made from.
    original = nib.load(label_nii)
    np.testing.assert_allclose(written.affine, original.affine, atol=1e-4)
    assert dice(written.get_fdata(), original.get_fdata()) > 0.98


def test_write_like_checks_shape_and_suffix(synthetic_root, tmp_path):
    image_path, _ = cases(synthetic_root)[0]
    shape = nib.load(image_path).shape
    with pytest.raises(ValueError, match="shape"):
        write_like(image_path, np.zeros(shape[::-1], np.uint8), tmp_path / "x.nii.gz")
    with pytest.raises(ValueError, match=r"\.nii"):
        write_like(image_path, np.zeros(shape, np.uint8), tmp_path / "x.mha")
    probabilities = np.random.default_rng(0).random(shape).astype(np.float32)
    path = write_like(image_path, probabilities, tmp_path / "p.nii", np.float32)
    assert np.array_equal(nib.load(path).get_fdata(dtype=np.float32), probabilities)


def test_to_source_grid_rejects_a_volume_of_another_shape(synthetic_root):
    scan = load(cases(synthetic_root)[0][0], (3.0, 3.0, 3.0))
    with pytest.raises(ValueError, match="shape"):
        to_source_grid(scan, scan.image[:-1])


def write(path, array, affine=None):
    nib.save(nib.Nifti1Image(array, np.diag([1.0, 1.0, 2.0, 1.0]) if affine is None else affine), str(path))
    return path


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((8, 8, 8, 3), np.float32), "3 channels"),
        (np.zeros((8, 8, 1), np.float32), "not a 3D volume"),
        (np.where(np.arange(512).reshape(8, 8, 8) == 5, np.nan, 0).astype(np.float32), "NaN/inf"),
        (np.where(np.arange(512).reshape(8, 8, 8) == 5, np.inf, 0).astype(np.float32), "NaN/inf"),
    ],
)
def test_unusable_scans_are_named(tmp_path, array, message):
    path = write(tmp_path / "bad.nii.gz", array)
    with pytest.raises(DatasetError, match=message) as error:
        load(path)
    assert str(path) in str(error.value)


def test_missing_and_corrupt_scans_are_named(tmp_path):
    with pytest.raises(DatasetError, match="not found") as error:
        load(tmp_path / "absent.nii.gz")
    assert "absent.nii.gz" in str(error.value)
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b this is not a volume")
    with pytest.raises(DatasetError, match="unreadable") as error:
        load(corrupt)
    assert str(corrupt) in str(error.value)


def test_label_on_another_grid_names_both_files_and_what_differs(tmp_path):
    image = write(tmp_path / "scan.nii.gz", np.zeros((10, 12, 8), np.int16))
    scan = load(image)
    other_shape = write(tmp_path / "label_shape.nii.gz", np.zeros((10, 12, 9), np.uint8))
    with pytest.raises(DatasetError) as error:
        label_on_source_grid(other_shape, scan)
    message = str(error.value)
    assert str(image) in message
    assert str(other_shape) in message
    assert "(10, 12, 8)" in message
    assert "(10, 12, 9)" in message
    shifted_affine = np.diag([1.0, 1.0, 2.0, 1.0])
    shifted_affine[:3, 3] = [5.0, 0.0, 0.0]
    shifted = write(tmp_path / "label_origin.nii.gz", np.zeros((10, 12, 8), np.uint8), shifted_affine)
    with pytest.raises(DatasetError, match="origin") as error:
        load_label(shifted, scan)
    assert "origin (5, 0, 0)" in str(error.value)
    assert "origin (0, 0, 0)" in str(error.value)
    fractional = write(tmp_path / "label_float.nii.gz", np.full((10, 12, 8), 0.5, np.float32))
    with pytest.raises(DatasetError, match="non-integer"):
        label_on_source_grid(fractional, scan)


def test_case_id():
    assert case_id("/a/case_001.nii.gz") == "case_001"
    assert case_id("b/case.2.mha") == "case.2"
    assert case_id("c.NRRD") == "c"
