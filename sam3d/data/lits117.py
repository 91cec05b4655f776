"""LiTS case 117 from PyPI's ``liver-ct-segmentation-package`` as a held-out sam3d test case.

The wheel (MIT) ships a 128^3 crop of LiTS ``volume-117`` (in the test part of fold 0 of the authors'
LiTS split) as MRC files: ``data/img_117.mrc`` (float32, HU) and ``data/lab_117.mrc`` (uint16, 0
background, 1 liver, 2 tumour). Only these data files are read; the package's modules are never
imported (its declared dependencies are not installed: ``pip install --no-deps``).

MRC stores columns fastest, so the array read in C order is ``(sections, rows, columns)``. Looking
at the slices, array axis 0 (the MRC sections) is the axial one: its slices are transverse
cross-sections, and the liver's dome lies at low indices (the index grows towards the feet). The
crop's spacing and its place in the original scan are not stored (the header's cell size is 0).
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from sam3d.data.errors import DatasetError
from sam3d.data.splits import SHIPPED_SPLITS, load_splits, save_splits

__all__ = [
    "ASSUMED_SPACING_MM",
    "CASE_ID",
    "INSTALL_COMMAND",
    "Lits117Target",
    "lits117_files",
    "read_mrc",
    "write_lits117",
]

PACKAGE = "liver-ct-segmentation-package"
INSTALL_COMMAND = f"pip install --no-deps {PACKAGE}==1.6.0"
CASE_ID = "volume-117"
# Not stored in the files: 1 mm is the authors' LiTS resampling spacing, so sam3d's preprocessing keeps
# the crop's grid as it is. The anatomy (a kidney ~35 voxels across) suggests voxels of 1-1.6 mm.
ASSUMED_SPACING_MM = 1.0
Lits117Target = Literal["tumour", "liver"]

HEADER_BYTES = 1024
# MRC2014 data modes this reader takes: 0 int8, 1 int16, 2 float32, 6 uint16.
MRC_MODES: dict[int, str] = {0: "i1", 1: "i2", 2: "f4", 6: "u2"}


def _header_problem(path: Path, what: str) -> DatasetError:
    return DatasetError(f"{path} is not an MRC volume sam3d can read: {what}")


def read_mrc(path: str | Path) -> np.ndarray:
    """Read an MRC volume (1024-byte header, optional extended header, then the voxels) with NumPy.

    Args:
        path: The ``.mrc`` file.

    Returns:
        The voxels as ``(sections, rows, columns)`` (``nz, ny, nx``), in the file's data type.

    Raises:
        DatasetError: If the file is missing, its header is not an MRC header this reader takes (size,
            byte order, mode, map stamp) or its size does not match the header.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DatasetError(f"cannot read MRC file {path}: {error}") from None
    if len(raw) < HEADER_BYTES:
        raise _header_problem(path, f"{len(raw)} bytes, shorter than the {HEADER_BYTES}-byte header")
    if raw[208:212] != b"MAP ":
        raise _header_problem(path, f"no 'MAP ' stamp at bytes 208-211 (found {raw[208:212]!r})")
    stamp = raw[212]
    if stamp not in (0x44, 0x41):  # 0x44 0x44 / 0x44 0x41: little-endian; 0x11 0x11: big-endian
        raise _header_problem(path, f"machine stamp {raw[212:214].hex()} is not little-endian")
    nx, ny, nz, mode = (int(v) for v in np.frombuffer(raw, "<i4", count=4))
    extended = int(np.frombuffer(raw, "<i4", count=1, offset=92)[0])  # NSYMBT
    if min(nx, ny, nz) < 1 or extended < 0:
        raise _header_problem(path, f"dimensions {(nx, ny, nz)} and extended header size {extended}")
    if mode not in MRC_MODES:
        modes = ", ".join(f"{key} ({value})" for key, value in MRC_MODES.items())
        raise _header_problem(path, f"data mode {mode}; this reader takes modes {modes}")
    dtype = np.dtype("<" + MRC_MODES[mode])
    expected = HEADER_BYTES + extended + nx * ny * nz * dtype.itemsize
    if len(raw) != expected:
        raise _header_problem(
            path, f"{len(raw)} bytes where the header ({nx}x{ny}x{nz}, mode {mode}) means {expected}"
        )
    voxels = np.frombuffer(raw, dtype, offset=HEADER_BYTES + extended)
    return voxels.reshape(nz, ny, nx).astype(dtype.newbyteorder("="))


def lits117_files() -> tuple[Path, Path]:
    """The image and label MRC files of the installed ``liver-ct-segmentation-package``.

    Raises:
        DatasetError: If the package (or its data files) is not installed, naming the install command.
    """
    try:
        distribution = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise DatasetError(
            f"the LiTS case 117 comes from the PyPI package {PACKAGE}, which is not installed: "
            f"run `{INSTALL_COMMAND}` (--no-deps: only its data files are read)"
        ) from None
    files = []
    for name in ("img_117.mrc", "lab_117.mrc"):
        path = Path(str(distribution.locate_file(f"liver_ct_segmentation_package/data/{name}")))
        if not path.is_file():
            raise DatasetError(
                f"{PACKAGE} is installed without its data file {path}: reinstall it, `{INSTALL_COMMAND}`"
            )
        files.append(path)
    return files[0], files[1]


