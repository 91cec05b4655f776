"""Trainable and total parameters of every adaptation of a network size, built on the meta device (no memory).

.venv/bin/python benchmarks/parameter_counts.py --variant vit_b --lora_ranks 4 16
"""

from __future__ import annotations

import argparse

import torch

from sam3d.models import ADAPTATIONS, build_volumetric_sam


def main() -> None:
    """Print one Markdown row per adaptation (and per LoRA rank)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", default="vit_b", choices=["vit_b", "vit_l", "vit_h", "tiny"])
    parser.add_argument("--lora_ranks", type=int, nargs="+", default=[4])
    args = parser.parse_args()
    print("| adaptation | trainable parameters | all parameters |\n|---|---:|---:|")
    for adaptation in ADAPTATIONS:
        for rank in args.lora_ranks if adaptation == "lora" else [4]:
            with torch.device("meta"):
                net = build_volumetric_sam(args.variant, adaptation=adaptation, lora_rank=rank)
            trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
            total = sum(p.numel() for p in net.parameters())
            name = f"lora (rank {rank})" if adaptation == "lora" else adaptation
            print(f"| {name} | {trainable:,} | {total:,} |")


if __name__ == "__main__":
    main()
