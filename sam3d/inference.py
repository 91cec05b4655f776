"""Segmenting whole volumes with a network trained on crops (network layout ``(D, H, W)``).

Two protocols with clicks:

* ``paper``: one crop centred on the midpoint of the clicks' bounding box (rounded down), zero
  probability elsewhere; where the crop passes the volume's edge it is padded with 0, the dataset
  mean after z-scoring, and every click reaches the network, also one outside the crop (its sampled
  features are then zeros): the authors' test. Tumours larger than the crop are cut off.
* ``full``: crops follow the object. Starting from the paper's crop, a neighbouring crop (half a crop
  away) is added wherever the predicted object touches a crop face inside the volume; overlapping
  predictions are blended with a smooth weight. Crops without a click get a positive click at the
  deepest point of the object predicted so far inside them. The final object is the part of the
  prediction connected to the positive clicks. sam3d's own choice: crops are padded with the
  volume's minimum (air, as outside a patient) rather than with the dataset mean.

Without clicks (the fully supervised baselines and the automatic SAM), :func:`sliding_window_probability`
covers the whole volume with overlapping crops (MONAI's sliding-window inference, Gaussian blending).

Encoding a crop is the expensive part of the network; :class:`CropEncoder` keeps encodings for reuse, and
:class:`sam3d.interaction.InteractionSession` uses it so that interactions added one by one cost only the decoding.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from scipy import ndimage

from sam3d.errors import Sam3dError
from sam3d.models import CropEncoding, VolumetricSam
from sam3d.models.prompt_encoder import NEGATIVE, POSITIVE

Protocol = Literal["paper", "full"]
# The authors pad their test crop with 0 after z-scoring, i.e. with the dataset's mean intensity.
PAPER_PAD_VALUE = 0.0
Box = tuple[tuple[int, int], ...]


class CropEncoder:
    """Encodes crops with ``net`` and keeps the ``capacity`` most recently used encodings.

    An encoding is reused only for a crop with exactly the same voxels, encoded by the network with the
    same weights (no in-place update since), on the same device and under the same autocast setting;
    anything else is encoded afresh. ``capacity=0`` keeps nothing.
    """

    def __init__(self, net: VolumetricSam, capacity: int = 8) -> None:
        if capacity < 0:
            raise Sam3dError(f"the crop encoding cache size must be >= 0, got {capacity}")
        self.net, self.capacity = net, capacity
        self.hits = self.misses = 0
        self._encodings: OrderedDict[tuple[object, ...], CropEncoding] = OrderedDict()

    @property
    def crop_size(self) -> tuple[int, int, int]:
        """The network's input crop ``(D, H, W)``."""
        depth, height, width = self.net.config.crop_size
        return depth, height, width

    def __call__(self, patch: torch.Tensor) -> CropEncoding:
        """The encoding of one ``crop_size`` patch (on the CPU)."""
        device = next(self.net.parameters()).device
        key = self._key(patch, device)
        encoding = self._encodings.get(key)
        if encoding is not None:
            self._encodings.move_to_end(key)
            self.hits += 1
            return encoding
        self.misses += 1
        encoding = self.net.encode_image(patch[None, None].to(device))
        if self.capacity:
            self._encodings[key] = encoding
            while len(self._encodings) > self.capacity:
                self._encodings.popitem(last=False)
        return encoding

    def clear(self) -> None:
        """Forget every encoding."""
        self._encodings.clear()

    def _key(self, patch: torch.Tensor, device: torch.device) -> tuple[object, ...]:
        voxels = patch.detach().cpu().contiguous()
        digest = hashlib.blake2b(voxels.view(torch.uint8).numpy().data, digest_size=16).hexdigest()
        weights = tuple(t._version for t in (*self.net.parameters(), *self.net.buffers()))
        autocast = torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type)
        return (digest, tuple(voxels.shape), voxels.dtype, id(self.net), weights, str(device), autocast)


