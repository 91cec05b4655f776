"""Volumetric data pipeline (every TorchIO call of sam3d lives in this package)."""

from sam3d.data.clicks import correction_click, first_click, pad_clicks, training_clicks
from sam3d.data.datamodule import VolumeDataModule
from sam3d.data.errors import DatasetError
from sam3d.data.layout import from_network_layout, to_network_layout
from sam3d.data.preprocessing import Preprocessing
from sam3d.data.synthetic import make_synthetic_dataset

__all__ = [
    "DatasetError",
    "Preprocessing",
    "VolumeDataModule",
    "correction_click",
    "first_click",
    "from_network_layout",
    "make_synthetic_dataset",
    "pad_clicks",
    "to_network_layout",
    "training_clicks",
]
