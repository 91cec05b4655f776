"""Several objects on one volume: one :class:`~sam3d.interaction.InteractionSession` each, and their label map.

Each object has an integer id (1 to :data:`MAX_OBJECTS`, its value in the label map) and a name. Ids are
stable: deleting an object does not renumber the others (a label value keeps naming the same object), and
a new object takes the smallest free id. The sessions share one :class:`~sam3d.inference.CropEncoder`, so
an object clicked in a crop another object already encoded costs only the prompt encoder and decoder.

Where objects overlap, the label map gives a voxel to the object with the highest probability there (the
lowest id on a tie); each object's own mask (its probability above the threshold) keeps the overlap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from sam3d.errors import Sam3dError
from sam3d.inference import CropEncoder, Protocol
from sam3d.interaction import InteractionSession
from sam3d.models import VolumetricSam

__all__ = [
    "MAX_NAME_LENGTH",
    "MAX_OBJECTS",
    "LabelMap",
    "ObjectSessions",
    "SegmentedObject",
    "check_object_id",
    "check_object_name",
    "default_object_name",
    "label_map",
]

MAX_OBJECTS = 255  # the label map is uint8: 0 background, 1..255 objects
MAX_NAME_LENGTH = 64
_NAME_PUNCTUATION = frozenset(" -_.")


def default_object_name(object_id: int) -> str:
    """The name of an object nobody named: ``object <id>``."""
    return f"object {object_id}"


def check_object_id(value: object) -> int:
    """``value`` as an object id, an integer 1 to :data:`MAX_OBJECTS`.

    Raises:
        Sam3dError: Naming the value and the range.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_OBJECTS:
        raise Sam3dError(f"an object id is an integer from 1 to {MAX_OBJECTS}, got {value!r}")
    return value


def check_object_name(value: object) -> str:
    """``value`` as an object name: 1 to 64 letters, digits, spaces, ``-``, ``_`` or ``.`` (it names files).

    Leading and trailing spaces are dropped; a name may not start with ``.``.

    Raises:
        Sam3dError: Naming the value and what a name may hold.
    """
    name = value.strip() if isinstance(value, str) else ""
    if (
        not name
        or len(name) > MAX_NAME_LENGTH
        or name.startswith(".")
        or not all(c.isalnum() or c in _NAME_PUNCTUATION for c in name)
    ):
        shown = repr(value) if len(repr(value)) < 80 else repr(value)[:77] + "..."
        raise Sam3dError(
            f"an object name is 1 to {MAX_NAME_LENGTH} letters, digits, spaces, '-', '_' or '.' (not first), "
            f"got {shown}: it names the object's mask file, so no '/' or other path characters"
        )
    return name


class LabelMap:
    """Builds a label map one object at a time: 0 background, else the id of the most probable object.

    A voxel goes to an object whose probability there is above ``threshold`` and higher than every object's
    added before (so the lowest id wins a tie when objects are added by id). Holds one volume of labels and
    one of probabilities, whatever the number of objects.

    Args:
        threshold: Probability level of the objects' masks.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.labels: torch.Tensor | None = None
        self._best: torch.Tensor | None = None

    def add(self, object_id: int, probability: torch.Tensor) -> None:
        """Add one object's ``probability`` (the same shape for every object)."""
        check_object_id(object_id)
        if self.labels is None or self._best is None:
            self.labels = torch.zeros(probability.shape, dtype=torch.uint8)
            self._best = torch.full(probability.shape, self.threshold, dtype=torch.float32)
        if probability.shape != self.labels.shape:
            raise ValueError(
                f"object {object_id}'s probability has shape {tuple(probability.shape)}, "
                f"the others {tuple(self.labels.shape)}"
            )
        probability = probability.detach().cpu().float()
        takes = probability > self._best
        self.labels[takes] = object_id
        self._best = torch.where(takes, probability, self._best)


def label_map(probabilities: Iterable[tuple[int, torch.Tensor]], threshold: float) -> torch.Tensor:
    """The uint8 label map of ``(id, probability)`` pairs (see :class:`LabelMap`; at least one pair)."""
    builder = LabelMap(threshold)
    for object_id, probability in probabilities:
        builder.add(object_id, probability)
    if builder.labels is None:
        raise ValueError("a label map needs at least one object")
    return builder.labels


@dataclass
class SegmentedObject:
    """One object of a volume: its id (its label value), its name and its interactions."""

    id: int
    name: str
    session: InteractionSession


