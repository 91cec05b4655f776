"""The ``sam3d`` command: Lightning's ``fit``/``validate``/``test``/``predict`` plus dataset utilities.

sam3d fit --config configs/kits.yaml --data.root DIR --model.sam_checkpoint sam_vit_b_01ec64.pth
sam3d fit --config configs/kits.yaml --ckpt_path last      # resume the newest run
sam3d check-dataset --help                                 # utilities: see UTILITY_HELP
"""

from __future__ import annotations

import csv
import errno
import importlib
import json
import logging
import netrc
import os
import re
import sys
import warnings
from argparse import HelpFormatter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn

import torch
import yaml
from jsonargparse import CLI, ArgumentParser
from lightning.fabric.plugins import CheckpointIO, TorchCheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from sam3d import __version__
from sam3d.callbacks import MethodRecord, PredictionWriter, RunConfig, TestReport, trainer_callbacks
from sam3d.checkpointing import NAMED_CHECKPOINTS, AtomicCheckpointIO, newest_complete_checkpoint
from sam3d.comparison import report
from sam3d.data import VolumeDataModule
from sam3d.data.datamodule import PREDICT_NEEDS
from sam3d.data.errors import DatasetError
from sam3d.data.tools import UTILITIES as DATA_UTILITIES
from sam3d.errors import Sam3dError, Sam3dWarning
from sam3d.evaluation import EvaluationSettings
from sam3d.inference import Protocol
from sam3d.models.checkpoints import CheckpointError, load_weights_file
from sam3d.module import VolumetricSamModule
from sam3d.nnunet import score_masks
from sam3d.parse_errors import class_options, error_lines, parser_options
from sam3d.reference_import import import_reference
from sam3d.reporting import aggregate_folds
from sam3d.shipped import shipped_file
from sam3d.task import CHECKPOINT_MONITORS, SegmentationTask, checkpoint_module, class_path

UTILITIES: dict[str, Callable[..., object]] = {
    **DATA_UTILITIES,
    "import-reference": import_reference,
    "aggregate-folds": aggregate_folds,
    "report": report,
    "score-masks": score_masks,
}
DESCRIPTION = (
    "Promptable 3D tumour segmentation: SAM adapted to CT volumes. Training, evaluation and inference use "
    "the subcommands below; dataset utilities are `sam3d " + " | ".join(UTILITIES) + "` (each with --help)."
)


