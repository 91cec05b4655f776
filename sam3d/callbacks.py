"""Lightning callbacks: validation pictures and the per-run copy of the resolved config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from sam3d.visualize import orthogonal_slices


def run_directory(trainer: L.Trainer) -> Path:
    """The folder of this run: where its checkpoints, config and pictures go."""
    logger = trainer.logger
    if isinstance(logger, WandbLogger):
        return Path(logger.save_dir or ".") / str(logger.name) / str(logger.version)
    return Path(trainer.log_dir or trainer.default_root_dir)


class ValidationSlices(L.Callback):
    """At each validation, a picture of the first validation patch: slices through its first click."""

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Log (W&B) or save (other loggers) the picture for batch 0 on rank 0."""
        if batch_idx or trainer.sanity_checking or not trainer.is_global_zero or not outputs:
            return
        picture = orthogonal_slices(
            batch["image"][0, 0],
            batch["label"][0, 0],
            outputs["prediction"][0, 0],
            batch["points"][0, 0].tolist(),
            title=f"{batch['case_id'][0]} - epoch {trainer.current_epoch}",
        )
        if isinstance(trainer.logger, WandbLogger):
            trainer.logger.log_image("val/slices", [picture], step=trainer.global_step)
        else:
            folder = run_directory(trainer) / "pictures"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture).save(folder / f"val_epoch{trainer.current_epoch:04d}.png")


class RunConfig(SaveConfigCallback):
    """Save the resolved config into the run's own folder and send it to the logger."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Write ``config.yaml`` beside the run's checkpoints (rank 0 only, no collectives)."""
        folder = run_directory(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        self.parser.save(
            self.config, folder / self.config_filename, skip_none=False, overwrite=True, multifile=False
        )
        if trainer.logger is not None:
            trainer.logger.log_hyperparams({"config": self.parser.dump(self.config, skip_none=False)})
