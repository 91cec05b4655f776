"""LiTS case 117 (PyPI liver-ct-segmentation-package) as a held-out test case: MRC reader, data route, test/predict."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cli_helpers import SYNTHETIC_CONFIG, predict_options, synthetic_cli_args
from scipy import ndimage

from sam3d.cli import main
from sam3d.data.errors import DatasetError
from sam3d.data.lits117 import CASE_ID, INSTALL_COMMAND, lits117_files, read_mrc, write_lits117

# The issue's facts about the crop: tumour voxels and components (6-connectivity; 26-connectivity gives 70).
TUMOUR_VOXELS, TUMOUR_COMPONENTS, LIVER_AND_TUMOUR_VOXELS = 130_083, 79, 485_268 + 130_083


def _write_mrc(
    path: Path, array: np.ndarray, mode: int, *, extended: bytes = b"", stamp: bytes = b"DD\0\0"
) -> None:
    header = np.zeros(256, "<i4")
    header[:3] = array.shape[::-1]
    header[3] = mode
    header[23] = len(extended)
    raw = bytearray(header.tobytes())
    raw[208:212], raw[212:216] = b"MAP ", stamp
    path.write_bytes(bytes(raw) + extended + array.tobytes())


def test_mrc_reader_reads_the_header_shape_mode_and_skips_the_extended_header(tmp_path):
    volume = np.arange(2 * 3 * 4, dtype="<f4").reshape(2, 3, 4) - 1000.25
    _write_mrc(tmp_path / "v.mrc", volume, mode=2, extended=b"x" * 80)
    read = read_mrc(tmp_path / "v.mrc")
    assert read.dtype == np.float32
    np.testing.assert_array_equal(read, volume)  # (nz, ny, nx): columns vary fastest
    labels = np.array([[[0, 1], [2, 1]]], dtype="<u2")
    _write_mrc(tmp_path / "l.mrc", labels, mode=6)
    np.testing.assert_array_equal(read_mrc(tmp_path / "l.mrc"), labels)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: raw[:500], "shorter than the 1024-byte header"),
        (lambda raw: raw[:208] + b"PAM " + raw[212:], "'MAP ' stamp"),
        (lambda raw: raw[:212] + b"\x11\x11" + raw[214:], "not little-endian"),
        (lambda raw: raw[:12] + np.int32(4).tobytes() + raw[16:], "data mode 4"),
        (lambda raw: raw[:-4], "bytes where the header (4x3x2, mode 2) means"),
    ],
)
def test_mrc_reader_refuses_a_bad_header_naming_the_file(tmp_path, damage, message):
    _write_mrc(tmp_path / "v.mrc", np.zeros((2, 3, 4), "<f4"), mode=2)
    bad = tmp_path / "bad.mrc"
    bad.write_bytes(damage((tmp_path / "v.mrc").read_bytes()))
    with pytest.raises(DatasetError, match=r"bad\.mrc") as error:
        read_mrc(bad)
    assert message in str(error.value)


def test_missing_package_error_names_the_install_command(monkeypatch):
    import importlib.metadata

    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(DatasetError, match="not installed") as error:
        lits117_files()
    assert INSTALL_COMMAND in str(error.value)


@pytest.fixture(scope="module")
def lits117(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LiTS case 117 written by the data route, or skip when the package is not installed."""
    try:
        lits117_files()
    except DatasetError as error:
        pytest.skip(f"LiTS case 117 unavailable ({error}); `make install` installs it")
    return write_lits117(tmp_path_factory.mktemp("lits117"))


def test_route_writes_the_case_with_the_issues_label_statistics(lits117, tmp_path):
    image = nib.load(lits117 / "imagesTr" / f"{CASE_ID}.nii.gz")
    label = nib.load(lits117 / "labelsTr" / f"{CASE_ID}.nii.gz")
    classes = np.asarray(nib.load(lits117 / "labelsTr" / f"{CASE_ID}_classes.nii.gz").dataobj)
    assert image.shape == label.shape == (128, 128, 128)
    np.testing.assert_allclose(image.affine, np.diag([1.0, 1.0, -1.0, 1.0]))
    np.testing.assert_allclose(label.affine, image.affine)
    tumour = np.asarray(label.dataobj)
    assert set(np.unique(tumour)) == {0, 1}
    np.testing.assert_array_equal(tumour == 1, classes == 2)
    assert int(tumour.sum()) == TUMOUR_VOXELS
    assert ndimage.label(tumour)[1] == TUMOUR_COMPONENTS
    assert ndimage.label(tumour, np.ones((3, 3, 3)))[1] == 70  # 79 holds for 6-connectivity only
    hu = np.asarray(image.dataobj)
    assert hu.dtype == np.float32
    assert -1100 < hu.min() < -1000  # HU, not rescaled
    assert hu.max() > 1000
    assert 40 < np.median(hu[tumour == 0][classes[tumour == 0] == 1]) < 200  # enhanced liver parenchyma
    listing = json.loads((lits117 / "dataset.json").read_text())
    assert listing["labels"] == {"0": "background", "1": "tumour"}
    split = json.loads((lits117 / "split.json").read_text())["folds"][0]
    assert [entry["case_id"] for entry in split["test"]] == [CASE_ID]
    assert CASE_ID not in {entry["case_id"] for entry in split["train"] + split["val"]}
    liver = write_lits117(tmp_path / "liver", target="liver", spacing=0.8)
    liver_label = nib.load(liver / "labelsTr" / f"{CASE_ID}.nii.gz")
    assert int(np.asarray(liver_label.dataobj).sum()) == LIVER_AND_TUMOUR_VOXELS
    np.testing.assert_allclose(liver_label.header.get_zooms(), (0.8, 0.8, 0.8))


