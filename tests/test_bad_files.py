"""Every file a user hands sam3d, broken four ways: one clear message naming the file, no traceback, no work lost.

The four ways: an empty file, the first half of a valid file, random bytes, and a valid file of another kind.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import SYNTHETIC_CONFIG, predict_options, synthetic_cli_args

from sam3d.cli import main
from sam3d.data.splits import save_splits
from sam3d.data.synthetic import make_synthetic_dataset

BREAKAGES = ("empty", "truncated", "random", "other_kind")
CLICKS_CSV = b"scan,x,y,z,space,label\nphantom_000.nii.gz,32,32,32,voxel,positive\n"
MANIFEST_CSV = b"image,label\nimagesTr/phantom_000.nii.gz,labelsTr/phantom_000.nii.gz\n"


def _broken(path: Path, how: str, valid: bytes, other_kind: bytes) -> Path:
    content = {
        "empty": b"",
        "truncated": valid[: len(valid) // 2],
        "random": np.random.default_rng(0).bytes(4096),
        "other_kind": other_kind,
    }[how]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _refusal(args: list[str]) -> str:
    """The one-line error the command exits with (a string exit code: printed without traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    message = exit_info.value.code
    assert isinstance(message, str), f"exit status {message!r} instead of a sam3d error message"
    assert message.startswith("sam3d: error: ")
    return message


@pytest.fixture(scope="module")
def files(tmp_path_factory, trained) -> dict[str, bytes]:
    """Valid files of each kind, as bytes."""
    from sam3d.models import build_sam_2d
    from sam3d.models.config import VARIANTS

    folder = tmp_path_factory.mktemp("valid")
    torch.save(build_sam_2d(VARIANTS["tiny"]).state_dict(), folder / "sam.pth")
    torch.save({"encoder_dict": {}, "decoder_dict": {}, "feature_dict": []}, folder / "authors.pth.tar")
    data = make_synthetic_dataset(folder / "data", num_cases=1, seed=0)
    split = [
        {
            "case_id": "phantom_000",
            "image": "imagesTr/phantom_000.nii.gz",
            "label": "labelsTr/phantom_000.nii.gz",
        }
    ]
    save_splits(folder / "split.json", "msd", "test", [{"train": split, "val": [], "test": []}])
    return {
        "sam": (folder / "sam.pth").read_bytes(),
        "sam3d": trained[1].read_bytes(),
        "authors": (folder / "authors.pth.tar").read_bytes(),
        "scan": (data / "imagesTr" / "phantom_000.nii.gz").read_bytes(),
        "split": (folder / "split.json").read_bytes(),
        "manifest": json.dumps([{"image": "a.nii.gz", "label": "b.nii.gz"}]).encode(),
        "config": SYNTHETIC_CONFIG.read_bytes(),
    }


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("small") / "data", num_cases=3, seed=1)


def _copy(dataset: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(dataset, tmp_path / "data"))


# Each entry point: (valid content, content of another kind) -> the error message for the broken file.
EntryPoint = Callable[[Path, dict[str, bytes], Path, Path, Path], tuple[Path, str]]


def _sam_checkpoint(tmp, files, how, root, checkpoint):
    path = _broken(tmp / "sam.pth", how, files["sam"], files["sam3d"])
    args = synthetic_cli_args("fit", root, tmp, "--model.sam_checkpoint", str(path))
    return path, _refusal(args)


def _sam3d_checkpoint(tmp, files, how, root, checkpoint):
    path = _broken(tmp / "model.ckpt", how, files["sam3d"], files["sam"])
    return path, _refusal(synthetic_cli_args("test", root, tmp, "--ckpt_path", str(path)))


def _authors_checkpoint(tmp, files, how, root, checkpoint):
    path = _broken(tmp / "best.pth.tar", how, files["authors"], files["sam3d"])
    message = _refusal(["import-reference", str(path), str(tmp / "imported.ckpt")])
    assert not (tmp / "imported.ckpt").exists()
    return path, message


def _scan(tmp, files, how, root, checkpoint):
    root = _copy(root, tmp)
    path = root / "imagesTr" / "phantom_001.nii.gz"
    _broken(path, how, path.read_bytes(), files["sam3d"])
    message = _refusal(["check-dataset", str(root), "--target_label", "1", "--cache_dir", str(tmp / "c")])
    assert "1 of 3 cases have problems" in message
    return path, message


def _label(tmp, files, how, root, checkpoint):
    root = _copy(root, tmp)
    path = root / "labelsTr" / "phantom_001.nii.gz"
    _broken(path, how, path.read_bytes(), files["sam3d"])
    message = _refusal(["check-dataset", str(root), "--target_label", "1", "--cache_dir", str(tmp / "c")])
    assert "1 of 3 cases have problems" in message
    return path, message


