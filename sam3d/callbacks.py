"""Lightning callbacks: validation pictures, the per-run copy of the resolved config, reports and masks.

The callbacks that read results of the task (:class:`TestReport`, :class:`PredictionWriter`) read them
through :class:`ReportingTask`, the interface a task offers them (:class:`sam3d.task.SegmentationTask`).
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.callbacks import LearningRateMonitor as _LightningLearningRateMonitor
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from PIL import Image

from sam3d.data.datamodule import VolumeDataModule
from sam3d.data.dicom import names_dicom_series
from sam3d.data.files import load_nifti
from sam3d.data.scans.dicom_seg import DICOM_SEG_SUFFIX, write_dicom_seg
from sam3d.data.scans.evaluation_cases import SkippedCase
from sam3d.data.scans.prediction_cases import scan_files
from sam3d.data.scans.writing import ObjectProbability, write_objects, write_prediction
from sam3d.errors import Sam3dError
from sam3d.evaluation import EvaluationSettings
from sam3d.reporting import ranked_cases, write_report
from sam3d.visualize import orthogonal_slices


@runtime_checkable
class ReportingTask(Protocol):
    """What :class:`TestReport` and :class:`PredictionWriter` read of the task (a LightningModule).

    Attributes:
        evaluation: How cases are clicked and scored; its ``threshold`` is also the threshold of the masks.
        test_rows: This rank's per-case, per-repeat, per-click rows of the test (see :mod:`sam3d.reporting`).
        test_pictures: This rank's pictures of the test cases, PNG bytes by case.
        test_skipped: This rank's test cases that were skipped, and why, by case.
    """

    evaluation: EvaluationSettings
    test_rows: list[dict[str, Any]]
    test_pictures: dict[str, bytes]
    test_skipped: dict[str, str]


def reporting_task(pl_module: L.LightningModule) -> ReportingTask:
    """``pl_module`` as the :class:`ReportingTask` it must be for the test report and the prediction writer.

    Raises:
        TypeError: If the module lacks an attribute of :class:`ReportingTask`.
    """
    if not isinstance(pl_module, ReportingTask):
        missing = [name for name in ReportingTask.__annotations__ if not hasattr(pl_module, name)]
        raise TypeError(
            f"{type(pl_module).__name__} has no {', '.join(missing)}: the test report and the prediction writer "
            "need a task like sam3d.task.SegmentationTask"
        )
    return pl_module


def trainer_callbacks(trainer: L.Trainer) -> list[L.Callback]:
    """The trainer's callbacks."""
    # Lightning sets `Trainer.callbacks` in its callback connector; the class does not declare it.
    callbacks: list[L.Callback] = trainer.callbacks  # type: ignore[attr-defined]
    return callbacks


def run_directory(trainer: L.Trainer) -> Path:
    """The folder of this run, the parent of its ``checkpoints`` folder (as ``ModelCheckpoint`` places it).

    Called from rank-0-only code, so it must not use ``trainer.log_dir``: that is a collective (a
    broadcast from rank 0) and would leave the other ranks waiting in a mismatched one.
    """
    logger = trainer.logger
    if logger is None:
        return Path(trainer.default_root_dir)
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / version


def method_record(pl_module: L.LightningModule) -> dict[str, Any]:
    """Name and parameter counts of any LightningModule: its ``method`` attribute, else its class name."""
    parameters = list(pl_module.parameters())
    return {
        "method": str(getattr(pl_module, "method", type(pl_module).__name__)),
        "trainable_parameters": sum(p.numel() for p in parameters if p.requires_grad),
        "parameters": sum(p.numel() for p in parameters),
    }


def data_record(datamodule: object) -> dict[str, Any]:
    """What identifies a test's data, for ``sam3d report``: dataset, data folder, fold and split file."""
    if not isinstance(datamodule, VolumeDataModule):
        return {}
    root = datamodule.root.resolve() if datamodule.root is not None else None
    return {
        "data": {
            "dataset": datamodule.dataset,
            "root": None if root is None else str(root),
            "fold": datamodule.fold,
            "split_file": datamodule.split_file,
        }
    }


def peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak memory so far: allocated GPU memory on CUDA (since the last reset), else the process's peak RSS."""
    if device.type == "cuda":
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated(device), "peak_memory_of": "cuda"}
    import resource  # POSIX only

    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"peak_memory_bytes": kib * 1024, "peak_memory_of": "rss"}


class MethodRecord(L.Callback):
    """At the start of every run, print the method's trainable parameters and record them with the logger."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Print (rank 0) and log the method and its parameter counts."""
        record = method_record(pl_module)
        if trainer.is_global_zero:
            print(
                f"{record['method']}: {record['trainable_parameters']:,} trainable parameters "
                f"of {record['parameters']:,}",
                flush=True,
            )
        if trainer.logger is not None:
            trainer.logger.log_hyperparams(record)


class LearningRateMonitor(_LightningLearningRateMonitor):
    """Lightning's learning-rate monitor, idle without a logger (``--trainer.logger false``) instead of failing."""

    def on_train_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        """Name the parameter groups (only when something will log them)."""
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        """Log per step, when configured so and a logger exists."""
        if trainer.loggers:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        """Log per epoch, when configured so and a logger exists."""
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)


class ValidationSlices(L.Callback):
    """At each validation, a picture of the first validation patch through its first click, with all its clicks."""

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
        labels = batch["point_labels"][0]
        given = labels >= 0  # -1: padding of a batch's click lists
        picture = orthogonal_slices(
            batch["image"][0, 0],
            batch["label"][0, 0],
            outputs["prediction"][0, 0],
            batch["points"][0][given],
            labels[given] == 1,
            title=f"{batch['case_id'][0]} - epoch {trainer.current_epoch}",
        )
        if isinstance(trainer.logger, WandbLogger):
            trainer.logger.log_image("val/slices", [picture], step=trainer.global_step)
        else:
            folder = run_directory(trainer) / "pictures"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture).save(folder / f"val_epoch{trainer.current_epoch:04d}.png")


class StepReport(L.Callback):
    """At the end of ``fit``, print each rank's training-step time and peak memory.

    Add it with ``--trainer.callbacks+=sam3d.callbacks.StepReport``; the first ``skip`` steps (warm-up,
    kernel selection) are left out of the times.
    """

    def __init__(self, skip: int = 1) -> None:
        self.skip, self._start = skip, 0.0
        self.seconds: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, *_: Any) -> None:
        """Start the clock."""
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
        """Stop the clock (after the device finished the step)."""
        if torch.cuda.is_available() and trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        self.seconds.append(time.perf_counter() - self._start)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Print the median step time and the peak memory of this rank."""
        timed = self.seconds[self.skip :] or self.seconds
        if not timed:
            return
        memory = peak_memory(trainer.strategy.root_device)
        name = "GPU memory" if memory["peak_memory_of"] == "cuda" else "RSS"
        peak = f"peak {name} {memory['peak_memory_bytes'] / 2**30:.2f} GiB"
        print(
            f"rank {trainer.global_rank}: {len(timed)} training steps, median {float(np.median(timed)):.3f} s "
            f"per step, {peak}",
            flush=True,
        )


def config_folder(trainer: L.Trainer, stage: str) -> Path:
    """Where a command's ``config.yaml`` goes: beside its own results, never over the training's.

    ``fit``: the run folder (beside ``checkpoints/``); ``test``: the run folder's ``test/`` (beside
    ``summary.json``); ``validate``: its ``validate/``; ``predict``: beside the masks.
    """
    if stage == "predict":
        writers = [c for c in trainer_callbacks(trainer) if isinstance(c, PredictionWriter)]
        if writers:
            return writers[0].output_dir
    folder = run_directory(trainer)
    return folder if stage == "fit" else folder / TrainerFn(stage).value  # Lightning passes the enum


class RunConfig(SaveConfigCallback):
    """Save the resolved config into the run's own folder and send it to the logger.

    The data module's preprocessing arguments are written as the values that ran (dataset presets and
    statistics computed on the training cases included), so the saved config reproduces the run.
    """

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Write ``config.yaml`` where the command writes its results (rank 0 only), see :func:`config_folder`."""
        folder = config_folder(trainer, stage)
        folder.mkdir(parents=True, exist_ok=True)
        config = self.config.clone()
        # Lightning sets `Trainer.datamodule` in its data connector; the class does not declare it.
        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        if isinstance(datamodule, VolumeDataModule):  # the preprocessing that ran, not null/preset
            for name, value in datamodule.preprocessing_arguments().items():
                config[f"data.{name}"] = value
        self.parser.save(
            config, folder / self.config_filename, skip_none=False, overwrite=True, multifile=False
        )
        if trainer.logger is not None:
            trainer.logger.log_hyperparams({"config": self.parser.dump(config, skip_none=False)})