def crop_start(points: torch.Tensor, crop_size: tuple[int, int, int]) -> torch.Tensor:
    """Start ``(3,)`` of the crop centred on the midpoint of the points' bounding box, rounded down (the paper's)."""
    centre = torch.floor((points.amin(0) + points.amax(0)) / 2).long()
    return centre - torch.tensor(crop_size) // 2


def _ranges(start: torch.Tensor, crop: tuple[int, ...], shape: tuple[int, ...]) -> tuple[Box, Box]:
    """The part of a crop inside the volume: its range in the volume and in the crop."""
    inside = tuple((max(s, 0), min(s + c, n)) for s, c, n in zip(start.tolist(), crop, shape, strict=True))
    in_crop = tuple((a - s, b - s) for (a, b), s in zip(inside, start.tolist(), strict=True))
    return inside, in_crop


def _slices(box: Box) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in box)


def _inside_crop(points: torch.Tensor, start: torch.Tensor, crop: tuple[int, ...]) -> torch.Tensor:
    return ((points >= start) & (points <= start + torch.tensor(crop) - 1)).all(1)


@dataclass(frozen=True)
class VolumePrompts:
    """Every prompt on one volume, in its voxels ``(d, h, w)``: what the crops of a prediction are cut from.

    Attributes:
        points: ``(N, 3)`` float clicks.
        labels: ``(N,)`` int64 click labels, 1 positive, 0 negative.
        boxes: ``(K, 6)`` int64 boxes ``(d0, h0, w0, d1, h1, w1)``, both ends inside the box.
        scribble_voxels: ``(S, 3)`` int64 voxels of the scribbles.
        scribble_labels: ``(S,)`` int64, 1 for a positive scribble's voxel, 0 for a negative one's.
        previous: ``(D, H, W)`` the previous foreground probability, or None (none yet, or a network
            without the ``mask`` prompt).
    """

    points: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 6, dtype=torch.long))
    scribble_voxels: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 3, dtype=torch.long))
    scribble_labels: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    previous: torch.Tensor | None = None

    @classmethod
    def from_clicks(cls, points: torch.Tensor, labels: torch.Tensor | None = None) -> VolumePrompts:
        """Clicks only (labels default to all positive)."""
        points = points.float().reshape(-1, 3)
        labels = torch.full((len(points),), POSITIVE) if labels is None else labels.long().reshape(-1)
        return cls(points, labels)

    def positive_seeds(self) -> torch.Tensor:
        """``(M, 3)`` voxels the object surely holds or surrounds: positive clicks and scribbles, box centres."""
        centres = torch.div(self.boxes[:, :3] + self.boxes[:, 3:], 2, rounding_mode="floor").float()
        scribbles = self.scribble_voxels[self.scribble_labels == POSITIVE].float()
        return torch.cat([self.points[self.labels == POSITIVE], centres, scribbles])

    def extent_points(self) -> torch.Tensor:
        """``(M, 3)`` every click, box corner and scribble voxel: where the prompts are."""
        corners = self.boxes.reshape(-1, 3).float()
        return torch.cat([self.points, corners, self.scribble_voxels.float()])

    def touches(self, start: torch.Tensor, crop: tuple[int, ...]) -> bool:
        """Whether a box or a scribble voxel lies (at least partly) in the crop at ``start``."""
        end = start + torch.tensor(crop) - 1
        boxes_meet = ((self.boxes[:, :3] <= end) & (self.boxes[:, 3:] >= start)).all(1)
        return bool(boxes_meet.any() or _inside_crop(self.scribble_voxels, start, crop).any())

    def for_crop(
        self,
        start: torch.Tensor,
        crop: tuple[int, ...],
        takes: Sequence[str],
        outside_clicks: bool = False,
    ) -> dict[str, torch.Tensor]:
        """The network's keyword inputs for the crop at ``start``: its clicks and the dense prompts it takes.

        Clicks outside the crop are dropped unless ``outside_clicks`` (the ``paper`` protocol keeps them,
        as the authors' test does); boxes are clipped to the crop (boxes outside it dropped); a dense
        prompt absent from the crop is not passed (the network renders it as zeros).
        """
        inside = _inside_crop(self.points, start, crop)
        if outside_clicks:
            inside = torch.ones_like(inside)
        inputs = {"points": (self.points[inside] - start)[None], "labels": self.labels[inside][None]}
        last = torch.tensor(crop) - 1
        if "box" in takes and len(self.boxes):
            lower, upper = (
                (self.boxes[:, :3] - start).clamp(min=0),
                (self.boxes[:, 3:] - start).clamp(max=last),
            )
            meets = ((lower <= last) & (upper >= 0) & (lower <= upper)).all(1)
            if meets.any():
                inputs["boxes"] = torch.cat([lower, upper], 1)[meets].float()[None]
        scribbled = _inside_crop(self.scribble_voxels, start, crop)
        if "scribble" in takes and scribbled.any():
            scribbles = torch.zeros(2, *crop)
            voxels, labels = self.scribble_voxels[scribbled] - start, self.scribble_labels[scribbled]
            channel = (labels == NEGATIVE).long()  # positive scribbles in channel 0, negative in 1
            scribbles[channel, voxels[:, 0], voxels[:, 1], voxels[:, 2]] = 1
            inputs["scribbles"] = scribbles[None]
        if "mask" in takes and self.previous is not None:
            previous = torch.zeros(crop)
            inside_volume, in_crop = _ranges(start, crop, tuple(self.previous.shape))
            previous[_slices(in_crop)] = self.previous[_slices(inside_volume)]
            inputs["previous_mask"] = previous[None, None].clamp(0, 1)
        return inputs


