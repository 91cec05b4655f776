"""The volumetric SAM network (pure PyTorch: no Lightning, TorchIO or MONAI here)."""

from sam3d.models.build import (
    build_sam_2d,
    build_volumetric_sam,
    freeze_like_paper,
    trainable_parameter_groups,
)
from sam3d.models.checkpoints import CheckpointError
from sam3d.models.config import (
    ADAPTATIONS,
    CLICK_ENCODINGS,
    DENSE_PROMPTS,
    VARIANTS,
    Adaptation,
    ClickEncoding,
    DensePrompt,
    Variant,
    VolumetricSamConfig,
)
from sam3d.models.dense_prompts import DenseInputs, DensePrompts
from sam3d.models.reference import load_reference_checkpoint
from sam3d.models.volumetric_sam import CropEncoding, VolumetricSam

__all__ = [
    "ADAPTATIONS",
    "CLICK_ENCODINGS",
    "DENSE_PROMPTS",
    "VARIANTS",
    "Adaptation",
    "CheckpointError",
    "ClickEncoding",
    "CropEncoding",
    "DenseInputs",
    "DensePrompt",
    "DensePrompts",
    "Variant",
    "VolumetricSam",
    "VolumetricSamConfig",
    "build_sam_2d",
    "build_volumetric_sam",
    "freeze_like_paper",
    "load_reference_checkpoint",
    "trainable_parameter_groups",
]