class ObjectSessions:
    """Several objects on one volume, each with its own interactions; one of them is selected.

    Example::

        objects = ObjectSessions(net, image)  # no object yet
        objects.add("liver lesion")  # id 1, selected
        objects.session.add_click((44, 50, 71))
        objects.add("cyst")  # id 2, selected
        objects.session.add_click((30, 60, 40))
        labels = objects.label_map()  # (D, H, W) uint8 with 0, 1 and 2

    Args:
        net: The network, on its device, in eval mode.
        image: ``(D, H, W)`` normalised volume on the CPU.
        protocol: ``full`` (masks grow into neighbouring crops) or ``paper`` (see :class:`InteractionSession`).
        threshold: Foreground probability threshold of every object.
        cache_size: Crop encodings kept, shared by the objects; ignored when ``encoder`` is given.
        encoder: A crop encoder to share.
    """

    def __init__(
        self,
        net: VolumetricSam,
        image: torch.Tensor,
        protocol: Protocol = "full",
        threshold: float = 0.5,
        cache_size: int = 8,
        encoder: CropEncoder | None = None,
    ) -> None:
        self.net, self.image, self.protocol, self.threshold = net, image, protocol, threshold
        self.encoder = CropEncoder(net, cache_size) if encoder is None else encoder
        self._objects: dict[int, SegmentedObject] = {}
        self._selected: int | None = None

    @property
    def objects(self) -> tuple[SegmentedObject, ...]:
        """Every object, by id."""
        return tuple(self._objects[key] for key in sorted(self._objects))

    @property
    def segmented(self) -> tuple[SegmentedObject, ...]:
        """The objects with at least one interaction, by id."""
        return tuple(o for o in self.objects if o.session.interactions)

    @property
    def selected(self) -> SegmentedObject:
        """The object interactions go to."""
        if self._selected is None:
            raise Sam3dError("there is no object yet: add one first")
        return self._objects[self._selected]

    @property
    def session(self) -> InteractionSession:
        """The selected object's session."""
        return self.selected.session

    def get(self, object_id: object) -> SegmentedObject:
        """The object of ``object_id``.

        Raises:
            Sam3dError: For an id that is not an integer 1 to 255, or that no object has.
        """
        key = check_object_id(object_id)
        if key not in self._objects:
            have = ", ".join(str(k) for k in sorted(self._objects)) or "none"
            raise Sam3dError(f"there is no object {key} (the objects are {have})")
        return self._objects[key]

    def add(self, name: object = None, object_id: object = None) -> SegmentedObject:
        """Add an object and select it; the smallest free id and ``object <id>`` unless given.

        Raises:
            Sam3dError: For a bad name or id, an id already taken, or a volume with 255 objects already.
        """
        if object_id is None:
            free = next((key for key in range(1, MAX_OBJECTS + 1) if key not in self._objects), None)
            if free is None:
                raise Sam3dError(
                    f"a scan holds at most {MAX_OBJECTS} objects (the label map's values): delete one first"
                )
            key = free
        else:
            key = check_object_id(object_id)
            if key in self._objects:
                raise Sam3dError(f"object {key} exists already ({self._objects[key].name!r})")
        label = default_object_name(key) if name is None else check_object_name(name)
        session = InteractionSession(
            self.net, self.image, self.protocol, self.threshold, encoder=self.encoder
        )
        self._objects[key] = SegmentedObject(key, label, session)
        self._selected = key
        return self._objects[key]

    def select(self, object_id: object) -> SegmentedObject:
        """Select the object of ``object_id`` (see :meth:`get`)."""
        chosen = self.get(object_id)
        self._selected = chosen.id
        return chosen

    def rename(self, object_id: object, name: object) -> SegmentedObject:
        """Give the object of ``object_id`` a new name (see :func:`check_object_name`)."""
        chosen = self.get(object_id)
        chosen.name = check_object_name(name)
        return chosen

    def delete(self, object_id: object) -> None:
        """Delete an object with its interactions; the others keep their ids.

        The object before it (or else the first) is selected if it was the selected one.

        Raises:
            Sam3dError: For an unknown id, or the last object (Reset clears its interactions instead).
        """
        chosen = self.get(object_id)
        if len(self._objects) == 1:
            raise Sam3dError(
                f"{chosen.name!r} is the only object and cannot be deleted: Reset removes its interactions"
            )
        del self._objects[chosen.id]
        if self._selected == chosen.id:
            lower = [key for key in self._objects if key < chosen.id]
            self._selected = max(lower) if lower else min(self._objects)

    def label_map(self) -> torch.Tensor:
        """``(D, H, W)`` uint8: 0 background, else the id of the most probable object above the threshold."""
        segmented = self.segmented
        if not segmented:
            return torch.zeros(self.image.shape, dtype=torch.uint8)
        return label_map(((o.id, o.session.probability) for o in segmented), self.threshold)
