"""Time and peak memory of the volumetric SAM: the direct (paper's) path against sam3d's, in one run.

    .venv/bin/python benchmarks/network.py forward      # vit_b forward, 128^3, 1 click
    .venv/bin/python benchmarks/network.py train-step   # paper configuration under Lightning's Trainer
    .venv/bin/python benchmarks/network.py click        # first click and a correction click
    .venv/bin/python benchmarks/network.py forward --variant tiny --repeats 3

Each path runs in a child process of its own, so each peak is that process's own: the peak resident set
size (VmHWM, weights included) on the CPU, and ``torch.cuda.max_memory_allocated`` on a GPU. A child is
killed once its resident memory passes ``--limit-gib``. The old path is the paper's computation (upsampled
volume, materialised attention bias, every activation kept, every click a full forward); the new path is
sam3d's default (folded patch embedding, bias-free attention, activation checkpointing in training,
crop encodings reused across clicks).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from sam3d.models import VolumetricSam, build_volumetric_sam

PATHS = ("old", "new")


def _peak_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    import resource  # not Linux: ru_maxrss (kilobytes on Linux, bytes on macOS)

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _peak_gpu_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def _network(variant: str, path: str, device: torch.device) -> VolumetricSam:
    torch.manual_seed(0)
    net = build_volumetric_sam(variant).to(device)
    net.image_encoder.fused = path == "new"
    return net


def _inputs(crop: tuple[int, ...], clicks: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.randn(1, 1, *crop, device=device)
    points = torch.rand(1, clicks, 3, device=device) * (torch.tensor(crop, device=device) - 1)
    return image, points


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def child_forward(args: argparse.Namespace, device: torch.device) -> dict:
    net = _network(args.variant, args.path, device).eval()
    image, points = _inputs(net.config.crop_size, args.clicks, device)
    times = []
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=args.bf16):
        for _ in range(args.repeats):
            start = time.perf_counter()
            net(image, points)
            _sync(device)
            times.append(time.perf_counter() - start)
    return {"seconds": times}


def child_click(args: argparse.Namespace, device: torch.device) -> dict:
    """A first click, then ``--repeats`` correction clicks in the same crop (positive and negative)."""
    from sam3d.interaction import InteractionSession

    net = _network(args.variant, args.path, device).eval()
    crop = net.config.crop_size
    image = torch.randn(*(2 * n for n in crop))  # a volume larger than the crop
    centre = torch.tensor(image.shape) / 2
    session = InteractionSession(net, image, cache_size=8 if args.path == "new" else 0)
    times = []
    with torch.autocast(device.type, torch.bfloat16, enabled=args.bf16):
        for index in range(args.repeats + 1):
            start = time.perf_counter()
            session.add_click(centre + 3 * index, positive=index % 2 == 0)
            _sync(device)
            times.append(time.perf_counter() - start)
    return {"first": times[0], "corrections": times[1:]}


def child_train_step(args: argparse.Namespace, device: torch.device) -> dict:
    """``--repeats`` steps of ``VolumetricSamModule`` (module defaults) under Lightning's Trainer."""
    import logging

    import lightning as L

    from sam3d.module import VolumetricSamModule

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    torch.manual_seed(0)
    module = VolumetricSamModule(
        variant=args.variant, activation_checkpointing=None if args.path == "new" else False
    )
    module.net.image_encoder.fused = args.path == "new"
    crop = module.net.config.crop_size
    image, points = _inputs(crop, args.clicks, torch.device("cpu"))
    label = torch.zeros(1, 1, *crop)
    label[..., crop[0] // 3 : crop[0] // 2, crop[1] // 3 : crop[1] // 2, crop[2] // 3 : crop[2] // 2] = 1
    batch = {
        "image": image,
        "label": label,
        "points": points,
        "point_labels": torch.ones(1, args.clicks, dtype=torch.long),
    }
    seconds: list[float] = []

    class StepTimer(L.Callback):
        def on_train_batch_start(self, *_: object) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, *_: object) -> None:
            _sync(device)
            seconds.append(time.perf_counter() - self.start)

    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        precision="bf16-mixed" if args.bf16 else "32-true",
        max_steps=args.repeats,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        gradient_clip_val=1.0,
        callbacks=[StepTimer()],
    )
    trainer.fit(
        module, train_dataloaders=torch.utils.data.DataLoader([batch] * args.repeats, batch_size=None)
    )
    return {"seconds": seconds}


CHILDREN = {"forward": child_forward, "click": child_click, "train-step": child_train_step}


def _run_child(args: argparse.Namespace, path: str) -> dict:
    """Run one path in a child process; kill it once its resident memory passes the limit."""
    command = [sys.executable, __file__, *sys.argv[1:], "--child", path]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
        status, peak_rss, killed = Path(f"/proc/{child.pid}/status"), 0.0, False
        while child.poll() is None:
            try:
                rss = next(
                    int(x.split()[1]) for x in status.read_text().splitlines() if x.startswith("VmRSS:")
                )
            except (OSError, StopIteration):
                rss = 0
            peak_rss = max(peak_rss, rss / 2**20)
            if peak_rss > args.limit_gib:
                child.kill()
                killed = True
            time.sleep(0.2)
        output = child.stdout.read() if child.stdout else ""
    if killed:
        return {"killed_above_gib": args.limit_gib}
    lines = [line for line in output.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"failed": f"exit status {child.returncode}"}


def _report(benchmark: str, path: str, result: dict) -> str:
    if "killed_above_gib" in result:
        return f"{path}: killed when its resident memory passed {result['killed_above_gib']:g} GiB (did not finish)"
    if "failed" in result:
        return f"{path}: failed ({result['failed']})"
    memory = f"peak RSS {result['peak_rss_gib']:.2f} GiB"
    if result.get("peak_gpu_gib") is not None:
        memory += f", peak GPU memory {result['peak_gpu_gib']:.2f} GiB"
    if benchmark == "click":
        corrections = result["corrections"]
        mean = sum(corrections) / len(corrections)
        return (
            f"{path}: first click {result['first']:.2f} s, correction click {mean:.2f} s "
            f"(mean of {len(corrections)}, {100 * mean / result['first']:.1f}% of the first); {memory}"
        )
    seconds = result["seconds"]
    return f"{path}: best {min(seconds):.2f} s, last {seconds[-1]:.2f} s of {len(seconds)}; {memory}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("benchmark", choices=list(CHILDREN))
    parser.add_argument("--variant", default="vit_b", choices=["vit_b", "vit_l", "vit_h", "tiny"])
    parser.add_argument("--clicks", type=int, default=None, help="clicks per crop (default: 1; training 30)")
    parser.add_argument("--repeats", type=int, default=2, help="forwards, steps or correction clicks")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (bf16-mixed for training)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--limit-gib", type=float, default=16.0, help="kill a child above this resident memory"
    )
    parser.add_argument("--child", choices=PATHS, dest="path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clicks is None:
        args.clicks = 30 if args.benchmark == "train-step" else 1
    device = torch.device(args.device)
    if args.path:  # inside a child: one path, one JSON line
        result = CHILDREN[args.benchmark](args, device)
        print(json.dumps({**result, "peak_rss_gib": _peak_rss_gib(), "peak_gpu_gib": _peak_gpu_gib()}))
        return
    print(
        f"{args.benchmark}, {args.variant}, {args.clicks} click(s), {device}, "
        f"{'bf16' if args.bf16 else 'fp32'}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        flush=True,
    )
    for path in args.paths:
        print(_report(args.benchmark, path, _run_child(args, path)), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
