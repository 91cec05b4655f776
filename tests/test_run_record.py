"""What a run leaves and says: the training config kept, predict's summary and exit status, validation that
never runs, and sam3d's warnings without library paths."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_helpers import predict_options, synthetic_cli_args

from sam3d.cli import Sam3dTrainer, main
from sam3d.errors import Sam3dWarning

REPOSITORY = Path(__file__).resolve().parents[1]


def _copy_of_the_trained_run(trained: tuple[Path, Path], workdir: Path) -> Path:
    """The trained run (and its cache) copied into ``workdir`` (the session fixture stays untouched); its folder."""
    shutil.copytree(trained[0], workdir, dirs_exist_ok=True)
    return next((workdir / "runs").glob("**/checkpoints/last.ckpt")).parent.parent


# Item 1: test and validate keep the training's config.yaml ------------------------------------------------
@pytest.mark.parametrize("subcommand", ["test", "validate"])
def test_test_and_validate_write_their_own_config_and_keep_the_training_one(
    subcommand, trained, synthetic_root, tmp_path
):
    run = _copy_of_the_trained_run(trained, tmp_path)
    training_config = (run / "config.yaml").read_bytes()
    main(
        synthetic_cli_args(
            subcommand,
            synthetic_root,
            tmp_path,
            "--ckpt_path",
            "best",  # the run's own folder (and W&B run)
            "--trainer.limit_val_batches",
            "1",
            "--trainer.limit_test_batches",
            "1",
            "--trainer.max_epochs",
            "7",
        )
    )
    assert (run / "config.yaml").read_bytes() == training_config
    own = yaml.safe_load((run / subcommand / "config.yaml").read_text())
    assert own["trainer"]["max_epochs"] == 7  # this command's settings, beside its results
    if subcommand == "test":
        assert (run / "test" / "summary.json").is_file()


# Item 4: predict's summary and exit status ------------------------------------------------------------------
def _clicks(path: Path, scans: list[Path], inside: list[bool]) -> Path:
    """One positive click per scan: at voxel (8, 8, 8) or far outside the volume."""
    rows = "".join(
        f"{s.name},{8 if ok else 5000},8,8,voxel,positive\n" for s, ok in zip(scans, inside, strict=True)
    )
    path.write_text("scan,x,y,z,space,label\n" + rows)
    return path


def _predict_args(trained, synthetic_root: Path, workdir: Path, inside: list[bool], *extra: str) -> list[str]:
    scans = sorted((synthetic_root / "imagesTr").glob("*.nii.gz"))[: len(inside)]
    workdir.mkdir(parents=True, exist_ok=True)
    clicks = _clicks(workdir / "clicks.csv", scans, inside)
    options = predict_options(trained[1], scans, clicks, workdir / "masks")
    return synthetic_cli_args("predict", synthetic_root, workdir, *options, *extra)


def test_predict_ends_with_a_summary_and_fails_only_when_it_wrote_nothing_or_strictly(
    trained, synthetic_root, tmp_path, capsys
):
    main(_predict_args(trained, synthetic_root, tmp_path / "some", [True, False]))
    summary = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("written"))
    assert summary.startswith("written 1 of 2 scans; skipped 1: phantom_001 (")
    assert "outside" in summary

    with pytest.raises(SystemExit) as strict:
        main(
            _predict_args(
                trained, synthetic_root, tmp_path / "strict", [True, False], "--prediction.strict", "true"
            )
        )
    assert "--prediction.strict" in str(strict.value.code)
    assert len(list((tmp_path / "strict" / "masks").glob("*_mask.nii.gz"))) == 1  # what could be written is

    with pytest.raises(SystemExit) as nothing:
        main(_predict_args(trained, synthetic_root, tmp_path / "none", [False, False]))
    assert str(nothing.value.code).startswith("sam3d: error: sam3d predict wrote no mask")
    assert "written 0 of 2 scans; skipped 2" in capsys.readouterr().out


def test_predict_starts_no_logger_and_raises_no_lightning_false_alarm(
    trained, synthetic_root, tmp_path, monkeypatch, recwarn
):
    from lightning.pytorch.loggers import WandbLogger

    built = []
    original = WandbLogger.__init__

    def recording(self, *args, **kwargs):
        built.append(kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(WandbLogger, "__init__", recording)
    main(_predict_args(trained, synthetic_root, tmp_path, [True]))
    assert built == []
    alarms = ("dirpath has changed", "Couldn't infer the batch indices")  # from another run's checkpoint
    assert not [w for w in recwarn if any(alarm in str(w.message) for alarm in alarms)]


@pytest.mark.slow  # a sam3d process of its own
def test_predict_from_a_shell_exit_status_and_warnings_without_library_paths(
    trained, synthetic_root, tmp_path
):
    args = _predict_args(trained, synthetic_root, tmp_path, [False])
    scans_at = args.index("--data.predict_scans") + 1
    args[scans_at] = args[scans_at][:-1] + f', "{tmp_path / "missing.nii.gz"}"]'  # a scan that is not there
    path = os.pathsep.join(
        filter(None, [str(REPOSITORY), str(REPOSITORY / "tests"), os.environ.get("PYTHONPATH")])
    )
    result = subprocess.run(
        [sys.executable, "-m", "sam3d", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": path},
        timeout=600,
        check=False,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert (
        "written 0 of 2 scans; skipped 2: missing (scan file does not exist); phantom_000 (" in result.stdout
    )
    assert "sam3d: error: sam3d predict wrote no mask" in result.stderr
    warning = next(line for line in result.stderr.splitlines() if "inputs skipped" in line)
    assert warning == "sam3d: warning: inputs skipped:"  # no file and line of the library that warned
    for false_alarm in ("dirpath has changed", "Couldn't infer the batch indices", "wandb"):
        assert false_alarm not in result.stdout + result.stderr


# Item 5: a fit that never validates, and `--ckpt_path best` without a best --------------------------------
@pytest.fixture
def fit_not_run(monkeypatch):
    """``Trainer.fit`` does nothing (the CLI's checks before it still run)."""
    fit = Sam3dTrainer.fit

    @functools.wraps(fit)  # the CLI reads fit's parameters from its signature
    def no_fit(self, *args, **kwargs):
        return None

    monkeypatch.setattr(Sam3dTrainer, "fit", no_fit)


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        (["--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "3"], "max_epochs 2 is below"),
        (["--trainer.limit_val_batches", "0"], "limit_val_batches is 0"),
    ],
)
def test_fit_warns_up_front_when_validation_will_never_run(
    settings, reason, synthetic_root, tmp_path, fit_not_run
):
    with pytest.warns(Sam3dWarning, match=f"validation will never run.*{reason}.*--ckpt_path last"):
        main(synthetic_cli_args("fit", synthetic_root, tmp_path, *settings))


def test_a_fold_without_validation_cases_warns_that_validation_never_runs(synthetic_root, tmp_path):
    from sam3d.data import VolumeDataModule
    from sam3d.data.splits import save_splits

    case = {
        "case_id": "phantom_000",
        "image": "imagesTr/phantom_000.nii.gz",
        "label": "labelsTr/phantom_000.nii.gz",
    }
    split = save_splits(tmp_path / "split.json", "msd", "t", [{"train": [case], "val": [], "test": []}])
    data = VolumeDataModule(
        root=str(synthetic_root),
        dataset="msd",
        split_file=str(split),
        target_label=1,
        intensity_window=(-100.0, 200.0),
        mean=50.0,
        std=40.0,
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.warns(Sam3dWarning, match="no validation cases: validation will never run.*--ckpt_path last"):
        data.setup("fit")


def test_fit_that_validates_is_not_warned(synthetic_root, tmp_path, fit_not_run, recwarn):
    main(synthetic_cli_args("fit", synthetic_root, tmp_path, "--trainer.max_epochs", "3"))
    assert not [w for w in recwarn if "validation will never run" in str(w.message)]


def test_ckpt_path_best_without_a_best_says_validation_never_ran(trained, synthetic_root, tmp_path, capsys):
    run = _copy_of_the_trained_run(trained, tmp_path)
    for best in (run / "checkpoints").glob("best-*.ckpt"):
        best.unlink()  # as after a fit whose validation never ran
    with pytest.raises(SystemExit) as refused:
        main(synthetic_cli_args("test", synthetic_root, tmp_path, "--ckpt_path", "best"))
    message = str(refused.value.code)
    assert "validation never ran" in message
    assert "--ckpt_path last" in message
    assert "check_val_every_n_epoch" in message
