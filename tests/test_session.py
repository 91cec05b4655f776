"""`Sam3dInferenceSession`: nnInteractive's session methods on a raw scan, masks on the scan's own grid."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from dicom_helpers import phantom_series
from serve_helpers import PREPROCESSING, MagicWand, dice, write_reoriented

from sam3d.data.scans import Box, Click, Scribble, interactions_to_network, load_scan, to_source_grid
from sam3d.data.scans.arrays import array_affine
from sam3d.errors import Sam3dError
from sam3d.interaction import InteractionSession
from sam3d.models import CheckpointError
from sam3d.session import Sam3dInferenceSession, read_image


def _phantom(root: Path, case: str = "phantom_000") -> tuple[Path, nib.Nifti1Image, np.ndarray]:
    """The scan file, its image, and its lesion label on the file's grid."""
    path = root / "imagesTr" / f"{case}.nii.gz"
    label = np.asarray(nib.load(root / "labelsTr" / f"{case}.nii.gz").dataobj) > 0
    return path, nib.load(path), label


def _centre(label: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(c) for c in np.argwhere(label).mean(0).round())  # type: ignore[return-value]


def _session(
    image: nib.Nifti1Image, net: torch.nn.Module | None = None, **properties: object
) -> Sam3dInferenceSession:
    session = Sam3dInferenceSession(net or MagicWand(dense_prompts=("box", "scribble")), PREPROCESSING)  # type: ignore[arg-type]
    session.set_image(np.asarray(image.dataobj)[None], properties or {"affine": image.affine})
    return session


def test_the_mask_equals_the_interaction_session_on_the_file_mapped_back(synthetic_root):
    path, image, label = _phantom(synthetic_root)
    centre = _centre(label)
    lower, upper = np.argwhere(label).min(0), np.argwhere(label).max(0)
    scribble = np.zeros(label.shape, np.uint8)
    scribble[upper[0] + 4, centre[1] - 2 : centre[1] + 3, centre[2]] = 1  # outside the lesion
    session = _session(image)
    target = np.zeros(label.shape, np.uint8)
    session.set_target_buffer(target)
    session.add_point_interaction(centre, include_interaction=True)
    session.add_bbox_interaction(
        [[lower[0], upper[0] + 1], [lower[1], upper[1] + 1], [centre[2], centre[2] + 1]]
    )
    session.add_scribble_interaction(scribble, include_interaction=False)

    # The same interactions through the file path of `sam3d predict` / `sam3d serve`.
    scan = load_scan(path, PREPROCESSING)
    reference = InteractionSession(MagicWand(dense_prompts=("box", "scribble")), scan.image)  # type: ignore[arg-type]
    entries = [
        Click(centre, "voxel", True),
        Box(((lower[0], lower[1], centre[2]), (upper[0], upper[1], centre[2])), "voxel"),
        Scribble(tuple(map(tuple, np.argwhere(scribble))), "voxel", False),
    ]
    for step in interactions_to_network(entries, scan):
        reference.add(*step)
    expected = (to_source_grid(scan, reference.probability, "linear") > 0.5).numpy()
    assert target.dtype == np.uint8
    assert set(np.unique(target)) == {0, 1}
    np.testing.assert_array_equal(target.astype(bool), expected)
    assert torch.equal(session.session.probability, reference.probability)  # type: ignore[union-attr]
    assert dice(target, label) > 0.6


