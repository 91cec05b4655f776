"""Time and peak memory of the folded patch embedding: the paper's direct path against the folded one.

    .venv/bin/python benchmarks/patch_embedding.py                 # vit_b sizes, 128^3 crop, scale 4
    .venv/bin/python benchmarks/patch_embedding.py --crop 96 --scale 5.333 --precision bf16

Each path runs forward and backward (the slice embedding trains) in a child process of its own, so each
peak RSS (or CUDA peak) is that path's own. ``direct`` upsamples the crop and embeds every slice, as the
paper; ``folded`` is sam3d's (one matrix product of each token's source voxels with the folded kernel).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from sam3d.models.patch_embedding import direct_patch_embedding, folded_patch_embedding

PATHS = {"direct": direct_patch_embedding, "folded": folded_patch_embedding}


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def measure(path: str, crop: int, scale: float, dim: int, precision: str, repeats: int) -> dict[str, float]:
    """Median seconds of forward + backward and the process's peak memory, for one path."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    patch = nn.Conv2d(3, dim, 16, 16).to(device).requires_grad_(False)
    slices = nn.Conv3d(dim, dim, (16, 1, 1), (16, 1, 1), groups=dim).to(device)
    volume = torch.randn(1, 1, crop, crop, crop, device=device)
    seconds = []
    for _ in range(repeats + 1):  # the first run warms up
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            tokens = PATHS[path](volume, patch, slices, scale)
        tokens.float().square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    finite = bool(torch.isfinite(tokens).all())
    return {
        "seconds": sorted(seconds[1:])[len(seconds[1:]) // 2],
        "peak_gib": _peak_gib(device),
        "finite": finite,
    }


def main() -> None:
    """Run every path in its own process and print one line per path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--dim", type=int, default=768, help="embedding width (vit_b: 768)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=tuple(PATHS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    settings = (args.crop, args.scale, args.dim, args.precision, args.repeats)
    if args.child:
        print(json.dumps(measure(args.child, *settings)))
        return
    print(
        f"crop {args.crop}^3, scale {args.scale}, embedding {args.dim}, {args.precision}, forward + backward"
    )
    for path in PATHS:
        command = [sys.executable, __file__, "--child", path, *sys.argv[1:]]
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        print(
            f"{path:>7}: {result['seconds']:.3f} s, peak {result['peak_gib']:.2f} GiB, "
            f"finite {result['finite']}"
        )


if __name__ == "__main__":
    main()
