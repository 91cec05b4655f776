"""Checkpoints survive a full disk, ``--ckpt_path best|last`` never picks an incomplete file, a resumed run keeps
its run folder and best score, and unusable checkpoints or tests end in ``sam3d: error:`` lines."""

from __future__ import annotations

import builtins
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from cli_helpers import synthetic_cli_args

from sam3d.cli import main
from sam3d.task import SegmentationTask

FAST = ("--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1")
CSV = ("--trainer.logger", "lightning.pytorch.loggers.CSVLogger")


class _FullDisk:
    """A disk holding ``folder`` that fills up: writes there fail with ENOSPC once ``room`` bytes are written.

    The system's temporary folder is another filesystem (as a tmpfs ``/tmp`` is): renames between the two
    fail with EXDEV, so files moved from there are copied.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, folder: Path, temporary: Path, room: int) -> None:
        self.folder, self.temporary, self.room = folder.resolve(), temporary.resolve(), room
        temporary.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(temporary))
        monkeypatch.setattr(shutil, "_USE_CP_SENDFILE", False)  # copies through file writes
        for name in ("rename", "replace"):
            monkeypatch.setattr(os, name, self._same_disk_only(getattr(os, name)))
        monkeypatch.setattr(builtins, "open", self._open(builtins.open))

    def _on_temporary_disk(self, path: Any) -> bool:
        return Path(os.fspath(path)).resolve().is_relative_to(self.temporary)

    def _same_disk_only(self, move: Any) -> Any:
        def guarded(source: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
            if self._on_temporary_disk(source) != self._on_temporary_disk(target):
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            return move(source, target, *args, **kwargs)

        return guarded

    def _open(self, real_open: Any) -> Any:
        disk = self

        class FillingFile:
            def __init__(self, stream: Any) -> None:
                self._stream = stream

            def write(self, data: Any) -> int:
                if disk.room <= 0:
                    raise OSError(errno.ENOSPC, "No space left on device")
                written = self._stream.write(data[: disk.room])
                disk.room -= written
                if written < len(data):
                    raise OSError(errno.ENOSPC, "No space left on device")
                return written

            def __getattr__(self, name: str) -> Any:
                return getattr(self._stream, name)

            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: object) -> None:
                self._stream.close()

        def opening(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            stream = real_open(file, mode, *args, **kwargs)
            writes = any(flag in mode for flag in "wax+")
            if (
                writes
                and not isinstance(file, int)
                and Path(os.fspath(file)).resolve().is_relative_to(disk.folder)
            ):
                return FillingFile(stream)
            return stream

        return opening


def _checkpoints(workdir: Path) -> Path:
    return next((workdir / "runs").glob("**/checkpoints"))


def _checkpoint_files(workdir: Path) -> dict[str, tuple[int, str]]:
    """Every file in the checkpoints folders of the runs, by path: its size and SHA-256."""
    files = (workdir / "runs").glob("**/checkpoints/*")
    return {
        str(path.relative_to(workdir)): (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
        for path in files
    }


@contextmanager
def _validation_dice(by_epoch: dict[int, float]) -> Iterator[None]:
    """Make the logged ``val/dice`` of each epoch the one given (the best checkpoint's score)."""

    def logging_given_dice(self: SegmentationTask) -> None:
        self.val_dice.reset()
        self.log("val/dice", by_epoch[self.current_epoch], prog_bar=True)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SegmentationTask, "on_validation_epoch_end", logging_given_dice)
        yield


DICE = {0: 0.9, 1: 0.2}  # the second epoch scores worse: `best` must stay the first epoch's checkpoint


