"""One scan open in a browser: opening it within limits, its objects' interactions and masks, the files it saves.

Everything here is on the network grid of :func:`sam3d.data.scans.load_scan` (network layout
``(D, H, W)``: superior, anterior, right); the page draws that grid and its clicks, boxes and scribbles
are voxels of it.
"""

from __future__ import annotations

import base64
import json
import math
import time
import typing
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sam3d.data.checks import check_file
from sam3d.data.clicks import ClickMode
from sam3d.data.dicom import names_dicom_series
from sam3d.data.errors import DatasetError
from sam3d.data.files import SCAN_SUFFIXES, case_id
from sam3d.data.preprocessing import Preprocessing
from sam3d.data.scans import (
    ObjectProbability,
    Scan,
    describe_grid,
    load_scan,
    write_objects,
    write_prediction,
)
from sam3d.data.scans.writing import write_atomically
from sam3d.errors import Sam3dError
from sam3d.inference import Protocol
from sam3d.interaction import Interaction, InteractionSession
from sam3d.models import VolumetricSam
from sam3d.objects import ObjectSessions, SegmentedObject
from sam3d.session import negative_refusal

__all__ = ["OutputFolder", "OutputOptions", "ScanView", "ViewSettings", "open_scan"]

# Bytes of memory a session holds per voxel of the network grid (image, intensities, probability and
# the resampling's temporaries), for the messages about scans too large.
BYTES_PER_VOXEL = 16


@dataclass(frozen=True)
class ViewSettings:
    """How the clicks of a page are segmented.

    Args:
        protocol: ``full`` (objects grow into neighbouring crops) or ``paper`` (``sam3d serve --crops``).
        threshold: Probability level of the mask, also where ``full`` follows the object (``--evaluation.threshold``).
        cache_size: Crop encodings kept per page (``--evaluation.cache_size``).
        max_voxels: Largest scan accepted, in voxels of the file or of the network grid.
        click_mode: The checkpoint's ``data.click_mode``: ``reference`` (every training click positive, as
            3DSAM-adapter) never learned negative clicks, so negative clicks and scribbles are refused.
    """

    protocol: Protocol = "full"
    threshold: float = 0.5
    cache_size: int = 8
    max_voxels: int = 2**28
    click_mode: ClickMode = "interactive"


# The page's slice views of the axes (d, h, w): a voxel is where its axial, coronal and sagittal slices cross.
SLICE_VIEWS = ("axial", "coronal", "sagittal")


def outside_message(kind: str, voxel: list[float], shape: tuple[int, ...]) -> str:
    """A position outside the scan in the page's words: the slice numbers shown in the views' captions."""
    where = ", ".join(f"{view} slice {c + 1:g}" for view, c in zip(SLICE_VIEWS, voxel, strict=True))
    size = ", ".join(f"{n} {view}" for view, n in zip(SLICE_VIEWS, shape, strict=True))
    what = "click" if kind == "click" else "draw it"
    return f"the {kind} at {where} is outside the image ({size} slices): {what} on the image"


@typing.runtime_checkable
class OutputOptions(typing.Protocol):  # typing's Protocol; `Protocol` here is sam3d.inference's
    """Where Save writes, and whether with the probability map: the options of ``sam3d predict``'s writer.

    ``sam3d serve`` passes the trainer's :class:`sam3d.callbacks.PredictionWriter`
    (``--prediction.output_dir``, ``--prediction.probabilities``), so a page saves what ``predict`` writes.
    """

    @property
    def output_dir(self) -> Path:
        """Folder of the saved files."""
        ...

    @property
    def probabilities(self) -> bool:
        """Also save the foreground probability map."""
        ...


@dataclass(frozen=True)
class OutputFolder:
    """:class:`OutputOptions` by value, with the defaults of ``--prediction``."""

    output_dir: Path = Path("predictions")
    probabilities: bool = False


def _millions(voxels: float) -> str:
    return f"{voxels / 1e6:.1f}M"


def grid_voxels(shape: tuple[int, ...], affine: np.ndarray, spacing: tuple[float, float, float]) -> int:
    """Voxels of the network grid of a file: its world bounding box at ``spacing`` (``(D, H, W)`` mm)."""
    extent = np.abs(affine[:3, :3]) @ np.asarray(shape, dtype=float)  # mm along R, A, S
    return math.prod(math.ceil(e / s) for e, s in zip(extent, spacing[::-1], strict=True))


