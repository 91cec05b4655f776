"""``sam3d serve``: the checkpoint's network, the ``predict`` options and output folder, behind the page."""

from __future__ import annotations

import os
import sys

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from sam3d.data import VolumeDataModule
from sam3d.data.clicks import checked_click_mode
from sam3d.data.scans import scan_files
from sam3d.inference import Protocol
from sam3d.module import VolumetricSamModule
from sam3d.serve.app import ServeSettings, SessionStore, create_app, memory_note
from sam3d.serve.auth import API_KEY_ENV
from sam3d.serve.server import run
from sam3d.serve.viewer import OutputFolder, OutputOptions, ViewSettings

__all__ = ["serve"]


def serve(
    trainer: L.Trainer,
    module: VolumetricSamModule,
    datamodule: VolumeDataModule,
    ckpt_path: str,
    host: str,
    port: int,
    max_voxels: int,
    max_sessions: int,
    crops: Protocol = "full",
    api_key: str | None = None,
) -> None:
    """Load ``ckpt_path`` into ``module`` and serve the page on the trainer's device and precision.

    The data module gives the scans listed (``--data.predict_scans``) and the checkpoint's preprocessing,
    ``module.evaluation`` the threshold and cache, the trainer's prediction writer (``--prediction``) the
    output folder; ``crops`` places the crops (``full``: objects grow into neighbouring crops).
    Without ``api_key``, the ``SAM3D_API_KEY`` environment variable gives it, if set.
    """
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    # The CLI has read and checked the file: the trainer's checkpoint IO hands over that copy.
    checkpoint = trainer.strategy.checkpoint_io.load_checkpoint(ckpt_path)
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"])
    net = module.net.to(trainer.strategy.root_device).eval()
    output = output_options(trainer)
    files, problems = scan_files(datamodule.predict_scans or [])
    for problem in problems:
        print(f"sam3d serve: {problem}", file=sys.stderr)
    evaluation = module.evaluation
    # The checkpoint's own click mode: the config's data.click_mode may not be the one it was trained with.
    trained = checkpoint.get("hyper_parameters", {}).get(
        "click_mode", module.hparams.get("click_mode", "reference")
    )
    settings = ServeSettings(
        ViewSettings(
            crops, evaluation.threshold, evaluation.cache_size, max_voxels, checked_click_mode(trained)
        ),
        max_sessions,
    )
    sessions = SessionStore(
        net,
        datamodule.preprocessing,
        output,
        files,
        settings,
        trainer.precision_plugin.forward_context,
        [str(problem) for problem in problems],
    )
    app = create_app(sessions, api_key, host)
    print(
        f"sam3d serve: {len(files)} scan(s) listed, {crops} crops, on {trainer.strategy.root_device}; "
        f"masks are saved into {output.output_dir.resolve()}; memory for scans: {memory_note(settings)}",
        file=sys.stderr,
    )
    run(app, host, port, api_key=api_key is not None)


def output_options(trainer: L.Trainer) -> OutputOptions:
    """The output folder and options of the trainer's prediction writer (``--prediction``), else the defaults."""
    # Lightning sets `Trainer.callbacks` in its callback connector; the class does not declare it.
    callbacks: list[L.Callback] = trainer.callbacks  # type: ignore[attr-defined]
    writers = (c for c in callbacks if isinstance(c, BasePredictionWriter) and isinstance(c, OutputOptions))
    return next(writers, OutputFolder())