@pytest.fixture(scope="module")
def one_epoch(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The working folder of a one-epoch fit logged with the CSV logger, and a pristine copy of it."""
    workdir = tmp_path_factory.mktemp("one-epoch")
    with _validation_dice(DICE):
        main(synthetic_cli_args("fit", synthetic_root, workdir, *CSV, *FAST))
    pristine = tmp_path_factory.mktemp("pristine") / "work"
    shutil.copytree(workdir, pristine)
    return workdir, pristine


@pytest.fixture
def workdir(one_epoch: tuple[Path, Path]) -> Iterator[Path]:
    """:func:`one_epoch`'s folder, restored after the test (in place: checkpoints hold its absolute paths)."""
    workdir, pristine = one_epoch
    yield workdir
    shutil.rmtree(workdir)
    shutil.copytree(pristine, workdir)


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_save_leaves_the_previous_checkpoint_whole(
    synthetic_root, workdir, tmp_path, monkeypatch
):
    folder = _checkpoints(workdir)
    before = _checkpoint_files(workdir)
    with monkeypatch.context() as patch:
        _FullDisk(
            patch, workdir, tmp_path / "system-temporary", room=(folder / "last.ckpt").stat().st_size // 2
        )
        with pytest.raises(SystemExit, match="the disk is full"):
            main(
                synthetic_cli_args(
                    "fit",
                    synthetic_root,
                    workdir,
                    *CSV,
                    *FAST,
                    "--trainer.max_epochs",
                    "2",
                    "--ckpt_path",
                    "last",
                )
            )
    # The checkpoints of the first epoch, whole; no partial file of the second epoch's save anywhere.
    assert _checkpoint_files(workdir) == before
    assert torch.load(folder / "last.ckpt", weights_only=True)["epoch"] == 0


@pytest.mark.slow
def test_best_and_last_skip_a_truncated_newest_checkpoint_saying_so(synthetic_root, workdir, capsys):
    older = _checkpoints(workdir)
    newer = older.parent.parent / "version_9" / "checkpoints"  # a later run whose saves were cut short
    newer.mkdir(parents=True)
    for complete in older.glob("*.ckpt"):
        (newer / complete.name).write_bytes(complete.read_bytes()[:1000])
    capsys.readouterr()
    for name in ("last", "best"):
        main(synthetic_cli_args("validate", synthetic_root, workdir, *CSV, *FAST, "--ckpt_path", name))
        err = capsys.readouterr().err
        skipped = next(newer.glob("last.ckpt" if name == "last" else "best-*.ckpt"))
        assert f"--ckpt_path {name}: skipped, as it does not load: checkpoint {skipped}" in err
        chosen = next(older.glob("last.ckpt" if name == "last" else "best-*.ckpt"))
        assert f"using checkpoint {chosen}" in err


@pytest.mark.slow
@pytest.mark.parametrize("resume_from", ["last", "path"])
def test_a_resumed_csv_run_keeps_its_run_folder_metrics_and_best_score(synthetic_root, workdir, resume_from):
    """(TensorBoard's logger takes the same ``version`` setting; it is not installed in the test environment.)"""
    folder = _checkpoints(workdir)
    ckpt = "last" if resume_from == "last" else str(folder / "last.ckpt")
    resumed_fit = ("--trainer.max_epochs", "2", "--ckpt_path", ckpt)
    with _validation_dice(DICE):
        main(synthetic_cli_args("fit", synthetic_root, workdir, *CSV, *FAST, *resumed_fit))
    run_folders = sorted(
        path.parent.relative_to(workdir / "runs") for path in (workdir / "runs").glob("**/checkpoints")
    )
    assert run_folders == [folder.parent.relative_to(workdir / "runs")]
    assert [path.name for path in folder.glob("best-*.ckpt")] == ["best-epoch000-dice0.9000.ckpt"]
    resumed = torch.load(folder / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 1
    best_state = next(state for key, state in resumed["callbacks"].items() if "'val/dice'" in key)
    assert float(best_state["best_model_score"]) == pytest.approx(0.9)
    rows = (folder.parent / "metrics.csv").read_text().splitlines()
    column = rows[0].split(",").index("val/dice")
    logged_dice = sorted(float(value) for row in rows[1:] if (value := row.split(",")[column]))
    assert logged_dice == pytest.approx([0.2, 0.9])  # both epochs, once each


def _error_of(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The message a failing ``sam3d`` command exits with (it must exit, non-zero, with no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code not in (0, None)
    assert "Traceback" not in capsys.readouterr().err
    return str(exit_info.value.code)


def test_sam3d_test_with_every_case_skipped_is_an_error_naming_them(
    synthetic_root, trained, tmp_path, capsys
):
    unlabelled = tmp_path / "unlabelled"
    shutil.copytree(synthetic_root, unlabelled)
    for label in (unlabelled / "labelsTr").iterdir():
        image = nib.load(label)
        nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine), label)
    _, best = trained
    message = _error_of(
        synthetic_cli_args("test", unlabelled, tmp_path / "work", *CSV, "--ckpt_path", str(best)), capsys
    )
    assert message.startswith("sam3d: error: sam3d test evaluated no case: all 2 test cases were skipped")
    assert message.count("the label has no target voxel to click") == 2


def test_a_checkpoint_whose_weights_do_not_fit_is_an_error_naming_them(
    synthetic_root, trained, tmp_path, capsys
):
    _, best = trained
    checkpoint = torch.load(best, weights_only=True)
    weights = checkpoint["state_dict"]
    weights["net.image_encoder.pos_embed"] = torch.zeros(1, 8, 8, 48)  # as a network of another size has
    dropped = max(weights)
    del weights[dropped]
    torch.save(checkpoint, tmp_path / "other.ckpt")
    message = _error_of(
        synthetic_cli_args(
            "test", synthetic_root, tmp_path / "work", *CSV, "--ckpt_path", str(tmp_path / "other.ckpt")
        ),
        capsys,
    )
    assert message.startswith(f"sam3d: error: the weights in checkpoint {tmp_path / 'other.ckpt'} do not fit")
    assert f"missing: {dropped}" in message
    assert "wrong shape: net.image_encoder.pos_embed: (1, 8, 8, 48) vs (1, 16, 16, 48)" in message