def open_scan(path: Path, preprocessing: Preprocessing, max_voxels: int) -> Scan:
    """Load a scan for the page after checking its file and its size against ``max_voxels``.

    Raises:
        Sam3dError: If the file is not a readable single-channel 3D scan, or is too large; the message
            names the file and what to do.
    """
    if not path.name.lower().endswith(SCAN_SUFFIXES) and not names_dicom_series(path):
        raise Sam3dError(
            f"{path.name} is not a scan file: sam3d reads NIfTI (.nii, .nii.gz), NRRD (.nrrd) and MHA (.mha) "
            "files, and DICOM series folders listed with --data.predict_scans"
        )
    header, problems = check_file(case_id(path), path, "scan")
    if problems or header is None:
        raise DatasetError(f"scan {path.name} cannot be used:", problems)
    source = math.prod(header.shape[1:])
    grid = grid_voxels(header.shape[1:], header.affine, preprocessing.spacing)
    if max(source, grid) > max_voxels:
        size = "x".join(str(n) for n in header.shape[1:])
        raise Sam3dError(
            f"scan {path.name} is too large for this server: {size} voxels ({_millions(source)}), "
            f"{_millions(grid)} at the network's spacing, over the limit of {_millions(max_voxels)} "
            f"(about {BYTES_PER_VOXEL} bytes each); crop it to the region of interest, or restart "
            "`sam3d serve` with a larger --max_voxels on a machine with the memory"
        )
    try:
        return load_scan(path, preprocessing, keep_intensities=True)
    except (MemoryError, torch.OutOfMemoryError) as error:
        raise Sam3dError(
            f"not enough memory to load scan {path.name} ({_millions(grid)} voxels at the network's spacing; "
            f"{type(error).__name__}); close other pages or lower --max_voxels"
        ) from None


def _display_scale(intensities: torch.Tensor) -> tuple[float, float]:
    """``(offset, scale)`` of the page's int16 copy of the intensities: value = offset + scale * stored."""
    if intensities.dtype == torch.int16:
        return 0.0, 1.0
    low, high = float(intensities.min()), float(intensities.max())
    return (low + high) / 2, max(high - low, 1e-6) / 65534


def _packed(mask: torch.Tensor) -> dict[str, Any] | None:
    """A mask as the page unpacks it: its bounding box's start and shape, and its voxels there bit-packed."""
    present = torch.nonzero(mask)
    if not len(present):
        return None
    low, high = present.amin(0), present.amax(0) + 1
    inside = mask[tuple(slice(a, b) for a, b in zip(low.tolist(), high.tolist(), strict=True))]
    return {
        "start": low.tolist(),
        "shape": list(inside.shape),
        "bits": base64.b64encode(np.packbits(inside.numpy().ravel()).tobytes()).decode(),
    }


def _rounded(voxels: list[list[float]]) -> list[list[float]]:
    return [[round(float(c), 2) for c in voxel] for voxel in voxels]


