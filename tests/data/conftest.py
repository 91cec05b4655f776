"""Fixtures for the data-pipeline tests: hand-made (defective) cases; ``synthetic_root`` is in tests/conftest.py."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def blob_case(
    shape: tuple[int, int, int] = (24, 24, 24), label_value: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like cube (body 40 HU, air around) with a bright cubic lesion in the middle."""
    image = np.full(shape, -1000, np.int16)
    image[2:-2, 2:-2, 2:-2] = 40
    label = np.zeros(shape, np.uint8)
    c = [n // 2 for n in shape]
    label[c[0] - 3 : c[0] + 3, c[1] - 3 : c[1] + 3, c[2] - 3 : c[2] + 3] = label_value
    image[label > 0] = 80
    return image, label


def write_msd(
    root: Path, cases: dict[str, tuple[np.ndarray, np.ndarray]], affine: np.ndarray | None = None
) -> Path:
    """Write cases (image, label arrays) in the MSD layout with a dataset.json."""
    training = []
    for case_id, (image, label) in cases.items():
        write_nifti(root / "imagesTr" / f"{case_id}.nii.gz", image, affine)
        write_nifti(root / "labelsTr" / f"{case_id}.nii.gz", label, affine)
        training.append({"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})
    listing = {"labels": {"0": "background", "1": "tumour"}, "training": training}
    (root / "dataset.json").write_text(json.dumps(listing))
    return root


@pytest.fixture
def blob_root(tmp_path: Path) -> Path:
    """Six tiny valid blob cases in the MSD layout."""
    return write_msd(tmp_path / "blobs", {f"case_{i}": blob_case() for i in range(6)})


@pytest.fixture
def volumes() -> SimpleNamespace:
    """The helpers above, for tests that build their own (defective) cases."""
    return SimpleNamespace(blob_case=blob_case, write_msd=write_msd, write_nifti=write_nifti)
