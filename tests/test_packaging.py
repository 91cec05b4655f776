"""A non-editable install from the wheel works outside the clone: configs and the authors' folds ship inside."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]


def _run(*args: object, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_wheel_installed_elsewhere_finds_the_shipped_configs_and_folds(tmp_path):
    # Build from a copy, so that the build leaves nothing (build/, *.egg-info) in the checkout.
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", "runs", "demo_output"
    )
    shutil.copytree(REPOSITORY, source, symlinks=True, ignore=ignore)
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        tmp_path,
        source,
    )
    wheel = next(tmp_path.glob("sam3d-*.whl"))
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if name.startswith("sam3d/configs/")}
    expected = {
        f"sam3d/configs/{p.relative_to(REPOSITORY / 'configs')}" for p in REPOSITORY.glob("configs/**/*.*")
    }
    assert shipped == expected

    # A fresh environment that borrows this one's heavy dependencies but not its editable sam3d.
    environment = tmp_path / "env"
    _run(sys.executable, "-m", "venv", "--without-pip", environment)
    python = environment / "bin" / "python"
    site_packages = Path(
        _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    )
    (site_packages / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    printed = _run(
        environment / "bin" / "sam3d",
        "fit",
        "--config",
        "kits.yaml",
        "--data.root",
        elsewhere,
        "--print_config",
        cwd=elsewhere,
    )
    assert "dataset: kits" in printed
    assert "name: kits-fold0" in printed
    folds = _run(
        python,
        "-c",
        "import sam3d; from sam3d.data.splits import SHIPPED_SPLITS, load_splits; "
        "split = load_splits(SHIPPED_SPLITS / 'kits.json'); "
        "print(sam3d.__file__); print(len(split.folds), len(split.fold(0)['train']))",
        cwd=elsewhere,
    ).split()
    assert Path(folds[0]).is_relative_to(site_packages)  # the installed copy, not the checkout
    assert folds[1] == "5"
    assert int(folds[2]) > 100
