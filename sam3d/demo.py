"""The end-to-end check behind ``make demo``: build the network, load SAM-format weights, segment from one click.

Runs on the CPU in seconds with the tiny network. SAM's weights cannot be downloaded here, so a randomly
initialised tiny SAM is written in the official checkpoint format and loaded through the real loading code;
the untrained network's mask is therefore not meaningful yet (training arrives with ``sam3d fit``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from sam3d.models import VARIANTS, build_sam_2d, build_volumetric_sam


def synthetic_crop(
    size: tuple[int, int, int], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A normalised noisy crop with one brighter ellipsoidal lesion, and the lesion mask."""
    axes = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in size), indexing="ij")
    centre = [n / 2 for n in size]
    radii = [n / 6 for n in size]
    lesion = sum(((a - c) / r) ** 2 for a, c, r in zip(axes, centre, radii, strict=True)) <= 1
    image = torch.randn(size, generator=generator) * 0.3 + lesion.float()
    return image[None, None], lesion


def main() -> None:
    """Build the tiny network from a SAM-format checkpoint and segment a synthetic crop from one click."""
    generator = torch.Generator().manual_seed(0)
    config = VARIANTS["tiny"]
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "sam_tiny.pth"
        torch.save(build_sam_2d(config).state_dict(), checkpoint)
        start = time.perf_counter()
        net = build_volumetric_sam("tiny", sam_checkpoint=checkpoint).eval()
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    total = sum(p.numel() for p in net.parameters())
    print(
        f"built the tiny volumetric SAM in {time.perf_counter() - start:.2f} s: {trainable:,} of {total:,} trainable"
    )
    image, lesion = synthetic_crop(config.crop_size, generator)
    click = torch.tensor([[[s / 2 for s in config.crop_size]]])
    start = time.perf_counter()
    with torch.inference_mode():
        logits = net(image, click)
    mask = logits.argmax(1)[0]
    print(
        f"segmented a {tuple(config.crop_size)} crop from one click at {click[0, 0].tolist()} in "
        f"{time.perf_counter() - start:.2f} s: logits {tuple(logits.shape)}, {int(mask.sum())} foreground voxels "
        f"(lesion: {int(lesion.sum())}; the network is untrained, so the mask is not meaningful yet)"
    )


if __name__ == "__main__":
    main()
