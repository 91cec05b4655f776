"""The data module resolves one Preprocessing value, saves it as checkpoint state and restores it."""

import io

import numpy as np
import pytest
import torch
import torchio as tio

from sam3d.data import DatasetError, VolumeDataModule
from sam3d.data.catalog import PRESETS, Case
from sam3d.data.preprocessing import Preprocessing, to_grid
from sam3d.data.training.cache import cache_case


def test_presets_resolve_without_data_and_round_trip_a_weights_only_checkpoint():
    dm = VolumeDataModule(dataset="kits")
    kits = PRESETS["kits"]
    assert dm.preprocessing == Preprocessing((1.0, 1.0, 1.0), kits.window, kits.mean, kits.std, (2,))
    buffer = io.BytesIO()
    torch.save({"VolumeDataModule": dm.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["VolumeDataModule"]
    restored = VolumeDataModule(dataset="msd")  # nothing configured: all from the checkpoint
    restored.load_state_dict(state)
    assert restored.preprocessing == dm.preprocessing
    assert restored.preprocessing_arguments() == {
        "target_spacing": [1.0, 1.0, 1.0],
        "intensity_window": list(kits.window),
        "mean": kits.mean,
        "std": kits.std,
        "target_label": [2],
    }


def test_statistics_are_computed_on_the_training_cases_once(synthetic_root, tmp_path):
    dm = VolumeDataModule(
        synthetic_root, target_label=1, num_folds=3, num_workers=0, cache_dir=str(tmp_path / "cache")
    )
    first = dm.preprocessing
    assert first.window[0] < first.window[1]
    assert dm.preprocessing is first
    cached = {path.name for path in (tmp_path / "cache").iterdir()}
    assert len(cached) == len(dm.cases("train"))  # only the training cases were read


def test_config_values_that_contradict_the_checkpoint_are_refused_naming_both():
    kits = VolumeDataModule(dataset="kits")
    assert kits.state_dict() == {}  # nothing to save before the preprocessing is resolved
    kits.preprocessing  # noqa: B018
    state = kits.state_dict()
    same = VolumeDataModule(dataset="msd", intensity_window=(-54.0, 247.0), target_label=2, target_spacing=1)
    same.load_state_dict(state)  # equal values are no contradiction
    assert same.preprocessing == kits.preprocessing
    other = VolumeDataModule(dataset="kits", mean=60.0, target_spacing=(2.0, 1.0, 1.0))
    with pytest.raises(DatasetError) as error:
        other.load_state_dict(state)
    message = str(error.value)
    assert f"data.mean: the config says 60.0, the checkpoint says {PRESETS['kits'].mean}" in message
    assert (
        "data.target_spacing: the config says (2.0, 1.0, 1.0), the checkpoint says (1.0, 1.0, 1.0)" in message
    )
    assert "intensity_window" not in message


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"window": (10.0, -10.0)}, "low < high"),
        ({"std": 0.0}, "std > 0"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing"),
        ({"target_labels": ()}, "target_labels"),
        ({"orientation": "LPS"}, "orientation 'LPS'"),
    ],
)
def test_invalid_preprocessing_is_refused(values, message):
    valid = {
        "spacing": (1.0, 1.0, 1.0),
        "window": (-100.0, 200.0),
        "mean": 50.0,
        "std": 40.0,
        "target_labels": (1,),
    }
    with pytest.raises(DatasetError, match=message):
        Preprocessing(**(valid | values))


def _one_labelled_voxel() -> tio.LabelMap:
    """A 5^3 label map of 3 mm voxels whose centre voxel holds label 2."""
    voxels = torch.zeros(1, 5, 5, 5, dtype=torch.int16)
    voxels[0, 2, 2, 2] = 2
    return tio.LabelMap(tensor=voxels, affine=np.diag([3.0, 3.0, 3.0, 1.0]))


def test_training_labels_are_resampled_linearly_and_thresholded_as_the_authors_resample_them():
    # One labelled 3 mm voxel resampled to 1 mm: its 3^3 block holds the voxel's centre, the 6 voxels
    # 1 mm from it along one axis (linear weight 2/3) and 20 voxels off along two or three (4/9, 8/27).
    label = _one_labelled_voxel()
    nearest, linear = to_grid(label, (1.0, 1.0, 1.0)), to_grid(label, (1.0, 1.0, 1.0), labels="linear")
    assert nearest.data.shape == linear.data.shape == (1, 15, 15, 15)
    assert linear.data.dtype == torch.int16
    assert int((nearest.data == 2).sum()) == 27
    assert int((linear.data == 2).sum()) == 7  # the centre and its 6 face neighbours: weight above 0.5
    assert set(linear.data.unique().tolist()) == {0, 2}
    np.testing.assert_allclose(linear.affine, nearest.affine)
    with pytest.raises(DatasetError, match="label interpolation must be 'nearest' or 'linear'"):
        to_grid(label, (1.0, 1.0, 1.0), labels="cubic")  # type: ignore[arg-type]


def test_the_training_cache_stores_linearly_resampled_labels(tmp_path):
    label = _one_labelled_voxel()
    image = tio.ScalarImage(tensor=torch.zeros(1, 5, 5, 5, dtype=torch.int16), affine=label.affine)
    image.save(tmp_path / "image.nii.gz")
    label.save(tmp_path / "label.nii.gz")
    case = Case("one", tmp_path / "image.nii.gz", tmp_path / "label.nii.gz")
    cached = cache_case(case, tmp_path / "cache", (1.0, 1.0, 1.0))
    assert int((cached.subject().get_label_map("label").data == 2).sum()) == 7
