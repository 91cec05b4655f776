"""The data module resolves one Preprocessing value, saves it as checkpoint state and restores it."""

import io

import pytest
import torch

from sam3d.data import DatasetError, VolumeDataModule
from sam3d.data.catalog import PRESETS
from sam3d.data.preprocessing import Preprocessing


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
