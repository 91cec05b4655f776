"""Seeded CT-like phantoms with small, irregular, low-contrast lesions, written in the MSD layout.

Each case is a body cross-section (soft tissue with a fat layer, a spine, two organs) in Hounsfield
units with correlated noise, and one lesion inside the larger organ: an ellipsoid with a randomly
perturbed boundary, 20-40 HU brighter than the organ, blurred at its edge. Spacing, field of view
and voxel orientation (axis order and direction) change from case to case; the anatomy is defined
in world millimetres, so every orientation shows the same kind of scene.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from sam3d.data.errors import DatasetError

__all__ = ["make_synthetic_dataset"]


def _ellipsoid(
    points: np.ndarray, centre: np.ndarray, axes: np.ndarray, rotation: np.ndarray | None = None
) -> np.ndarray:
    local = points - centre
    if rotation is not None:
        local = local @ rotation
    return ((local / axes) ** 2).sum(axis=-1)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float | list[float]) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return noise / (noise.std() + 1e-8)


def _case(
    rng: np.random.Generator, lesion_radius_mm: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, object]]:
    in_plane, slice_mm = rng.uniform(1.0, 1.6), rng.uniform(1.5, 2.5)
    world_spacing = np.array([in_plane, in_plane, slice_mm])
    fov = np.array([rng.uniform(100, 140), rng.uniform(90, 120), rng.uniform(80, 110)])
    # Voxel axis i runs along world axis order[i] in direction signs[i].
    order = [1, 0, 2] if rng.random() < 0.5 else [0, 1, 2]
    signs = rng.choice([-1.0, 1.0], size=3)
    spacing = world_spacing[order]
    shape = tuple(round(f / s) for f, s in zip(fov[order], spacing, strict=True))
    affine = np.eye(4)
    for i, axis in enumerate(order):
        affine[axis, :] = 0
        affine[axis, i] = signs[i] * spacing[i]
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2)  # world origin at the volume centre
    index = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).astype(float)
    world = index @ affine[:3, :3].T + affine[:3, 3]

    flat = world * np.array([1, 1, 0])  # cross-sections: extend along z
    body_axes = np.array([0.46 * fov[0], 0.42 * fov[1], 1.0])
    image = np.full(shape, -1000.0)
    image[_ellipsoid(flat, np.zeros(3), body_axes) < 1] = -90.0  # fat
    image[_ellipsoid(flat, np.zeros(3), body_axes - [6, 6, 0]) < 1] = rng.uniform(
        35, 45
    )  # muscle/soft tissue
    spine_centre = np.array([0.0, -0.25 * fov[1], 0.0])
    image[_ellipsoid(flat, spine_centre, np.array([10.0, 10.0, 1.0])) < 1] = rng.uniform(300, 450)
    side = rng.choice([-1.0, 1.0])
    organ_centre = np.array([side * 0.15 * fov[0], 0.05 * fov[1], rng.uniform(-5, 5)])
    organ_axes = rng.uniform([28, 24, 30], [38, 32, 42])
    organ_rotation = _rotation(rng)
    organ = _ellipsoid(world, organ_centre, organ_axes, organ_rotation) < 1
    organ_hu = rng.uniform(55, 70)
    image[organ] = organ_hu
    kidney = (
        _ellipsoid(world, np.array([-side * 0.22 * fov[0], -0.05 * fov[1], 0.0]), np.array([14, 12, 22.0]))
        < 1
    )
    image[kidney] = rng.uniform(25, 35)

    radius = rng.uniform(*lesion_radius_mm)
    lesion_axes = radius * rng.uniform(0.75, 1.25, size=3)
    offset = rng.uniform(-1, 1, size=3) * np.clip(organ_axes - lesion_axes.max(), 0, None) * 0.5
    lesion_centre = organ_centre + organ_rotation @ offset
    boundary = 1.0 + 0.3 * np.tanh(_smooth_noise(rng, shape, 3.0))  # irregular outline
    label = (_ellipsoid(world, lesion_centre, lesion_axes, _rotation(rng)) < boundary) & organ
    contrast = rng.uniform(20, 40)
    texture = 4.0 * _smooth_noise(rng, shape, 1.5)
    lesion_map = ndimage.gaussian_filter(label.astype(float), 0.6)  # partial-volume edge
    image += lesion_map * (contrast + texture) * (image > -200)
    noise_sd = rng.uniform(10, 15)
    image += noise_sd * _smooth_noise(rng, shape, 0.6)
    info = {
        "lesion_centre_mm": [round(float(c), 2) for c in lesion_centre],
        "lesion_voxels": int(label.sum()),
        "contrast_hu": round(float(contrast), 1),
        "noise_sd_hu": round(float(noise_sd), 1),
        "spacing_mm": [round(float(s), 3) for s in spacing],
        "axis_codes": "".join(nib.aff2axcodes(affine)),
    }
    return np.round(image).astype(np.int16), label.astype(np.uint8), affine, info


def make_synthetic_dataset(
    root: str | Path,
    num_cases: int = 8,
    seed: int = 0,
    lesion_radius_mm: tuple[float, float] = (8.0, 16.0),
) -> Path:
    """Write CT-like phantoms with one lesion each in the MSD layout (``imagesTr``, ``labelsTr``, ``dataset.json``).

    Args:
        root: Output folder (created; existing cases are overwritten).
        num_cases: Number of cases.
        seed: Seed; the same seed writes the same files.
        lesion_radius_mm: Range of the lesions' mean radius in mm.

    Returns:
        The dataset folder, usable with ``dataset="msd"`` (label 1 = lesion).
    """
    if num_cases < 1:
        raise DatasetError(f"num_cases must be >= 1, got {num_cases}")
    root = Path(root).expanduser()
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    training, phantoms = [], {}
    for index in range(num_cases):
        case_id = f"phantom_{index:03d}"
        image, label, affine, info = _case(np.random.default_rng([seed, index]), lesion_radius_mm)
        for array, folder in ((image, "imagesTr"), (label, "labelsTr")):
            nifti = nib.Nifti1Image(array, affine)
            nifti.header.set_xyzt_units("mm")
            nib.save(nifti, str(root / folder / f"{case_id}.nii.gz"))
        training.append({"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})
        phantoms[case_id] = info
    listing = {
        "name": "sam3d synthetic phantoms",
        "description": "CT-like phantoms with small, irregular, low-contrast lesions (sam3d.data.synthetic)",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "tumour"},
        "numTraining": num_cases,
        "training": training,
        "seed": seed,
        "phantoms": phantoms,
    }
    (root / "dataset.json").write_text(json.dumps(listing, indent=1) + "\n")
    return root