def test_a_reoriented_copy_gives_the_same_voxels_and_the_spacing_matters(synthetic_root, tmp_path):
    path, image, label = _phantom(synthetic_root)
    centre = _centre(label)
    session = _session(image)
    session.add_point_interaction(centre)
    original = session.target_buffer.copy()  # type: ignore[union-attr]
    assert dice(original, label) > 0.8

    # voxel (a, b, c) of the copy is voxel (b, n1 - 1 - c, n2 - 1 - a) of the original (spacing 1.38 x 1.38 x 1.77)
    copy = write_reoriented(path, tmp_path / "reoriented.nii.gz")
    _, n1, n2 = label.shape
    session.set_image(np.asarray(copy.dataobj)[None], {"affine": copy.affine})
    session.add_point_interaction((n2 - 1 - centre[2], centre[0], n1 - 1 - centre[1]))
    back = np.flip(session.target_buffer, axis=(0, 2)).transpose(1, 2, 0)  # type: ignore[arg-type]
    np.testing.assert_array_equal(back, original)

    # Spacing alone: the array as 3D Slicer and SimpleITK give an axial scan with ITK's identity direction,
    # (k, j, i) = (superior, posterior, left), i.e. the RAS+ file's array flipped in-plane and transposed.
    n0, _, _ = label.shape
    itk_order = np.flip(np.asarray(image.dataobj), axis=(0, 1)).transpose(2, 1, 0)
    slicer_click = (centre[2], n1 - 1 - centre[1], n0 - 1 - centre[0])
    session.set_image(itk_order[None], {"spacing": image.header.get_zooms()[::-1]})
    session.add_point_interaction(slicer_click)
    back = np.flip(session.target_buffer.transpose(2, 1, 0), axis=(0, 1))  # type: ignore[union-attr]
    np.testing.assert_array_equal(back, original)
    session.set_image(itk_order[None], {"spacing": (1.0, 1.0, 1.0)})
    session.add_point_interaction(slicer_click)
    assert not np.array_equal(np.flip(session.target_buffer.transpose(2, 1, 0), axis=(0, 1)), original)  # type: ignore[union-attr]


def test_spacing_alone_is_the_itk_array_order_of_slicer_and_simpleitk(synthetic_root, tmp_path):
    _, image, _ = _phantom(synthetic_root)
    # A scan with ITK's identity direction (as DICOM axial series load): what Slicer's arrayFromVolume and
    # SimpleITK's GetArrayFromImage give, and its spacing reversed, mean the same world as its file.
    itk_image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(image.dataobj).transpose(2, 1, 0)))
    itk_image.SetSpacing((1.5, 0.8, 2.5))
    itk_image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    sitk.WriteImage(itk_image, str(tmp_path / "itk.nii.gz"))
    on_file = nib.as_closest_canonical(nib.load(tmp_path / "itk.nii.gz"))
    spacing = itk_image.GetSpacing()[::-1]
    from_spacing = nib.as_closest_canonical(
        nib.Nifti1Image(sitk.GetArrayFromImage(itk_image), array_affine(spacing))
    )
    np.testing.assert_array_equal(np.asarray(from_spacing.dataobj), np.asarray(on_file.dataobj))
    np.testing.assert_allclose(from_spacing.affine[:3, :3], on_file.affine[:3, :3], atol=1e-6)


def test_a_dicom_series_read_with_read_image_gives_the_mask_of_its_nifti(synthetic_root, tmp_path):
    path, image, label = _phantom(synthetic_root)
    centre = _centre(label)
    session = _session(image)
    session.add_point_interaction(centre)
    from_nifti = session.target_buffer.copy()  # type: ignore[union-attr]

    phantom_series(path, tmp_path / "series")
    voxels, affine = read_image(tmp_path / "series")
    assert voxels.shape == label.shape
    np.testing.assert_allclose(affine, image.affine, atol=1e-4)
    session.set_image(voxels[None], {"affine": affine})
    session.add_point_interaction(centre)
    np.testing.assert_array_equal(session.target_buffer, from_nifti)
    with pytest.raises(Sam3dError, match="no_such_series"):
        read_image(tmp_path / "no_such_series")


def test_queued_interactions_undo_reset_and_a_torch_buffer(synthetic_root):
    _, image, label = _phantom(synthetic_root)
    centre = _centre(label)
    session = _session(image)
    target = torch.zeros(label.shape, dtype=torch.float32)
    session.set_target_buffer(target)
    session.add_point_interaction(centre, run_prediction=False)
    assert not target.any()
    assert not session.interactions
    assert session.predict()
    assert not session.predict()
    first = target.clone()
    assert dice(first.numpy(), label) > 0.8
    session.add_point_interaction((centre[0], centre[1], centre[2] + 3), include_interaction=False)
    assert not torch.equal(target, first)
    assert session.undo()
    assert torch.equal(target, first)
    assert session.undo()
    assert not target.any()
    assert not session.undo()
    session.add_point_interaction(centre)
    session.reset_interactions()
    assert not target.any()
    assert not session.interactions


