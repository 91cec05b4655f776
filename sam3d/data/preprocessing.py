"""Preprocessing shared by training, testing and prediction: label binarisation and CT normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchio as tio

__all__ = ["BinarizeLabel", "Normalize"]


class BinarizeLabel(tio.Transform):
    """Label maps become 1 where they hold one of ``target_labels`` and 0 elsewhere (uint8).

    Args:
        target_labels: Label values forming the target.
        **kwargs: Passed to :class:`torchio.Transform`.
    """

    def __init__(self, target_labels: Sequence[int], **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.target_labels = [int(value) for value in target_labels]
        self.args_names = ["target_labels"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        """Binarise every label map of the subject."""
        targets = torch.tensor(self.target_labels)
        for image in subject.get_images(intensity_only=False, include=self.include, exclude=self.exclude):
            if isinstance(image, tio.LabelMap):
                image.set_data(torch.isin(image.data, targets.to(image.data.dtype)).to(torch.uint8))
        return subject


class Normalize(tio.IntensityTransform):
    """Clip intensities to a window, then z-score with fixed dataset statistics (float32 output).

    Args:
        window: ``(low, high)`` clipping bounds, e.g. in HU.
        mean: Mean subtracted after clipping.
        std: Standard deviation divided by after clipping.
        **kwargs: Passed to :class:`torchio.Transform`.
    """

    def __init__(self, window: tuple[float, float], mean: float, std: float, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.window, self.mean, self.std = (float(window[0]), float(window[1])), float(mean), float(std)
        self.args_names = ["window", "mean", "std"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        """Normalise every intensity image of the subject."""
        for image in self.get_images(subject):
            data = image.data.float().clamp(*self.window)
            image.set_data(data.sub_(self.mean).div_(self.std))
        return subject
