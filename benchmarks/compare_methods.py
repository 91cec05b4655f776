"""Train and test every method on the synthetic phantoms (tiny sizes, CPU) and print one table.

    .venv/bin/python benchmarks/compare_methods.py --output /tmp/comparison --epochs 6

Each method is ``sam3d fit`` then ``sam3d test --ckpt_path best`` with ``configs/synthetic.yaml`` under its
overlay, all on the same phantoms and fold; the test runs (``<output>/runs/sam3d/*/test/summary.json``) are
the input of a comparison report. The numbers are synthetic: they check the pipeline, not the methods.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent / "sam3d"

# Tiny sizes for two CPU cores; 64^3 crops (SwinUNETR needs 64 at least).
METHODS: dict[str, list[str]] = {
    "sam (1 click)": ["--evaluation.first_click", "center"],
    "sam-automatic": ["-c", "automatic/sam.yaml", "--data.patch_size", "[64, 64, 64]"],
    "dynunet": ["-c", "baselines/dynunet.yaml", "--model.feature_size", "8"],
    "swinunetr": [
        *("-c", "baselines/swinunetr.yaml", "--model.feature_size", "12"),
        *("--model.options", '{"depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4]}'),
    ],
    "unetr": [
        *("-c", "baselines/unetr.yaml", "--model.feature_size", "8"),
        *("--model.options", '{"hidden_size": 96, "mlp_dim": 192, "num_heads": 4}'),
    ],
}


def run(command: list[str]) -> None:
    """Run a sam3d command, stopping on failure."""
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    """Make the phantoms, fit and test each method, print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    args = parser.parse_args()
    data = args.output / "data"
    if not data.is_dir():
        run([str(BIN), "make-synthetic", str(data), "--num_cases", str(args.cases), "--seed", "0"])
    lines = ["| method | cases | Dice | NSD | HD95 (mm) | s per case |", "|---|---|---|---|---|---|"]
    for method in args.methods:
        save_dir = args.output / "runs" / method.split()[0]
        common = [
            *("-c", "synthetic.yaml", *METHODS[method], "--data.root", str(data)),
            *("--data.cache_dir", str(args.output / "cache"), "--trainer.max_epochs", str(args.epochs)),
            *("--trainer.check_val_every_n_epoch", "1", "--trainer.logger.init_args.save_dir", str(save_dir)),
        ]
        run([str(BIN), "fit", *common])
        run([str(BIN), "test", *common, "--ckpt_path", "best"])
        summary_file = max(save_dir.glob("**/test/summary.json"), key=lambda p: p.stat().st_mtime)
        summary = json.loads(summary_file.read_text())
        final = summary["final"]
        with open(summary_file.parent / "cases.csv") as stream:
            seconds = [float(line.split(",")[-1]) for line in list(stream)[1:]]
        lines.append(
            f"| {method} | {summary['cases']} | {final['dice']['mean']:.3f} +- {final['dice']['std']:.3f} | "
            f"{final['nsd']['mean']:.3f} | {final['hd95']['mean']:.1f} | {sum(seconds) / len(seconds):.2f} |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