def wandb_credentials_present() -> bool:
    """Whether W&B could log online: an API key in the environment or in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


# Top-level keys of a config file (the subcommands' for a config given before the subcommand).
CONFIG_SECTIONS = {
    *("seed_everything", "trainer", "model", "data", "evaluation", "prediction", "ckpt_path"),
    *("fit", "validate", "test", "predict"),
}

# The trainer, logger and callbacks of every run; configs hold only what differs (`--print_config` shows all).
RUN_DEFAULTS: dict[str, Any] = {
    "trainer.devices": 1,
    "trainer.precision": "32-true",  # configs/trainer/ddp_bf16.yaml: bf16-mixed
    "trainer.max_epochs": 500,
    "trainer.gradient_clip_val": 1.0,  # per part: see VolumetricSamModule.configure_gradient_clipping
    "trainer.use_distributed_sampler": False,  # the TorchIO queue gives each rank its own subjects
    "trainer.logger": {
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {"project": "sam3d", "save_dir": "runs", "log_model": False},
    },
    "trainer.callbacks": [
        {
            # best validation Dice, or the metric model.checkpoint_monitor names (Sam3dCLI sets it)
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {
                "monitor": "val/dice",
                "mode": "max",
                "filename": "best-epoch{epoch:03d}-dice{val/dice:.4f}",
                "auto_insert_metric_name": False,
            },
        },
        {
            # after every training epoch, also when validation runs less often (resume loses at most an epoch)
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {
                "filename": "last",
                "enable_version_counter": False,
                "save_on_train_epoch_end": True,
            },
        },
        {"class_path": "sam3d.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "epoch"}},
        {"class_path": "lightning.pytorch.callbacks.RichProgressBar"},
        {"class_path": "sam3d.callbacks.ValidationSlices"},
    ],
}


def matmul_precision(trainer_precision: object) -> Literal["highest", "high"]:
    """float32 matrix products of a run: full fp32 for fp32 runs (as the authors' code runs), TF32 for mixed ones."""
    return "highest" if str(trainer_precision) in ("32", "32-true", "64", "64-true") else "high"


def _has_no_best_but_a_last(root: Path) -> bool:
    """Whether the runs under ``root`` wrote a ``last.ckpt`` but never a ``best-*.ckpt`` (no validation ran)."""
    written = {name: any(root.glob(f"**/checkpoints/{NAMED_CHECKPOINTS[name]}")) for name in ("best", "last")}
    return written["last"] and not written["best"]


def validation_never_runs(trainer: Trainer) -> str | None:
    """Why a fit of ``trainer`` will never validate (no epoch reaches ``check_val_every_n_epoch``), or None."""
    every, epochs = trainer.check_val_every_n_epoch, trainer.max_epochs
    if trainer.limit_val_batches == 0:
        return "trainer.limit_val_batches is 0"
    if every is not None and epochs is not None and 0 <= epochs < every:
        return f"trainer.max_epochs {epochs} is below trainer.check_val_every_n_epoch {every}"
    return None


# Lightning warnings that are false alarms outside `fit`: the checkpoint's callback state names the folder
# of the run that trained it (test/validate/predict save no checkpoint), and the prediction writer does not
# use batch indices.
NOT_FOR_EVALUATION = ("The dirpath has changed from", "Couldn't infer the batch indices")


def show_sam3d_warnings() -> None:
    """Print sam3d's own warnings as ``sam3d: warning: ...`` (no file and line); others as Python does.

    Only the format changes (``warnings.formatwarning``), so filters and recorders still see every warning.
    """
    formats = warnings.formatwarning
    if getattr(formats, "sam3d", False):
        return

    def format_warning(
        message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
    ) -> str:
        if issubclass(category, Sam3dWarning):
            return f"sam3d: warning: {message}\n"
        return formats(message, category, filename, lineno, line)

    format_warning.sam3d = True  # type: ignore[attr-defined]
    warnings.formatwarning = format_warning


class Sam3dTrainer(Trainer):
    """Lightning's Trainer (devices, precision, epochs, logger, callbacks); sam3d adds :meth:`serve`."""

    def serve(
        self,
        model: VolumetricSamModule,
        datamodule: VolumeDataModule,
        ckpt_path: str | None = None,
        host: str = "127.0.0.1",
        port: int = 8000,
        max_voxels: int = 2**28,
        max_sessions: int = 4,
        crops: Protocol = "full",
        api_key: str | None = None,
    ) -> None:
        """Serve a page to click on scans, see and correct their 3D masks and save them.

        Args:
            model: The module (its network gets the checkpoint's weights).
            datamodule: Lists ``--data.predict_scans`` and holds the checkpoint's preprocessing.
            ckpt_path: The trained checkpoint: a file, ``best`` or ``last``.
            host: Address to listen on; any but 127.0.0.1/localhost shares the page, without authentication.
            port: Port to listen on (0: any free port).
            max_voxels: Largest scan accepted, in voxels of the file or of the network grid.
            max_sessions: Pages (browser tabs) served at once, each holding its scan in memory; as many
                nnInteractive clients besides.
            crops: ``full``: an object that reaches a crop's border grows into the neighbouring crops (no
                extra clicks for an object larger than a crop); ``paper``: the one crop of the first
                interaction, as ``sam3d test``'s paper protocol.
            api_key: A key every request must carry (``Authorization: Bearer``; the page: ``/?api_key=``);
                default: the ``SAM3D_API_KEY`` environment variable, else none.
        """
        from sam3d.serve.command import serve  # the web stack is imported for `serve` only

        assert ckpt_path is not None  # the CLI refuses `serve` without a checkpoint
        serve(self, model, datamodule, ckpt_path, host, port, max_voxels, max_sessions, crops, api_key)


class Sam3dArgumentParser(LightningArgumentParser):
    """Lightning's parser; what it refuses is printed as short ``sam3d: error:`` lines (exit status 2).

    Each line names the option, the closest known one for a misspelling and the allowed values where
    they are known (:mod:`sam3d.parse_errors`), instead of the usage of every option. A trainer without
    clicks given click arguments is refused saying what to do (jsonargparse refuses them as an option the
    class does not accept, e.g. ``-c automatic/sam.yaml -c clicks/interactive.yaml``).
    """

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Raise a :class:`Sam3dError` for click arguments of a trainer without clicks, else print and exit 2."""
        for path, argument in re.findall(
            r"Problem with given class_path '([\w.]+)':\s*Option '(\w+)' is not accepted", message
        ):
            if argument in CLICK_ARGUMENTS and not _takes_clicks(path):
                raise Sam3dError(_no_clicks_refusal(path, [f"model.{argument}"]))
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)  # raises: a nested parse whose caller handles the error
        _exit_with_short_error(self, message, ex)

    def format_help(self, formatter: HelpFormatter | None = None) -> str:
        """A subcommand's help: a short usage, sam3d's options (model, data, evaluation, ...), then the trainer's.

        (Lightning adds the trainer's options first; they are the many that seldom change.)
        """
        trainer = self.groups.get("trainer") if self.groups else None
        if trainer is not None:
            self.usage = "%(prog)s [-c CONFIG] [--print_config[=flags]] [--SECTION.OPTION VALUE ...]"
            self._action_groups = [*(group for group in self._action_groups if group is not trainer), trainer]
        return super().format_help(formatter)


class UtilityArgumentParser(ArgumentParser):
    """jsonargparse's parser for the dataset utilities, printing what it refuses as ``sam3d: error:`` lines."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Print the short error lines and exit 2 (a nested parse raises, as jsonargparse's does)."""
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)
        _exit_with_short_error(self, message, ex)


def _exit_with_short_error(parser: ArgumentParser, message: str, ex: Exception | None) -> NoReturn:
    """Print a refused command line as ``sam3d: error:`` lines (:mod:`sam3d.parse_errors`) and exit 2."""
    parser = getattr(ex, "subcommand_parser", None) or parser
    command = parser.prog.replace(" [options]", "")
    options = parser_options(parser)
    if "model" in options:  # `--model.lr`: the default trainer's arguments (a config may name another)
        options += [f"model.{key}" for key in class_options(class_path(VolumetricSamModule))]
    lines = error_lines(message, options, subcommands=[*Sam3dCLI.subcommands(), *UTILITIES])
    lines[-1] += f" (`{command} --help` lists the {'subcommands' if command == 'sam3d' else 'options'})"
    sys.stderr.write("".join(f"sam3d: error: {line}\n" for line in lines))
    sys.exit(2)


class PreloadedCheckpointIO(CheckpointIO):
    """The strategy's checkpoint IO, handing over the checkpoint the CLI has read instead of reading it again.

    Lightning's public plugin interface (``strategy.checkpoint_io``): the first load of ``path`` returns
    ``checkpoint``; everything else (saving, other files, a second load) goes to ``inner``.
    """

    def __init__(self, inner: CheckpointIO, path: str, checkpoint: dict[str, Any]) -> None:
        self.inner, self.path = inner, Path(path).resolve()
        self._checkpoint: dict[str, Any] | None = checkpoint

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        """Save with the strategy's checkpoint IO."""
        self.inner.save_checkpoint(checkpoint, path, storage_options)

    def load_checkpoint(
        self, path: str | Path, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """The checkpoint the CLI read (the first time ``path`` is loaded), else the strategy's load."""
        if self._checkpoint is not None and Path(path).resolve() == self.path:
            checkpoint, self._checkpoint = self._checkpoint, None
            return checkpoint
        return self.inner.load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path: str | Path) -> None:
        """Remove with the strategy's checkpoint IO."""
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        """Tear down the strategy's checkpoint IO."""
        self.inner.teardown()


class Sam3dCLI(LightningCLI):
    """LightningCLI with sam3d's links, checkpoint checks and run folders, and the ``serve`` subcommand.

    Everything that can be refused is refused right after parsing, before a class is built or data read:
    settings that are not settings (model arguments linked from the data module's), a ``--ckpt_path``
    of another program, trainer, network or crop, and combinations that cannot run (click settings for a
    trainer without clicks, ``predict`` without scans or clicks, ``test``/``predict``/``serve`` without a
    checkpoint). The ``--ckpt_path`` file is read once, here; the trainer gets that copy (see
    :class:`PreloadedCheckpointIO`).
    """

    checkpoint_path: str | None = None  # --ckpt_path, best/last resolved to the file
    # Its content, read once, until the trainer takes it (never read here: hpc and registry, which
    # Lightning finds and reads).
    checkpoint: dict[str, Any] | None = None
    checkpoint_data: dict[str, Any] | None = None  # the data module's state in it

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """sam3d's run defaults, the evaluation and prediction settings; model arguments that are the data's.

        ``data.patch_size`` is the model's crop size and ``data.click_mode`` the promptable model's click
        mode. A trainer without such an argument (the baselines and the automatic SAM have no click mode)
        is left out of that link, as jsonargparse documents for subclass targets.
        """
        for model_argument, data_argument in LINKED_MODEL_ARGUMENTS.items():
            parser.link_arguments(f"data.{data_argument}", f"model.init_args.{model_argument}")
        parser.set_defaults({"model": {"class_path": class_path(VolumetricSamModule)}})
        parser.set_defaults(RUN_DEFAULTS)
        parser.add_class_arguments(EvaluationSettings, "evaluation")
        parser.add_lightning_class_args(PredictionWriter, "prediction")
        if any(action.dest == "return_predictions" for action in parser._actions):
            parser.set_defaults({"return_predictions": False})  # outputs are written, not kept in memory

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse; refuse linked model settings; read --ckpt_path once; refuse what cannot run.

        Lightning then finds no ``ckpt_path`` to read hyperparameters from (this method has merged them, as
        Lightning would); :meth:`before_instantiate_classes` gives the path back for the trainer.
        """
        super().parse_arguments(parser, args)
        if not self.config.get("subcommand"):
            return
        if isinstance(args, list):
            # Only what the command line and config files give; with the links' sources given too, so that
            # a link applies (it overwrites only a model argument that was given).
            config = self._subcommand_config()
            sources = [
                f"--data.{source}={_as_argument(config.data[source])}"
                for source in LINKED_MODEL_ARGUMENTS.values()
            ]
            _refuse_linked_model_settings(parser.parse_args([*args, *sources], defaults=False))
        self._read_checkpoint()
        _refuse_what_cannot_run(self.config["subcommand"], self._subcommand_config(), self.checkpoint_path)

    def before_fit(self) -> None:
        """A resumed run keeps the preprocessing it started with; a fit that never validates is told so."""
        self._restore_preprocessing()
        if reason := validation_never_runs(self.trainer):
            warnings.warn(
                f"validation will never run in this fit ({reason}), so no best checkpoint (best-*.ckpt) is "
                "written and `--ckpt_path best` will find none; set trainer.check_val_every_n_epoch to at most "
                "trainer.max_epochs (and trainer.limit_val_batches above 0) for one, or use `--ckpt_path last`",
                Sam3dWarning,
                stacklevel=1,
            )

    def before_validate(self) -> None:
        """Validate a checkpoint with the preprocessing it was trained with."""
        self._restore_preprocessing()

    def before_test(self) -> None:
        """Hand the `evaluation` settings to the module (they are not checkpoint hyperparameters)."""
        self.model.evaluation = self.config_init[str(self.subcommand)]["evaluation"]
        self._restore_preprocessing()

    def before_predict(self) -> None:
        """Protocol and threshold from `evaluation`; the training's preprocessing from the checkpoint."""
        self.model.evaluation = self.config_init[str(self.subcommand)]["evaluation"]
        self._restore_preprocessing()

    before_serve = before_predict

    def after_predict(self) -> None:
        """Fail (non-zero exit) when nothing was written, or with ``--prediction.strict`` when a scan was skipped."""
        for writer in trainer_callbacks(self.trainer):
            if isinstance(writer, PredictionWriter) and (why := writer.failure()):
                raise Sam3dError(why)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's subcommands and ``serve`` (:meth:`Sam3dTrainer.serve`)."""
        return {**LightningCLI.subcommands(), "serve": {"model", "datamodule"}}

    def _restore_preprocessing(self) -> None:
        """Give the data module the checkpoint's preprocessing before it caches or computes anything."""
        if self.checkpoint_data:
            self.datamodule.load_state_dict(self.checkpoint_data)

    def _subcommand_config(self) -> Any:
        return self.config[self.config["subcommand"]]

    def _read_checkpoint(self) -> None:
        """Resolve ``--ckpt_path last|best``, read the file once, refuse non-sam3d files and mismatches.

        The checkpoint's hyperparameters then replace the model config, as Lightning does (a SAM file named
        on this command line still wins); the data module's arguments linked to the model's stay the
        setting (a checkpoint of a network for other crops was refused above).
        """
        config = self._subcommand_config()
        ckpt_path = config.get("ckpt_path")
        checkpoint: Any = None
        if ckpt_path in NAMED_CHECKPOINTS:
            found, checkpoint = self._resolve_named(config, ckpt_path)
            ckpt_path = str(found)
        elif ckpt_path not in (None, "hpc", "registry") and self.config["subcommand"] == "fit":
            _continue_run(config, Path(ckpt_path))  # a resumed fit goes on in its run folder
        self.checkpoint_path = ckpt_path
        config.ckpt_path = None  # read here, not again by Lightning; see before_instantiate_classes
        if ckpt_path in (None, "hpc", "registry"):  # Lightning's trainer finds and reads the last two
            return
        if checkpoint is None:
            checkpoint = load_weights_file(ckpt_path, "--ckpt_path")
        if not isinstance(checkpoint, dict) or "sam3d" not in checkpoint:
            raise CheckpointError(
                f"--ckpt_path {ckpt_path} is not a sam3d checkpoint; authors' 3DSAM-adapter checkpoints are "
                "converted with `sam3d import-reference --help`"
            )
        written_by = checkpoint_module(checkpoint["sam3d"])
        _check_trainer(ckpt_path, written_by, config.model.class_path)
        trained = checkpoint["sam3d"].get("variant")
        requested = config.model.init_args.get("variant")
        if requested != trained:
            raise CheckpointError(
                f"--ckpt_path {ckpt_path} holds a {trained} network but the config asks for {requested}; "
                f"use a config of the {trained} network or pass --model.variant {trained}"
            )
        crop = checkpoint.get("hyper_parameters", {}).get("crop_size")
        if crop is not None and tuple(crop) != tuple(config.data.patch_size):
            raise CheckpointError(
                f"--ckpt_path {ckpt_path} holds a network for {tuple(crop)} crops but data.patch_size is "
                f"{tuple(config.data.patch_size)}; pass --data.patch_size {list(crop)} or the run's config"
            )
        trained_clicks = checkpoint.get("hyper_parameters", {}).get("click_mode")
        resumed = self.config["subcommand"] == "fit" and trainer_class(written_by).takes_clicks
        if resumed and trained_clicks is not None and trained_clicks != config.data.click_mode:
            raise CheckpointError(
                f"--ckpt_path {ckpt_path} resumes a run trained with data.click_mode {trained_clicks} but "
                f"the config says {config.data.click_mode}; a resumed run keeps its clicks: pass --data."
                f"click_mode {trained_clicks} (or the run's overlay, e.g. -c clicks/interactive.yaml)"
            )
        trained_factor = checkpoint.get("hyper_parameters", {}).get("prompt_lr_factor", 1.0)
        requested_factor = config.model.init_args.get("prompt_lr_factor", 1.0)
        if resumed and trained_factor != requested_factor:
            raise CheckpointError(
                f"--ckpt_path {ckpt_path} resumes a run trained with model.prompt_lr_factor {trained_factor} "
                f"but the config says {requested_factor}; a resumed run keeps its optimiser: pass "
                f"--model.prompt_lr_factor {trained_factor}"
            )
        self.checkpoint, self.checkpoint_data = checkpoint, checkpoint.get(VolumeDataModule.__qualname__)
        hparams = _model_hyperparameters(ckpt_path, checkpoint, trainer_class(written_by))
        if hparams:
            requested_sam = config.model.init_args.get("sam_checkpoint")
            update = {self.config["subcommand"]: {"model": hparams}}
            self.config = self.parser.parse_object(update, self.config)
            if requested_sam is not None:
                # A SAM file named on this command line wins over the checkpoint's (its SHA-256 is checked
                # against the one the checkpoint was trained from).
                self._subcommand_config().model.init_args.sam_checkpoint = requested_sam

    def _resolve_named(self, config: Any, name: str) -> tuple[Path, dict[str, Any]]:
        """The newest complete ``best``/``last`` file under the logger's folder, and its content.

        The run then logs into that checkpoint's run folder (see :func:`_continue_run`).
        """
        root = _runs_folder(config)
        found = newest_complete_checkpoint(root, name)
        if found is None and name == "best" and _has_no_best_but_a_last(root):
            raise CheckpointError(
                f"--ckpt_path best: the runs under {root} have a last.ckpt but no best-*.ckpt, because their "
                "validation never ran (it runs every trainer.check_val_every_n_epoch epochs, and only then is a "
                "best checkpoint written); use --ckpt_path last, or train with check_val_every_n_epoch at most "
                "max_epochs"
            )
        if found is None:
            raise CheckpointError(
                f"--ckpt_path {name}: no {NAMED_CHECKPOINTS[name]} found under {root} that loads; pass a "
                "checkpoint file"
            )
        _continue_run(config, found[0])
        print(f"using checkpoint {found[0]}", file=sys.stderr)
        return found

    def instantiate_classes(self) -> None:
        """Build the trainer, model and data; a sam3d error while building the model is raised as itself.

        (jsonargparse reports a failed subclass as "does not validate against any of the Union subtypes".)
        """
        try:
            super().instantiate_classes()
        except ValueError as error:
            cause: BaseException | None = error
            while cause is not None and not isinstance(cause, Sam3dError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            raise cause from None

    def before_instantiate_classes(self) -> None:
        """The checkpoint path back; matmul precision, best-checkpoint metric; W&B offline without credentials."""
        config = self._subcommand_config() if self.config.get("subcommand") else self.config
        if self.config.get("subcommand"):
            config.ckpt_path = self.checkpoint_path  # the file that was read (best/last resolved)
        torch.set_float32_matmul_precision(matmul_precision(config.trainer.precision))
        if self.config.get("subcommand") == "predict":
            config.trainer.logger = False  # masks and their config.yaml are the record; no W&B run
        model_args = config.model.get("init_args") or {}
        monitor = model_args.get("checkpoint_monitor")
        for callback in config.trainer.get("callbacks") or []:
            init_args = getattr(callback, "init_args", None)
            if (
                monitor
                and init_args is not None
                and getattr(init_args, "monitor", None) in CHECKPOINT_MONITORS
            ):
                init_args.monitor, init_args.mode = monitor, CHECKPOINT_MONITORS[monitor]
        if (
            config.trainer.get("logger")
            and "WANDB_MODE" not in os.environ
            and not wandb_credentials_present()
        ):
            os.environ["WANDB_MODE"] = "offline"
            print(
                "W&B: no credentials found, logging offline (upload later with `wandb sync`)", file=sys.stderr
            )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Lightning's Trainer, loading --ckpt_path from the copy already read; refused settings named."""
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, TypeError, ValueError) as error:
            raise Sam3dError(
                f"Lightning refused the trainer settings: {error}. Change the --trainer setting it names; "
                "settings that must fit the machine are accelerator, devices, strategy and precision (and "
                "any trainer overlay, e.g. trainer/ddp_bf16.yaml, which asks for every GPU)"
            ) from None
        strategy = trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:  # not a plugin the config chose
            strategy.checkpoint_io = AtomicCheckpointIO()
        checkpoint, self.checkpoint = self.checkpoint, None  # not kept all along a fit
        if checkpoint is not None and self.checkpoint_path is not None:
            if self.subcommand == "fit":
                for logger in trainer.loggers:
                    _keep_csv_metrics(logger, checkpoint)
            strategy.checkpoint_io = PreloadedCheckpointIO(
                strategy.checkpoint_io, self.checkpoint_path, checkpoint
            )
        return trainer


# Model arguments that are the data module's (model argument: data argument): one setting each, linked.
LINKED_MODEL_ARGUMENTS = {"crop_size": "patch_size", "click_mode": "click_mode"}

# Click arguments in the hyperparameters of automatic SAM checkpoints written while that trainer took the
# promptable one's arguments. Trainers without clicks no longer take them: they are dropped on loading.
LEGACY_CLICK_ARGUMENTS = ("click_mode", "correction_rounds", "click_maps")


def trainer_class(path: str) -> type[SegmentationTask]:
    """The trainer class of a ``model.class_path``."""
    module, _, name = path.rpartition(".")
    found = getattr(importlib.import_module(module), name)
    if not (isinstance(found, type) and issubclass(found, SegmentationTask)):
        raise Sam3dError(f"model.class_path {path} is not a sam3d trainer (a SegmentationTask)")
    return found


def _logger_configs(config: Any) -> list[Any]:
    """The ``init_args`` of the configured loggers (none for ``--trainer.logger false``)."""
    logger = config.trainer.get("logger")
    loggers = logger if isinstance(logger, list) else [logger]
    return [found.init_args for found in loggers if getattr(found, "init_args", None) is not None]


def _runs_folder(config: Any) -> Path:
    """The folder holding the run folders: the first logger's ``save_dir``, else the trainer's root."""
    save_dirs = [getattr(init_args, "save_dir", None) for init_args in _logger_configs(config)]
    return Path((save_dirs[0] if save_dirs else None) or config.trainer.get("default_root_dir") or ".")


def _continue_run(config: Any, checkpoint: Path) -> None:
    """Log into the run folder ``<save_dir>/<name>/<version>`` that holds ``checkpoint`` (its ``checkpoints``).

    W&B continues the run of that id; CSV and TensorBoard loggers that version (and name). The callbacks'
    state in the checkpoint (best score and file) is then restored, as Lightning restores it only into
    the same folder. A checkpoint outside the configured save_dir is left alone: the run starts a new folder.
    """
    root = _runs_folder(config).resolve()
    try:
        parts = checkpoint.resolve().relative_to(root).parts
    except ValueError:
        return
    if len(parts) not in (3, 4) or parts[-2] != "checkpoints":
        return
    version, name = parts[-3], parts[0] if len(parts) == 4 else ""
    for init_args in _logger_configs(config):
        if hasattr(init_args, "id"):  # W&B: the run id is the folder's name (and its version)
            init_args.id = version
        elif hasattr(init_args, "version"):
            init_args.version = version
            if hasattr(init_args, "name"):
                init_args.name = name


def _keep_csv_metrics(logger: Logger, checkpoint: dict[str, Any]) -> None:
    """Keep a resumed run's ``metrics.csv`` (Lightning's CSV logger deletes it), up to the checkpoint's step.

    Rows logged after the checkpoint was written (the epoch a crash interrupted) are dropped: the resumed
    run logs them again.
    """
    if not isinstance(logger, CSVLogger):
        return
    metrics = Path(logger.log_dir) / "metrics.csv"
    if not metrics.is_file():
        return
    with metrics.open(newline="") as stream:
        reader = csv.DictReader(stream)
        header, rows = list(reader.fieldnames or []), list(reader)
    loops = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
    resumed_at = loops.get("_batches_that_stepped")
    if resumed_at is not None:
        rows = [row for row in rows if not row.get("step") or float(row["step"]) < resumed_at]
    writer = logger.experiment  # Lightning's writer, which deletes the file on creation (rank 0 only)
    if not isinstance(writer, ExperimentWriter):  # another rank than 0
        return
    with metrics.open("w", newline="") as stream:
        rewritten = csv.DictWriter(stream, fieldnames=header)
        rewritten.writeheader()
        rewritten.writerows(rows)
    writer.metrics_keys = header  # the writer appends below this header (and widens it for new keys)


def _refuse_linked_model_settings(given: Any) -> None:
    """Refuse a model argument that the data module's sets (``given``: only what the command gives)."""
    model = given.get(given["subcommand"], given).get("model")
    init_args = model.get("init_args") if model is not None else None
    for model_argument, data_argument in LINKED_MODEL_ARGUMENTS.items():
        if init_args is not None and model_argument in init_args:
            raise Sam3dError(
                f"model.{model_argument} is not a setting: data.{data_argument} is, and sets the model's; "
                f"remove model.{model_argument} from the command line or config (a config.yaml written by "
                f"an older sam3d may hold it) and set data.{data_argument} instead"
            )


def _model_hyperparameters(
    ckpt_path: str, checkpoint: dict[str, Any], trainer: type[SegmentationTask]
) -> dict[str, Any]:
    """The model config a checkpoint's hyperparameters give, as Lightning's CLI merges it."""
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    hparams.pop("_instantiator", None)
    if not trainer.takes_clicks:
        legacy = {key: hparams.pop(key) for key in LEGACY_CLICK_ARGUMENTS if key in hparams}
        # Settings that changed how such a network trained: corrections simulated with clicks, click maps.
        used = [
            f"{key} {legacy[key]}"
            for key in ("click_mode", "click_maps")
            if legacy.get(key) in ("interactive", True)
        ]
        if used:
            raise CheckpointError(
                f"--ckpt_path {ckpt_path} holds a {trainer.__name__} trained with click settings "
                f"({', '.join(used)}), a combination sam3d now refuses; train it again without the clicks overlay"
            )
    if "_class_path" in hparams:
        return {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
    return hparams


def _refuse_what_cannot_run(subcommand: str, config: Any, ckpt_path: str | None) -> None:
    """Refuse, before anything is built or read, a command that cannot run as configured."""
    if not trainer_class(config.model.class_path).takes_clicks:
        if subcommand in ("predict", "serve"):
            raise Sam3dError(trainer_class(config.model.class_path).no_clicks_message(subcommand))
        asked = []
        if config.data.click_mode == "interactive":
            asked.append("data.click_mode interactive")
        if config.evaluation.refinement_clicks:
            asked.append(f"evaluation.refinement_clicks {config.evaluation.refinement_clicks}")
        if asked:
            raise Sam3dError(_no_clicks_refusal(config.model.class_path, asked))
    elif (dense := config.model.init_args.get("dense_prompts")) and config.data.click_mode != "interactive":
        raise Sam3dError(
            f"model.dense_prompts {list(dense)} with data.click_mode {config.data.click_mode}: only the "
            "interactive recipe's simulated user draws boxes, scribbles and previous masks, so nothing would "
            "feed them; add the clicks overlay before the prompts one (-c clicks/interactive.yaml "
            "-c prompts/<type>.yaml) or remove model.dense_prompts"
        )
    if subcommand in ("test", "predict", "serve") and ckpt_path is None:
        raise CheckpointError(f"sam3d {subcommand} needs --ckpt_path (a checkpoint file, best or last)")
    if subcommand == "predict" and not (config.data.predict_scans and config.data.predict_clicks):
        raise DatasetError(PREDICT_NEEDS)


# Arguments of the promptable trainer only: a trainer without clicks refuses them.
CLICK_ARGUMENTS = ("click_mode", "correction_rounds", "click_maps", "click_encoding", "dense_prompts")


def _takes_clicks(path: str) -> bool:
    try:
        return trainer_class(path).takes_clicks
    except (ImportError, AttributeError, Sam3dError):
        return True  # not a sam3d trainer: nothing to say about clicks


def _no_clicks_refusal(path: str, asked: list[str]) -> str:
    """Why a trainer without clicks cannot run with the click settings ``asked``, and what to do."""
    name = path.rsplit(".", 1)[-1]
    overlay = TRAINER_OVERLAYS.get(path, f"model.class_path {path}")
    return (
        f"{name} ({overlay}) segments without clicks, but the config asks for clicks: {'; '.join(asked)}. "
        "Leave out the clicks overlay (clicks/interactive.yaml), any prompts/*.yaml overlay and these "
        "settings, or use the promptable SAM (no trainer overlay) to train or test with clicks"
    )


def _as_argument(value: Any) -> str:
    """A config value as a command-line value (a string as itself, tuples as JSON lists)."""
    return value if isinstance(value, str) else json.dumps(list(value) if isinstance(value, tuple) else value)


# The config overlay of each trainer, for messages (the volumetric SAM needs none).
TRAINER_OVERLAYS = {
    "sam3d.automatic.AutomaticSamModule": "-c automatic/sam.yaml",
    "sam3d.supervised.SupervisedBaselineModule": "-c baselines/<network>.yaml",
}


def _check_trainer(ckpt_path: str, written_by: str, configured: str) -> None:
    """Refuse a checkpoint of another trainer than the config's (e.g. a baseline's for the volumetric SAM)."""
    if written_by == configured:
        return
    overlay = TRAINER_OVERLAYS.get(written_by, f"--model.class_path {written_by}")
    raise CheckpointError(
        f"--ckpt_path {ckpt_path} holds a {written_by.rsplit('.', 1)[-1]} but the config builds a "
        f"{configured.rsplit('.', 1)[-1]}; add the config of the run that wrote it ({overlay})"
    )


def config_file(value: str) -> str:
    """``--config`` value: a file that exists wins, else the config of that name shipped with sam3d.

    ``kits.yaml``, ``configs/kits.yaml`` and ``trainer/ddp_bf16.yaml`` all name shipped configs, so the
    README's commands work from any folder after ``pip install``.
    """
    path = Path(value).expanduser()
    if path.is_file():
        _check_config(path)
        return value
    shipped = shipped_file(value.removeprefix("configs/"))
    return str(shipped) if not path.exists() and shipped.is_file() else value


def _check_config(path: Path) -> None:
    """Refuse, naming the file, a config that is not YAML or holds none of sam3d's sections.

    Misspelt keys inside the sections are left to the parser, whose messages name them.
    """
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        mark = getattr(error, "problem_mark", None)
        reason = f"{getattr(error, 'problem', error)}, line {mark.line + 1}" if mark else str(error)
        raise Sam3dError(f"config file {path} is not readable YAML ({reason}); is it a config?") from None
    if content is None:
        raise Sam3dError(f"config file {path} is empty (no settings); pass a YAML config such as kits.yaml")
    if not isinstance(content, dict) or not CONFIG_SECTIONS & set(content):
        raise Sam3dError(
            f"config file {path} holds none of sam3d's sections ({', '.join(sorted(CONFIG_SECTIONS))}); "
            "is it a config?"
        )


def _with_shipped_configs(argv: list[str]) -> list[str]:
    resolved = list(argv)
    for index, arg in enumerate(argv):
        if arg.startswith("--config="):
            resolved[index] = "--config=" + config_file(arg.removeprefix("--config="))
        elif arg in ("-c", "--config") and index + 1 < len(argv):
            resolved[index + 1] = config_file(argv[index + 1])
    return resolved


def _not_a_promotional_tip(record: logging.LogRecord) -> bool:
    """Log filter that drops Lightning's "💡 Tip: try installing ..." advertisements."""
    return not record.getMessage().startswith("💡 Tip")


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``sam3d`` console script (also ``python -m sam3d``)."""
    argv = list(sys.argv[1:] if args is None else args)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_a_promotional_tip)
    # The arguments always go in explicitly (with shipped configs resolved): nothing to warn about.
    warnings.filterwarnings("ignore", "LightningCLI's args parameter is intended", UserWarning)
    # The module keeps whole test volumes on the CPU on purpose, and Lightning's own use of torch's
    # pytree API is Lightning's to update: neither is something a user can act on.
    warnings.filterwarnings("ignore", "You have overridden `transfer_batch_to_device`")
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    if argv and argv[0] in ("validate", "test", "predict"):
        for message in NOT_FOR_EVALUATION:
            warnings.filterwarnings("ignore", message)
    show_sam3d_warnings()
    try:
        if argv and argv[0] in UTILITIES:
            CLI(
                {argv[0]: UTILITIES[argv[0]]},
                args=argv,
                prog="sam3d",
                version=__version__,
                parser_class=UtilityArgumentParser,
            )
            return
        Sam3dCLI(
            SegmentationTask,  # the volumetric SAM by default; other trainers by model.class_path
            VolumeDataModule,
            subclass_mode_model=True,
            trainer_class=Sam3dTrainer,
            parser_class=Sam3dArgumentParser,
            save_config_callback=RunConfig,
            save_config_kwargs={"save_to_log_dir": False},
            trainer_defaults={"callbacks": [TestReport(), MethodRecord()]},
            seed_everything_default=0,
            parser_kwargs={"prog": "sam3d", "version": __version__, "description": DESCRIPTION},
            auto_configure_optimizers=False,  # the module's recipe is the optimiser; no --optimizer options
            args=_with_shipped_configs(argv),
        )
    except Sam3dError as error:
        sys.exit(f"sam3d: error: {error}")
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        sys.exit(
            f"sam3d: error: the disk is full ({error}); the last complete checkpoint is untouched: free space, "
            "then resume with --ckpt_path last"
        )
