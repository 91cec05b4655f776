"""Shared test set-up: no network, no W&B, deterministic seeds."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


_TOOL_FOLDERS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}


def _files_under(folder: Path) -> set[str]:
    found = set()
    for parent, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if name not in _TOOL_FOLDERS]
        found.update(os.path.relpath(os.path.join(parent, name), folder) for name in folders + files)
    return found


@pytest.fixture(scope="session", autouse=True)
def _working_folder_stays_clean() -> Iterator[None]:
    """The tests, and the commands they run, leave no file behind in the working folder."""
    folder = Path.cwd()
    before = _files_under(folder)
    yield
    after = _files_under(folder)
    assert after == before, (
        f"the tests changed the working folder {folder}: added {sorted(after - before)[:20]}, "
        f"removed {sorted(before - after)[:20]}"
    )


@pytest.fixture(autouse=True)
def _seed_and_threads() -> None:
    torch.manual_seed(0)


@pytest.fixture
def shared_ct_root() -> Path:
    """The real IBSI soft-tissue sarcoma CT scans beside the checkout, or skip."""
    root = SHARED_DATA / "ibsi-sts-ct"
    if not root.is_dir():
        pytest.skip(f"real CT test data not found at {root} (only present beside the development checkout)")
    return root


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six small synthetic CT phantoms in the MSD layout (session-wide, read-only by convention)."""
    from sam3d.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), num_cases=6, seed=0)


@pytest.fixture(scope="session")
def trained(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny network trained for one epoch on ``synthetic_root``: its working folder and best checkpoint."""
    from cli_helpers import synthetic_cli_args

    from sam3d.cli import main

    workdir = tmp_path_factory.mktemp("trained")
    main(synthetic_cli_args("fit", synthetic_root, workdir))
    return workdir, next(workdir.glob("runs/**/checkpoints/best-*.ckpt"))


@pytest.fixture
def nothing_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails the test if a ``sam3d`` command gets as far as building its model, data module or trainer."""
    from sam3d.cli import Sam3dCLI

    def instantiate_classes(self: Sam3dCLI) -> None:
        raise AssertionError("the command built its classes before refusing the config")

    monkeypatch.setattr(Sam3dCLI, "instantiate_classes", instantiate_classes)
