"""Segmenting whole volumes with a network trained on crops (network layout ``(D, H, W)``).

Two protocols with clicks:

* ``paper``: one crop centred on the midpoint of the clicks' bounding box (rounded down), zero
  probability elsewhere; where the crop passes the volume's edge it is padded with 0, the dataset
  mean after z-scoring (the authors' test). Tumours larger than the crop are cut off.
* ``full``: crops follow the object. Starting from the paper's crop, a neighbouring crop (half a crop
  away) is added wherever the predicted object touches a crop face inside the volume; overlapping
  predictions are blended with a smooth weight. Crops without a click get a positive click at the
  deepest point of the object predicted so far inside them. The final object is the part of the
  prediction connected to the positive clicks. sam3d's own choice: crops are padded with the
  volume's minimum (air, as outside a patient) rather than with the dataset mean.

Without clicks (the fully supervised baselines and the automatic SAM), :func:`sliding_window_probability`
covers the whole volume with overlapping crops (MONAI's sliding-window inference, Gaussian blending).

Encoding a crop is the expensive part of the network; :class:`CropEncoder` keeps encodings for reuse, and
:class:`ClickSession` uses it so that clicks added one by one (corrections) cost only the decoding.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
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
    """Start ``(3,)`` of the crop centred on the midpoint of the clicks' bounding box, rounded down (the paper's)."""
    centre = torch.floor((points.amin(0) + points.amax(0)) / 2).long()
    return centre - torch.tensor(crop_size) // 2


def _ranges(start: torch.Tensor, crop: tuple[int, ...], shape: tuple[int, ...]) -> tuple[Box, Box]:
    """The part of a crop inside the volume: its range in the volume and in the crop."""
    inside = tuple((max(s, 0), min(s + c, n)) for s, c, n in zip(start.tolist(), crop, shape, strict=True))
    in_crop = tuple((a - s, b - s) for (a, b), s in zip(inside, start.tolist(), strict=True))
    return inside, in_crop


def _slices(box: Box) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in box)


def predict_crop(
    encoder: CropEncoder,
    image: torch.Tensor,
    start: torch.Tensor,
    points: torch.Tensor,
    labels: torch.Tensor | None,
    pad_value: float | None = None,
) -> torch.Tensor:
    """Foreground probability ``crop_size`` of the crop at ``start``.

    Where the crop passes the volume's edge it is padded with ``pad_value``, None for the volume's minimum.
    """
    net = encoder.net
    crop = encoder.crop_size
    inside, in_crop = _ranges(start, crop, tuple(image.shape))
    patch = image.new_full(crop, float(image.min()) if pad_value is None else pad_value)
    patch[_slices(in_crop)] = image[_slices(inside)]
    encoding = encoder(patch)
    device = encoding.last_map.device
    batch_labels = None if labels is None else labels[None].to(device)
    logits = net.segment(encoding, (points - start).float()[None].to(device), batch_labels)
    return logits.float().softmax(1)[0, 1].cpu()


@torch.no_grad()
def segment_around_clicks(
    encoder: CropEncoder,
    image: torch.Tensor,
    points: torch.Tensor,
    labels: torch.Tensor | None = None,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """``paper`` protocol: probability ``(D, H, W)`` from one crop, zero elsewhere.

    Args:
        encoder: The network's crop encoder (its ``config.crop_size`` sets the crop).
        image: ``(D, H, W)`` normalised volume.
        points: ``(N, 3)`` clicks in volume voxels ``(d, h, w)``.
        labels: ``(N,)`` click labels, None for all positive.
        start: Crop start; default: centred on the clicks' bounding box. Clicks outside the crop are dropped.
    """
    crop = encoder.crop_size
    start = crop_start(points, crop) if start is None else start
    inside, in_crop = _ranges(start, crop, tuple(image.shape))
    in_view = _inside_crop(points, start, crop)
    probability = image.new_zeros(image.shape)
    crop_labels = None if labels is None else labels[in_view]
    crop_probability = predict_crop(encoder, image, start, points[in_view], crop_labels, PAPER_PAD_VALUE)
    probability[_slices(inside)] = crop_probability[_slices(in_crop)]
    return probability


def _inside_crop(points: torch.Tensor, start: torch.Tensor, crop: tuple[int, ...]) -> torch.Tensor:
    return ((points >= start) & (points <= start + torch.tensor(crop) - 1)).all(1)


def _blend_weight(crop: tuple[int, ...]) -> torch.Tensor:
    """Separable weight, highest at the crop centre, never zero (every voxel of a crop counts)."""
    axes = [torch.hann_window(n + 2, periodic=False)[1:-1] for n in crop]
    return axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]


@torch.no_grad()
def segment_object(
    encoder: CropEncoder,
    image: torch.Tensor,
    points: torch.Tensor,
    labels: torch.Tensor | None = None,
    threshold: float = 0.5,
    max_crops: int = 64,
    anchor: torch.Tensor | None = None,
) -> torch.Tensor:
    """``full`` protocol: probability ``(D, H, W)`` from crops that follow the object around the clicks.

    Crops lie on a lattice of half-crop steps through ``anchor`` (default: the paper's crop), so a later
    call with more clicks and the same anchor revisits the same crops (and reuses their encodings).
    """
    crop = encoder.crop_size
    shape = tuple(image.shape)
    labels = torch.full((len(points),), POSITIVE, dtype=torch.long) if labels is None else labels
    step = torch.tensor(crop) // 2
    anchor = crop_start(points, crop) if anchor is None else anchor
    total, weights = image.new_zeros(shape), image.new_zeros(shape)
    blend = _blend_weight(crop)
    queue: list[torch.Tensor] = [anchor]
    seen: set[tuple[int, ...]] = set()
    while len(seen) < max_crops:
        if not queue:  # a positive click no visited crop holds: start from its own crop
            uncovered = [p for p in points[labels == POSITIVE] if not _covered(p, seen, crop)]
            if not uncovered:
                break
            queue.append(anchor + torch.round((uncovered[0] - anchor - step) / step).long() * step)
        start = queue.pop(0)
        if tuple(start.tolist()) in seen:
            continue
        seen.add(tuple(start.tolist()))
        inside, in_crop = _ranges(start, crop, shape)
        crop_points, crop_labels = _clicks_in_crop(points, labels, start, crop, total, weights, threshold)
        if not len(crop_points):
            continue
        probability = predict_crop(encoder, image, start, crop_points, crop_labels)
        total[_slices(inside)] += (probability * blend)[_slices(in_crop)]
        weights[_slices(inside)] += blend[_slices(in_crop)]
        queue += _neighbours(start, probability > threshold, crop, shape, step)
    probability = torch.where(weights > 0, total / weights.clamp(min=1e-12), 0)
    return probability * _connected_to(probability > threshold, points[labels == POSITIVE])


def _covered(point: torch.Tensor, starts: set[tuple[int, ...]], crop: tuple[int, ...]) -> bool:
    return any(bool(_inside_crop(point[None], torch.tensor(start), crop)[0]) for start in starts)


def _clicks_in_crop(
    points: torch.Tensor,
    labels: torch.Tensor,
    start: torch.Tensor,
    crop: tuple[int, ...],
    total: torch.Tensor,
    weights: torch.Tensor,
    threshold: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clicks inside the crop, or a positive click at the deepest predicted object voxel in it."""
    inside = _inside_crop(points, start, crop)
    if inside.any():
        return points[inside], labels[inside]
    box, _ = _ranges(start, crop, tuple(total.shape))
    known = weights[_slices(box)] > 0
    object_so_far = (total[_slices(box)] > threshold * weights[_slices(box)]) & known
    if not object_so_far.any():
        return points[:0], labels[:0]
    depth = ndimage.distance_transform_edt(np.pad(object_so_far.numpy(), 1))[1:-1, 1:-1, 1:-1]
    deepest = torch.tensor(np.unravel_index(int(depth.argmax()), depth.shape)) + torch.tensor(
        [a for a, _ in box]
    )
    return deepest[None].float(), torch.tensor([POSITIVE])


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


def _connected_to(mask: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """The connected components of ``mask`` that contain a seed voxel (all of ``mask`` without seeds)."""
    if not len(seeds) or not mask.any():
        return mask
    components, _ = ndimage.label(mask.numpy(), structure=np.ones((3, 3, 3)))
    index = seeds.round().long().clamp(min=torch.zeros(3, dtype=torch.long), max=torch.tensor(mask.shape) - 1)
    ids = {int(components[tuple(p)]) for p in index.tolist()} - {0}
    if not ids:
        return mask
    return torch.from_numpy(np.isin(components, list(ids)))


def segment(
    net: VolumetricSam,
    image: torch.Tensor,
    points: torch.Tensor,
    labels: torch.Tensor | None,
    protocol: Protocol,
    threshold: float = 0.5,
) -> torch.Tensor:
    """Whole-volume probability of one set of clicks with the chosen protocol."""
    return ClickSession(net, image, protocol, threshold, cache_size=0).add_clicks(points, labels)


class ClickSession:
    """Interactive segmentation of one volume: add clicks, get the updated foreground probability.

    The crop encodings are kept (an LRU of ``cache_size`` crops, or a shared ``encoder``), so a click added
    to a crop already seen costs only the prompt encoder and decoder. The crops stay where the first
    clicks put them: ``paper`` keeps the first clicks' crop for every later click (later clicks outside
    it are ignored), ``full`` keeps its lattice of crops through that crop.

    Example::

        session = ClickSession(net, image)  # image (D, H, W), normalised, on the network's grid
        probability = session.add_click((40, 52, 60))
        probability = session.add_click((44, 50, 71), positive=False)
        probability = session.undo()

    Args:
        net: The network, on its device, in eval mode.
        image: ``(D, H, W)`` normalised volume on the CPU.
        protocol: ``paper`` or ``full`` (see :mod:`sam3d.inference`).
        threshold: Foreground probability threshold (``full`` follows the object at this level).
        cache_size: Crop encodings kept; ignored when ``encoder`` is given.
        encoder: A crop encoder to share (e.g. across the repeats of one volume).
    """

    def __init__(
        self,
        net: VolumetricSam,
        image: torch.Tensor,
        protocol: Protocol = "paper",
        threshold: float = 0.5,
        cache_size: int = 8,
        encoder: CropEncoder | None = None,
    ) -> None:
        if image.ndim != 3 or not image.is_floating_point():
            raise Sam3dError(f"the volume must be a 3D float tensor (D, H, W), got {tuple(image.shape)}")
        if protocol not in ("paper", "full"):
            raise Sam3dError(f"unknown protocol {protocol!r}: use 'paper' or 'full'")
        self.image, self.protocol, self.threshold = image, protocol, threshold
        self.encoder = CropEncoder(net, cache_size) if encoder is None else encoder
        self.points = torch.zeros(0, 3)
        self.labels = torch.zeros(0, dtype=torch.long)
        self._history: list[int] = []
        self._anchor: torch.Tensor | None = None
        self.probability = torch.zeros_like(image)

    @property
    def anchor(self) -> torch.Tensor | None:
        """Start ``(3,)`` of the crop the first clicks placed (``full`` builds its lattice through it); None before."""
        return self._anchor

    def add_click(self, point: Sequence[float] | torch.Tensor, positive: bool = True) -> torch.Tensor:
        """Add one click ``(d, h, w)`` in voxels; returns the probability ``(D, H, W)``."""
        label = torch.tensor([POSITIVE if positive else NEGATIVE])
        return self.add_clicks(torch.as_tensor(point, dtype=torch.float32).reshape(1, 3), label)

    def add_clicks(self, points: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Add ``(N, 3)`` clicks at once (labels 1 positive, 0 negative; default all positive)."""
        points = points.float().reshape(-1, 3)
        labels = torch.full((len(points),), POSITIVE) if labels is None else labels.long().reshape(-1)
        self._check(points, labels)
        self.points, self.labels = torch.cat([self.points, points]), torch.cat([self.labels, labels])
        self._history.append(len(points))
        return self._update()

    def undo(self) -> torch.Tensor:
        """Remove the clicks added last; returns the probability without them."""
        if self._history:
            removed = self._history.pop()
            self.points, self.labels = self.points[:-removed], self.labels[:-removed]
        if not self._history:
            self._anchor = None
        return self._update()

    def reset(self) -> None:
        """Remove every click (the crop encodings are kept)."""
        self.points, self.labels, self._history, self._anchor = self.points[:0], self.labels[:0], [], None
        self.probability = torch.zeros_like(self.image)

    def _check(self, points: torch.Tensor, labels: torch.Tensor) -> None:
        upper = torch.tensor(self.image.shape) - 1
        outside = ((points < 0) | (points > upper)).any(1)
        if outside.any():
            raise Sam3dError(
                f"click {points[outside][0].tolist()} lies outside the volume of shape {tuple(self.image.shape)}; "
                "clicks are (d, h, w) voxel coordinates inside it"
            )
        if len(labels) != len(points) or not torch.isin(labels, torch.tensor([POSITIVE, NEGATIVE])).all():
            raise Sam3dError("click labels must be 1 (positive) or 0 (negative), one per click")
        if not self._history and not (labels == POSITIVE).any():
            raise Sam3dError("the first clicks must include a positive click (inside the object)")

    def _update(self) -> torch.Tensor:
        if not len(self.points):
            self.probability = torch.zeros_like(self.image)
            return self.probability
        crop = self.encoder.crop_size
        if self._anchor is None:
            self._anchor = crop_start(self.points, crop)
        if self.protocol == "full":
            self.probability = segment_object(
                self.encoder, self.image, self.points, self.labels, self.threshold, anchor=self._anchor
            )
        else:
            self.probability = segment_around_clicks(
                self.encoder, self.image, self.points, self.labels, start=self._anchor
            )
        return self.probability


def sliding_window_probability(
    logits: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    crop_size: tuple[int, int, int],
    overlap: float = 0.5,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Whole-volume foreground probability ``(D, H, W)`` of a network without prompts (automatic methods).

    MONAI's ``sliding_window_inference``: crops of ``crop_size`` overlapping by ``overlap``, their softmax
    probabilities blended with a Gaussian weight (nnU-Net's), a volume smaller than a crop padded with its
    minimum (as :func:`predict_crop` pads).

    Args:
        logits: Maps ``(B, 1, *crop_size)`` crops on ``device`` to two-class logits ``(B, 2, *crop_size)``.
        image: ``(D, H, W)`` normalised volume on the CPU.
        crop_size: The network's crop.
        overlap: Fraction of a crop shared with its neighbour along each axis, in ``[0, 1)``.
        batch_size: Crops segmented together.
        device: Where the crops are segmented (the probability is assembled on the CPU).
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
            cval=float(image.min()),
            sw_device=device,
            device="cpu",
        )
    assert isinstance(probability, torch.Tensor)
    return probability[0, 1]
