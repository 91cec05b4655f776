"""Forward (or training-step) time and peak memory of the volumetric SAM on the CPU.

    .venv/bin/python benchmarks/network_forward.py --variant vit_b --clicks 1 --repeats 1
    .venv/bin/python benchmarks/network_forward.py --variant tiny --train-step --repeats 5

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
    parser.add_argument("--train-step", action="store_true", help="time forward, backward and AdamW step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = build_volumetric_sam(args.variant).train(args.train_step)
    crop = net.config.crop_size
    image = torch.randn(1, 1, *crop)
    points = torch.rand(1, args.clicks, 3) * (torch.tensor(crop) - 1)
    target = (torch.rand(1, *crop) > 0.9).long()
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=4e-4)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        if args.train_step:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(image, points), target).backward()
            optimizer.step()
        else:
            with torch.inference_mode():
                net(image, points)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"{args.variant} {'training step' if args.train_step else 'forward'} on {crop} crop, {args.clicks} click(s), {args.threads} threads: "
        f"best {min(times):.1f} s, mean {sum(times) / len(times):.1f} s over {args.repeats}; "
        f"peak RSS {peak:.2f} GiB (after building the network: {rss_before:.2f} GiB)"
    )


if __name__ == "__main__":
    main()
