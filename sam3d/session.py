"""A segmentation session on a raw scan in memory, with the method names of nnInteractive's session.

:class:`Sam3dInferenceSession` takes the scan as nnInteractive's ``nnInteractiveInferenceSession`` does
(``set_image`` on a ``(1, x, y, z)`` array in HU with its spacing or affine), preprocesses it with the
checkpoint's own preprocessing (:func:`sam3d.data.scans.scan_from_array`: resampling, window, z-score),
maps every point, box, scribble and lasso from the array's voxels onto the network grid as
``sam3d predict`` maps a clicks file's voxels (:func:`sam3d.data.scans.interactions_to_network`), runs
:class:`sam3d.interaction.InteractionSession` there, and writes the mask back into the caller's target
buffer on the array's own grid (:func:`sam3d.data.scans.to_source_grid`). ``sam3d serve`` runs one per
client of nnInteractive's remote protocol (:mod:`sam3d.serve.nninteractive`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sam3d.data.clicks import ClickMode, checked_click_mode
from sam3d.data.preprocessing import Preprocessing
from sam3d.data.scans import Box, Click, Entry, Scan, Scribble, interactions_to_network, to_source_grid
from sam3d.data.scans.arrays import array_affine, read_image, scan_from_array
from sam3d.errors import Sam3dError
from sam3d.inference import Protocol
from sam3d.interaction import Interaction, InteractionSession
from sam3d.models import VolumetricSam

__all__ = ["Sam3dInferenceSession", "TargetBuffer", "negative_refusal", "read_image"]

TargetBuffer = np.ndarray | torch.Tensor

# A scribble or lasso mask this large is refused: one position per voxel goes through the mapping.
MAX_MASK_VOXELS = 1 << 20


def negative_refusal(kind: str) -> str:
    """Why a ``reference``-mode checkpoint refuses a negative ``kind`` (click or scribble), and what to do."""
    return (
        f"this checkpoint was trained with data.click_mode reference (3DSAM-adapter's clicks, all positive): it "
        f"never learned negative clicks, so a negative {kind} would grow the mask instead of shrinking it. "
        "Correct with Undo and positive clicks, or serve a checkpoint trained with negative clicks "
        "(-c clicks/interactive.yaml, or data.click_mode labelled)"
    )


def autocast_context(device: torch.device, precision: str) -> Callable[[], AbstractContextManager[Any]]:
    """The context of every network call for a Lightning precision name (``32-true``, ``bf16-mixed``, ...)."""
    dtypes = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
    if precision in ("32", "32-true"):
        return nullcontext
    if precision not in dtypes:
        raise Sam3dError(f"precision must be '32-true', 'bf16-mixed' or '16-mixed', got {precision!r}")
    return lambda: torch.autocast(device.type, dtype=dtypes[precision])


class Sam3dInferenceSession:
    """Interactive segmentation of a scan in memory, in nnInteractive's conventions.

    Coordinates are voxel indices of the array given to :meth:`set_image` (its ``(x, y, z)`` axes, without
    the channel); boxes are ``[[x0, x1], [y0, y1], [z0, z1]]`` with exclusive upper bounds (a box on one
    slice has one axis ``[z, z + 1]``); scribble and lasso images are arrays of the image's shape, nonzero
    where drawn. Every interaction (with ``run_prediction``) writes the whole mask, 1 inside, into the
    target buffer. Unlike nnInteractive, a network takes a box or scribble only when trained with that
    prompt (:attr:`supported_interactions`), a box cannot be negative, and a first interaction must be
    positive.

    Example::

        session = Sam3dInferenceSession.from_checkpoint("best.ckpt", device="cuda")
        session.set_image(ct[None], {"spacing": (2.5, 0.8, 0.8)})  # ct (k, j, i) in HU, as Slicer and SimpleITK
        target = np.zeros(ct.shape, np.uint8)
        session.set_target_buffer(target)
        session.add_point_interaction((120, 96, 40), include_interaction=True)  # target holds the mask

    A scan file or DICOM series folder: ``image, affine = read_image("ct_series/")``, then
    ``session.set_image(image[None], {"affine": affine})``; the mask is then on the file's grid.

    Args:
        net: The network, on its device, in eval mode.
        preprocessing: The checkpoint's preprocessing.
        protocol: ``full`` (the mask grows into neighbouring crops) or ``paper`` (see :mod:`sam3d.inference`).
        threshold: Probability level of the mask.
        cache_size: Crop encodings kept.
        forward_context: Context of every network call (autocast for mixed precision).
        click_mode: The checkpoint's ``data.click_mode``: ``reference`` never learned negative clicks, so
            negative points, scribbles and lassos are refused (:func:`negative_refusal`).
    """

    def __init__(
        self,
        net: VolumetricSam,
        preprocessing: Preprocessing,
        protocol: Protocol = "full",
        threshold: float = 0.5,
        cache_size: int = 8,
        forward_context: Callable[[], AbstractContextManager[Any]] = nullcontext,
        click_mode: ClickMode = "interactive",
    ) -> None:
        self.net, self.preprocessing, self.click_mode = net, preprocessing, click_mode
        self.protocol, self.threshold, self.cache_size = protocol, threshold, cache_size
        self.forward_context = forward_context
        self.scan: Scan | None = None
        self.session: InteractionSession | None = None
        self.target_buffer: TargetBuffer | None = None
        self._pending: list[Interaction] = []

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        precision: str = "32-true",
        protocol: Protocol = "full",
        threshold: float = 0.5,
        cache_size: int = 8,
        sam_checkpoint: str | None = None,
    ) -> Sam3dInferenceSession:
        """A session on a sam3d checkpoint's network and preprocessing, without the command line.

        Args:
            path: A checkpoint of the promptable network (``best-*.ckpt``, ``last.ckpt``).
            device: Where the network runs (``cpu``, ``cuda``, ``cuda:1``).
            precision: ``32-true``, ``bf16-mixed`` or ``16-mixed`` (autocast around the network).
            protocol: ``full`` or ``paper`` (see :mod:`sam3d.inference`).
            threshold: Probability level of the mask.
            cache_size: Crop encodings kept.
            sam_checkpoint: The SAM file the network was trained from, when it is no longer where the
                checkpoint says (checkpoints without the frozen SAM weights need it).

        Raises:
            CheckpointError: If the file is not a checkpoint of sam3d's promptable network or lacks its
                preprocessing.
        """
        from sam3d.data.datamodule import VolumeDataModule  # Lightning: for this loader only
        from sam3d.models import CheckpointError
        from sam3d.models.checkpoints import load_weights_file
        from sam3d.module import VolumetricSamModule
        from sam3d.task import checkpoint_module

        checkpoint = load_weights_file(path, "checkpoint")
        if not isinstance(checkpoint, dict) or "sam3d" not in checkpoint:
            raise CheckpointError(f"checkpoint {path} is not a sam3d checkpoint")
        written_by = checkpoint_module(checkpoint["sam3d"])
        if written_by != f"{VolumetricSamModule.__module__}.{VolumetricSamModule.__qualname__}":
            raise CheckpointError(
                f"checkpoint {path} holds a {written_by.rsplit('.', 1)[-1]}, which takes no clicks; "
                "a session needs a checkpoint of the promptable network (sam3d.module.VolumetricSamModule)"
            )
        stored = checkpoint.get(VolumeDataModule.__qualname__, {}).get("preprocessing")
        if stored is None:
            raise CheckpointError(
                f"checkpoint {path} records no preprocessing (written by an older sam3d); "
                "build the session from the network and a Preprocessing instead"
            )
        # Lightning's CLI also records how it built the module (`_class_path`, `_instantiator`).
        hyperparameters = {
            name: value
            for name, value in checkpoint.get("hyper_parameters", {}).items()
            if not name.startswith("_")
        }
        if sam_checkpoint is not None:
            hyperparameters["sam_checkpoint"] = sam_checkpoint
        module = VolumetricSamModule(**hyperparameters)
        module.on_load_checkpoint(checkpoint)
        module.load_state_dict(checkpoint["state_dict"])
        device = torch.device(device)
        net = module.net.to(device).eval()
        return cls(
            net,
            Preprocessing.from_dict(stored),
            protocol,
            threshold,
            cache_size,
            autocast_context(device, precision),
            checked_click_mode(
                hyperparameters.get("click_mode", module.hparams.get("click_mode", "reference"))
            ),
        )

    # What the network takes ---------------------------------------------------------------------------
    @property
    def supported_interactions(self) -> dict[str, bool]:
        """NnInteractive's interaction names, and whether this network takes each."""
        takes = set(self.net.config.dense_prompts)
        return {
            "point": True,
            "bbox": "box" in takes,
            "scribble": "scribble" in takes,
            "lasso": "box" in takes or "scribble" in takes,
            "initial_seg": False,
        }

    @property
    def original_image_shape(self) -> tuple[int, ...] | None:
        """``(1, x, y, z)`` of the image set, as nnInteractive names it."""
        return None if self.scan is None else (1, *self.scan.source_shape)

    @property
    def interactions(self) -> tuple[Interaction, ...]:
        """Every interaction run so far on the network grid, oldest first (queued ones not included)."""
        return () if self.session is None else self.session.interactions

    # The image and the target ------------------------------------------------------------------------
    def set_image(
        self, image: np.ndarray | torch.Tensor, image_properties: Mapping[str, Any] | None = None
    ) -> None:
        """Preprocess the scan ``(1, x, y, z)`` (HU for CT) with the checkpoint's preprocessing; forget the last.

        Args:
            image: The raw scan with one channel.
            image_properties: ``{"spacing": (s0, s1, s2)}`` in mm along the array's axes, which are then
                taken in the order 3D Slicer and SimpleITK give (and nnInteractive's clients send): slices,
                rows, columns of an axial scan with ITK's identity direction
                (:func:`~sam3d.data.scans.arrays.array_affine`); or ``{"affine": 4x4}``, voxel index to
                world RAS+ mm (NiBabel's ``image.affine``), for any orientation. The network was trained on
                one orientation: a wrong one segments worse.

        Raises:
            Sam3dError: If the image is not ``(1, x, y, z)`` real numbers or its geometry is missing or wrong.
        """
        if not isinstance(image, np.ndarray | torch.Tensor):
            raise Sam3dError(f"the image must be a numpy array or torch tensor, got {type(image).__name__}")
        shape = tuple(image.shape)
        if len(shape) != 4 or shape[0] != 1:
            raise Sam3dError(f"the image must be a 4D array (1, x, y, z) with one channel, got shape {shape}")
        properties = dict(image_properties or {})
        affine = array_affine(properties.get("spacing"), properties.get("affine"))
        self.scan = scan_from_array(image[0], affine, self.preprocessing)
        self.session = InteractionSession(
            self.net, self.scan.image, self.protocol, self.threshold, self.cache_size
        )
        self._pending = []
        if self.target_buffer is not None and tuple(self.target_buffer.shape) != self.scan.source_shape:
            self.target_buffer = None  # a buffer of the previous image: set_target_buffer again

    def set_target_buffer(self, target_buffer: TargetBuffer) -> None:
        """Where the mask goes: a numpy array or tensor of the image's shape ``(x, y, z)``, written in place.

        Raises:
            Sam3dError: If no image is set, or the buffer is not an array of its shape.
        """
        scan = self._scan()
        if not isinstance(target_buffer, np.ndarray | torch.Tensor):
            raise Sam3dError(
                f"the target buffer must be a numpy array or torch tensor, got {type(target_buffer).__name__}"
            )
        if tuple(target_buffer.shape) != scan.source_shape:
            raise Sam3dError(
                f"the target buffer has shape {tuple(target_buffer.shape)} but the image is "
                f"{scan.source_shape}: give an array of the image's shape without its channel"
            )
        self.target_buffer = target_buffer

    # Interactions ------------------------------------------------------------------------------------
    def add_point_interaction(
        self, coordinates: Sequence[float], include_interaction: bool = True, run_prediction: bool = True
    ) -> None:
        """A click at voxel ``(x, y, z)``; ``include_interaction`` False: outside the object.

        Raises:
            Sam3dError: If no image is set, the point is not three numbers or lies outside the image.
        """
        point = _numbers(coordinates, "point coordinates", (3,))
        self._add(Click(tuple(point), "voxel", include_interaction), run_prediction)

    def add_bbox_interaction(
        self,
        bbox_coords: Sequence[Sequence[float]],
        include_interaction: bool = True,
        run_prediction: bool = True,
    ) -> None:
        """A box ``[[x0, x1], [y0, y1], [z0, z1]]`` (upper bounds exclusive) around the object.

        Raises:
            Sam3dError: For a negative box (a box marks the object), a network without the box prompt,
                malformed or empty bounds, or a box outside the image.
        """
        if not include_interaction:
            raise Sam3dError(
                "a box marks the object: sam3d's networks take no negative boxes; correct with a negative "
                "point or scribble instead"
            )
        self._refuse_unless("bbox")
        bounds = _numbers(bbox_coords, "bbox_coords [[x0, x1], [y0, y1], [z0, z1]]", (3, 2))
        if (bounds[:, 1] <= bounds[:, 0]).any():
            raise Sam3dError(
                f"bbox_coords {bounds.tolist()} has an empty axis: each is [lower, upper) with upper > lower "
                "(a box on one slice: [z, z + 1])"
            )
        lower, upper = tuple(bounds[:, 0]), tuple(bounds[:, 1] - 1)
        self._add(Box((lower, upper), "voxel"), run_prediction)

    def add_scribble_interaction(
        self,
        scribble_image: np.ndarray | torch.Tensor,
        include_interaction: bool = True,
        run_prediction: bool = True,
    ) -> None:
        """A scribble: an array of the image's shape, nonzero where drawn.

        Raises:
            Sam3dError: If the network takes no scribbles, or the array is not of the image's shape or is empty.
        """
        self._refuse_unless("scribble")
        voxels = self._drawn(scribble_image, "scribble")
        self._add(Scribble(voxels, "voxel", include_interaction), run_prediction)

    def add_lasso_interaction(
        self,
        lasso_image: np.ndarray | torch.Tensor,
        include_interaction: bool = True,
        run_prediction: bool = True,
    ) -> None:
        """A lasso: an array of the image's shape, nonzero inside the closed contour (filled).

        sam3d's networks take no lasso: a positive lasso becomes the box around it (the object lies inside),
        a negative one a negative scribble over its inside (nothing there is the object).

        Raises:
            Sam3dError: If the network lacks that prompt (box, resp. scribble), or the array is wrong or empty.
        """
        self._refuse_unless("bbox" if include_interaction else "scribble", "lasso")
        voxels = self._drawn(lasso_image, "lasso")
        if not include_interaction:
            self._add(Scribble(voxels, "voxel", False), run_prediction)
            return
        drawn = np.array(voxels)
        self._add(Box((tuple(drawn.min(0)), tuple(drawn.max(0))), "voxel"), run_prediction)

    def predict(self) -> bool:
        """Run the interactions queued with ``run_prediction=False``; whether there were any."""
        if not self._pending:
            return False
        self._run()
        return True

    def reset_interactions(self) -> None:
        """Remove every interaction and clear the target buffer (the crop encodings are kept)."""
        self._pending = []
        if self.session is not None:
            self.session.reset()
        if self.target_buffer is not None:
            self.target_buffer[...] = 0

    def undo(self) -> bool:
        """Take back the last interaction (the queued ones first); whether there was one to take back."""
        if self._pending:
            self._pending.pop()
            return True
        if self.session is None or not self.session.interactions:
            return False
        with torch.no_grad(), self.forward_context():
            self.session.undo()
        self._write()
        return True

    @property
    def mask(self) -> torch.Tensor:
        """The mask ``(x, y, z)`` (bool) on the image's own grid: the probability resampled, thresholded."""
        scan, session = self._scan(), self.session
        assert session is not None
        return to_source_grid(scan, session.probability, interpolation="linear") > self.threshold

    # Internals ---------------------------------------------------------------------------------------
    def _scan(self) -> Scan:
        if self.scan is None:
            raise Sam3dError("no image yet: call set_image first")
        return self.scan

    def _refuse_unless(self, kind: str, given: str | None = None) -> None:
        if not self.supported_interactions[kind]:
            prompt = {"bbox": "box", "scribble": "scribble"}[kind]
            raise Sam3dError(
                f"this network takes no {prompt} prompts{f', so no {given}' if given else ''}: use a checkpoint "
                f"trained with configs/prompts/{prompt}.yaml (model.dense_prompts), or add points instead"
            )

    def _drawn(self, image: np.ndarray | torch.Tensor, what: str) -> tuple[tuple[float, float, float], ...]:
        scan = self._scan()
        if not isinstance(image, np.ndarray | torch.Tensor):
            raise Sam3dError(f"the {what} must be a numpy array or torch tensor, got {type(image).__name__}")
        if tuple(image.shape) != scan.source_shape:
            raise Sam3dError(
                f"the {what} image has shape {tuple(image.shape)} but the image is {scan.source_shape}: "
                "give an array of the image's shape, nonzero where drawn"
            )
        drawn = np.argwhere(np.asarray(image.cpu() if isinstance(image, torch.Tensor) else image) != 0)
        if not len(drawn):
            raise Sam3dError(f"the {what} image is empty: nothing is drawn (all zero)")
        if len(drawn) > MAX_MASK_VOXELS:
            raise Sam3dError(
                f"the {what} covers {len(drawn)} voxels, more than {MAX_MASK_VOXELS}: draw a smaller one"
            )
        return tuple((float(i), float(j), float(k)) for i, j, k in drawn)

    def _add(self, entry: Entry, run_prediction: bool) -> None:
        scan = self._scan()
        if self.click_mode == "reference" and not isinstance(entry, Box) and not entry.positive:
            raise Sam3dError(negative_refusal("click" if isinstance(entry, Click) else "scribble"))
        positions = np.array(
            [entry.position]
            if isinstance(entry, Click)
            else entry.corners
            if isinstance(entry, Box)
            else entry.positions
        )
        outside = ((positions < -0.5) | (positions > np.array(scan.source_shape) - 0.5)).any(1)
        if outside.any():
            raise Sam3dError(
                f"the {type(entry).__name__.lower()} at voxel {positions[outside][0].tolist()} lies outside the image "
                f"of shape {scan.source_shape}; coordinates are voxel indices (x, y, z) of the array given to set_image"
            )
        steps = interactions_to_network([entry], scan)
        self._pending.extend(interaction for step in steps for interaction in step)
        if run_prediction:
            self._run()

    def _run(self) -> None:
        session = self.session
        assert session is not None
        pending, self._pending = self._pending, []
        try:
            with torch.no_grad(), self.forward_context():
                session.add(*pending)
        except Exception:
            self._pending = pending[:-1]  # the last one is refused; the queued ones before it stay
            raise
        self._write()

    def _write(self) -> None:
        mask = self.mask
        if self.target_buffer is None:
            self.target_buffer = np.zeros(mask.shape, dtype=np.uint8)
        if isinstance(self.target_buffer, torch.Tensor):
            self.target_buffer[...] = mask.to(self.target_buffer.device, self.target_buffer.dtype)
        else:
            self.target_buffer[...] = mask.numpy().astype(self.target_buffer.dtype)


def _numbers(values: Any, what: str, shape: tuple[int, ...]) -> np.ndarray:
    """``values`` as finite floats of ``shape``, else a :class:`Sam3dError` naming ``what``."""
    try:
        array = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values, dtype=float)
    except (TypeError, ValueError):
        array = np.zeros(0)
    if array.shape != shape or not np.isfinite(array).all():
        raise Sam3dError(f"{what} must be {'x'.join(map(str, shape))} numbers, got {values!r}")
    return array