class TestReport(L.Callback):
    """After ``sam3d test``: per-case CSV, summary JSON and best/median/worst pictures in the run folder.

    Rows and pictures are gathered from every rank; rank 0 writes them, prints a per-case table and
    sends the summary, the table and the pictures to W&B. The summary also records the method and its
    parameter counts (:func:`method_record`), the largest peak memory of the ranks during the test
    (:func:`peak_memory`) and the data (:func:`data_record`), so that ``sam3d report`` can compare any
    methods' test runs and warn about runs on different data.
    """

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start measuring the peak GPU memory of the test."""
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.strategy.root_device)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Gather, write and log the evaluation of the test cases."""
        task = reporting_task(pl_module)
        rows, pictures, skipped = task.test_rows, task.test_pictures, task.test_skipped
        memory = peak_memory(trainer.strategy.root_device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (rows, pictures, skipped, memory))
            rows = [row for part, _, _, _ in gathered for row in part]
            pictures = {case: png for _, part, _, _ in gathered for case, png in part.items()}
            skipped = {case: why for _, _, part, _ in gathered for case, why in part.items()}
            memory = max((part for *_, part in gathered), key=lambda m: m["peak_memory_bytes"])
        if not rows:  # on every rank: each has gathered the same
            raise Sam3dError(nothing_tested(skipped))
        if not trainer.is_global_zero:
            return
        rows = sorted(_unique_rows(rows), key=lambda r: (r["case"], r["repeat"], r["clicks"]))
        folder = run_directory(trainer) / "test"
        # Lightning sets `Trainer.datamodule` in its data connector; the class does not declare it.
        record = {**method_record(pl_module), **memory, **data_record(trainer.datamodule)}  # type: ignore[attr-defined]
        result = write_report(rows, pictures, skipped, task.evaluation, folder, record)
        for case, reason in skipped.items():
            print(f"skipped {case}: {reason}")
        _print_table(rows, result, folder)
        if isinstance(trainer.logger, WandbLogger):
            trainer.logger.log_table(
                "test/cases", columns=list(rows[0]) if rows else [], data=[list(r.values()) for r in rows]
            )
            trainer.logger.log_metrics(
                {
                    f"test/{metric}_{stat}": value
                    for metric, stats in result["final"].items()
                    for stat, value in stats.items()
                }
            )
            ranked = ranked_cases(rows)
            images = [
                np.asarray(Image.open(io.BytesIO(pictures[case])))
                for case in ranked.values()
                if case in pictures
            ]
            if images:
                trainer.logger.log_image(
                    "test/cases", images, caption=[f"{k}: {v}" for k, v in ranked.items()]
                )


