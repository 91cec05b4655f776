import json

import nibabel as nib
import numpy as np
import torch

from sam3d.data.catalog import discover
from sam3d.data.synthetic import make_synthetic_dataset
from sam3d.data.training.cache import cache_cases


def test_generator_is_seeded_and_varies_geometry(tmp_path, synthetic_root):
    again = make_synthetic_dataset(tmp_path / "again", num_cases=2, seed=0)
    for case in ("phantom_000", "phantom_001"):
        a = nib.load(synthetic_root / "imagesTr" / f"{case}.nii.gz")
        b = nib.load(again / "imagesTr" / f"{case}.nii.gz")
        assert np.array_equal(a.get_fdata(), b.get_fdata())
        assert np.allclose(a.affine, b.affine)
    info = json.loads((synthetic_root / "dataset.json").read_text())["phantoms"]
    assert len({p["axis_codes"] for p in info.values()}) > 1
    assert len({tuple(p["spacing_mm"]) for p in info.values()}) == len(info)
    assert all(p["lesion_voxels"] > 50 and 20 <= p["contrast_hu"] <= 40 for p in info.values())


def test_canonical_resampled_lesion_lands_where_the_phantom_put_it(tmp_path, synthetic_root):
    """Orientation handling: after reorientation and resampling the lesion is at its world position."""
    info = json.loads((synthetic_root / "dataset.json").read_text())["phantoms"]
    cached, problems = cache_cases(
        list(discover(synthetic_root, "msd").cases.values()), tmp_path, (1.0, 1.0, 1.0)
    )
    assert not problems
    for case_id, case in cached.items():
        label = case.subject()["label"]
        assert np.allclose(np.diag(label.affine)[:3], 1.0)  # canonical RAS+, 1 mm
        voxels = torch.nonzero(label.data[0] > 0).double().mean(0).numpy()
        world = label.affine[:3, :3] @ voxels + label.affine[:3, 3]
        assert np.linalg.norm(world - np.array(info[case_id]["lesion_centre_mm"])) < 4.0, case_id