def _nifti_layout(array: np.ndarray) -> np.ndarray:
    """MRC ``(sections, rows, columns)`` to NIfTI ``(i, j, k)`` with the axial axis last, as CT files have it."""
    return np.ascontiguousarray(array.transpose(2, 1, 0))


def _affine(spacing: float) -> np.ndarray:
    # k (the MRC sections) is axial and grows towards the feet: superior is -k. The in-plane directions
    # are not known; i and j are declared as +x and +y.
    return np.diag([spacing, spacing, -spacing, 1.0])


def _fold0_split(root: Path, image: str, label: str) -> Path:
    """The authors' LiTS fold 0 with its test part narrowed to volume-117, saved as ``root/split.json``.

    The training and validation entries are kept as the record of what the case is held out from; their
    files are absent, so the split serves ``sam3d test``, which reads the test part only.
    """
    reference = load_splits(SHIPPED_SPLITS / "lits.json").fold(0)
    if not any(entry["case_id"] == CASE_ID for entry in reference["test"]):
        raise DatasetError(f"{CASE_ID} is not in the test part of fold 0 of {SHIPPED_SPLITS / 'lits.json'}")
    fold = {
        "train": reference["train"],
        "val": reference["val"],
        "test": [{"case_id": CASE_ID, "image": image, "label": label}],
    }
    source = f"fold 0 of the authors' LiTS split, test part narrowed to {CASE_ID} (sam3d make-lits117)"
    return save_splits(root / "split.json", "msd", source, [fold])


def write_lits117(
    root: str | Path, target: Lits117Target = "tumour", spacing: float = ASSUMED_SPACING_MM
) -> Path:
    """Write LiTS case 117 as NIfTI in the MSD layout, with a one-fold split file that tests it.

    Writes ``imagesTr/volume-117.nii.gz`` (float32 HU), ``labelsTr/volume-117.nii.gz`` (1 = the target),
    ``labelsTr/volume-117_classes.nii.gz`` (the original 0/1/2 labels), ``dataset.json`` and
    ``split.json``.

    Args:
        root: Output folder (created; an earlier copy is overwritten).
        target: ``tumour`` (label 2) or ``liver`` (liver and tumour, labels 1 and 2).
        spacing: Isotropic voxel size in mm to declare (the files do not store one).

    Returns:
        The dataset folder.

    Raises:
        DatasetError: If the package is missing, the target or spacing is invalid, or the files are bad.
    """
    if target not in ("tumour", "liver"):
        raise DatasetError(f"target must be tumour or liver, got {target!r}")
    if not 0.1 <= spacing <= 10.0:
        raise DatasetError(f"spacing must be a voxel size in mm between 0.1 and 10, got {spacing}")
    image_file, label_file = lits117_files()
    image, classes = read_mrc(image_file), read_mrc(label_file)
    if image.shape != classes.shape or not set(np.unique(classes).tolist()) <= {0, 1, 2}:
        raise DatasetError(f"{image_file} and {label_file} are not an image and a 0/1/2 label of one grid")
    mask = classes == 2 if target == "tumour" else classes > 0
    root = Path(root).expanduser()
    affine = _affine(spacing)
    volumes = {
        f"imagesTr/{CASE_ID}.nii.gz": image.astype(np.float32),  # HU with quarter steps: kept as float32
        f"labelsTr/{CASE_ID}.nii.gz": mask.astype(np.uint8),
        f"labelsTr/{CASE_ID}_classes.nii.gz": classes.astype(np.uint8),
    }
    for name, array in volumes.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        nifti = nib.Nifti1Image(_nifti_layout(array), affine)
        nifti.header.set_xyzt_units("mm")
        nib.save(nifti, str(root / name))
    image_entry, label_entry = f"./imagesTr/{CASE_ID}.nii.gz", f"./labelsTr/{CASE_ID}.nii.gz"
    listing = {
        "name": f"LiTS {CASE_ID} (128^3 crop from PyPI {PACKAGE} 1.6.0)",
        "description": "held-out LiTS case; spacing assumed, the crop's place in the scan unknown (sam3d.data.lits117)",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": target},
        "numTraining": 1,
        "training": [{"image": image_entry, "label": label_entry}],
        "assumed_spacing_mm": [spacing] * 3,
        "source": f"{image_file.name}, {label_file.name} of {PACKAGE} 1.6.0 (MIT)",
    }
    (root / "dataset.json").write_text(json.dumps(listing, indent=1) + "\n")
    _fold0_split(root, image_entry, label_entry)
    return root