def test_a_lasso_is_the_box_around_it_or_a_negative_scribble_over_it(synthetic_root):
    _, image, label = _phantom(synthetic_root)
    centre = _centre(label)
    lower, upper = np.argwhere(label).min(0), np.argwhere(label).max(0)
    lasso = np.zeros(label.shape, np.uint8)
    lasso[lower[0] : upper[0] + 1, lower[1] : upper[1] + 1, centre[2]] = 1
    session = _session(image)
    session.add_lasso_interaction(lasso, include_interaction=True)
    (box,) = session.interactions
    assert box.kind == "box"
    assert box.positive
    by_box = _session(image)
    by_box.add_bbox_interaction(
        [[lower[0], upper[0] + 1], [lower[1], upper[1] + 1], [centre[2], centre[2] + 1]]
    )
    np.testing.assert_array_equal(session.target_buffer, by_box.target_buffer)
    session.add_lasso_interaction(lasso, include_interaction=False)
    scribble = session.interactions[-1]
    assert scribble.kind == "scribble"
    assert not scribble.positive
    assert len(scribble.voxels) > 100


def test_wrong_images_and_interactions_are_refused_naming_what_to_give(synthetic_root):
    _, image, label = _phantom(synthetic_root)
    data = np.asarray(image.dataobj)
    session = Sam3dInferenceSession(MagicWand(), PREPROCESSING)  # type: ignore[arg-type]
    with pytest.raises(Sam3dError, match="no image yet: call set_image"):
        session.add_point_interaction((1, 2, 3))
    refusals = [
        (data, {"spacing": (1, 1, 1)}, r"\(1, x, y, z\) with one channel"),
        (np.stack([data, data]), {"spacing": (1, 1, 1)}, "one channel"),
        (data[None].astype(complex), {"spacing": (1, 1, 1)}, "real intensities"),
        (data[None] > 0, {"spacing": (1, 1, 1)}, "real intensities"),
        (np.where(data > 100, np.nan, data)[None], {"spacing": (1, 1, 1)}, "NaN/inf voxels"),
        (data[None], {}, r"needs its geometry: properties \{'spacing'"),
        (data[None], {"spacing": (1, 0, 1)}, "three positive numbers"),
        (data[None], {"spacing": "1mm"}, "three positive numbers"),
        (data[None], {"affine": np.eye(3)}, "4x4 matrix"),
        (data[None], {"affine": image.affine, "spacing": (1, 1, 1)}, "differs from the affine's"),
    ]
    for array, properties, message in refusals:
        with pytest.raises(Sam3dError, match=message):
            session.set_image(array, properties)
    with pytest.raises(Sam3dError, match="must be a numpy array or torch tensor, got list"):
        session.set_image(data[None].tolist(), {"spacing": (1, 1, 1)})
    for dtype in (np.uint16, np.float16):  # types SimpleITK or torch do not take as they are
        session.set_image(np.clip(data, 0, 2000).astype(dtype)[None], {"affine": image.affine})
        assert session.scan.image.dtype == torch.float32  # type: ignore[union-attr]
    session.set_image(data[None].astype(np.float32), {"affine": image.affine})
    shape = label.shape
    with pytest.raises(
        Sam3dError,
        match=r"click at voxel \[-5.0, 10.0, 10.0\] lies outside the image of shape \(74, 65, 59\)",
    ):
        session.add_point_interaction((-5, 10, 10))
    with pytest.raises(Sam3dError, match="point coordinates must be 3 numbers"):
        session.add_point_interaction((1, 2))
    with pytest.raises(Sam3dError, match="first interaction must be positive"):
        session.add_point_interaction(_centre(label), include_interaction=False)
    with pytest.raises(
        Sam3dError, match="takes no box prompts: use a checkpoint trained with configs/prompts/box"
    ):
        session.add_bbox_interaction([[1, 5], [1, 5], [3, 4]])
    with pytest.raises(Sam3dError, match="takes no scribble prompts"):
        session.add_scribble_interaction(np.ones(shape))
    with pytest.raises(Sam3dError, match="takes no box prompts, so no lasso"):
        session.add_lasso_interaction(np.ones(shape))
    with pytest.raises(Sam3dError, match="target buffer has shape"):
        session.set_target_buffer(np.zeros(shape[::-1]))
    assert not session.interactions

    boxes = Sam3dInferenceSession(MagicWand(dense_prompts=("box", "scribble")), PREPROCESSING)  # type: ignore[arg-type]
    boxes.set_image(data[None], {"affine": image.affine})
    with pytest.raises(Sam3dError, match="no negative boxes"):
        boxes.add_bbox_interaction([[1, 5], [1, 5], [3, 4]], include_interaction=False)
    with pytest.raises(Sam3dError, match="has an empty axis"):
        boxes.add_bbox_interaction([[5, 5], [1, 5], [3, 4]])
    with pytest.raises(Sam3dError, match=r"bbox_coords \[\[x0, x1\].* must be 3x2 numbers"):
        boxes.add_bbox_interaction([1, 5, 1, 5, 3, 4])
    with pytest.raises(Sam3dError, match="scribble image has shape"):
        boxes.add_scribble_interaction(np.ones((2, 2, 2)))
    with pytest.raises(Sam3dError, match="scribble image is empty"):
        boxes.add_scribble_interaction(np.zeros(shape))
    assert not boxes.interactions


