"""Forward time and peak memory of the volumetric SAM on the CPU.

    .venv/bin/python benchmarks/network_forward.py --variant vit_b --clicks 1 --repeats 1

Peak memory is the process's peak resident set size (weights included), read after the forward.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from sam3d.models import build_volumetric_sam


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", default="vit_b", choices=["vit_b", "vit_l", "vit_h", "tiny"])
    parser.add_argument("--clicks", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = build_volumetric_sam(args.variant).eval()
    crop = net.config.crop_size
    image = torch.randn(1, 1, *crop)
    points = torch.rand(1, args.clicks, 3) * (torch.tensor(crop) - 1)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    times = []
    with torch.inference_mode():
        for _ in range(args.repeats):
            start = time.perf_counter()
            net(image, points)
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"{args.variant} forward on {crop} crop, {args.clicks} click(s), {args.threads} threads: "
        f"best {min(times):.1f} s, mean {sum(times) / len(times):.1f} s over {args.repeats}; "
        f"peak RSS {peak:.2f} GiB (after building the network: {rss_before:.2f} GiB)"
    )


if __name__ == "__main__":
    main()