class ScanView:
    """A scan on the page: its objects' interactions segmented with the network, their masks, saving.

    The scan starts with one object, ``object 1``; interactions, undo and reset go to the selected object
    (see :class:`sam3d.objects.ObjectSessions` for ids, names and the label map).

    Args:
        net: The network, on its device, in eval mode.
        scan: The scan, loaded with its intensities (:func:`open_scan`).
        settings: Protocol, threshold and cache size.
        output: Where Save writes (the ``predict`` writer's folder), and whether the probability map too.
        forward_context: Context of every network call (the trainer's precision: autocast for bf16).
    """

    def __init__(
        self,
        net: VolumetricSam,
        scan: Scan,
        settings: ViewSettings,
        output: OutputOptions,
        forward_context: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> None:
        if scan.intensities is None:
            raise ValueError("the scan must be loaded with its intensities (open_scan)")
        self.scan, self.output, self.forward_context = scan, output, forward_context
        self.threshold, self.click_mode = settings.threshold, settings.click_mode
        self.objects = ObjectSessions(
            net, scan.image, settings.protocol, settings.threshold, settings.cache_size
        )
        self.objects.add()
        self.crop_size = tuple(net.config.crop_size)
        self.seconds: float | None = None
        self.saved: dict[str, Path] = {}

    @property
    def session(self) -> InteractionSession:
        """The selected object's session."""
        return self.objects.session

    @property
    def name(self) -> str:
        """The scan's file name."""
        return self.scan.path.name

    def describe(self, display_name: str | None = None) -> dict[str, Any]:
        """What the page needs to draw the scan, and the grids in words."""
        scan = self.scan
        note = (
            f"shown and segmented on the network's grid: {describe_grid(scan.image.shape[::-1], scan.affine)}; "
            "saved masks have the file's own grid"
        )
        intensities = self.scan.intensities
        assert intensities is not None
        offset, scale = _display_scale(intensities)
        return {
            "name": display_name or self.name,
            "shape": list(scan.image.shape),
            "spacing": list(scan.spacing),
            "source": describe_grid(scan.source_shape, scan.source_affine),
            "note": note,
            "offset": offset,
            "scale": scale,
            "range": [float(intensities.min()), float(intensities.max())],
        }

    def display(self) -> bytes:
        """The intensities for the page: int16 in ``(D, H, W)`` order (see ``offset`` and ``scale``)."""
        intensities = self.scan.intensities
        assert intensities is not None
        if intensities.dtype == torch.int16:
            return intensities.numpy().tobytes()
        offset, scale = _display_scale(intensities)
        stored = ((intensities.float() - offset) / scale).round().clamp(-32767, 32767)
        return stored.to(torch.int16).numpy().tobytes()

    def add(self, interaction: Interaction) -> bool:
        """Add one interaction as a step; whether a crop was encoded for it (else an encoding was reused).

        Raises:
            Sam3dError: If the session refuses it (outside the volume, a prompt the network does not take,
                a first step with nothing positive, a negative one for a ``reference``-mode checkpoint);
                nothing is added then.
        """
        if not interaction.positive and self.click_mode == "reference":
            raise Sam3dError(negative_refusal(interaction.kind))
        shape = self.scan.image.shape
        for voxel in interaction.voxels.tolist() if interaction.voxels.isfinite().all() else []:
            if not all(0 <= c <= n - 1 for c, n in zip(voxel, shape, strict=True)):
                raise Sam3dError(outside_message(interaction.kind, voxel, tuple(shape)))
        misses = self.objects.encoder.misses
        start = time.perf_counter()
        with torch.no_grad(), self.forward_context():
            # A refused interaction, or one whose segmentation fails, is not kept by the session.
            self.session.add(interaction)
        self.seconds = time.perf_counter() - start
        return self.objects.encoder.misses > misses

    def click(self, point: tuple[float, float, float], positive: bool) -> bool:
        """Add a click ``(d, h, w)``; whether a crop was encoded for it (see :meth:`add`)."""
        return self.add(Interaction.click(point, positive))

    def box(self, lower: tuple[float, float, float], upper: tuple[float, float, float]) -> bool:
        """Add a box from its corners ``(d, h, w)``, both inside it; whether a crop was encoded for it."""
        return self.add(Interaction.box(lower, upper))

    def scribble(self, voxels: list[tuple[float, float, float]], positive: bool) -> bool:
        """Add a scribble through ``(d, h, w)`` voxels; whether a crop was encoded for it."""
        return self.add(Interaction.scribble(voxels, positive))

    def undo(self) -> None:
        """Remove the selected object's last interaction (click, box or scribble)."""
        start = time.perf_counter()
        with torch.no_grad(), self.forward_context():
            self.session.undo()
        self.seconds = time.perf_counter() - start

    def reset(self) -> None:
        """Remove every interaction of the selected object."""
        self.session.reset()
        self.seconds = None

    @property
    def mask(self) -> torch.Tensor:
        """The selected object's mask on the network grid at ``evaluation.threshold``."""
        return self.session.probability > self.threshold

    def _ml(self, voxels: torch.Tensor) -> float:
        return float(voxels.sum()) * math.prod(self.scan.spacing) / 1000

    def volume_ml(self) -> float:
        """The selected object's mask's volume on the network grid in mL."""
        return self._ml(self.mask)

    def _interactions(self, session: InteractionSession) -> list[dict[str, Any]]:
        return [
            {"kind": i.kind, "voxels": _rounded(i.voxels.tolist()), "positive": i.positive}
            for i in session.interactions
        ]

    def state(self) -> dict[str, Any]:
        """The selected object's interactions (and the clicks among them), crop, mask and volume; every object.

        A mask is its bounding box with its voxels there bit-packed. Each entry of ``objects`` has the
        object's id, name, interaction count, volume and its voxels of the label map (where objects
        overlap, the most probable one's), which the page draws in the object's colour.
        """
        labels = self.objects.label_map()
        objects = []
        for each in self.objects.objects:
            own = labels == each.id if each.session.interactions else None  # an empty object: no mask
            objects.append(
                {
                    "id": each.id,
                    "name": each.name,
                    "interactions": len(each.session.interactions),
                    "volume_ml": 0.0 if own is None else self._ml(own),
                    "mask": None if own is None else _packed(own),
                }
            )
        anchor = self.session.anchor
        return {
            "clicks": [
                {"point": [round(float(c), 2) for c in point], "positive": bool(label)}
                for point, label in zip(
                    self.session.points.tolist(), self.session.labels.tolist(), strict=True
                )
            ],
            "interactions": self._interactions(self.session),
            "crop": None if anchor is None else {"start": anchor.tolist(), "size": list(self.crop_size)},
            "mask": _packed(self.mask),
            "volume_ml": self.volume_ml(),
            "seconds": self.seconds,
            "selected": self.objects.selected.id,
            "objects": objects,
        }

    def _world(self, voxels: torch.Tensor) -> list[list[float]]:
        """``(N, 3)`` voxels ``(d, h, w)`` of the network grid in world RAS+ mm ``(x, y, z)``."""
        affine = self.scan.affine
        world = voxels.double().numpy()[:, ::-1] @ affine[:3, :3].T + affine[:3, 3]
        return [[float(c) for c in point] for point in world]

    def interactions_json(self) -> str:
        """Every object's interactions in order, as the JSON clicks file ``sam3d predict`` replays.

        Positions in world RAS+ mm; each entry names its object (id and name), object after object.
        """
        entries: list[dict[str, Any]] = []
        for each in self.objects.segmented:
            of = {"object": {"id": each.id, "name": each.name}}
            for interaction in each.session.interactions:
                world = self._world(interaction.voxels)
                label = {"label": "positive" if interaction.positive else "negative"}
                if interaction.kind == "click":
                    entries.append({"type": "click", "position": world[0], "space": "world", **label, **of})
                elif interaction.kind == "box":
                    entries.append({"type": "box", "corners": world, "space": "world", **of})
                else:
                    entries.append({"type": "scribble", "positions": world, "space": "world", **label, **of})
        return json.dumps({"scans": [{"scan": self.name, "interactions": entries}]}, indent=1) + "\n"

    def save(self, stem: str | None = None) -> dict[str, Any]:
        """Write the masks (as ``sam3d predict`` does) and the interactions file into the output folder.

        The objects with interactions are written: one as ``predict`` writes one (``<stem>_mask.nii.gz``),
        several as their label map and one mask per object (:func:`sam3d.data.scans.write_objects`).
        ``stem`` (default: the case id) names the files; each replaces its previous file atomically, a
        symlink too (never written through).

        Raises:
            Sam3dError: If no object has an interaction yet or the folder cannot be written; nothing is lost.
        """
        segmented = self.objects.segmented
        if not segmented:
            raise Sam3dError("nothing to save yet: click inside the object, or draw a box, first")
        folder, stem = self.output.output_dir, stem or self.scan.case_id
        interactions = folder / f"{stem}_interactions.json"
        text = self.interactions_json()
        try:
            saved, volumes = self._write(segmented, folder, stem)
            write_atomically(interactions, lambda temporary: temporary.write_text(text))
        except OSError as error:
            raise Sam3dError(
                f"cannot write into {folder} ({error}); the interactions are kept: free space or "
                "restart with another --prediction.output_dir, then save again"
            ) from None
        self.saved = {**saved, "interactions": interactions}
        return {
            "files": {kind: str(path.resolve()) for kind, path in self.saved.items()},
            "volume_ml": sum(volumes.values()),
            "objects": [{"id": o.id, "name": o.name, "volume_ml": volumes[o.id]} for o in segmented],
        }

    def _write(
        self, segmented: tuple[SegmentedObject, ...], folder: Path, stem: str
    ) -> tuple[dict[str, Path], dict[int, float]]:
        """Write the objects' files: their paths by kind, and each object's volume in mL on the file's grid."""
        with_probability = self.output.probabilities
        if len(segmented) == 1:
            only = segmented[0]
            written = write_prediction(
                self.scan, only.session.probability, self.threshold, folder, with_probability, stem
            )
            files = {"mask": written.mask}
            if written.probability is not None:
                files["probability"] = written.probability
            return files, {only.id: written.volume_ml}
        objects = [ObjectProbability(o.id, o.name, o.session.probability) for o in segmented]
        labelled = write_objects(self.scan, objects, self.threshold, folder, with_probability, stem)
        files = {"labels": labelled.labels}
        for each in segmented:
            files[f"object-{each.id}"] = labelled.masks[each.id]
            if each.id in labelled.probabilities:
                files[f"object-{each.id}_probability"] = labelled.probabilities[each.id]
        return files, labelled.volumes_ml