def _clicks_file(tmp, files, how, root, checkpoint):
    path = _broken(tmp / "clicks.csv", how, CLICKS_CSV, MANIFEST_CSV)
    scan = root / "imagesTr" / "phantom_000.nii.gz"
    extra = ["--ckpt_path", str(checkpoint), "--data.predict_scans", str([str(scan)])]
    extra += ["--data.predict_clicks", str(path), "--prediction.output_dir", str(tmp / "masks")]
    return path, _refusal(synthetic_cli_args("predict", root, tmp, *extra))


def _split_file(tmp, files, how, root, checkpoint):
    path = _broken(tmp / "split.json", how, files["split"], files["manifest"])
    return path, _refusal(synthetic_cli_args("fit", root, tmp, "--data.split_file", str(path)))


def _manifest(tmp, files, how, root, checkpoint):
    path = _broken(tmp / "manifest.json", how, files["manifest"], files["split"])
    return path, _refusal(["check-dataset", str(path), "--dataset", "manifest", "--target_label", "1"])


def _config(tmp, files, how, root, checkpoint):
    path = _broken(tmp / "config.yaml", how, files["config"], files["split"])
    if how == "truncated":  # cut inside a key: a cut at a line end can leave a shorter, valid config
        valid = files["config"]
        path.write_bytes(valid[: valid.index(b":", len(valid) // 2)])
    return path, _refusal(["fit", "--config", str(path), "--data.root", str(root)])


ENTRY_POINTS: dict[str, EntryPoint] = {
    "sam_checkpoint": _sam_checkpoint,
    "sam3d_checkpoint": _sam3d_checkpoint,
    "authors_checkpoint": _authors_checkpoint,
    "scan": _scan,
    "label": _label,
    "clicks_file": _clicks_file,
    "split_file": _split_file,
    "manifest": _manifest,
    "config": _config,
}


@pytest.mark.parametrize("how", BREAKAGES)
@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_a_broken_file_gives_one_message_naming_it(entry_point, how, files, small_dataset, trained, tmp_path):
    path, message = ENTRY_POINTS[entry_point](tmp_path, files, how, small_dataset, trained[1])
    assert str(path) in message
    assert "Traceback" not in message
    assert len(message) < 2000, message


def _write_clicks(path: Path, scans: list[Path]) -> Path:
    path.write_text("scan,x,y,z,space,label\n" + "".join(f"{s},32,32,32,voxel,positive\n" for s in scans))
    return path


def test_predict_skips_each_broken_scan_and_writes_the_others(
    files, small_dataset, trained, tmp_path, capsys
):
    good = small_dataset / "imagesTr" / "phantom_000.nii.gz"
    broken = [_broken(tmp_path / f"{how}.nii.gz", how, files["scan"], files["sam3d"]) for how in BREAKAGES]
    clicks = _write_clicks(tmp_path / "clicks.csv", [good, *broken])
    options = predict_options(trained[1], [good, *broken], clicks, tmp_path / "masks")
    main(synthetic_cli_args("predict", small_dataset, tmp_path, *options))
    printed = capsys.readouterr().out
    assert (tmp_path / "masks" / "phantom_000_mask.nii.gz").is_file()
    for path in broken:
        line = next(line for line in printed.splitlines() if line.startswith(f"{path.name[:-7]}: skipped"))
        assert str(path) in line
        assert not (tmp_path / "masks" / f"{path.name[:-7]}_mask.nii.gz").exists()


def test_test_skips_each_broken_label_and_scores_the_others(files, trained, tmp_path):
    root = make_synthetic_dataset(tmp_path / "data", num_cases=6, seed=2)
    cases = [f"phantom_{i:03d}" for i in range(6)]
    entries = [
        {"case_id": case, "image": f"imagesTr/{case}.nii.gz", "label": f"labelsTr/{case}.nii.gz"}
        for case in cases
    ]
    split = save_splits(
        tmp_path / "split.json", "msd", "t", [{"train": entries[:1], "val": [], "test": entries[1:]}]
    )
    broken = {}
    for case, how in zip(cases[1:], BREAKAGES, strict=False):
        path = root / "labelsTr" / f"{case}.nii.gz"
        broken[case] = _broken(path, how, path.read_bytes(), files["sam3d"])
    extra = ["--ckpt_path", str(trained[1]), "--data.split_file", str(split)]
    with pytest.warns(UserWarning, match="skipped"):
        main(synthetic_cli_args("test", root, tmp_path, *extra))
    summary = json.loads(next(tmp_path.glob("runs/**/test/summary.json")).read_text())
    assert summary["cases"] == 1  # the one good test case is scored
    assert sorted(summary["skipped"]) == sorted(broken)
    for case, path in broken.items():
        assert str(path) in summary["skipped"][case]