def predict_crop(
    encoder: CropEncoder,
    image: torch.Tensor,
    start: torch.Tensor,
    prompts: VolumePrompts,
    pad_value: float | None = None,
    outside_clicks: bool = False,
) -> torch.Tensor:
    """Foreground probability ``crop_size`` of the crop at ``start`` from the prompts in it.

    Where the crop passes the volume's edge it is padded with ``pad_value``, None for the volume's minimum.
    ``outside_clicks``: pass the clicks outside the crop too (see :meth:`VolumePrompts.for_crop`).
    """
    net = encoder.net
    crop = encoder.crop_size
    inside, in_crop = _ranges(start, crop, tuple(image.shape))
    patch = image.new_full(crop, float(image.min()) if pad_value is None else pad_value)
    patch[_slices(in_crop)] = image[_slices(inside)]
    encoding = encoder(patch)
    device = encoding.last_map.device
    inputs = prompts.for_crop(start, crop, net.config.dense_prompts, outside_clicks)
    points, labels = inputs.pop("points").float().to(device), inputs.pop("labels").to(device)
    dense = {name: value.to(device) for name, value in inputs.items()}
    logits = net.segment(encoding, points, labels, **dense)
    return logits.float().softmax(1)[0, 1].cpu()


@torch.no_grad()
def segment_around_clicks(
    encoder: CropEncoder,
    image: torch.Tensor,
    prompts: VolumePrompts,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """``paper`` protocol: probability ``(D, H, W)`` from one crop, zero elsewhere.

    Args:
        encoder: The network's crop encoder (its ``config.crop_size`` sets the crop).
        image: ``(D, H, W)`` normalised volume.
        prompts: The clicks (and dense prompts) in volume voxels ``(d, h, w)``.
        start: Crop start; default: centred on the prompts' bounding box. Every click reaches the network,
            also one outside the crop, as in the authors' test (with 2+ clicks one can lie outside); boxes
            and scribbles outside it are dropped.
    """
    crop = encoder.crop_size
    start = crop_start(prompts.extent_points(), crop) if start is None else start
    inside, in_crop = _ranges(start, crop, tuple(image.shape))
    probability = image.new_zeros(image.shape)
    crop_probability = predict_crop(encoder, image, start, prompts, PAPER_PAD_VALUE, outside_clicks=True)
    probability[_slices(inside)] = crop_probability[_slices(in_crop)]
    return probability


def _blend_weight(crop: tuple[int, ...]) -> torch.Tensor:
    """Separable weight, highest at the crop centre, never zero (every voxel of a crop counts)."""
    axes = [torch.hann_window(n + 2, periodic=False)[1:-1] for n in crop]
    return axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]