def test_array_affine_reads_spacing_as_slices_rows_columns_of_an_axial_itk_scan():
    expected = [[0, 0, -0.5, 0], [0, -0.7, 0, 0], [3.0, 0, 0, 0], [0, 0, 0, 1]]  # k: +S, j: -A, i: -R
    np.testing.assert_array_equal(array_affine((3.0, 0.7, 0.5)), expected)


def test_from_checkpoint_builds_the_trained_network_and_its_preprocessing(trained, synthetic_root, tmp_path):
    _, checkpoint = trained
    saved = torch.load(checkpoint, weights_only=True)
    session = Sam3dInferenceSession.from_checkpoint(checkpoint, protocol="paper", threshold=0.5)
    assert session.preprocessing.as_dict() == saved["VolumeDataModule"]["preprocessing"]
    weights = {k.removeprefix("net."): v for k, v in saved["state_dict"].items()}
    for name, value in session.net.state_dict().items():
        assert torch.equal(value, weights[name]), name
    assert not session.net.training
    _, image, label = _phantom(synthetic_root)
    session.set_image(np.asarray(image.dataobj)[None], {"affine": image.affine})
    session.add_point_interaction(_centre(label))
    assert session.target_buffer.shape == label.shape  # type: ignore[union-attr]
    assert set(np.unique(session.target_buffer)) <= {0, 1}

    for precision, dtype in (("32-true", None), ("bf16-mixed", torch.bfloat16)):
        other = Sam3dInferenceSession.from_checkpoint(checkpoint, precision=precision)
        other.set_image(np.asarray(image.dataobj)[None], {"affine": image.affine})
        seen: list[torch.dtype | None] = []
        segment = other.net.segment

        def recording(*args, segment=segment, seen=seen, **kwargs):
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            return segment(*args, **kwargs)

        other.net.segment = recording  # type: ignore[method-assign]
        other.add_point_interaction(_centre(label))
        assert seen
        assert set(seen) == {dtype}, precision

    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="is not a sam3d checkpoint"):
        Sam3dInferenceSession.from_checkpoint(tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        Sam3dInferenceSession.from_checkpoint(tmp_path / "missing.ckpt")
    with pytest.raises(Sam3dError, match="precision must be"):
        Sam3dInferenceSession.from_checkpoint(checkpoint, precision="64")