def nothing_tested(skipped: dict[str, str], shown: int = 5) -> str:
    """Why ``sam3d test`` has no result: every test case skipped (the first ``shown``, with why), or none."""
    if not skipped:
        return "sam3d test found no test case; check data.root and the split (`sam3d check-dataset` lists the cases)"
    reasons = "; ".join(f"{case}: {why}" for case, why in list(skipped.items())[:shown])
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return (
        f"sam3d test evaluated no case: all {len(skipped)} test cases were skipped ({reasons}{more}); fix or "
        "replace them (`sam3d check-dataset` lists unreadable files) or test on cases whose labels hold the "
        "target (data.target_label)"
    )


def _unique_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop the duplicates a DistributedSampler adds to even out the ranks."""
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        seen.setdefault((row["case"], row["repeat"], row["clicks"]), row)
    return list(seen.values())


def _print_table(rows: list[dict[str, Any]], result: dict[str, Any], folder: Path) -> None:
    final = {(r["case"], r["repeat"]): r for r in rows}
    print(f"{'case':<24} {'repeat':>6} {'clicks':>6} {'Dice':>7} {'NSD':>7} {'HD95 mm':>8} {'s':>6}")
    for row in final.values():
        print(
            f"{row['case']:<24} {row['repeat']:>6} {row['clicks']:>6} {row['dice']:>7.4f} {row['nsd']:>7.4f} "
            f"{row['hd95']:>8.2f} {row['seconds']:>6.2f}"
        )
    stats = result["final"]
    print(
        f"mean over {result['cases']} cases: Dice {stats['dice']['mean']:.4f} +- {stats['dice']['std']:.4f}, "
        f"NSD {stats['nsd']['mean']:.4f}, HD95 {stats['hd95']['mean']:.2f} mm; report in {folder}"
    )
    if auc := result["click_auc"]:
        print(
            f"area under the clicks curve ({auc['steps']} predictions, at most {auc['steps'] - 1}): "
            f"DSC-AUC {auc['dice']['mean']:.4f}, NSD-AUC {auc['nsd']['mean']:.4f}"
        )


class PredictionWriter(BasePredictionWriter):
    """Writes each predicted mask (and optionally the probability map) as NIfTI in the input scan's geometry.

    The mask threshold is ``evaluation.threshold``, the one that also shapes the prediction itself. A scan
    with several objects gets their label map and one mask per object (:func:`write_objects`).

    Args:
        output_dir: Folder of the outputs (``<case>_mask.nii.gz``, ``<case>_probability.nii.gz``; several
            objects: ``<case>_labels.nii.gz``, ``<case>_object-<id>_<name>.nii.gz``; ``<case>_seg.dcm``).
        probabilities: Also write the foreground probability map (of each object).
        dicom_seg: Also write the mask (the label map of several objects) as a DICOM-SEG object referencing
            the source series, one segment per object named as it; every scan must then be a DICOM series.
        strict: Fail the command (non-zero exit) when any scan is skipped; otherwise only when none was
            written.

    Attributes:
        written: The cases written so far in this ``predict``.
        skipped: The scans skipped so far, and why (by case; missing scan inputs included).
    """

    def __init__(
        self,
        output_dir: str = "predictions",
        probabilities: bool = False,
        dicom_seg: bool = False,
        strict: bool = False,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir, self.probabilities, self.dicom_seg = Path(output_dir), probabilities, dicom_seg
        self.strict = strict
        self.written: list[str] = []
        self.skipped: dict[str, str] = {}

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start counting; scan inputs that name no scan count as skipped scans."""
        self.written, self.skipped = [], {}
        loaders = trainer.predict_dataloaders
        for loader in loaders if isinstance(loaders, list) else [loaders]:
            for problem in getattr(getattr(loader, "dataset", None), "missing_scans", []):
                name = str(problem.path) if problem.case_id == "-" else problem.case_id
                self.skipped[name] = problem.message

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Print the one-line summary: ``written N of M scans; skipped K: <case (reason)>; ...``."""
        print(self.summary(), flush=True)

    def summary(self) -> str:
        """``written N of M scans; skipped K`` and, for each skipped scan, its case and why."""
        total = len(self.written) + len(self.skipped)
        # The first line of each reason (a reason may list every offending click below it).
        reasons = "; ".join(
            f"{case} ({(reason.splitlines() or [''])[0].rstrip(':')})"
            for case, reason in self.skipped.items()
        )
        return f"written {len(self.written)} of {total} scans; skipped {len(self.skipped)}" + (
            f": {reasons}" if reasons else ""
        )

    def failure(self) -> str | None:
        """Why the command fails (no mask written; with ``strict``, any skip), or None."""
        if not self.written:
            total = len(self.skipped)
            return (
                f"sam3d predict wrote no mask: all {total} scans were skipped (reasons above); fix the clicks "
                "file or the scans it names"
                if total
                else "sam3d predict found no scan to segment"
            )
        if self.strict and self.skipped:
            return (
                f"{len(self.skipped)} of {len(self.written) + len(self.skipped)} scans were skipped (reasons "
                "above) and --prediction.strict is true; fix them, or drop the option to accept the skips"
            )
        return None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Refuse DICOM-SEG output for scans that are not DICOM series, before any is segmented."""
        if stage != "predict" or not self.dicom_seg:
            return
        files, _ = scan_files(getattr(trainer.datamodule, "predict_scans", None) or [])  # type: ignore[attr-defined]
        others = [str(path) for path in files if not names_dicom_series(path)]
        if others:
            raise Sam3dError(
                "--prediction.dicom_seg true writes DICOM-SEG objects, which reference a DICOM series, but "
                f"these scans are not DICOM series: {', '.join(others)}; predict them without the option "
                "(their masks are NIfTI) or give their DICOM series folders"
            )

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Map the probabilities back to the scan's own grid and write them; a line per case."""
        case = prediction["case"]
        if isinstance(case, SkippedCase):
            print(f"{case.case_id}: skipped: {case.reason}")
            self.skipped[case.case_id] = case.reason
            return
        start = time.perf_counter()
        threshold = reporting_task(pl_module).evaluation.threshold
        probabilities = prediction["probabilities"]
        if len(case.objects) == 1:
            written = write_prediction(
                case.scan, probabilities[case.objects[0].id], threshold, self.output_dir, self.probabilities
            )
            result = f"{written.volume_ml:.1f} ml"
            target = written.mask
        else:
            objects = [ObjectProbability(o.id, o.name, probabilities[o.id]) for o in case.objects]
            labelled = write_objects(case.scan, objects, threshold, self.output_dir, self.probabilities)
            result = ", ".join(f"{o.name} {labelled.volumes_ml[o.id]:.1f} ml" for o in case.objects)
            result = f"{len(objects)} objects ({result})"
            target = labelled.labels
        also = ""
        if self.dicom_seg:  # the voxels of the NIfTI file written, so that both files hold the same
            names = [case.objects[0].name] if len(case.objects) == 1 else {o.id: o.name for o in case.objects}
            seg = self.output_dir / f"{case.case_id}{DICOM_SEG_SUFFIX}"
            write_dicom_seg(np.asarray(load_nifti(target).dataobj), names, case.scan.path, seg)
            also = f" and {seg}"
        seconds = prediction["seconds"] + time.perf_counter() - start
        kinds = [i.kind for i in case.interactions]
        drawn = "".join(
            f", {kinds.count(kind)} {kind}{suffix}"
            for kind, suffix in (("box", "(es)"), ("scribble", "(s)"))
            if kind in kinds
        )
        print(
            f"{case.case_id}: {kinds.count('click')} click(s){drawn}, {result}, {seconds:.1f} s -> {target}{also}"
        )
        self.written.append(case.case_id)
