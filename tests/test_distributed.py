"""DDP as users run it: two processes on one machine with each logger, and two "nodes" started by torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import record_training_cases, synthetic_cli_args

from sam3d.data import VolumeDataModule

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
LOGGERS = {
    "wandb": [],  # the configs' default (disabled in tests)
    "csv": ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger"],
    "tensorboard": ["--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger"],
    "none": ["--trainer.logger", "false"],
}


def _environment() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}


def _fit_args(root: Path, workdir: Path, *extra: str) -> list[str]:
    args = synthetic_cli_args("fit", root, workdir, "--trainer.max_epochs", "2", "--trainer.strategy", "ddp")
    return [*args, "--trainer.callbacks+=" + record_training_cases(workdir / "cases"), *extra]


def _assert_each_rank_trained_its_own_subjects(root: Path, workdir: Path) -> None:
    train = {case.case_id for case in VolumeDataModule(root=root, target_label=1).cases("train")}
    ranks = [json.loads((workdir / "cases" / f"rank{rank}.json").read_text()) for rank in range(2)]
    for epoch in ("0", "1"):
        first, second = set(ranks[0][epoch]), set(ranks[1][epoch])
        assert len(first) == len(second) == len(train) // 2
        assert not first & second
        assert first | second <= train
    last = torch.load(next(workdir.glob("**/checkpoints/last.ckpt")), weights_only=True)
    assert last["epoch"] == 1
    assert last["global_step"] == 2 * (len(train) // 2)  # one patch per subject and step, half the subjects


@pytest.mark.parametrize("logger", LOGGERS)
def test_two_process_ddp_fit_on_cpu_with_each_logger(synthetic_root, tmp_path, logger):
    # Activation checkpointing on (as for SAM's sizes): the gradients must keep DDP's bucket layout.
    args = _fit_args(
        synthetic_root,
        tmp_path,
        "--trainer.devices",
        "2",
        "--model.activation_checkpointing",
        "true",
        *LOGGERS[logger],
    )
    if logger != "none":
        args += ["--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    result = subprocess.run(
        [sys.executable, "-m", "sam3d", *args],
        capture_output=True,
        text=True,
        env=_environment(),
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_each_rank_trained_its_own_subjects(synthetic_root, tmp_path)
    checkpoints = next(tmp_path.glob("**/checkpoints/last.ckpt")).parent
    assert (checkpoints.parent / "config.yaml").is_file()  # the run's config beside its checkpoints
    assert "Tip:" not in result.stdout + result.stderr
    assert "Grad strides do not match bucket view strides" not in result.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_nodes_started_by_torchrun_on_localhost(synthetic_root, tmp_path):
    args = _fit_args(synthetic_root, tmp_path, "--trainer.num_nodes", "2", "--trainer.devices", "1")
    port = _free_port()
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc_per_node=1",
                f"--node_rank={rank}",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                "-m",
                "sam3d",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_environment(),
        )
        for rank in range(2)
    ]
    try:
        outputs = [node.communicate(timeout=600)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(out[-3000:] for out in outputs)
    _assert_each_rank_trained_its_own_subjects(synthetic_root, tmp_path)