@torch.no_grad()
def segment_object(
    encoder: CropEncoder,
    image: torch.Tensor,
    prompts: VolumePrompts,
    threshold: float = 0.5,
    max_crops: int = 64,
    anchor: torch.Tensor | None = None,
) -> torch.Tensor:
    """``full`` protocol: probability ``(D, H, W)`` from crops that follow the object around the prompts.

    Crops lie on a lattice of half-crop steps through ``anchor`` (default: the paper's crop), so a later
    call with more prompts and the same anchor revisits the same crops (and reuses their encodings).
    """
    crop = encoder.crop_size
    shape = tuple(image.shape)
    step = torch.tensor(crop) // 2
    anchor = crop_start(prompts.extent_points(), crop) if anchor is None else anchor
    total, weights = image.new_zeros(shape), image.new_zeros(shape)
    blend = _blend_weight(crop)
    queue: list[torch.Tensor] = [anchor]
    seen: set[tuple[int, ...]] = set()
    seeds = prompts.positive_seeds()
    while len(seen) < max_crops:
        if not queue:  # a positive prompt no visited crop holds: start from its own crop
            uncovered = [p for p in seeds if not _covered(p, seen, crop)]
            if not uncovered:
                break
            queue.append(anchor + torch.round((uncovered[0] - anchor - step) / step).long() * step)
        start = queue.pop(0)
        if tuple(start.tolist()) in seen:
            continue
        seen.add(tuple(start.tolist()))
        inside, in_crop = _ranges(start, crop, shape)
        crop_prompts = _prompts_of_crop(prompts, start, crop, total, weights, threshold)
        if crop_prompts is None:
            continue
        probability = predict_crop(encoder, image, start, crop_prompts)
        total[_slices(inside)] += (probability * blend)[_slices(in_crop)]
        weights[_slices(inside)] += blend[_slices(in_crop)]
        queue += _neighbours(start, probability > threshold, crop, shape, step)
    probability = torch.where(weights > 0, total / weights.clamp(min=1e-12), 0)
    return probability * _connected_to(probability > threshold, seeds, prompts.boxes)


def _covered(point: torch.Tensor, starts: set[tuple[int, ...]], crop: tuple[int, ...]) -> bool:
    return any(bool(_inside_crop(point[None], torch.tensor(start), crop)[0]) for start in starts)


def _prompts_of_crop(
    prompts: VolumePrompts,
    start: torch.Tensor,
    crop: tuple[int, ...],
    total: torch.Tensor,
    weights: torch.Tensor,
    threshold: float,
) -> VolumePrompts | None:
    """The prompts, if any lies in the crop; else a positive click at the deepest predicted object voxel in it.

    None if the crop holds neither a prompt nor any of the object predicted so far.
    """
    if _inside_crop(prompts.points, start, crop).any() or prompts.touches(start, crop):
        return prompts
    box, _ = _ranges(start, crop, tuple(total.shape))
    known = weights[_slices(box)] > 0
    object_so_far = (total[_slices(box)] > threshold * weights[_slices(box)]) & known
    if not object_so_far.any():
        return None
    depth = ndimage.distance_transform_edt(np.pad(object_so_far.numpy(), 1))[1:-1, 1:-1, 1:-1]
    deepest = torch.tensor(np.unravel_index(int(depth.argmax()), depth.shape)) + torch.tensor(
        [a for a, _ in box]
    )
    return replace(prompts, points=deepest[None].float(), labels=torch.tensor([POSITIVE]))


