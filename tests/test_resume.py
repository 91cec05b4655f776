"""A fit interrupted anywhere and resumed with ``--ckpt_path last`` ends bitwise equal to an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import synthetic_cli_args

from sam3d.cli import main
from sam3d.module import VolumetricSamModule

TESTS = Path(__file__).resolve().parent


def _final(workdir: Path) -> dict:
    return torch.load(next(workdir.glob("runs/**/checkpoints/last.ckpt")), weights_only=True)


def assert_bitwise_equal(resumed: dict, uninterrupted: dict) -> None:
    assert (resumed["epoch"], resumed["global_step"]) == (
        uninterrupted["epoch"],
        uninterrupted["global_step"],
    )
    assert resumed["state_dict"].keys() == uninterrupted["state_dict"].keys()
    for name, weight in uninterrupted["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], weight), name
    states = [
        (r["state"], u["state"])
        for r, u in zip(resumed["optimizer_states"], uninterrupted["optimizer_states"], strict=True)
    ]
    for resumed_state, uninterrupted_state in states:
        assert resumed_state.keys() == uninterrupted_state.keys()
        for index, moments in uninterrupted_state.items():
            for key, value in moments.items():
                assert torch.equal(resumed_state[index][key], value), (index, key)
    assert resumed["lr_schedulers"] == uninterrupted["lr_schedulers"]


def test_a_fit_that_crashed_mid_epoch_resumes_bitwise_equal(synthetic_root, tmp_path, monkeypatch):
    """In-process twin of the SIGKILL test below: an exception stands in for the kill."""
    args = ("--trainer.max_epochs", "2")
    main(synthetic_cli_args("fit", synthetic_root, tmp_path / "uninterrupted", *args))
    original_step = VolumetricSamModule.training_step

    def dies_in_the_second_epoch(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 1:
            raise RuntimeError("simulated crash")
        return original_step(self, batch, batch_idx)

    monkeypatch.setattr(VolumetricSamModule, "training_step", dies_in_the_second_epoch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(synthetic_cli_args("fit", synthetic_root, tmp_path / "crashed", *args))
    assert _final(tmp_path / "crashed")["epoch"] == 0
    monkeypatch.undo()
    main(synthetic_cli_args("fit", synthetic_root, tmp_path / "crashed", *args, "--ckpt_path", "last"))
    assert_bitwise_equal(_final(tmp_path / "crashed"), _final(tmp_path / "uninterrupted"))


def _sam3d(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "sam3d", *args]


def _environment() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": path}


def _kill_when_hanging(args: list[str], marker: Path, timeout: float = 600) -> None:
    """Run ``sam3d`` in its own process group and SIGKILL the group once it hangs at ``marker``."""
    process = subprocess.Popen(
        _sam3d(args),
        env=_environment(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if process.poll() is not None:
            pytest.fail(f"the fit ended before it was killed:\n{process.stderr.read().decode()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail("the fit never reached the batch where it is killed")
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the fit, its DDP ranks and its data workers, as kill -9 would
    process.wait()
    process.stderr.close()


def _run(args: list[str]) -> None:
    result = subprocess.run(
        _sam3d(args), env=_environment(), capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]


CASES = {
    # last.ckpt after every epoch: the resumed run redoes the killed epoch.
    "epoch checkpoints, data workers": (),
    # last.ckpt after every step as well: the resumed run continues mid-epoch.
    "step checkpoints": (
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.filename=last",
        "--trainer.callbacks.every_n_train_steps=1",
        "--trainer.callbacks.enable_version_counter=false",
    ),
    # two ranks on the CPU (gloo), each with its own subjects.
    "ddp": ("--trainer.strategy", "ddp", "--trainer.devices", "2"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_a_fit_killed_mid_epoch_resumes_bitwise_equal(synthetic_root, tmp_path, case):
    settings = (
        *("--trainer.max_epochs", "2", "--data.num_workers", "1", "--data.batch_size", "2"),
        *("--data.samples_per_volume", "3", "--data.queue_length", "4"),
        *CASES[case],
    )
    _run(synthetic_cli_args("fit", synthetic_root, tmp_path / "uninterrupted", *settings))
    marker = tmp_path / "hanging"
    hang = (
        "--trainer.callbacks+=cli_helpers.HangAt",
        "--trainer.callbacks.epoch=1",
        "--trainer.callbacks.batch=1",
        f"--trainer.callbacks.marker={marker}",
    )
    killed = tmp_path / "killed"
    _kill_when_hanging(synthetic_cli_args("fit", synthetic_root, killed, *settings, *hang), marker)
    assert _final(killed)["epoch"] == (1 if case == "step checkpoints" else 0)
    _run(synthetic_cli_args("fit", synthetic_root, killed, *settings, "--ckpt_path", "last"))
    assert_bitwise_equal(_final(killed), _final(tmp_path / "uninterrupted"))
