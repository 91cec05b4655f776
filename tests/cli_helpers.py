"""Helpers shared by the CLI-level tests."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L

SYNTHETIC_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml"


def synthetic_cli_args(subcommand: str, root: Path, workdir: Path, *extra: str) -> list[str]:
    """``sam3d`` arguments for a quick CPU run of ``configs/synthetic.yaml`` with everything under ``workdir``."""
    settings = {
        "--data.root": root,
        "--data.cache_dir": workdir / "cache",
        "--data.num_workers": 0,
        "--data.samples_per_volume": 1,
        "--data.batch_size": 1,
        "--trainer.default_root_dir": workdir,
        "--trainer.logger.init_args.save_dir": workdir / "runs",
        "--trainer.max_epochs": 1,
        "--trainer.check_val_every_n_epoch": 1,
    }
    return [
        subcommand,
        "--config",
        str(SYNTHETIC_CONFIG),
        *(str(x) for kv in settings.items() for x in kv),
        *extra,
    ]


def predict_options(
    checkpoint: Path, scans: list[Path], clicks: Path, output_dir: Path, *, probabilities: bool = False
) -> list[str]:
    """``sam3d predict`` options that segment ``scans`` at ``clicks`` with ``checkpoint`` into ``output_dir``."""
    options = {
        "--ckpt_path": checkpoint,
        "--data.predict_scans": json.dumps([str(scan) for scan in scans]),
        "--data.predict_clicks": clicks,
        "--prediction.output_dir": output_dir,
        "--prediction.probabilities": str(probabilities).lower(),
    }
    return [str(x) for kv in options.items() for x in kv]


class HangAt(L.Callback):
    """Writes ``marker`` and hangs at the start of training batch ``batch`` of ``epoch`` (to be killed there)."""

    def __init__(self, epoch: int, batch: int, marker: str) -> None:
        self.epoch, self.batch, self.marker = epoch, batch, Path(marker)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            self.marker.write_text(f"epoch {self.epoch} batch {self.batch}")
            time.sleep(600)


class RecordTrainingCases(L.Callback):
    """Writes the case ids each rank trained on, per epoch, to ``<folder>/rank<global rank>.json``.

    Passed to ``sam3d fit`` subprocesses with ``--trainer.callbacks+=`` (``tests/`` on ``PYTHONPATH``).
    """

    def __init__(self, folder: str) -> None:
        self.folder, self.seen = Path(folder), {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.setdefault(trainer.current_epoch, set()).update(batch["case_id"])

    def on_train_end(self, trainer, pl_module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        cases = {epoch: sorted(ids) for epoch, ids in self.seen.items()}
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(cases))


def record_training_cases(folder: Path) -> str:
    """The ``--trainer.callbacks+=`` value that adds :class:`RecordTrainingCases` writing to ``folder``."""
    return json.dumps({"class_path": "cli_helpers.RecordTrainingCases", "init_args": {"folder": str(folder)}})