def _neighbours(
    start: torch.Tensor, mask: torch.Tensor, crop: tuple[int, ...], shape: tuple[int, ...], step: torch.Tensor
) -> list[torch.Tensor]:
    """Starts of the crops beside each face of this crop that the object touches, if they reach into the volume."""
    found = []
    for axis in range(3):
        for side, face in ((-1, 0), (1, crop[axis] - 1)):
            if not mask.select(axis, face).any():
                continue
            neighbour = start.clone()
            neighbour[axis] += side * step[axis]
            if (
                neighbour[axis] + crop[axis] > 0
                and neighbour[axis] < shape[axis]
                and ((side < 0 and start[axis] > 0) or (side > 0 and start[axis] + crop[axis] < shape[axis]))
            ):
                found.append(neighbour)
    return found


def _connected_to(mask: torch.Tensor, seeds: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The connected components of ``mask`` that hold a seed voxel or meet a box (all of ``mask`` without either)."""
    if not (len(seeds) or len(boxes)) or not mask.any():
        return mask
    components, _ = ndimage.label(mask.numpy(), structure=np.ones((3, 3, 3)))
    index = seeds.round().long().clamp(min=torch.zeros(3, dtype=torch.long), max=torch.tensor(mask.shape) - 1)
    ids = {int(components[tuple(p)]) for p in index.tolist()}
    for box in boxes.tolist():
        ids |= set(
            np.unique(components[box[0] : box[3] + 1, box[1] : box[4] + 1, box[2] : box[5] + 1]).tolist()
        )
    ids -= {0}
    if not ids:
        return mask
    return torch.from_numpy(np.isin(components, list(ids)))


def sliding_window_probability(
    logits: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    crop_size: tuple[int, int, int],
    overlap: float = 0.5,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    pad_value: float | None = None,
) -> torch.Tensor:
    """Whole-volume foreground probability ``(D, H, W)`` of a network without prompts (automatic methods).

    MONAI's ``sliding_window_inference``: crops of ``crop_size`` overlapping by ``overlap``, their softmax
    probabilities blended with a Gaussian weight (nnU-Net's), a volume smaller than a crop padded with
    ``pad_value``: None for its minimum (as :func:`predict_crop` pads), :data:`PAPER_PAD_VALUE` for the
    authors' automatic test (MONAI's default 0, the dataset mean after z-scoring).

    Args:
        logits: Maps ``(B, 1, *crop_size)`` crops on ``device`` to two-class logits ``(B, 2, *crop_size)``.
        image: ``(D, H, W)`` normalised volume on the CPU.
        crop_size: The network's crop.
        overlap: Fraction of a crop shared with its neighbour along each axis, in ``[0, 1)``.
        batch_size: Crops segmented together.
        device: Where the crops are segmented (the probability is assembled on the CPU).
        pad_value: What a volume smaller than a crop is padded with; None: the volume's minimum.
    """
    if image.ndim != 3 or not image.is_floating_point():
        raise Sam3dError(f"the volume must be a 3D float tensor (D, H, W), got {tuple(image.shape)}")
    if not 0 <= overlap < 1:
        raise Sam3dError(f"the sliding-window overlap must be in [0, 1), got {overlap}")
    with torch.no_grad():
        probability = sliding_window_inference(
            image[None, None],
            roi_size=crop_size,
            sw_batch_size=batch_size,
            predictor=lambda crops: logits(crops).float().softmax(1),
            overlap=overlap,
            mode="gaussian",
            cval=float(image.min()) if pad_value is None else pad_value,
            sw_device=device,
            device="cpu",
        )
    assert isinstance(probability, torch.Tensor)
    return probability[0, 1]