def test_route_refuses_a_bad_target_or_spacing(tmp_path):
    with pytest.raises(DatasetError, match="target must be tumour or liver"):
        write_lits117(tmp_path, target="kidney")  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="spacing must be"):
        write_lits117(tmp_path, spacing=0.0)


def test_make_lits117_command_reports_a_bad_option_as_a_clear_error(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["make-lits117", str(tmp_path / "lits117"), "--spacing", "0"])
    assert str(exit_info.value.code).startswith("sam3d: error: spacing must be a voxel size in mm")
    assert not (tmp_path / "lits117").exists()


def _lits_args(subcommand: str, root: Path, workdir: Path, *extra: str) -> list[str]:
    return synthetic_cli_args(
        subcommand, root, workdir, "--data.split_file", str(root / "split.json"), *extra
    )


def _test_rows(root: Path, workdir: Path, checkpoint: Path, *extra: str) -> tuple[list[dict], dict]:
    main(_lits_args("test", root, workdir, "--ckpt_path", str(checkpoint), *extra))
    folder = next(workdir.glob("runs/**/test"))
    with open(folder / "cases.csv") as stream:
        rows = list(csv.DictReader(stream))
    return rows, json.loads((folder / "summary.json").read_text())


@pytest.mark.slow
def test_sam3d_test_full_protocol_and_predict_run_on_lits117(lits117, trained, tmp_path, capsys):
    # One step only: on 2 loaded CPU cores each step of the tiny network on this case takes ~2 minutes.
    _, checkpoint = trained
    extra = ("--evaluation.protocol", "full", "--evaluation.first_click", "center")
    rows, summary = _test_rows(lits117, tmp_path / "full", checkpoint, *extra)
    assert [(row["case"], int(row["clicks"])) for row in rows] == [(CASE_ID, 1)]
    assert summary["cases"] == 1
    assert not summary.get("skipped")
    for metric in ("dice", "nsd"):
        assert 0 <= float(rows[0][metric]) <= 1
    assert math.isfinite(float(rows[0]["hd95"]))

    scan = lits117 / "imagesTr" / f"{CASE_ID}.nii.gz"
    tumour = np.asarray(nib.load(lits117 / "labelsTr" / scan.name).dataobj)
    components, _ = ndimage.label(tumour)
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    inside = np.argwhere(components == largest)
    i, j, k = (float(c) for c in inside[len(inside) // 2])
    click = {"type": "click", "position": [i, j, k], "space": "voxel", "label": "positive"}
    clicks = tmp_path / "clicks.json"
    clicks.write_text(json.dumps({"scans": [{"scan": scan.name, "interactions": [click]}]}))
    output = tmp_path / "masks"
    main(["predict", "--config", str(SYNTHETIC_CONFIG), *predict_options(checkpoint, [scan], clicks, output),
          "--trainer.logger", "false"])  # fmt: skip
    assert f"{CASE_ID}: 1 click(s)" in capsys.readouterr().out
    mask, source = nib.load(output / f"{CASE_ID}_mask.nii.gz"), nib.load(scan)
    assert mask.shape == source.shape
    np.testing.assert_allclose(mask.affine, source.affine)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}


@pytest.mark.slow
def test_sam3d_test_cvpr25_protocol_runs_on_lits117(lits117, trained, tmp_path):
    # Six steps (~2 minutes each on 2 loaded CPU cores for the tiny network): the slowest test here.
    _, checkpoint = trained
    rows, summary = _test_rows(lits117, tmp_path / "cvpr25", checkpoint, "--evaluation.protocol", "cvpr25")
    assert [(row["case"], int(row["clicks"])) for row in rows] == [(CASE_ID, n) for n in range(6)]
    assert all(0 <= float(row["dice"]) <= 1 for row in rows)
    assert all(float(row["nsd"]) == 0 for row in rows if float(row["dice"]) <= 0.2)  # the challenge's gate
    assert math.isfinite(summary["cvpr25"]["dsc_auc"]["mean"])


REFERENCE_CHECKPOINT = "SAM3D_LITS_REFERENCE_CHECKPOINT"
BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "lits117.py"


@pytest.mark.slow
def test_imported_reference_checkpoint_tests_on_lits117(lits117, tmp_path):
    source = os.environ.get(REFERENCE_CHECKPOINT)
    if not source:
        pytest.skip(
            f"set {REFERENCE_CHECKPOINT} to the authors' LiTS checkpoint to test its import on volume-117"
        )
    spec = importlib.util.spec_from_file_location("lits117_benchmark", BENCHMARK)
    assert spec is not None
    assert spec.loader is not None
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    rows = benchmark.import_and_test_reference(Path(source), lits117, tmp_path)
    assert [int(row["clicks"]) for row in rows] == [1]
    assert all(math.isfinite(float(row["dice"])) for row in rows)
