"""Training patches per second from the TorchIO Queue, and the first-epoch cost of caching per case.

Run: ``.venv/bin/python benchmarks/data_throughput.py`` (defaults: the IBSI CT scans beside the
checkout, 128^3 patches at 1 mm, default augmentations, 2 workers). Every case goes into the training
part so the measurement is not dominated by epoch restarts of a tiny dataset. The machine's load
average is reported with the rate: other processes on the same cores slow the workers down. With
``--workers 0`` the loading runs in this process, on one thread as in a worker, and its CPU seconds per
patch are reported too (what each worker spends per patch, nearly independent of the load).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from sam3d.data import VolumeDataModule, make_synthetic_dataset
from sam3d.data.catalog import discover
from sam3d.data.splits import save_splits

IBSI = Path(__file__).resolve().parents[2] / "shared" / "data" / "ibsi-sts-ct"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=IBSI if IBSI.is_dir() else None)
    parser.add_argument("--dataset", default="msd")
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--samples-per-volume", type=int, default=8)
    parser.add_argument("--queue-length", type=int, default=16)
    parser.add_argument("--patches", type=int, default=64, help="patches timed after the warm-up")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--no-augment", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.workers == 0:
        torch.set_num_threads(1)  # as in a loader worker process
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="sam3d-bench-") as scratch:
        root = args.root or make_synthetic_dataset(Path(scratch) / "synthetic", num_cases=8, seed=0)
        catalog = discover(root, args.dataset)
        entries = [
            {"case_id": c.case_id, "image": str(c.image), "label": str(c.label)}
            for c in catalog.cases.values()
        ]
        split = save_splits(
            Path(scratch) / "split.json",
            args.dataset,
            "benchmark",
            [{"train": entries, "val": [], "test": []}],
        )
        dm = VolumeDataModule(
            root,
            dataset=args.dataset,
            split_file=str(split),
            patch_size=(args.patch,) * 3,
            num_workers=args.workers,
            samples_per_volume=args.samples_per_volume,
            queue_length=args.queue_length,
            cache_dir=str(Path(scratch) / "cache"),
            augment=not args.no_augment,
        )
        start = time.perf_counter()
        dm.prepare_data()
        caching = time.perf_counter() - start
        dm.setup("fit")
        per_case = [case.meta["seconds"] for case in dm._cached["train"]]
        shapes = [tuple(case.meta["shape"]) for case in dm._cached["train"]]
        loader = dm.train_dataloader()
        patches, start, times, cpu_start = 0, None, [], 0.0
        while patches < args.warmup + args.patches:
            for batch in loader:
                patches += len(batch["case_id"])
                if patches == args.warmup:
                    start, cpu_start = time.perf_counter(), time.process_time()
                elif patches > args.warmup:
                    times.append(time.perf_counter())
                if patches >= args.warmup + args.patches:
                    break
        rate = (len(times)) / (times[-1] - start)
        cpu_per_patch = (time.process_time() - cpu_start) / len(times)
        result = {
            "root": str(root),
            "cases": len(per_case),
            "resampled_shapes": shapes,
            "patch": args.patch,
            "workers": args.workers,
            "augment": not args.no_augment,
            "cache_seconds_total": round(caching, 2),
            "cache_seconds_per_case_mean": round(statistics.mean(per_case), 2),
            "cache_seconds_per_case_max": round(max(per_case), 2),
            "patches_timed": len(times),
            "patches_per_second": round(rate, 2),
            # With --workers 0 this process does all the work: the CPU cost of a patch, whatever the load.
            "cpu_seconds_per_patch": round(cpu_per_patch, 3) if args.workers == 0 else None,
            "cpus": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),
        }
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
